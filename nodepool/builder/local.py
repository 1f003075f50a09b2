"""A builder's own files: images, checksums and manifests in ``images-dir``."""

from __future__ import annotations

import logging
import os
import re
import shutil

log = logging.getLogger("nodepool.builder.local")

# ``<image>-<build id>.<ext>``: the image name is everything before the last
# dash followed by a hex (uuid4) or decimal (old installations) id.
LOCAL_FILE_RE = re.compile(r"^(.*)-([abcdef\d]+)\.(?:\w+)$")
CHECKSUMS = (".md5", ".sha256")


def scan(images_dir: str) -> set[tuple[str, str]]:
    """Every (image, build id) that has files here."""
    found = set()
    try:
        names = os.listdir(images_dir)
    except FileNotFoundError:
        return found
    for name in names:
        match = LOCAL_FILE_RE.match(name)
        if match:
            found.add((match.group(1), match.group(2)))
    return found


def image_files(images_dir: str, image: str, build_id: str) -> dict[str, str]:
    """format -> path of this build's image files (not checksums)."""
    stem = f"{image}-{build_id}"
    files = {}
    try:
        names = os.listdir(images_dir)
    except FileNotFoundError:
        return files
    for name in names:
        if not name.startswith(stem + "."):
            continue
        ext = name[len(stem) + 1:]
        if not ext or "." in ext or ext == "d" or ext == "log":
            continue
        path = os.path.join(images_dir, name)
        if os.path.isfile(path):
            files[ext] = path
    return files


def delete_file(path: str) -> None:
    for candidate in (path,) + tuple(path + c for c in CHECKSUMS):
        try:
            os.unlink(candidate)
        except FileNotFoundError:
            pass


def delete_build(images_dir: str, image: str, build_id: str) -> None:
    """Every file of the build and its manifest directory (idempotent)."""
    for path in image_files(images_dir, image, build_id).values():
        log.info("Deleting local file %s", path)
        delete_file(path)
    shutil.rmtree(os.path.join(images_dir, f"{image}-{build_id}.d"), ignore_errors=True)


def read_checksum(path: str, length: int) -> str | None:
    try:
        with open(path) as handle:
            value = handle.read(length)
    except FileNotFoundError:
        return None
    return value if len(value) == length else None
