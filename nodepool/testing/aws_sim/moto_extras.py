"""What moto's server lacks for the aws driver, added to moto inside the
simulator's own process (never inside boto3 or the driver).

moto 5.2 gaps filled here:
- ``service-quotas`` GetServiceQuota knows only VPC quotas: EC2's vCPU
  quotas (``L-1216C47A`` and friends) answer from :data:`STATE.quotas`.
- EC2 never refuses a launch for quota: RunInstances (and CreateFleet,
  which moto runs through it) fail with ``VcpuLimitExceeded`` past those
  same quotas, as AWS does, and with ``InsufficientInstanceCapacity`` when
  a test asks for it.
- ImportSnapshot, ImportImage and their Describe*Tasks calls do not exist:
  they are simulated from the S3 object (the task reports progress over a
  few describes, then completes with a snapshot, or a snapshot and an AMI,
  untagged as in AWS).
- RegisterImage ignores BlockDeviceMappings and TagSpecifications: the root
  snapshot and the image's tags are honoured.
- Instances are ``running`` the moment they exist: they stay ``pending``
  for ``STATE.boot_delay`` seconds, so a launch has to wait for them.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Quota code -> (instance-type family prefixes, spot?). The family is the
# letters before the first digit of the type name (t3.medium -> "t").
QUOTA_FAMILIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "L-1216C47A": (("a", "c", "d", "h", "i", "m", "r", "t", "z"), False),
    "L-DB2E81BA": (("g", "vt"), False),
    "L-417A185B": (("p",), False),
    "L-7295265B": (("x",), False),
    "L-74FC7D96": (("f",), False),
    "L-1945791B": (("inf",), False),
    "L-34B43A08": (("a", "c", "d", "h", "i", "m", "r", "t", "z"), True),
    "L-3819A6DF": (("g", "vt"), True),
}
DEFAULT_VCPU_QUOTA = 10_000.0
GIB = 1024 ** 3


@dataclass
class ImportTask:
    id: str
    kind: str                 # "snapshot" or "image"
    bucket: str
    key: str
    disk_format: str
    size: int
    tags: list[dict]
    description: str
    describes_left: int
    fail: str | None = None
    snapshot_id: str | None = None
    image_id: str | None = None
    status: str = "active"

    def progress(self) -> str:
        return "100" if self.status == "completed" else str(
            max(5, 95 - 30 * self.describes_left))


@dataclass
class SimState:
    """What tests set through the control endpoint, and what they read."""

    quotas: dict[str, float] = field(default_factory=dict)
    boot_delay: float = 0.0
    # How many describes an import task stays active before completing.
    import_describes: int = 2
    # Refuse this many import calls with ResourceCountLimitExceeded.
    import_limit_failures: int = 0
    # The next import task of these ends in this error status message.
    fail_imports: int = 0
    # Refuse this many launches with InsufficientInstanceCapacity.
    capacity_failures: int = 0
    tasks: dict[str, ImportTask] = field(default_factory=dict)
    launched_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def quota(self, code: str) -> float:
        return self.quotas.get(code, DEFAULT_VCPU_QUOTA)

    def reset(self) -> None:
        with self.lock:
            self.quotas.clear()
            self.boot_delay = 0.0
            self.import_describes = 2
            self.import_limit_failures = self.fail_imports = 0
            self.capacity_failures = 0
            self.tasks.clear()
            self.launched_at.clear()


STATE = SimState()
_ids = itertools.count(1)


def family(instance_type: str) -> str:
    name = instance_type.split(".")[0]
    letters = ""
    for char in name:
        if char.isdigit():
            break
        letters += char
    return letters


def code_for(instance_type: str, spot: bool) -> str | None:
    fam = family(instance_type)
    for code, (families, is_spot) in QUOTA_FAMILIES.items():
        if is_spot == spot and fam in families:
            return code
    return None


def vcpus(instance_type: str) -> int:
    from moto.ec2.models.instance_types import INSTANCE_TYPES
    info = INSTANCE_TYPES.get(instance_type) or {}
    return int((info.get("VCpuInfo") or {}).get("DefaultVCpus", 1))


# -- service quotas ---------------------------------------------------------------


def _service_quota(original):
    def get_service_quota(self, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code != "ec2":
            return original(self, service_code, quota_code)
        quota_code_ = quota_code
        if quota_code_ not in QUOTA_FAMILIES:
            from moto.servicequotas.exceptions import NoSuchResource
            raise NoSuchResource
        families, spot = QUOTA_FAMILIES[quota_code_]
        kind = "Spot Instance Requests" if spot else "On-Demand instances"
        return {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud",
                "QuotaArn": f"arn:aws:servicequotas:{self.region_name}:"
                            f"{self.account_id}:ec2/{quota_code_}",
                "QuotaCode": quota_code_,
                "QuotaName": f"Running {'/'.join(families).upper()} {kind}",
                "Value": STATE.quota(quota_code_), "Unit": "None",
                "Adjustable": True, "GlobalQuota": False}
    return get_service_quota


# -- launch limits and boot delay -------------------------------------------------------


def _check_launch(backend, instance_type: str, count: int, spot: bool) -> None:
    from moto.ec2.exceptions import EC2ClientError
    with STATE.lock:
        if STATE.capacity_failures > 0:
            STATE.capacity_failures -= 1
            raise EC2ClientError("InsufficientInstanceCapacity",
                                 f"We currently do not have sufficient {instance_type} "
                                 "capacity in the Availability Zone you requested.")
    code = code_for(instance_type, spot)
    if code is None:
        return
    used = 0
    for reservation in backend.reservations.values():
        for instance in reservation.instances:
            if instance.state in ("terminated", "shutting-down"):
                continue
            if code_for(instance.instance_type, instance.lifecycle == "spot") == code:
                used += vcpus(instance.instance_type)
    limit = STATE.quota(code)
    if used + count * vcpus(instance_type) > limit:
        raise EC2ClientError(
            "VcpuLimitExceeded",
            f"You have requested more vCPU capacity than your current vCPU limit of "
            f"{limit:g} allows for the instance bucket that the specified instance "
            "type belongs to.")


def _run_instances(original):
    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        _check_launch(self, kwargs.get("instance_type", "m1.small"), count,
                      bool(kwargs.get("instance_market_options")))
        reservation = original(self, image_id, count, user_data, security_group_names,
                               **kwargs)
        _mark_pending(reservation.instances)
        return reservation
    return run_instances


def _mark_pending(instances) -> None:
    from moto.ec2.models.instances import InstanceState
    if STATE.boot_delay <= 0:
        return
    now = time.monotonic()
    with STATE.lock:
        for instance in instances:
            instance._state = InstanceState("pending", 0)
            STATE.launched_at[instance.id] = now


def _boot(backend) -> None:
    """Pending instances whose boot delay passed become running."""
    from moto.ec2.models.instances import InstanceState
    now = time.monotonic()
    with STATE.lock:
        if not STATE.launched_at:
            return
        due = {i for i, t in STATE.launched_at.items() if now - t >= STATE.boot_delay}
        for instance_id in due:
            del STATE.launched_at[instance_id]
    for reservation in backend.reservations.values():
        for instance in reservation.instances:
            if instance.id in due and instance.state == "pending":
                instance._state = InstanceState("running", 16)


def _booting(original):
    def describe(self, *args, **kwargs):
        _boot(self)
        return original(self, *args, **kwargs)
    return describe


# -- imports ----------------------------------------------------------------------------


def _s3_object_size(account: str, bucket: str, key: str) -> int:
    from moto.ec2.exceptions import EC2ClientError
    from moto.s3.models import s3_backends
    backend = s3_backends[account]["aws"]
    try:
        return backend.get_object(bucket, key).size
    except Exception:
        raise EC2ClientError("InvalidParameter",
                             f"S3 object s3://{bucket}/{key} does not exist") from None


def _start_import(response, kind: str, container: dict) -> ImportTask:
    from moto.ec2.exceptions import EC2ClientError
    with STATE.lock:
        if STATE.import_limit_failures > 0:
            STATE.import_limit_failures -= 1
            raise EC2ClientError("ResourceCountLimitExceeded",
                                 "You have reached the maximum number of active "
                                 "import tasks; try again later.")
    bucket = (container.get("UserBucket") or {}).get("S3Bucket", "")
    key = (container.get("UserBucket") or {}).get("S3Key", "")
    size = _s3_object_size(response.current_account, bucket, key)
    prefix = "import-snap" if kind == "snapshot" else "import-ami"
    task_type = f"import-{kind}-task"
    tags = [{"Key": k, "Value": v} for k, v in
            response._parse_tag_specification().get(task_type, {}).items()]
    with STATE.lock:
        fail = None
        if STATE.fail_imports > 0:
            STATE.fail_imports -= 1
            fail = "ClientError: Unknown OS / Missing OS files."
        task = ImportTask(id=f"{prefix}-{next(_ids):017x}", kind=kind, bucket=bucket,
                          key=key, disk_format=str(container.get("Format", "raw")),
                          size=size, tags=tags,
                          description=response._get_param("Description") or "",
                          describes_left=STATE.import_describes, fail=fail)
        STATE.tasks[task.id] = task
    return task


def _advance(backend, task: ImportTask) -> None:
    """One describe's worth of progress; the result appears on completion."""
    if task.status != "active":
        return
    if task.describes_left > 0:
        task.describes_left -= 1
        return
    if task.fail:
        task.status = "deleted"
        return
    zone = backend.region_name + "a"
    volume = backend.create_volume(size=max(1, math.ceil(task.size / GIB)),
                                   zone_name=zone)
    snapshot = backend.create_snapshot(
        volume.id, f"Created by AWS-VMImport service for {task.id}")
    backend.delete_volume(volume.id)
    task.snapshot_id = snapshot.id
    if task.kind == "image":
        ami = backend.register_image(name=task.id, description=task.description)
        _use_snapshot(backend, ami, snapshot.id, "/dev/sda1")
        task.image_id = ami.id
    task.status = "completed"


def _use_snapshot(backend, ami, snapshot_id: str, device: str) -> None:
    """Make ``snapshot_id`` the AMI's root snapshot (moto made its own)."""
    made = ami.ebs_snapshot
    snapshot = backend.get_snapshot(snapshot_id)
    snapshot.from_ami = ami.id
    ami.ebs_snapshot = snapshot
    ami.root_device_name = device
    ami.root_device_type = "ebs"
    if made is not None and made.id != snapshot_id:
        backend.snapshots.pop(made.id, None)


def _snapshot_task(task: ImportTask) -> dict:
    detail = {"DiskImageSize": float(task.size), "Format": task.disk_format.upper(),
              "Progress": task.progress(), "Status": task.status,
              "StatusMessage": task.fail if task.status == "deleted" else
              ("converting" if task.status == "active" else ""),
              "UserBucket": {"S3Bucket": task.bucket, "S3Key": task.key}}
    if task.snapshot_id:
        detail["SnapshotId"] = task.snapshot_id
    return {"ImportTaskId": task.id, "Description": task.description,
            "SnapshotTaskDetail": detail, "Tags": task.tags}


def _image_task(task: ImportTask) -> dict:
    data = {"ImportTaskId": task.id, "Description": task.description,
            "Status": task.status, "Progress": task.progress(),
            "StatusMessage": task.fail if task.status == "deleted" else "",
            "Tags": task.tags,
            "SnapshotDetails": [{"DiskImageSize": float(task.size),
                                 "Format": task.disk_format.upper(),
                                 "SnapshotId": task.snapshot_id or "",
                                 "Status": task.status,
                                 "UserBucket": {"S3Bucket": task.bucket,
                                                "S3Key": task.key}}]}
    if task.image_id:
        data["ImageId"] = task.image_id
    return data


def _describe_tasks(response, kind: str, render) -> list[dict]:
    ids = response._get_param("ImportTaskIds", [])
    found = []
    with STATE.lock:
        for task in list(STATE.tasks.values()):
            if task.kind != kind or (ids and task.id not in ids):
                continue
            _advance(response.ec2_backend, task)
            found.append(render(task))
    return found


def import_snapshot(self):
    from moto.core.responses import ActionResult
    task = _start_import(self, "snapshot", self._get_param("DiskContainer", {}))
    return ActionResult(_snapshot_task(task))


def describe_import_snapshot_tasks(self):
    from moto.core.responses import ActionResult
    return ActionResult({"ImportSnapshotTasks": _describe_tasks(
        self, "snapshot", _snapshot_task)})


def import_image(self):
    from moto.core.responses import ActionResult
    containers = self._get_param("DiskContainers", [])
    task = _start_import(self, "image", containers[0] if containers else {})
    return ActionResult(_image_task(task))


def describe_import_image_tasks(self):
    from moto.core.responses import ActionResult
    return ActionResult({"ImportImageTasks": _describe_tasks(self, "image", _image_task)})


def register_image(self):
    """RegisterImage with its root snapshot, architecture and tags."""
    from moto.core.responses import ActionResult
    self.error_on_dryrun()
    backend = self.ec2_backend
    ami = backend.register_image(self._get_param("Name"),
                                 self._get_param("Description", ""))
    ami.architecture = self._get_param("Architecture") or "x86_64"
    for mapping in self._get_param("BlockDeviceMappings", []):
        snapshot_id = (mapping.get("Ebs") or {}).get("SnapshotId")
        if snapshot_id:
            device = mapping.get("DeviceName", "/dev/sda1")
            _use_snapshot(backend, ami, snapshot_id, device)
            break
    tags = self._parse_tag_specification().get("image", {})
    if tags:
        ami.add_tags(tags)
    return ActionResult({"ImageId": ami.id})


def install() -> None:
    """Patch moto's classes in this process (the simulator's only)."""
    from moto.ec2.models import EC2Backend
    from moto.ec2.responses import EC2Response
    from moto.servicequotas.models import ServiceQuotasBackend
    ServiceQuotasBackend.get_service_quota = _service_quota(
        ServiceQuotasBackend.get_service_quota)
    EC2Backend.run_instances = _run_instances(EC2Backend.run_instances)
    EC2Backend.describe_instances = _booting(EC2Backend.describe_instances)
    EC2Backend.get_reservations_by_instance_ids = _booting(
        EC2Backend.get_reservations_by_instance_ids)
    for function in (import_snapshot, describe_import_snapshot_tasks, import_image,
                     describe_import_image_tasks, register_image):
        setattr(EC2Response, function.__name__, function)
