"""Backing up and restoring the builders' records (``nodepool
export-image-data`` and ``import-image-data``, spec 3.3).

An export is one JSON object mapping znode paths to their text: every
image's pause flag, build record and upload record, raw as stored, so that
fields this version does not know survive the round trip. Restoring it into
an empty ZooKeeper lets launchers boot, and builders keep, the images the
clouds already have.
"""

from __future__ import annotations

import json
import os

from nodepool.zk import paths
from nodepool.zk.store import Store


class TransferError(Exception):
    """A file that cannot be read, or is not an export."""


def export_records(store: Store) -> dict[str, str]:
    """Every pause flag (as ``""``), build and upload record, by path."""
    data: dict[str, str] = {}
    for image in store.image_names():
        if store.is_image_paused(image):
            data[paths.image_pause(image)] = ""
        for build_id in store.build_ids(image):
            build_path = paths.build(image, build_id)
            text = store.read_text(build_path)
            if text is None:
                continue
            data[build_path] = text
            for provider in store.upload_providers(image, build_id):
                for upload_id in store.upload_ids(image, build_id, provider):
                    upload_path = paths.upload(image, build_id, provider, upload_id)
                    text = store.read_text(upload_path)
                    if text is not None:
                        data[upload_path] = text
    return data


def write_export(path: str, data: dict[str, str]) -> None:
    # Only the operator may read it (it names every cloud image); truncated,
    # unlike upstream, so a shorter export leaves no trailing garbage.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)


def read_export(path: str) -> dict[str, str]:
    """The records of an export file; TransferError if it is not one."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise TransferError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and k.startswith(paths.IMAGES + "/") and
            isinstance(v, str) for k, v in data.items()):
        raise TransferError(f"{path} is not an export-image-data file")
    return data


def import_records(store: Store, data: dict[str, str]) -> None:
    """Write exported records back (meant for an empty ZooKeeper with no
    daemons running: nothing is locked). Each upload directory's sequence
    counter is first advanced past the highest restored number, so new
    uploads never reuse one; build ids are UUIDs and need no such care."""
    highest: dict[tuple[str, str, str], int] = {}
    for path in data:
        parsed = paths.parse_upload_path(path)
        if parsed is not None and parsed[3].isdigit():
            directory, number = parsed[:3], int(parsed[3])
            highest[directory] = max(highest.get(directory, -1), number)
    for (image, build_id, provider), number in highest.items():
        store.advance_upload_numbers(image, build_id, provider, number, keep=data)
    for path, text in sorted(data.items()):
        store.write_text(path, text)
