"""An IBM Cloud VPC simulator on loopback, for the ibmvpc driver's tests.

Speaks, over real HTTP, the parts of IBM Cloud the driver uses, for IBM's
unmodified Python SDK to drive: the IAM token exchange of an API key
(``/identity/token``, answering JWTs), the VPC API (``/v1``: VPCs, subnets,
keys, instance profiles, instances, floating IPs and their binding to a
network interface, images; ``version`` and ``generation=2`` required; paged
by ``limit`` and ``start`` with ``next.href``), the Resource Manager's
resource groups (``/v2/resource_groups``) and a Cloud Object Storage bucket
(``/cos/<bucket>``: location, listing, put, delete). Tests point the SDK at
it with the credentials file :meth:`IbmVpcSimulator.credentials_file` writes.

Instances go pending -> starting -> running after ``boot_delay`` and
deleting -> gone after ``delete_delay``; images made from a staged object go
pending -> available. Account quotas (instances, vCPUs) are enforced and
faults can be injected: capacity failures, throttling, failed deletes,
instances that never start (see :class:`Knobs`).

Runs in a test process (``IbmVpcSimulator().start()``) or on its own:
``python -m nodepool.testing.ibmvpc_sim``.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

from nodepool.testing.ibmvpc_sim.http import ApiError, Handler
from nodepool.testing.loopback import Knobbed, LoopbackService

API_KEY = "nodepool-sim-apikey"
REGION = "us-south"
ZONE = "us-south-1"
VPC_NAME = "nodepool"
SUBNET_NAME = "nodepool-subnet"
BUCKET = "nodepool-images"
# Signs the simulator's IAM tokens (the SDK reads them without checking).
SIGNING_KEY = "nodepool-ibmvpc-simulator-signing-key"
PROFILES = {"bx2-2x8": (2, 8), "cx2-2x4": (2, 4), "bx2-4x16": (4, 16)}
KEYS = ("zuul", "admin")
# Images the cloud offers: name -> operating system (family, version, arch).
STOCK_IMAGES = {
    "ibm-debian-12-amd64-1": ("Debian GNU/Linux", "12.x Bookworm", "amd64"),
    "ibm-ubuntu-22-04-amd64-1": ("Ubuntu Linux", "22.04 LTS Jammy Jellyfish", "amd64"),
    "ibm-ubuntu-22-04-s390x-1": ("Ubuntu Linux", "22.04 LTS Jammy Jellyfish", "s390x"),
}


@dataclass
class Knobs:
    """What a test can shape (through :meth:`IbmVpcSimulator.set`)."""

    boot_delay: float = 0.1
    delete_delay: float = 0.05
    image_delay: float = 0.1
    # Account quotas; None: unlimited.
    instances: int | None = None
    vcpus: int | None = None
    # The next N instances fail to start for lack of capacity.
    capacity_failures: int = 0
    # The next N instance creates are refused at once for lack of capacity.
    capacity_refusals: int = 0
    # The next N instances stay "starting" for ever.
    boot_hangs: int = 0
    # The next N API requests are answered 429 (Retry-After: 0).
    throttle: int = 0
    # The next N instance deletes are answered 500.
    delete_failures: int = 0
    page_size: int = 50
    # Addresses handed out: None makes distinct ones per instance.
    public_ip: str | None = None
    private_ip: str | None = None


@dataclass
class State:
    instances: dict[str, dict] = field(default_factory=dict)
    fips: dict[str, dict] = field(default_factory=dict)
    images: dict[str, dict] = field(default_factory=dict)
    groups: dict[str, dict] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)
    # What each image made from a staged object was made of, by image id.
    image_data: dict[str, bytes] = field(default_factory=dict)
    # (when, what, id): transitions due.
    due: list[tuple[float, str, str]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)


class IbmVpcSimulator(Knobbed, LoopbackService):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, **knobs):
        self.host = host
        self.port = port
        self.knobs = Knobs(**knobs)
        self.state = State()
        self.lock = threading.RLock()
        self.tokens: set[str] = set()
        self._numbers = itertools.count(10)
        self.vpc = {"id": "r006-vpc-0001", "name": VPC_NAME, "status": "available"}
        self.subnet = {"id": "0717-subnet-0001", "name": SUBNET_NAME,
                       "zone": {"name": ZONE}, "vpc": {"id": self.vpc["id"]},
                       "ipv4_cidr_block": "10.240.0.0/24"}
        self.keys = {name: {"id": f"r006-key-{name}", "name": name, "type": "ed25519"}
                     for name in KEYS}
        self.add_group("Default")
        for name, (family, version, arch) in STOCK_IMAGES.items():
            self.add_image(name, family=family, version=version, architecture=arch,
                           owner_type="provider")

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "IbmVpcSimulator":
        simulator = self

        class BoundHandler(Handler):
            sim = simulator

        self._serve(BoundHandler, "ibmvpc-sim")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def credentials(self) -> dict[str, str]:
        """The SDK's external configuration reaching this simulator."""
        return {"VPC_AUTH_TYPE": "iam", "VPC_APIKEY": API_KEY,
                "VPC_AUTH_URL": self.url, "VPC_URL": f"{self.url}/v1",
                "RESOURCE_MANAGER_URL": self.url}

    def credentials_file(self, path) -> str:
        """Write IBM's env-style credentials file for this simulator."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(f"{k}={v}\n" for k, v in self.credentials().items())
        return str(path)

    @property
    def cos_endpoint(self) -> str:
        return f"{self.url}/cos"

    def new_token(self) -> str:
        import jwt
        now = int(time.time())
        token = jwt.encode({"iat": now, "exp": now + 3600, "sub": "nodepool-sim",
                            "jti": uuid.uuid4().hex}, SIGNING_KEY, algorithm="HS256")
        self.tokens.add(token)
        return token

    # -- things tests add and read ------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._numbers):04d}-{uuid.uuid4().hex[:8]}"

    def add_group(self, name: str) -> dict:
        with self.lock:
            group = {"id": uuid.uuid4().hex, "name": name, "state": "ACTIVE"}
            self.state.groups[group["id"]] = group
            return group

    def group_named(self, name: str) -> dict:
        with self.lock:
            found = [g for g in self.state.groups.values() if g["name"] == name]
            return found[0] if found else self.add_group(name)

    def add_image(self, name: str, family: str = "Debian GNU/Linux", version: str = "12",
                  architecture: str = "amd64", owner_type: str = "user",
                  group: str = "Default", status: str = "available") -> dict:
        with self.lock:
            group_ref = self._group_ref(self.group_named(group)["id"])
            image = {"id": self._id("r006-image"), "name": name, "status": status,
                     "owner_type": owner_type,
                     "visibility": "private" if owner_type == "user" else "public",
                     # Image listings name the group by id only (as IBM's do).
                     "resource_group": {"id": group_ref["id"]},
                     "operating_system": {"family": family, "version": version,
                                          "architecture": architecture,
                                          "name": name.removeprefix("ibm-")}}
            self.state.images[image["id"]] = image
            return image

    def add_instance(self, name: str, group: str = "Default", status: str = "running"
                     ) -> dict:
        """An instance someone made (leaks, others' machines)."""
        with self.lock:
            body = {"name": name, "profile": {"name": "cx2-2x4"},
                    "resource_group": {"id": self.group_named(group)["id"]},
                    "zone": {"name": ZONE}, "vpc": {"id": self.vpc["id"]},
                    "image": {"id": next(iter(self.state.images))},
                    "primary_network_interface": {"subnet": {"id": self.subnet["id"]}}}
            instance = self.create_instance(body, at_once=True)
            instance["status"] = status
            return instance

    def add_fip(self, name: str, group: str = "Default") -> dict:
        with self.lock:
            return self.create_fip({"name": name, "zone": {"name": ZONE},
                                    "resource_group": {"id": self.group_named(group)["id"]}})

    def live(self) -> dict[str, dict]:
        """Instances not being deleted, by name."""
        with self.lock:
            self.tick()
            return {i["name"]: i for i in self.state.instances.values()
                    if i["status"] != "deleting"}

    def names(self, kind: str) -> list[str]:
        """Sorted names of the instances, fips or images (user-owned) there are."""
        with self.lock:
            self.tick()
            items = getattr(self.state, kind).values()
            return sorted(i["name"] for i in items if i.get("owner_type", "user") == "user")

    # -- the cloud's behaviour (called with the lock held) ---------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        due = [d for d in self.state.due if d[0] <= now]
        self.state.due = [d for d in self.state.due if d[0] > now]
        for _, what, ident in due:
            if what == "boot":
                instance = self.state.instances.get(ident)
                if instance is not None and instance["status"] == "starting":
                    instance["status"] = "running"
            elif what == "capacity":
                instance = self.state.instances.get(ident)
                if instance is not None:
                    instance["status"] = "failed"
                    instance["status_reasons"] = [{
                        "code": "cannot_start_capacity",
                        "message": "insufficient capacity in the zone"}]
            elif what == "gone":
                instance = self.state.instances.pop(ident, None)
                if instance is not None:
                    self._unbind(instance)
            elif what == "image":
                image = self.state.images.get(ident)
                if image is not None:
                    image["status"] = "available"

    def _group_ref(self, group_id: str | None) -> dict:
        group = self.state.groups.get(group_id or "")
        if group is None:
            raise ApiError(400, "resource_group_not_found", f"no resource group {group_id}")
        return {"id": group["id"], "name": group["name"]}

    def _address(self, fixed: str | None, base: str) -> str:
        return fixed or f"{base}.{next(self._numbers) % 250 + 2}"

    def create_instance(self, body: dict, at_once: bool = False) -> dict:
        knobs = self.knobs
        profile = (body.get("profile") or {}).get("name")
        if profile not in PROFILES:
            raise ApiError(400, "instance_profile_not_found", f"no profile {profile}")
        image = body.get("image") or {}
        if image.get("id") not in self.state.images and not image.get("href"):
            raise ApiError(400, "image_not_found", f"no image {image}")
        subnet = ((body.get("primary_network_interface") or {}).get("subnet") or {}).get("id")
        if subnet != self.subnet["id"]:
            raise ApiError(400, "subnet_not_found", f"no subnet {subnet}")
        if any(i["name"] == body.get("name") for i in self.state.instances.values()):
            raise ApiError(409, "instance_name_duplicate", f"{body['name']} exists")
        live = [i for i in self.state.instances.values() if i["status"] != "deleting"]
        cpus = sum(PROFILES[i["profile"]["name"]][0] for i in live)
        if (knobs.instances is not None and len(live) + 1 > knobs.instances) or \
                (knobs.vcpus is not None and cpus + PROFILES[profile][0] > knobs.vcpus):
            raise ApiError(400, "over_quota", "The request exceeds the account's "
                           "instance quota")
        if knobs.capacity_refusals > 0 and not at_once:
            knobs.capacity_refusals -= 1
            raise ApiError(503, "insufficient_capacity", "no capacity for the "
                           f"profile {profile} in the zone")
        ident = self._id("0717")
        nic_id = self._id("0717-nic")
        address = self._address(knobs.private_ip, "10.240.0")
        instance = {
            "id": ident, "name": body["name"], "status": "pending", "status_reasons": [],
            "profile": {"name": profile},
            "vcpu": {"count": PROFILES[profile][0]}, "memory": PROFILES[profile][1],
            "zone": {"name": (body.get("zone") or {}).get("name", ZONE)},
            "vpc": {"id": self.vpc["id"], "name": self.vpc["name"]},
            "resource_group": self._group_ref((body.get("resource_group") or {}).get("id")
                                              or self.group_named("Default")["id"]),
            "image": image, "keys": body.get("keys") or [],
            "primary_network_interface": {"id": nic_id, "name": "eth0",
                                          "primary_ip": {"address": address},
                                          "primary_ipv4_address": address,
                                          "subnet": {"id": subnet}},
            "sim": {"user_data": body.get("user_data"), "floating_ips": []},
        }
        self.state.instances[ident] = instance
        now = time.monotonic()
        instance["status"] = "starting"
        if knobs.capacity_failures > 0 and not at_once:
            knobs.capacity_failures -= 1
            self.state.due.append((now + knobs.boot_delay, "capacity", ident))
        elif knobs.boot_hangs > 0 and not at_once:
            knobs.boot_hangs -= 1
        else:
            self.state.due.append((now + knobs.boot_delay, "boot", ident))
        return instance

    def delete_instance(self, ident: str) -> None:
        instance = self.state.instances.get(ident)
        if instance is None:
            raise ApiError(404, "not_found", f"Instance not found: {ident}")
        if self.knobs.delete_failures > 0:
            self.knobs.delete_failures -= 1
            raise ApiError(500, "internal_error", "delete failed (injected)")
        instance["status"] = "deleting"
        self.state.due.append((time.monotonic() + self.knobs.delete_delay, "gone", ident))

    def create_fip(self, body: dict) -> dict:
        if any(f["name"] == body.get("name") for f in self.state.fips.values()):
            raise ApiError(409, "floating_ip_name_duplicate", f"{body['name']} exists")
        fip = {"id": self._id("r006-fip"), "name": body["name"], "status": "available",
               "address": self._address(self.knobs.public_ip, "169.61.0"),
               "zone": {"name": (body.get("zone") or {}).get("name", ZONE)},
               "resource_group": self._group_ref((body.get("resource_group") or {})
                                                 .get("id"))}
        self.state.fips[fip["id"]] = fip
        return fip

    def bind(self, instance_id: str, nic_id: str, fip_id: str) -> dict:
        instance = self.state.instances.get(instance_id)
        fip = self.state.fips.get(fip_id)
        if instance is None or fip is None or \
                instance["primary_network_interface"]["id"] != nic_id:
            raise ApiError(404, "not_found", "no such instance, interface or floating IP")
        fip["target"] = {"id": nic_id, "resource_type": "network_interface"}
        instance["sim"]["floating_ips"].append(fip_id)
        return fip

    def _unbind(self, instance: dict) -> None:
        for fip_id in instance["sim"]["floating_ips"]:
            fip = self.state.fips.get(fip_id)
            if fip is not None:
                fip.pop("target", None)

    def create_image(self, body: dict) -> dict:
        href = (body.get("file") or {}).get("href") or ""
        prefix = f"cos://{REGION}/{BUCKET}/"
        if not href.startswith(prefix) or href[len(prefix):] not in self.state.objects:
            raise ApiError(400, "image_file_not_found", f"no object at {href}")
        group = self._group_ref((body.get("resource_group") or {}).get("id"))
        image = self.add_image(body["name"], group=group["name"], status="pending")
        image["operating_system"] = {"name": (body.get("operating_system") or {})
                                     .get("name")}
        self.state.image_data[image["id"]] = self.state.objects[href[len(prefix):]]
        self.state.due.append((time.monotonic() + self.knobs.image_delay, "image",
                               image["id"]))
        return image
