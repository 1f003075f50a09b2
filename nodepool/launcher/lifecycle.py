"""Node launch, driven by the driver's create state machine without
blocking: one :class:`NodeLaunch` per node, advanced by its provider's
:class:`~nodepool.launcher.runner.Runner` (deletes are in
:mod:`nodepool.launcher.deletion`)."""

from __future__ import annotations

import enum
import logging
import time
from concurrent.futures import Future
from typing import Callable

from kazoo.exceptions import KazooException

from nodepool.config.model import DiskImage, Pool, PoolLabel, Provider
from nodepool.drivers.base import (
    META_NODE_ID, META_PROVIDER, Adapter, ImageUnavailable, Instance,
    LaunchKeyscanError, LaunchTimeout, NotFound, QuotaError,
)
from nodepool.hostkeys import scan_host_keys, scan_pool
from nodepool.launcher.deletion import DELETE_TIMEOUT
from nodepool.launcher.metadata import instance_metadata
from nodepool.launcher.runner import Task, monotonic_since
from nodepool.zk.cache import ImageCache
from nodepool.zk.locks import Lock
from nodepool.zk.records import LaunchOperation, Node, NodeState, Progress
from nodepool.zk.store import RecordNotFound, Store, VersionConflict

log = logging.getLogger("nodepool.launcher.lifecycle")

# A launch rides out this many ZooKeeper errors in a row (a dropped
# connection comes back within seconds), each retried after the delay.
MAX_ZK_ERRORS = 30
ZK_RETRY_DELAY = 1.0
# How long a failed host-key scan waits for the console log (console-log:
# true) before the attempt is failed and its instance deleted regardless.
CONSOLE_WAIT = 60.0
# The statsd result of a launch whose ZooKeeper session (and lock) was lost.
ZK_SESSION_ERROR = "error.zksession"


def new_progress(launcher_id: str) -> Progress:
    """The progress of a launch about to start its first attempt."""
    return Progress(launcher=launcher_id, operation=LaunchOperation.LAUNCH)


# -- launch -------------------------------------------------------------------

class LaunchResult(enum.Enum):
    """How a launch ended."""

    READY = "ready"
    FAILED = "failed"
    # The cloud lacked quota: the node is dropped and its slot launched again.
    ABORTED = "aborted"
    # Our ZooKeeper session (and with it the node's lock) is gone.
    LOST = "lost"


LaunchCallback = Callable[[Node, LaunchResult], None]


class NodeLaunch(Task):
    """One node from ``building`` to ``ready`` (or failed/aborted), with retries."""

    def __init__(self, *, node: Node, lock: Lock, store: Store, adapter: Adapter,
                 provider: Provider, pool: Pool, label: PoolLabel, images: ImageCache,
                 request, callback: LaunchCallback, stats=None,
                 diskimage: DiskImage | None = None, launcher_id: str = ""):
        self.node = node
        # Stored in the node with every write, so another launcher can carry
        # the launch on (see resume()).
        self.progress = node.progress or new_progress(launcher_id)
        self.launcher_id = launcher_id
        # A resumed launch: the driver machine's snapshot to restore, and the
        # search for an instance created without its id being recorded.
        self.resume_from: dict | None = None
        self.lookup: Future | None = None
        # Why the cloud refused (a capacity error), for the capacity cache.
        self.abort_reason: str | None = None
        # The label's diskimage as configured now (not as it was when the
        # image was built): username, python-path and shell-type come from it.
        self.diskimage = diskimage
        self.lock = lock
        self.store = store
        self.adapter = adapter
        self.provider = provider
        self.pool = pool
        self.label = label
        self.images = images
        self.request = request
        self.callback = callback
        self.stats = stats
        self.attempts = 0
        self.keys_from_driver = False
        self.machine = None
        self.cleanup = None
        self.scan: Future | None = None
        self.scan_deadline = 0.0
        # A failed scan's console-log fetch, and the error it will fail with.
        self.console: Future | None = None
        self.console_deadline = 0.0
        self.scan_error: Exception | None = None
        self.image_external_id: str | None = None
        self.image_name: str | None = None
        self.started = time.monotonic()
        self.finished = False
        # A node write that met a ZooKeeper error, and what was to follow it.
        self.unsaved: Callable[[], float | None] | None = None
        self.zk_errors = 0

    def __repr__(self) -> str:
        return f"<NodeLaunch {self.node.id} {self.label.name}>"

    def resume(self) -> None:
        """Carry on the launch that the node's progress describes, where
        another launcher (dead, or stopped) left it: the attempt count and
        the attempt's start time go on, a failed attempt's instance still
        being deleted is deleted, and the driver's machine continues from
        its snapshot. The caller holds the node's lock and has written the
        progress with our launcher id."""
        progress = self.progress
        self.attempts = progress.attempt
        self.started = monotonic_since(progress.started)
        if progress.step == "cleanup" and progress.cleanup is not None:
            self.cleanup = self.adapter.delete_state_machine(progress.cleanup)
            self.cleanup_started = time.monotonic()
        else:
            self.resume_from = dict(progress.machine)

    # -- helpers -------------------------------------------------------------

    def _save_then(self, then: Callable[[], float | None]) -> float | None:
        """Write the node (with the launch's progress), then go on with
        ``then()``. A ZooKeeper error (a dropped connection, typically)
        keeps the launch and its cloud resources: the write is tried again
        on the next step, while the lock still holds; a node record that
        vanished ends the launch as failed. Writes are conditioned on the
        version we last wrote: once our lock went with a lost session, a
        conflict means another launcher took the node over, and this launch
        stops without touching it again."""
        node = self.node
        if node.state == NodeState.BUILDING:
            node.set_progress(self.progress)
        else:
            node.set_progress(None)  # ended: nobody drives it any more
        try:
            self.store.update_locked_node(node, self.lock)
        except VersionConflict:
            log.warning("Node %s: our lock went with the session and the node "
                        "changed since; another launcher has taken the launch over",
                        node.id)
            self._finish(LaunchResult.LOST)
            return None
        except RecordNotFound:
            log.error("Node %s: its record vanished during the launch", self.node.id)
            self._finish(LaunchResult.FAILED)
            return None
        except KazooException as exc:
            self.zk_errors += 1
            if self.zk_errors > MAX_ZK_ERRORS:
                log.error("Node %s: cannot write to ZooKeeper (%s); giving the "
                          "launch up", self.node.id, exc)
                self._finish(LaunchResult.FAILED)
                return None
            log.warning("Node %s: cannot write to ZooKeeper (%s); retrying",
                        self.node.id, exc)
            self.unsaved = then
            return ZK_RETRY_DELAY
        self.zk_errors = 0
        return then()

    def _choose_image(self) -> None:
        """Newest ready upload of the diskimage, the configured cloud image,
        or no image at all."""
        label = self.label
        if label.diskimage:
            upload = self.images.latest_ready_upload(label.diskimage, self.provider.name)
            if upload is None or not upload.external_id:
                raise ImageUnavailable(f"no ready upload of {label.diskimage} in "
                                       f"{self.provider.name}")
            self.node.image_id = upload.path
            self.image_external_id = upload.external_id
            self.image_name = label.diskimage
            # As upstream: login details from the current config, so a
            # changed username applies without rebuilding the image (the
            # upload's frozen copy only serves if the diskimage is gone).
            source = self.diskimage if self.diskimage is not None else upload
            self.node.username = source.username
            self.node.python_path = source.python_path
            self.node.shell_type = source.shell_type
            image = self.provider.diskimages.get(label.diskimage)
            if image is not None:
                self.node.connection_type = image.connection_type
                self.node.connection_port = image.connection_port
        elif label.cloud_image:
            cloud_image = self.provider.cloud_images[label.cloud_image]
            self.node.image_id = cloud_image.name
            self.image_external_id = None
            self.image_name = cloud_image.name
            # No username configured: null, as upstream writes it, so Zuul's
            # executor applies its own default_username.
            self.node.username = cloud_image.username
            self.node.python_path = cloud_image.python_path
            self.node.shell_type = cloud_image.shell_type
            self.node.connection_type = cloud_image.connection_type
            self.node.connection_port = cloud_image.connection_port
        else:
            # A driver that boots no image (its instances say how to reach
            # them, or the defaults hold).
            self.image_external_id = None
            self.image_name = label.name
            self.node.connection_type = self.node.connection_type or "ssh"

    def _metadata(self) -> dict[str, str]:
        return instance_metadata(provider=self.provider.name, pool=self.pool.name,
                                 label=self.label, image_name=self.image_name,
                                 node_id=self.node.id, request=self.request)

    def _start_attempt(self) -> None:
        self.attempts += 1
        self.progress.attempt = self.attempts
        self.progress.started = time.time()
        self.progress.step = "machine"
        self.progress.machine = {}
        self.progress.cleanup = None
        self._new_machine()

    def _new_machine(self) -> None:
        self._choose_image()
        self.machine = self.adapter.create_state_machine(
            f"np{self.node.id}", self.label, self.image_external_id,
            self._metadata(), self.request, self.node.az)

    def _find_instance(self):
        """Blocking (on the scan pool): the instance of an attempt whose
        create was sent but whose id was never recorded."""
        for instance in self.adapter.list_instances():
            metadata = instance.metadata or {}
            if metadata.get(META_NODE_ID) == self.node.id and \
                    metadata.get(META_PROVIDER) == self.provider.name and \
                    not instance.deleted:
                return instance.external_id
        return None

    def _resume_machine(self) -> float | None:
        """A resumed launch's first steps: find the instance if its id was
        not recorded, then restore the driver's machine from its snapshot."""
        saved = self.resume_from
        if saved.get("external_id") is None:
            if self.lookup is None:
                self.lookup = scan_pool.submit(self._find_instance)
                return 0.05
            if not self.lookup.done():
                return 0.05
            lookup, self.lookup = self.lookup, None
            found = lookup.result()  # a failure fails the attempt
            if found is not None:
                log.info("Node %s: found instance %s of the interrupted attempt",
                         self.node.id, found)
                saved = {"external_id": found}
        self.resume_from = None
        image_id = self.node.image_id
        self._new_machine()
        if saved.get("external_id") is not None:
            # The instance exists: it was booted from what the node records.
            self.node.image_id = image_id or self.node.image_id
        self.machine.restore(saved)
        self.machine.start_time = monotonic_since(self.progress.started)
        log.info("Node %s: launch resumed at attempt %d (%s)", self.node.id,
                 self.attempts, self.machine.state)
        return 0.0

    def _apply_instance(self, instance: Instance) -> None:
        node = self.node
        node.external_id = instance.external_id
        node.interface_ip = instance.interface_ip or instance.private_ipv4
        node.public_ipv4 = instance.public_ipv4
        node.private_ipv4 = instance.private_ipv4
        node.public_ipv6 = instance.public_ipv6
        node.host_id = instance.host_id
        node.cloud = instance.cloud
        node.region = instance.region
        node.az = instance.az or node.az
        node.driver_data = instance.driver_data
        if instance.slot is not None:
            node.slot = instance.slot
        if instance.resources:
            # The cloud's figures win; what it does not report (volumes of a
            # boot-from-volume label, say) stays as the label's quota said.
            node.resources = {**(node.resources or {}), **instance.resources}
        for attr in ("username", "python_path", "shell_type", "connection_port",
                     "connection_type"):
            value = getattr(instance, attr)
            if value is not None or instance.copies_login:
                setattr(node, attr, value)
        # A driver that knows the host keys says so; then nothing is scanned.
        self.keys_from_driver = instance.host_keys is not None
        if self.keys_from_driver:
            ssh = node.connection_type in ("ssh", "network_cli")
            node.host_keys = list(instance.host_keys) if ssh else []

    def _start_scan(self) -> None:
        node = self.node
        ip = node.interface_ip or ""
        self.scan_deadline = time.monotonic() + self.provider.boot_timeout
        if not self.label.host_key_checking:
            self.scan = None
            return
        if self.keys_from_driver:
            self.scan = None
            return
        port = node.connection_port if isinstance(node.connection_port, int) else 22
        self.scan = scan_pool.submit(scan_host_keys, ip, port,
                                     float(self.provider.boot_timeout),
                                     node.connection_type or "ssh")

    def _finish(self, result: LaunchResult) -> None:
        if self.finished:
            return
        self.finished = True
        if self.stats is not None:
            key = ZK_SESSION_ERROR if result == LaunchResult.LOST else result.value
            self.stats.launch_result(self.node, self.request, key,
                                     time.monotonic() - self.started)
        try:
            self.callback(self.node, result)
        except Exception:
            log.exception("Launch callback for node %s failed", self.node.id)

    # -- the task --------------------------------------------------------------

    def step(self) -> float | None:
        if self.finished:
            return None
        if self.lock.session_lost:
            # Our lock went with the session: the node is no longer ours to
            # write. Unlocked, it is reclaimed (instance included) by whoever
            # sees it next; an instance not yet recorded is found as a leak.
            log.warning("Node %s: the ZooKeeper session was lost; leaving the "
                        "launch", self.node.id)
            self._finish(LaunchResult.LOST)
            return None
        if self.unsaved is not None:
            then, self.unsaved = self.unsaved, None
            return self._save_then(then)
        try:
            return self._step()
        except KazooException as exc:
            # Outside a node write (a lock or read in the driver path): the
            # attempt goes on at the next step if the session holds.
            self.zk_errors += 1
            if self.zk_errors > MAX_ZK_ERRORS:
                log.error("Node %s: ZooKeeper error during launch: %s",
                          self.node.id, exc)
                self._finish(LaunchResult.FAILED)
                return None
            return ZK_RETRY_DELAY

    def _step(self) -> float | None:
        if self.cleanup is not None:
            return self._step_cleanup()
        if self.console is not None:
            return self._step_console()
        if self.scan is not None:
            return self._step_scan()
        try:
            if self.machine is None:
                if self.resume_from is not None:
                    return self._resume_machine()
                self._start_attempt()
            if time.monotonic() - self.machine.start_time > self.provider.launch_timeout:
                raise LaunchTimeout(f"not active after {self.provider.launch_timeout}s")
            instance = self.machine.advance()
            machine = self.machine
            if machine.external_id is not None and not machine.complete:
                snapshot = machine.snapshot()
                if snapshot != self.progress.machine:
                    # Record the cloud id (and the step) at once, so a crash
                    # leaves a node another launcher can carry on or delete.
                    self.progress.machine = snapshot
                    self.node.external_id = machine.external_id
                    return self._save_then(lambda: self._advanced(instance))
            return self._advanced(instance)
        except QuotaError as exc:
            log.info("Node %s: cloud quota exceeded, aborting launch: %s",
                     self.node.id, exc)
            self.abort_reason = str(exc)
            self._record_error(exc)
            return self._abort()
        except KazooException:
            raise
        except Exception as exc:
            return self._attempt_failed(exc)

    def _advanced(self, instance: Instance | None) -> float | None:
        if not self.machine.complete:
            return self.machine.poll_delay
        self._apply_instance(instance)
        self._start_scan()
        if self.scan is None:
            return self._ready()
        return 0.05

    def _step_scan(self) -> float | None:
        if not self.scan.done():
            if time.monotonic() > self.scan_deadline + 5:
                self.scan.cancel()
                self.scan = None
                return self._scan_failed(LaunchKeyscanError(
                    f"host key scan of {self.node.interface_ip} timed out"))
            return 0.05
        scan, self.scan = self.scan, None
        try:
            keys = scan.result()
        except Exception as exc:
            return self._scan_failed(exc)
        if keys:
            self.node.host_keys = keys
        return self._ready()

    def _scan_failed(self, exc: Exception) -> float | None:
        """With ``console-log: true``, the instance's console is fetched
        (off this thread) and logged before the attempt fails and the
        instance goes: it usually says why the host never answered."""
        external_id = self.machine.external_id if self.machine else None
        if not getattr(self.label, "console_log", False) or external_id is None:
            return self._attempt_failed(exc)
        self.scan_error = exc
        self.console_deadline = time.monotonic() + CONSOLE_WAIT
        self.console = scan_pool.submit(self.adapter.console_log, external_id)
        return 0.05

    def _step_console(self) -> float | None:
        console = self.console
        if not console.done() and time.monotonic() < self.console_deadline:
            return 0.1
        self.console = None
        external_id = self.machine.external_id if self.machine else None
        if not console.done():
            console.cancel()
            log.warning("Node %s: no console log of instance %s within %ss",
                        self.node.id, external_id, CONSOLE_WAIT)
        else:
            try:
                output = console.result()
            except Exception as exc:
                log.warning("Node %s: cannot fetch the console log of instance "
                            "%s: %s", self.node.id, external_id, exc)
            else:
                self._log_console(external_id, output)
        return self._attempt_failed(self.scan_error)

    def _log_console(self, external_id, output: str | None) -> None:
        if not output:
            log.info("Node %s: instance %s has no console log", self.node.id,
                     external_id)
            return
        log.info("Node %s: console log of instance %s:", self.node.id, external_id)
        for line in output.splitlines():
            log.info("Node %s: console: %s", self.node.id, line.rstrip())

    def _ready(self) -> float | None:
        self.node.set_state(NodeState.READY)

        def done() -> None:
            log.info("Node %s is ready (%s in %s, %s)", self.node.id,
                     self.label.name, self.provider.name, self.node.interface_ip)
            self._finish(LaunchResult.READY)
        return self._save_then(done)

    def _record_error(self, exc: Exception) -> None:
        if self.stats is not None:
            key = getattr(exc, "statsd_key", "error.unknown")
            self.stats.launch_result(self.node, self.request, key,
                                     time.monotonic() - self.started)

    def _abort(self) -> float | None:
        # The instance (if any) is deleted by the delete worker with the node.
        if self.machine is not None and self.machine.external_id:
            self.node.external_id = self.machine.external_id
        self.node.set_state(NodeState.ABORTED)
        return self._save_then(lambda: self._finish(LaunchResult.ABORTED))

    def _attempt_failed(self, exc: Exception) -> float | None:
        external_id = self.machine.external_id if self.machine else None
        self._record_error(exc)
        if self.attempts >= self.provider.launch_retries:
            log.error("Node %s: launch attempt %s/%s failed, giving up: %s",
                      self.node.id, self.attempts, self.provider.launch_retries, exc)
            if external_id:
                self.node.external_id = external_id
            # The node says which provider failed it (and its request's
            # earlier ones): the request moves on to another provider.
            failed = self.node.failed_providers
            if self.provider.name not in failed:
                self.node.set_failed_providers(failed + [self.provider.name])
            self.node.set_state(NodeState.FAILED)
            return self._save_then(lambda: self._finish(LaunchResult.FAILED))
        log.warning("Node %s: launch attempt %s/%s failed, retrying: %s",
                    self.node.id, self.attempts, self.provider.launch_retries, exc)
        self.machine = None
        if external_id:
            self.cleanup = self.adapter.delete_state_machine(external_id)
            self.cleanup_started = time.monotonic()
            self.progress.step = "cleanup"
            self.progress.cleanup = external_id
        # Saved so that a launcher carrying the launch on knows the attempt
        # count and the instance still to delete.
        return self._save_then(lambda: 0.0)

    def _step_cleanup(self) -> float | None:
        try:
            self.cleanup.advance()
        except NotFound:
            self.cleanup.complete = True
        except Exception as exc:
            log.warning("Node %s: deleting the failed attempt's instance: %s",
                        self.node.id, exc)
            if time.monotonic() - self.cleanup_started > DELETE_TIMEOUT:
                # Give up waiting; leak cleanup will find it by its metadata.
                self.cleanup = None
                self.progress.step = "machine"
                self.progress.cleanup = None
                return 0.0
            self.cleanup = self.adapter.delete_state_machine(self.cleanup.external_id)
            return 1.0
        if not self.cleanup.complete:
            return self.cleanup.poll_delay
        self.cleanup = None
        self.node.external_id = None
        self.progress.step = "machine"
        self.progress.cleanup = None
        return 0.0

    def abandon(self) -> None:
        """The launcher is stopping: the node stays as it is, and unlocked it
        will be reclaimed (by us after a restart, or by another launcher)."""
        if not self.finished:
            self.lock.release()
