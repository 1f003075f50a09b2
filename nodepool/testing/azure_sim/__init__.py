"""An Azure Resource Manager simulator on loopback, for the azure driver's
tests.

Speaks, over real HTTP, the Azure AD token endpoints (client secret, and
OIDC federation) and the part of ARM the driver uses: resource groups,
public IPs, NICs, VMs, managed disks (with upload through a write SAS) and
images in a resource group, the compute usages and VM sizes of a location,
long-running operations (``Azure-AsyncOperation`` and ``Location``) and
``nextLink`` paging. The driver reaches it as it reaches any cloud: through
the endpoints of the credentials file :meth:`AzureSimulator.auth_file`
writes.

VMs go Creating -> Succeeded after ``boot_delay``; other writes finish
after ``operation_delay``. Quotas (regional cores and VM count) are
enforced as ARM does, and faults can be injected: capacity failures,
unavailable sizes, throttling (429 with Retry-After), failed deletes, VMs
that never finish provisioning (see :meth:`AzureSimulator.set`).

Runs in a test process (``AzureSimulator().start()``) or on its own:
``python -m nodepool.testing.azure_sim``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nodepool.testing.azure_sim.http import ApiError, Handler
from nodepool.testing.loopback import Knobbed, LoopbackService

SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "nodepool-sim-client"
CLIENT_SECRET = "sim-secret"
FEDERATED_TOKEN = "sim.federated.jwt"
LOCATION = "westeurope"
VM_SIZES = {  # name -> (cores, memory MB)
    "Standard_B1s": (1, 1024), "Standard_B2s": (2, 4096),
    "Standard_D2s_v3": (2, 8192), "Standard_D4s_v3": (4, 16384),
}
MARKETPLACE = {
    ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
    ("MicrosoftWindowsServer", "WindowsServer", "2022-datacenter-azure-edition"),
}
GALLERY_IMAGES = {
    "/CommunityGalleries/ci-community/Images/debian-12/Versions/latest",
    "/SharedGalleries/ci-shared/Images/fedora-40/Versions/1.0.0",
}
# Virtual networks (in any resource group) and their subnets.
NETWORKS = {"nodepool": ("default", "ci")}
KINDS = ("virtualMachines", "networkInterfaces", "publicIPAddresses", "disks", "images")


@dataclass
class Knobs:
    """What a test can shape (through :meth:`AzureSimulator.set`)."""

    boot_delay: float = 0.1
    operation_delay: float = 0.05
    # Regional limits; None: unlimited.
    cores: float | None = None
    virtual_machines: float | None = None
    # The next N VM creates fail in their operation (AllocationFailed).
    capacity_failures: int = 0
    # The next N VM creates are refused at once (409 SkuNotAvailable).
    sku_unavailable: int = 0
    # The next N ARM requests are throttled (429 with this Retry-After).
    throttle: int = 0
    retry_after: str = "1"
    # The next N VM deletes fail in their operation.
    delete_failures: int = 0
    # The next N VMs stay Creating for ever.
    boot_hangs: int = 0
    page_size: int = 100
    token_lifetime: int = 3600
    # Addresses handed out: None makes distinct ones per resource.
    public_ip: str | None = None
    private_ip: str | None = None


@dataclass
class Due:
    at: float
    action: Callable[[], None]


@dataclass
class State:
    groups: dict[str, dict] = field(default_factory=dict)
    # (kind, lower-case name) -> resource
    resources: dict[tuple[str, str], dict] = field(default_factory=dict)
    operations: dict[str, dict] = field(default_factory=dict)
    blobs: dict[str, bytearray] = field(default_factory=dict)
    due: list[Due] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)


class AzureSimulator(Knobbed, LoopbackService):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, **knobs):
        self.host = host
        self.port = port
        self.knobs = Knobs(**knobs)
        self.state = State()
        self.lock = threading.RLock()
        self.tokens: dict[str, float] = {}
        self._ids = itertools.count(10)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> "AzureSimulator":
        simulator = self

        class BoundHandler(Handler):
            sim = simulator

        self._serve(BoundHandler, "azure-sim")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def auth_file(self, path) -> str:
        """A service principal's credentials file (as ``az ad sp
        create-for-rbac --sdk-auth`` writes it) whose endpoints are this
        server's."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
                       "subscriptionId": SUBSCRIPTION, "tenantId": TENANT,
                       "activeDirectoryEndpointUrl": self.url,
                       "resourceManagerEndpointUrl": self.url + "/",
                       "activeDirectoryGraphResourceId": "https://graph.windows.net/",
                       "managementEndpointUrl": "https://management.core.windows.net/"},
                      handle)
        return str(path)

    # -- control ----------------------------------------------------------------------

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def issue_token(self) -> dict:
        token = f"sim-{next(self._ids)}-{time.monotonic_ns()}"
        with self.lock:
            self.tokens[token] = time.monotonic() + self.knobs.token_lifetime
        return {"access_token": token, "token_type": "Bearer",
                "expires_in": str(self.knobs.token_lifetime)}

    def token_valid(self, token: str) -> bool:
        with self.lock:
            return self.tokens.get(token, 0) > time.monotonic()

    # -- time ---------------------------------------------------------------------------

    def later(self, delay: float, action: Callable[[], None]) -> None:
        self.state.due.append(Due(time.monotonic() + delay, action))

    def tick(self) -> None:
        """Apply what is due (callers hold the lock)."""
        now = time.monotonic()
        due = sorted((d for d in self.state.due if d.at <= now), key=lambda d: d.at)
        self.state.due = [d for d in self.state.due if d.at > now]
        for item in due:
            item.action()

    def operation(self, namespace: str, delay: float | None,
                  effect: Callable[[], ApiError | None] = lambda: None,
                  result: dict | None = None) -> str:
        """A long-running operation that ends after ``delay`` (None: never)
        with ``effect()``'s error, if any; returns its id."""
        op_id = f"op-{next(self._ids)}"
        operation = {"name": op_id, "status": "InProgress", "namespace": namespace,
                     "startTime": timestamp()}
        self.state.operations[op_id] = operation

        def finish():
            error = effect()
            operation["endTime"] = timestamp()
            if error is None:
                operation["status"] = "Succeeded"
                if result is not None:
                    operation["result"] = result
            else:
                operation.update(status="Failed", error=error.body()["error"])

        if delay is not None:
            self.later(delay, finish)
        return op_id

    # -- the model ------------------------------------------------------------------------

    def group(self, name: str) -> dict:
        found = self.state.groups.get(name.lower())
        if found is None:
            raise ApiError(404, "ResourceGroupNotFound",
                           f"Resource group '{name}' could not be found.")
        return found

    def resource_id(self, group: str, kind: str, name: str) -> str:
        namespace = "Microsoft.Network" if kind in ("networkInterfaces",
                                                    "publicIPAddresses") \
            else "Microsoft.Compute"
        return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/"
                f"{namespace}/{kind}/{name}")

    def find(self, kind: str, name: str) -> dict | None:
        return self.state.resources.get((kind, name.lower()))

    def get(self, kind: str, name: str) -> dict:
        found = self.find(kind, name)
        if found is None:
            raise ApiError(404, "ResourceNotFound", f"The Resource '{kind}/{name}' "
                           "under resource group was not found.")
        return found

    def by_id(self, resource_id: str | None) -> dict | None:
        parts = (resource_id or "").strip("/").split("/")
        if len(parts) < 2 or parts[-2] not in KINDS:
            return None
        found = self.find(parts[-2], parts[-1])
        return found if found and found["id"].lower() == resource_id.lower() else None

    def usage(self) -> tuple[int, int]:
        """(cores, VMs) counting against the regional limits."""
        cores = vms = 0
        for (kind, _), vm in self.state.resources.items():
            props = vm["properties"]
            if kind == "virtualMachines" and props["provisioningState"] != "Failed":
                vms += 1
                cores += VM_SIZES[props["hardwareProfile"]["vmSize"]][0]
        return cores, vms

    def address(self, public: bool, version: str) -> str:
        number = next(self._ids)
        if version == "IPv6":
            return f"2603:1020::{number:x}" if public else f"fd00::{number:x}"
        fixed = self.knobs.public_ip if public else self.knobs.private_ip
        return fixed or (f"20.50.{number // 250 % 250}.{number % 250 + 1}" if public
                         else f"10.0.{number // 250 % 250}.{number % 250 + 4}")

    def store(self, group: str, kind: str, name: str, body: dict,
              properties: dict) -> dict:
        resource = {"id": self.resource_id(group, kind, name), "name": name,
                    "type": f"{kind}", "location": body.get("location", LOCATION),
                    "tags": dict(body.get("tags") or {}), "properties": properties}
        if body.get("sku"):
            resource["sku"] = body["sku"]
        self.state.resources[(kind, name.lower())] = resource
        return resource

    def create(self, group: str, kind: str, name: str, body: dict) -> tuple[dict, str]:
        """A PUT: (the resource, its operation id)."""
        from nodepool.testing.azure_sim import models
        self.group(group)
        existing = self.find(kind, name)
        if existing is not None and kind != "disks":
            existing["tags"] = dict(body.get("tags") or existing["tags"])
            return existing, self.operation(kind, 0)
        return getattr(models, f"create_{kind}")(self, group, name, body)

    def delete(self, kind: str, name: str) -> str | None:
        """A DELETE: its operation id (None: nothing to delete)."""
        from nodepool.testing.azure_sim import models
        resource = self.find(kind, name)
        if resource is None:
            return None
        models.check_deletable(self, kind, resource)
        props = resource["properties"]
        before = props.get("provisioningState")
        props["provisioningState"] = "Deleting"
        failing = kind == "virtualMachines" and self.knobs.delete_failures > 0
        if failing:
            self.knobs.delete_failures -= 1

        def effect():
            if failing:
                props["provisioningState"] = before
                return ApiError(500, "InternalExecutionError",
                                "An internal execution error occurred. Please retry later.")
            self.state.resources.pop((kind, name.lower()), None)
            return None

        return self.operation(kind, self.knobs.operation_delay, effect)

    # -- what tests look at and add ------------------------------------------------------

    def live(self, kind: str = "virtualMachines") -> dict[str, dict]:
        """Resources of a kind that exist now, by name."""
        with self.lock:
            self.tick()
            return {r["name"]: r for (k, _), r in self.state.resources.items()
                    if k == kind}

    def everything(self) -> dict[str, list[str]]:
        """Names of every resource now, by kind (empty kinds left out)."""
        with self.lock:
            self.tick()
            found: dict[str, list[str]] = {}
            for (kind, _), resource in self.state.resources.items():
                found.setdefault(kind, []).append(resource["name"])
            return {k: sorted(v) for k, v in found.items()}

    def add(self, kind: str, name: str, tags: dict[str, str] | None = None,
            group: str = "nodepool", **properties: Any) -> dict:
        """A resource somebody else made (or a leak of ours), ready."""
        with self.lock:
            self.state.groups.setdefault(group.lower(), {"name": group,
                                                         "location": LOCATION})
            props = {"provisioningState": "Succeeded", **properties}
            if kind == "virtualMachines":
                props.setdefault("hardwareProfile", {"vmSize": "Standard_B1s"})
            return self.store(group, kind, name, {"tags": tags or {}}, props)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())
