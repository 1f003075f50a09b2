"""Diskimages for the builder: the file goes to the provider's S3 bucket, EC2
imports it (ImportSnapshot then RegisterImage, or ImportImage), the results
get our tags, and the S3 object goes. Blocking: an upload worker calls it."""

from __future__ import annotations

import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Callable

from nodepool.drivers.base import LaunchError, NotFound
from nodepool.drivers.aws.api import error_code, tag_list

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.aws.api import AwsApi
    from nodepool.drivers.aws.config import AwsDiskImage, AwsProvider

log = logging.getLogger("nodepool.drivers.aws")

# Import tasks are polled at growing intervals up to this (they take minutes).
POLL_FIRST = 0.5
POLL_MAX = 30.0
# Refusals worth retrying within image-import-timeout (AWS's limit on
# concurrent import tasks).
RETRYABLE_IMPORT_ERRORS = {"ResourceCountLimitExceeded"}


class ImportFailed(LaunchError):
    pass


class Importer:
    def __init__(self, api: "AwsApi", provider: "AwsProvider"):
        self.api = api
        self.provider = provider

    def upload(self, image_name: str, filename: str, image_format: str,
               metadata: dict[str, str], image: "AwsDiskImage") -> str:
        """Upload and import; returns the AMI id."""
        bucket = self.provider.object_storage_bucket
        if not bucket:
            raise ImportFailed(f"provider {self.provider.name} has no object-storage "
                               "bucket to upload images through")
        key = f"{image_name}.{image_format}"
        deadline = (time.monotonic() + self.provider.image_import_timeout
                    if self.provider.image_import_timeout else None)
        self.api.writes.wait()
        # The object carries our tags, so a crash leaves it findable as a leak.
        self.api.s3.upload_file(filename, bucket, key, ExtraArgs={
            "Tagging": urllib.parse.urlencode(metadata)})
        log.info("Uploaded %s to s3://%s/%s; importing (%s)", filename, bucket, key,
                 image.import_method)
        try:
            container = {"Format": image_format,
                         "UserBucket": {"S3Bucket": bucket, "S3Key": key}}
            if image.import_method == "image":
                return self._import_image(image_name, container, metadata, image,
                                          deadline)
            return self._import_snapshot(image_name, container, metadata, image,
                                         deadline)
        finally:
            try:
                self.api.call(self.api.s3, "delete_object", Bucket=bucket, Key=key)
            except Exception as exc:
                log.warning("Could not delete s3://%s/%s (the leak cleanup will): %s",
                            bucket, key, exc)

    # -- the two import methods ----------------------------------------------------

    def _import_snapshot(self, name, container, metadata, image, deadline) -> str:
        started = self._start(deadline, "import_snapshot", Description=name,
                              DiskContainer=container, TagSpecifications=[{
                                  "ResourceType": "import-snapshot-task",
                                  "Tags": tag_list(metadata)}])
        task_id = started["ImportTaskId"]
        task = self._wait(task_id, deadline, lambda: self._snapshot_task(task_id))
        snapshot_id = task["SnapshotTaskDetail"]["SnapshotId"]
        self.api.call(self.api.ec2, "create_tags", Resources=[snapshot_id],
                      Tags=tag_list(metadata))
        ebs = {"SnapshotId": snapshot_id, "VolumeType": image.volume_type,
               "DeleteOnTermination": True}
        for key, value in (("VolumeSize", image.volume_size), ("Iops", image.iops),
                           ("Throughput", image.throughput)):
            if value is not None:
                ebs[key] = value
        args = dict(Name=name, Architecture=image.architecture,
                    RootDeviceName="/dev/sda1", VirtualizationType="hvm",
                    EnaSupport=image.ena_support,
                    BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": ebs}],
                    TagSpecifications=[{"ResourceType": "image",
                                        "Tags": tag_list(metadata)}])
        if image.imds_support:
            args["ImdsSupport"] = image.imds_support
        registered = self.api.call(self.api.ec2, "register_image", **args)
        log.info("Image %s registered as %s from snapshot %s", name,
                 registered["ImageId"], snapshot_id)
        return registered["ImageId"]

    def _import_image(self, name, container, metadata, image, deadline) -> str:
        started = self._start(deadline, "import_image", Description=name,
                              Architecture=image.architecture,
                              DiskContainers=[container], TagSpecifications=[{
                                  "ResourceType": "import-image-task",
                                  "Tags": tag_list(metadata)}])
        task_id = started["ImportTaskId"]
        task = self._wait(task_id, deadline, lambda: self._image_task(task_id))
        # AWS tags neither the AMI nor its snapshot from the task's tags.
        made = [task["ImageId"]] + [d["SnapshotId"] for d in task.get(
            "SnapshotDetails") or [] if d.get("SnapshotId")]
        self.api.call(self.api.ec2, "create_tags", Resources=made,
                      Tags=tag_list(metadata))
        log.info("Image %s imported as %s", name, task["ImageId"])
        return task["ImageId"]

    # -- tasks -------------------------------------------------------------------

    def _start(self, deadline: float | None, method: str, **kwargs) -> dict:
        """Start an import; a refusal for AWS's task limit is retried until
        the deadline (image-import-timeout), or fails at once without one."""
        delay = POLL_FIRST
        while True:
            try:
                return self.api.call(self.api.ec2, method, **kwargs)
            except Exception as exc:
                code = error_code(exc.__cause__ or exc)
                if code not in RETRYABLE_IMPORT_ERRORS or deadline is None \
                        or time.monotonic() + delay > deadline:
                    raise
                log.warning("Import of %s refused (%s); retrying in %.0fs",
                            kwargs.get("Description"), code, delay)
                time.sleep(delay)
                delay = min(delay * 2, POLL_MAX)

    def _snapshot_task(self, task_id: str) -> tuple[str, str, dict]:
        reply = self.api.call(self.api.ec2, "describe_import_snapshot_tasks",
                              ImportTaskIds=[task_id])
        task = (reply.get("ImportSnapshotTasks") or [{}])[0]
        detail = task.get("SnapshotTaskDetail") or {}
        return detail.get("Status", ""), detail.get("Progress", ""), task

    def _image_task(self, task_id: str) -> tuple[str, str, dict]:
        reply = self.api.call(self.api.ec2, "describe_import_image_tasks",
                              ImportTaskIds=[task_id])
        task = (reply.get("ImportImageTasks") or [{}])[0]
        return task.get("Status", ""), task.get("Progress", ""), task

    def _wait(self, task_id: str, deadline: float | None,
              describe: Callable[[], tuple[str, str, dict]]) -> dict:
        delay = POLL_FIRST
        last = None
        while True:
            status, progress, task = describe()
            if (status, progress) != last:
                log.info("Import task %s: %s %s%%", task_id, status, progress or "?")
                last = (status, progress)
            if status == "completed":
                return task
            if status in ("deleted", "deleting", "cancelled", "error"):
                message = task.get("StatusMessage") or \
                    (task.get("SnapshotTaskDetail") or {}).get("StatusMessage")
                raise ImportFailed(f"import task {task_id} {status}: {message}")
            if deadline is not None and time.monotonic() + delay > deadline:
                raise ImportFailed(f"import task {task_id} not complete within "
                                   f"image-import-timeout "
                                   f"({self.provider.image_import_timeout}s)")
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX)

    # -- deletion -------------------------------------------------------------------

    def delete(self, image_id: str) -> None:
        """Deregister the AMI, then delete its snapshots."""
        try:
            found = self.api.call(self.api.ec2, "describe_images", ImageIds=[image_id])
        except NotFound:
            raise NotFound(image_id) from None
        images = found.get("Images") or []
        if not images:
            raise NotFound(image_id)
        snapshots = [m["Ebs"]["SnapshotId"] for m in images[0].get(
            "BlockDeviceMappings") or [] if (m.get("Ebs") or {}).get("SnapshotId")]
        self.api.call(self.api.ec2, "deregister_image", ImageId=image_id)
        for snapshot_id in snapshots:
            try:
                self.api.call(self.api.ec2, "delete_snapshot", SnapshotId=snapshot_id)
            except NotFound:
                pass
        log.info("Deleted image %s and snapshots %s", image_id, snapshots)
