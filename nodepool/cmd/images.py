"""The ``nodepool`` image subcommands: listings of builds and uploads, and
the operator's image actions (build, pause, delete, export and import)."""

from __future__ import annotations

import argparse
import sys
import time

from nodepool.cmd import common
from nodepool.cmd.common import EXIT_OK, CommandError


def _store(args):
    from nodepool.zk.store import Store
    config, client = common.connect(args)
    return config, client, Store(client)


def _listing(args: argparse.Namespace, columns, view) -> int:
    """Connect, compute ``view(images)`` from ZooKeeper, disconnect, print."""
    _, client = common.connect(args)
    try:
        rows = view(common.ZooKeeperImages(client))
    finally:
        client.disconnect()
    common.print_rows(args, columns, rows)
    return EXIT_OK


def cmd_dib_image_list(args: argparse.Namespace) -> int:
    from nodepool import status
    return _listing(args, status.DIB_IMAGE_COLUMNS, status.dib_image_rows)


def cmd_image_list(args: argparse.Namespace) -> int:
    from nodepool import status
    return _listing(args, status.IMAGE_COLUMNS, status.image_rows)


def cmd_image_status(args: argparse.Namespace) -> int:
    from nodepool import status
    return _listing(args, status.IMAGE_STATUS_COLUMNS, status.image_status_rows)


def cmd_image_build(args: argparse.Namespace) -> int:
    config, client, store = _store(args)
    try:
        diskimage = config.diskimages.get(args.image)
        if diskimage is None:
            raise CommandError("Trying to build a non disk-image-builder image: "
                               f"{args.image}")
        if diskimage.pause:
            raise CommandError(f"Skipping build request for image {args.image}; "
                               "paused")
        store.request_build(args.image)
    finally:
        client.disconnect()
    return EXIT_OK


def cmd_image_pause(args: argparse.Namespace) -> int:
    _, client, store = _store(args)
    try:
        if args.command == "image-pause":
            store.pause_image(args.image)
        else:
            store.unpause_image(args.image)
    finally:
        client.disconnect()
    return EXIT_OK


def _mark_deleting(args, read, busy_state: str, not_found: str, busy: str,
                   save) -> int:
    """What both delete commands do: mark the record ``deleting`` (the
    builders do the rest), unless it is missing or still being made."""
    _, client, store = _store(args)
    try:
        record = read(store)
        if record is None:
            print(not_found)
            return EXIT_OK
        if record.state == busy_state:
            print(busy)
            return EXIT_OK
        record.state = "deleting"
        record.state_time = time.time()
        save(store, record)
    finally:
        client.disconnect()
    return EXIT_OK


def cmd_dib_image_delete(args: argparse.Namespace) -> int:
    from nodepool.zk.records import BuildState
    if "-" not in args.id:
        raise CommandError(f"{args.id} is not <image>-<build id>")
    image, build_id = args.id.rsplit("-", 1)
    return _mark_deleting(args, lambda store: store.get_build(image, build_id),
                          BuildState.BUILDING, f"Build {args.id} not found",
                          "Cannot delete a build in progress",
                          lambda store, build: store.update_build(build))


def cmd_image_delete(args: argparse.Namespace) -> int:
    from nodepool.zk.records import UploadState
    return _mark_deleting(
        args, lambda store: store.get_upload(args.image, args.build_id, args.provider,
                                             args.upload_id),
        UploadState.UPLOADING, "Image upload not found",
        "Cannot delete because image upload in progress",
        lambda store, upload: store.store_upload(upload))


def cmd_export_image_data(args: argparse.Namespace) -> int:
    from nodepool.builder import transfer
    _, client, store = _store(args)
    try:
        data = transfer.export_records(store)
    finally:
        client.disconnect()
    transfer.write_export(args.path, data)
    print(f"Exported {len(data)} records to {args.path}", file=sys.stderr)
    return EXIT_OK


def cmd_import_image_data(args: argparse.Namespace) -> int:
    from nodepool.builder import transfer
    try:
        data = transfer.read_export(args.path)
    except transfer.TransferError as exc:
        raise CommandError(str(exc)) from None
    _, client, store = _store(args)
    try:
        transfer.import_records(store, data)
    finally:
        client.disconnect()
    print(f"Imported {len(data)} records from {args.path}", file=sys.stderr)
    return EXIT_OK


def add_parsers(sub) -> None:
    def listing(name, func, help_text):
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=func)

    listing("dib-image-list", cmd_dib_image_list, "list image builds")
    listing("image-list", cmd_image_list, "list image uploads")
    listing("image-status", cmd_image_status,
            "list images with their pause flag and build requests")

    build = sub.add_parser("image-build", help="request a build of an image",
                           description="Ask the builders to build this diskimage "
                           "as soon as possible.")
    build.add_argument("image", help="diskimage name")
    build.set_defaults(func=cmd_image_build)
    for name, text in (("image-pause", "stop building an image"),
                       ("image-unpause", "resume building an image")):
        parser = sub.add_parser(name, help=text, description=text + " (uploads of "
                                "existing builds continue)")
        parser.add_argument("image", help="diskimage name")
        parser.set_defaults(func=cmd_image_pause)

    dib_delete = sub.add_parser(
        "dib-image-delete", help="delete a build and all its uploads",
        description="Mark a build deleting; the builders remove its uploads, "
        "files and record.")
    dib_delete.add_argument("id", help="<image>-<build id>, as dib-image-list shows")
    dib_delete.set_defaults(func=cmd_dib_image_delete)

    delete = sub.add_parser(
        "image-delete", help="delete one upload",
        description="Mark an upload deleting; launchers fall back to the previous "
        "image, and the build is uploaded again unless paused.")
    for option in ("--provider", "--image", "--build-id", "--upload-id"):
        delete.add_argument(option, required=True)
    delete.set_defaults(func=cmd_image_delete)

    export = sub.add_parser("export-image-data",
                            help="back up build and upload records to a file")
    export.add_argument("path")
    export.set_defaults(func=cmd_export_image_data)
    restore = sub.add_parser(
        "import-image-data",
        help="restore build and upload records (into an empty ZooKeeper)")
    restore.add_argument("path")
    restore.set_defaults(func=cmd_import_image_data)
