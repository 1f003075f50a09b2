"""Running diskimage-builder (``disk-image-create`` or a diskimage's
``dib-cmd``) for one build, with its log file and timeout."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass

from nodepool.config.model import DiskImage

log = logging.getLogger("nodepool.builder.dib")

# How long one wait on the process lasts before the timeout is re-checked.
POLL_SECONDS = 1.0


@dataclass
class DibResult:
    rc: int
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


def output_base(images_dir: str, image: str, build_id: str) -> str:
    """Local files of a build are ``<base>.<format>``; DIB adds the dot."""
    return os.path.join(images_dir, f"{image}-{build_id}")


def command(diskimage: DiskImage, base: str) -> list[str]:
    """The argv: ``<dib-cmd> -x -t <formats> --checksum --no-tmpfs
    [--qemu-img-options 'compat=0.10'] -o <base> <elements>``, split with
    shell-word rules (no shell runs it)."""
    builder_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dib_cmd = diskimage.dib_cmd.replace("%p", builder_dir)
    formats = ",".join(sorted(diskimage.formats))
    text = f"{dib_cmd} -x -t {formats} --checksum --no-tmpfs"
    if "qcow2" in formats:
        text += " --qemu-img-options 'compat=0.10'"
    text += f" -o {shlex.quote(base)} " + " ".join(diskimage.elements)
    return shlex.split(text)


def environment(diskimage: DiskImage, base: str, elements_dir: str | None) -> dict:
    env = dict(os.environ)
    env["DIB_RELEASE"] = str(diskimage.release or "")
    env["DIB_IMAGE_NAME"] = diskimage.name
    env["DIB_IMAGE_FILENAME"] = base
    if elements_dir:
        env["ELEMENTS_PATH"] = elements_dir
    env.update({k: str(v) for k, v in diskimage.env_vars.items()})
    return env


def prune_logs(log_dir: str, image: str, retention: int) -> None:
    """Keep the newest ``max(retention, 1)`` logs of ``image`` (negative
    retention keeps everything). Only this image's logs
    (``<image>-<build id>.log``) are considered, not those of images whose
    name merely starts with it."""
    if retention < 0:
        return
    keep = max(retention, 1)
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return
    prefix = image + "-"
    ours = []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".log")):
            continue
        build_id = name[len(prefix):-len(".log")]
        if build_id and all(c in "0123456789abcdef" for c in build_id):
            ours.append(os.path.join(log_dir, name))
    ours.sort(key=lambda p: os.stat(p).st_mtime, reverse=True)
    for path in ours[keep:]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def run(diskimage: DiskImage, base: str, log_path: str, elements_dir: str | None,
        stop: threading.Event | None = None) -> DibResult:
    """Run DIB to completion or ``build-timeout``; its merged output goes to
    ``log_path``. A command that cannot start is a failed build (rc 1) with
    the reason in the log. Setting ``stop`` kills the build (shutdown)."""
    argv = command(diskimage, base)
    env = environment(diskimage, base, elements_dir)
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        log_file.write(f"Running: {shlex.join(argv)}\n".encode())
        log_file.flush()
        try:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        except OSError as exc:
            log_file.write(f"Cannot run {argv[0]}: {exc}\n".encode())
            log.error("Build of %s: cannot run %s: %s", diskimage.name, argv[0], exc)
            return DibResult(1, False, time.monotonic() - started)
        deadline = started + diskimage.build_timeout
        while True:
            try:
                rc = process.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop is not None and stop.is_set():
                _kill(process)
                log_file.write(b"Build interrupted: the builder is stopping\n")
                return DibResult(1, False, time.monotonic() - started)
            if time.monotonic() > deadline:
                _kill(process)
                log_file.write(f"Build timed out after {diskimage.build_timeout}s\n"
                               .encode())
                return DibResult(1, True, time.monotonic() - started)
        log_file.write(f"Exit code: {rc}\n".encode())
    return DibResult(rc, False, time.monotonic() - started)


def _kill(process: subprocess.Popen) -> None:
    """DIB runs many children (chroot, qemu-img); the whole session goes."""
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass
    process.wait()
