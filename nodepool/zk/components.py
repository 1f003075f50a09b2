"""Component registrations: the ephemeral records by which launchers, pool
workers and builders announce themselves (spec 2.4), kept registered across
session losses."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from typing import Iterable

from kazoo.exceptions import BadVersionError, NoNodeError

from nodepool import version as np_version
from nodepool.zk import paths
from nodepool.zk.client import ZooKeeperClient
from nodepool.zk.records import LAUNCHER_KEY, Component, ComponentState, PoolComponent

log = logging.getLogger("nodepool.zk.components")


class ComponentRegistration:
    """Keeps one component record registered, across session losses.

    The record is an ephemeral sequential znode; when the session is lost it
    vanishes, so it is created again (under a new name) once connected.
    """

    def __init__(self, client: ZooKeeperClient, component: Component):
        self.client = client
        self.component = component
        if not component.hostname:
            component.hostname = socket.gethostname()
        if component.version is None:
            component.version = np_version.__version__
        component.model_api = np_version.MODEL_API
        self.path: str | None = None
        self._lock = threading.Lock()
        self._needs_register = False
        self._retry_thread: threading.Thread | None = None

    def register(self) -> None:
        with self._lock:
            kazoo = self.client.kazoo
            kazoo.ensure_path(paths.components(self.component.kind))
            self.path = kazoo.create(
                paths.component_prefix(self.component.kind, self.component.hostname),
                self.component.to_json(), ephemeral=True, sequence=True)
            self.component.znode = self.path.rsplit("/", 1)[1]
            self.component.version_stat = 0
            self._generation = self.client.session_generation
        self.client.add_state_listener(self._on_state)

    def _on_state(self, state: str) -> None:
        if state == "CONNECTED" and self._generation != self.client.session_generation:
            # Re-register from another thread: listeners must not block.
            threading.Thread(target=self._reregister, daemon=True,
                             name="component-reregister").start()

    def _reregister(self) -> None:
        try:
            with self._lock:
                if self._generation == self.client.session_generation:
                    return
                self.path = self.client.kazoo.create(
                    paths.component_prefix(self.component.kind,
                                           self.component.hostname),
                    self.component.to_json(), ephemeral=True, sequence=True)
                self.component.znode = self.path.rsplit("/", 1)[1]
                self.component.version_stat = 0
                self._generation = self.client.session_generation
            log.info("Re-registered %s component as %s", self.component.kind,
                     self.path)
        except Exception:
            log.exception("Cannot re-register %s component", self.component.kind)

    def update(self, **changes) -> None:
        """Change fields and write them, if anything changed."""
        with self._lock:
            changed = False
            for key, value in changes.items():
                if getattr(self.component, key) != value:
                    setattr(self.component, key, value)
                    changed = True
            if not changed or self.path is None:
                return
            try:
                stat = self.client.kazoo.set(self.path, self.component.to_json(),
                                             version=self.component.version_stat)
                self.component.version_stat = stat.version
            except NoNodeError:
                log.warning("Component record %s vanished; it will be registered "
                            "again on reconnection", self.path)
            except BadVersionError:
                # Someone else touched our record; overwrite with our truth.
                stat = self.client.kazoo.set(self.path, self.component.to_json())
                self.component.version_stat = stat.version

    def unregister(self, timeout: float = 5.0) -> None:
        """Remove the record, waiting at most ``timeout`` seconds: out of
        reach of ZooKeeper it is left to go with the session."""
        self.client.remove_state_listener(self._on_state)
        path, self.path = self.path, None
        kazoo = self.client.kazoo
        if path is None or kazoo is None or not self.client.connected:
            return
        try:
            kazoo.delete_async(path).get(timeout=timeout)
        except NoNodeError:
            pass
        except Exception as exc:
            log.warning("Cannot unregister component %s: %r", path, exc)


def new_pool_component(provider_name: str, pool_name: str, labels: Iterable[str],
                       priority: int = 100, launcher: str | None = None
                       ) -> PoolComponent:
    """A pool-worker registration with a fresh ``launcher_id``; ``launcher``
    names the launcher process running it (our addition)."""
    fqdn = socket.getfqdn()
    worker_id = f"{fqdn}-PoolWorker.{provider_name}-{pool_name}-{uuid.uuid4().hex}"
    component = PoolComponent(id=worker_id, name=pool_name, provider_name=provider_name,
                              supported_labels=sorted(set(labels)), priority=priority,
                              state=ComponentState.RUNNING)
    if launcher is not None:
        component.extra[LAUNCHER_KEY] = launcher
    return component


def new_launcher_id() -> str:
    """A launcher process's id: its host and a random part, so several
    launchers on one host (or in one process) are told apart."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
