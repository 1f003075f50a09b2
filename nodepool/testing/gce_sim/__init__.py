"""A Google Compute Engine (Compute v1 REST) simulator on loopback, for the
gce driver's tests.

Speaks the part of the API the driver uses over real HTTP, for the unmodified
``google-api-python-client`` to drive it: zone instances (insert, get, list,
delete, serial port output), zone operations (get, wait), machine types,
regions with their quotas, and images (get, getFromFamily). It also answers
the OAuth token exchange of a service-account key, so the client's usual
Application Default Credentials chain runs unchanged: tests point
``GOOGLE_APPLICATION_CREDENTIALS`` at :meth:`GceSimulator.write_credentials`
and gcloud's endpoint override at :attr:`GceSimulator.endpoint`.

Inserts and deletes answer with Operations that finish after
``operation_delay``; instances go PROVISIONING -> RUNNING after
``boot_delay``. Quotas (CPUS and INSTANCES of the region) are enforced as
GCE does, and faults can be injected: capacity refusals, failed boots,
synchronous refusals (see :meth:`GceSimulator.set`).

Runs in a test process (``GceSimulator().start()``) or on its own:
``python -m nodepool.testing.gce_sim``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field

from nodepool.testing.gce_sim.http import ApiError, Handler
from nodepool.testing.loopback import Knobbed, LoopbackService

PROJECT = "nodepool-sim"
REGION = "us-central1"
ZONE = "us-central1-a"
# GCE's selfLinks name the public API whatever address was asked.
LINK = "https://www.googleapis.com/compute/v1/"
MACHINE_TYPES = {  # name -> (guestCpus, memoryMb)
    "e2-micro": (2, 1024), "e2-small": (2, 2048), "e2-medium": (2, 4096),
    "n2-standard-2": (2, 8192), "n2-standard-4": (4, 16384),
}
NETWORKS = ("default", "ci")
DISK_TYPES = ("pd-standard", "pd-balanced", "pd-ssd", "pd-extreme")
# (project, name) -> (family, creation timestamp) of the images the cloud offers.
IMAGES = {
    ("debian-cloud", "debian-12-bookworm-v20240110"): ("debian-12", "2024-01-10T00:00:00Z"),
    ("debian-cloud", "debian-12-bookworm-v20240213"): ("debian-12", "2024-02-13T00:00:00Z"),
    ("ubuntu-os-cloud", "ubuntu-2204-jammy-v20240101"): (
        "ubuntu-2204-lts", "2024-01-01T00:00:00Z"),
    (PROJECT, "ci-image"): (None, "2024-03-01T00:00:00Z"),
}
NEWEST_DEBIAN = "debian-12-bookworm-v20240213"


@dataclass
class Knobs:
    """What a test can shape (through :meth:`GceSimulator.set`)."""

    boot_delay: float = 0.1
    operation_delay: float = 0.05
    # Region quotas; None: unlimited.
    cpus: float | None = None
    instances: float | None = None
    # Quota refusals as GCE mostly gives them (a failed Operation), or at
    # once (HTTP 403 quotaExceeded) when this is True.
    quota_refused_at_once: bool = False
    # The next N inserts fail in their Operation for lack of capacity.
    capacity_failures: int = 0
    # The next N instances go TERMINATED instead of RUNNING.
    boot_failures: int = 0
    # The next N inserts are refused at once with a 500.
    insert_errors: int = 0
    # Addresses handed out: None makes distinct ones per instance.
    external_ip: str | None = None
    internal_ip: str | None = None


@dataclass
class Due:
    """A transition of an instance or operation at a time (monotonic)."""

    at: float
    what: str
    name: str


@dataclass
class State:
    instances: dict[str, dict] = field(default_factory=dict)
    operations: dict[str, dict] = field(default_factory=dict)
    due: list[Due] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)


class GceSimulator(Knobbed, LoopbackService):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, **knobs):
        self.host = host
        self.port = port
        self.project = PROJECT
        self.knobs = Knobs(**knobs)
        self.state = State()
        self.lock = threading.RLock()
        self.tokens: set[str] = set()
        self._ids = itertools.count(1000)
        self._key_pem: str | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> "GceSimulator":
        simulator = self

        class BoundHandler(Handler):
            sim = simulator

        self._serve(BoundHandler, "gce-sim")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The Compute API's root, as the client's ``api_endpoint`` takes it."""
        return f"{self.url}/compute/v1/"

    def write_credentials(self, path) -> str:
        """A service-account key file whose token exchange is this server's."""
        if self._key_pem is None:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._key_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode()
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"type": "service_account", "project_id": self.project,
                       "private_key_id": "sim-key", "private_key": self._key_pem,
                       "client_email": f"nodepool@{self.project}.iam.gserviceaccount.com",
                       "client_id": "1", "token_uri": f"{self.url}/token"}, handle)
        return str(path)

    def env(self, credentials_path) -> dict[str, str]:
        """The environment that points the client here (as an operator's
        would point it at any Compute endpoint)."""
        from nodepool.drivers.gce.api import ENDPOINT_ENV
        return {"GOOGLE_APPLICATION_CREDENTIALS": self.write_credentials(credentials_path),
                ENDPOINT_ENV: self.endpoint,
                # No look-ups beyond loopback: no metadata server, no gcloud config.
                "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:9",
                "CLOUDSDK_CONFIG": str(credentials_path) + ".gcloud"}

    # -- time -----------------------------------------------------------------------

    def schedule(self, delay: float, what: str, name: str) -> None:
        self.state.due.append(Due(time.monotonic() + delay, what, name))
        if delay <= 0:
            self.tick()

    def tick(self) -> None:
        """Apply every transition that is due (callers hold the lock)."""
        now = time.monotonic()
        due = sorted((d for d in self.state.due if d.at <= now), key=lambda d: d.at)
        self.state.due = [d for d in self.state.due if d.at > now]
        for item in due:
            if item.what == "operation-done":
                operation = self.state.operations.get(item.name)
                if operation is not None:
                    operation.update(status="DONE", progress=100,
                                     endTime=timestamp())
            elif item.what in ("RUNNING", "TERMINATED"):
                instance = self.state.instances.get(item.name)
                if instance is not None and instance["status"] != "STOPPING":
                    instance["status"] = item.what
                    if item.what == "TERMINATED":
                        instance["statusMessage"] = "the instance failed to boot"
            elif item.what == "gone":
                self.state.instances.pop(item.name, None)

    # -- the model ----------------------------------------------------------------------

    def zone_link(self, zone: str = ZONE) -> str:
        return f"{LINK}projects/{self.project}/zones/{zone}"

    def machine_type(self, name: str, zone: str = ZONE) -> dict:
        if name not in MACHINE_TYPES:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/"
                           f"zones/{zone}/machineTypes/{name}' was not found")
        cpus, memory = MACHINE_TYPES[name]
        return {"kind": "compute#machineType", "id": str(abs(hash(name)) % 10**9),
                "name": name, "guestCpus": cpus, "memoryMb": memory, "zone": zone,
                "description": f"{cpus} vCPUs, {memory / 1024:g} GB RAM",
                "selfLink": f"{self.zone_link(zone)}/machineTypes/{name}"}

    def image(self, project: str, name: str) -> dict:
        found = IMAGES.get((project, name))
        if found is None:
            raise ApiError(404, "notFound", f"The resource 'projects/{project}/global/"
                           f"images/{name}' was not found")
        family, created = found
        image = {"kind": "compute#image", "name": name, "status": "READY",
                 "creationTimestamp": created, "diskSizeGb": "10",
                 "selfLink": f"{LINK}projects/{project}/global/images/{name}"}
        if family:
            image["family"] = family
        return image

    def image_from_family(self, project: str, family: str) -> dict:
        members = sorted((created, name) for (p, name), (f, created) in IMAGES.items()
                         if p == project and f == family)
        if not members:
            raise ApiError(404, "notFound", f"The resource 'projects/{project}/global/"
                           f"images/family/{family}' was not found")
        return self.image(project, members[-1][1])

    def region(self, name: str) -> dict:
        if name != REGION:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/"
                           f"regions/{name}' was not found")
        cpus, instances = self.usage()
        quotas = [{"metric": "CPUS", "limit": self._limit(self.knobs.cpus), "usage": cpus},
                  {"metric": "INSTANCES", "limit": self._limit(self.knobs.instances),
                   "usage": instances},
                  {"metric": "DISKS_TOTAL_GB", "limit": 4096.0, "usage": 0.0}]
        return {"kind": "compute#region", "name": name, "status": "UP",
                "zones": [self.zone_link(ZONE)], "quotas": quotas,
                "selfLink": f"{LINK}projects/{self.project}/regions/{name}"}

    @staticmethod
    def _limit(value: float | None) -> float:
        return float(value) if value is not None else 1e6

    def usage(self) -> tuple[float, float]:
        """(CPUs, instances) that count against the region's quotas."""
        cpus = instances = 0.0
        for instance in self.state.instances.values():
            if instance["status"] == "TERMINATED":
                continue
            instances += 1
            cpus += MACHINE_TYPES[instance["machineType"].rsplit("/", 1)[-1]][0]
        return cpus, instances

    def operation(self, kind: str, target: str, zone: str, delay: float,
                  error: ApiError | None = None, http_status: int = 0) -> dict:
        name = f"operation-{next(self._ids)}-{kind}"
        operation = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
            "zone": self.zone_link(zone), "operationType": kind,
            "targetLink": f"{self.zone_link(zone)}/instances/{target}",
            "status": "RUNNING", "progress": 0, "insertTime": timestamp(),
            "startTime": timestamp(), "user": f"nodepool@{self.project}.iam.gserviceaccount.com",
            "selfLink": f"{self.zone_link(zone)}/operations/{name}"}
        if error is not None:
            operation["error"] = {"errors": [{"code": error.reason,
                                              "message": error.message}]}
            operation["httpErrorStatusCode"] = http_status or error.code
            operation["httpErrorMessage"] = "FORBIDDEN" if error.code == 403 \
                else "SERVICE UNAVAILABLE"
        self.state.operations[name] = operation
        self.schedule(delay, "operation-done", name)
        return dict(operation)

    def insert(self, zone: str, body: dict) -> dict:
        knobs = self.knobs
        if knobs.insert_errors > 0:
            knobs.insert_errors -= 1
            raise ApiError(500, "backendError", "Internal error. Please try again.")
        name = body.get("name") or ""
        check_name(name)
        machine_type = self.machine_type(last(body.get("machineType")), zone)
        disks = body.get("disks") or []
        boot = [d for d in disks if d.get("boot")]
        if len(boot) != 1:
            raise ApiError(400, "invalid", "Exactly one boot disk is required.")
        params = boot[0].get("initializeParams") or {}
        project, image_name = image_path(params.get("sourceImage"))
        image = self.image(project, image_name)
        disk_type = last(params.get("diskType") or "pd-standard")
        if disk_type not in DISK_TYPES:
            raise ApiError(400, "invalid", f"Invalid value for field "
                           f"'resource.disks[0].initializeParams.diskType': "
                           f"'{params.get('diskType')}'.")
        size = int(params.get("diskSizeGb") or image["diskSizeGb"])
        if size < int(image["diskSizeGb"]):
            raise ApiError(400, "invalid", f"Requested disk size cannot be smaller "
                           f"than the image size ({image['diskSizeGb']} GB)")
        interface = network_of(body)
        if name in self.state.instances:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{self.project}"
                           f"/zones/{zone}/instances/{name}' already exists")
        refusal = self._refusal(machine_type)
        if refusal is not None:
            if knobs.quota_refused_at_once and refusal.reason == "QUOTA_EXCEEDED":
                raise ApiError(403, "quotaExceeded", refusal.message)
            return self.operation("insert", name, zone, knobs.operation_delay, refusal)
        number = next(self._ids)
        nic = {"name": "nic0", **interface,
               "networkIP": knobs.internal_ip or f"10.128.{number // 250 % 250}."
                                                 f"{number % 250 + 2}",
               "accessConfigs": []}
        for access in ((body.get("networkInterfaces") or [{}])[0].get("accessConfigs")
                       or []):
            nic["accessConfigs"].append({
                "type": access.get("type", "ONE_TO_ONE_NAT"),
                "name": access.get("name", "External NAT"),
                "natIP": knobs.external_ip or f"203.0.{number // 250 % 250}."
                                              f"{number % 250 + 2}"})
        instance = {
            "kind": "compute#instance", "id": str(number), "name": name,
            "creationTimestamp": timestamp(), "status": "PROVISIONING",
            "zone": self.zone_link(zone), "machineType": machine_type["selfLink"],
            "disks": [{"boot": True, "autoDelete": bool(boot[0].get("autoDelete")),
                       "diskSizeGb": str(size), "type": "PERSISTENT",
                       "source": f"{self.zone_link(zone)}/disks/{name}",
                       "licenses": [], "deviceName": name,
                       "sim": {"diskType": disk_type, "sourceImage": image["selfLink"]}}],
            "networkInterfaces": [nic],
            "metadata": {"kind": "compute#metadata", "fingerprint": "sim",
                         "items": list((body.get("metadata") or {}).get("items") or [])},
            "labels": dict(body.get("labels") or {}),
            "selfLink": f"{self.zone_link(zone)}/instances/{name}"}
        self.state.instances[name] = instance
        if knobs.boot_failures > 0:
            knobs.boot_failures -= 1
            self.schedule(knobs.boot_delay, "TERMINATED", name)
        else:
            self.schedule(knobs.boot_delay, "RUNNING", name)
        return self.operation("insert", name, zone, knobs.operation_delay)

    def _refusal(self, machine_type: dict) -> ApiError | None:
        knobs = self.knobs
        if knobs.capacity_failures > 0:
            knobs.capacity_failures -= 1
            return ApiError(503, "ZONE_RESOURCE_POOL_EXHAUSTED", f"The zone "
                            f"'projects/{self.project}/zones/{ZONE}' does not have "
                            "enough resources available to fulfill the request.")
        cpus, instances = self.usage()
        if knobs.cpus is not None and cpus + machine_type["guestCpus"] > knobs.cpus:
            return ApiError(403, "QUOTA_EXCEEDED", f"Quota 'CPUS' exceeded.  Limit: "
                            f"{float(knobs.cpus)} in region {REGION}.")
        if knobs.instances is not None and instances + 1 > knobs.instances:
            return ApiError(403, "QUOTA_EXCEEDED", f"Quota 'INSTANCES' exceeded.  "
                            f"Limit: {float(knobs.instances)} in region {REGION}.")
        return None

    def instance(self, name: str, zone: str = ZONE) -> dict:
        found = self.state.instances.get(name)
        if found is None:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/"
                           f"zones/{zone}/instances/{name}' was not found")
        return found

    def delete(self, zone: str, name: str) -> dict:
        instance = self.instance(name, zone)
        instance["status"] = "STOPPING"
        delay = self.knobs.operation_delay
        self.schedule(delay, "gone", name)
        return self.operation("delete", name, zone, delay)

    # -- what tests look at and add ------------------------------------------------------

    def live(self) -> dict[str, dict]:
        """Instances that exist now, by name."""
        with self.lock:
            self.tick()
            return {n: i for n, i in self.state.instances.items()}

    def add_instance(self, name: str, metadata: dict[str, str] | None = None,
                     machine_type: str = "e2-small") -> dict:
        """An instance somebody else made (or a leak of ours), already running."""
        with self.lock:
            self.insert(ZONE, {
                "name": name, "machineType": f"zones/{ZONE}/machineTypes/{machine_type}",
                "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
                    "sourceImage": f"projects/debian-cloud/global/images/{NEWEST_DEBIAN}"}}],
                "networkInterfaces": [{"network": "global/networks/default"}],
                "metadata": {"items": [{"key": k, "value": v}
                                       for k, v in (metadata or {}).items()]}})
            instance = self.state.instances[name]
            instance["status"] = "RUNNING"
            return instance


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())


def last(link: str | None) -> str:
    return (link or "").rsplit("/", 1)[-1]


def image_path(link: str | None) -> tuple[str, str]:
    """(project, image) of a sourceImage URL or partial path."""
    parts = (link or "").split("/")
    if "projects" in parts and "images" in parts:
        return parts[parts.index("projects") + 1], parts[parts.index("images") + 1]
    if "images" in parts:  # global/images/<name>: the caller's project
        return PROJECT, parts[parts.index("images") + 1]
    raise ApiError(400, "invalid", f"Invalid value for field "
                   f"'resource.disks[0].initializeParams.sourceImage': '{link}'.")


def network_of(body: dict) -> dict[str, str]:
    """The first interface's network (and subnetwork) as full links; the
    project's networks are NETWORKS, each with one subnetwork in REGION of
    the same name."""
    nic = (body.get("networkInterfaces") or [{}])[0]
    network = last(nic.get("network") or "global/networks/default")
    if network not in NETWORKS:
        raise ApiError(404, "notFound", f"The resource 'projects/{PROJECT}/global/"
                       f"networks/{network}' was not found")
    found = {"network": f"{LINK}projects/{PROJECT}/global/networks/{network}"}
    if nic.get("subnetwork"):
        subnetwork = last(nic["subnetwork"])
        if subnetwork != network:
            raise ApiError(400, "invalid", f"Subnetwork '{subnetwork}' does not belong "
                           f"to network '{network}'")
        found["subnetwork"] = f"{LINK}projects/{PROJECT}/regions/{REGION}/" \
                              f"subnetworks/{subnetwork}"
    return found


def check_name(name: str) -> None:
    import re
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': "
                       f"'{name}'. Must be a match of regex "
                       "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
