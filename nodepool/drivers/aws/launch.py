"""Starting one instance: RunInstances (or an instant CreateFleet, or a
dedicated host and then RunInstances on it) with the label's settings and
the node's tags. Blocking: runs on the adapter's executor."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from nodepool.drivers.base import META_NODE_ID, LaunchError, QuotaError
from nodepool.drivers.aws.api import QUOTA_ERRORS, tag_list

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.drivers.aws.adapter import AwsAdapter
    from nodepool.drivers.aws.config import AwsLabel

log = logging.getLogger("nodepool.drivers.aws")

IMAGE_TTL = 300.0
# The launcher's OpenStack-style "groups" entry means nothing to EC2.
SKIPPED_METADATA = ("groups",)


class Launcher:
    def __init__(self, adapter: "AwsAdapter"):
        self.adapter = adapter
        self.api = adapter.api
        self._images: dict[str, tuple[float, dict]] = {}
        self._filtered: dict[str, tuple[float, str]] = {}
        self._templates: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- images ---------------------------------------------------------------

    def cloud_image_id(self, label: "AwsLabel") -> str:
        """The AMI of a label's cloud image: its image-id, the newest image
        its filters match, or (neither given) its name as id or AMI name."""
        image = self.adapter.provider.cloud_images[label.cloud_image or ""]
        if image.image_id:
            return image.image_id
        filters = getattr(image, "image_filters", None)
        if filters is None:
            if image.name.startswith("ami-"):
                return image.name
            filters = [{"Name": "name", "Values": [image.name]}]
        key = json.dumps(filters, sort_keys=True)
        with self._lock:
            cached = self._filtered.get(key)
        if cached is not None and time.monotonic() - cached[0] < IMAGE_TTL:
            return cached[1]
        found = self.api.call(self.api.ec2, "describe_images", Filters=filters)
        images = sorted(found.get("Images") or [],
                        key=lambda i: i.get("CreationDate", ""), reverse=True)
        if not images:
            raise LaunchError(f"no AMI matches cloud-image {image.name!r} "
                              f"({filters})")
        with self._lock:
            self._filtered[key] = (time.monotonic(), images[0]["ImageId"])
        return images[0]["ImageId"]

    def image(self, image_id: str) -> dict:
        """The AMI's description (its root device), looked up once a while."""
        with self._lock:
            cached = self._images.get(image_id)
        if cached is not None and time.monotonic() - cached[0] < IMAGE_TTL:
            return cached[1]
        found = self.api.call(self.api.ec2, "describe_images", ImageIds=[image_id])
        images = found.get("Images") or []
        if not images:
            raise LaunchError(f"AMI {image_id} not found")
        with self._lock:
            self._images[image_id] = (time.monotonic(), images[0])
        return images[0]

    # -- request parts ------------------------------------------------------------

    def root_volume(self, label: "AwsLabel", image_id: str) -> list[dict] | None:
        """The root device's mapping with the label's volume settings, and
        always deleted with the instance (so a deleted node leaves no volume)."""
        image = self.image(image_id)
        root = image.get("RootDeviceName")
        for mapping in image.get("BlockDeviceMappings") or []:
            if mapping.get("DeviceName") != root or "Ebs" not in mapping:
                continue
            ebs = {k: v for k, v in mapping["Ebs"].items()
                   if k in ("SnapshotId", "VolumeSize", "VolumeType", "Iops",
                            "Throughput")}
            ebs["DeleteOnTermination"] = True
            for key, value in (("VolumeSize", label.volume_size),
                               ("VolumeType", label.volume_type),
                               ("Iops", label.iops), ("Throughput", label.throughput)):
                if value is not None:
                    ebs[key] = value
            return [{"DeviceName": root, "Ebs": ebs}]
        return None

    @staticmethod
    def tags(hostname: str, metadata: dict[str, str]) -> list[dict[str, str]]:
        tags = {k: v for k, v in metadata.items() if k not in SKIPPED_METADATA}
        tags["Name"] = hostname
        return tag_list(tags)

    @staticmethod
    def network(label: "AwsLabel") -> dict:
        nic: dict[str, Any] = {"DeviceIndex": 0,
                               "AssociatePublicIpAddress": label.public_ipv4}
        if label.subnet_id:
            nic["SubnetId"] = label.subnet_id
        if label.security_group_id:
            nic["Groups"] = [label.security_group_id]
        if label.public_ipv6:
            nic["Ipv6AddressCount"] = 1
        return nic

    def instance_settings(self, label: "AwsLabel", image_id: str) -> dict:
        """What RunInstances and a fleet's launch template share."""
        args: dict[str, Any] = {"ImageId": image_id, "KeyName": label.key_name,
                                "NetworkInterfaces": [self.network(label)]}
        if label.ebs_optimized:
            args["EbsOptimized"] = True
        mappings = self.root_volume(label, image_id)
        if mappings:
            args["BlockDeviceMappings"] = mappings
        if label.userdata:
            args["UserData"] = label.userdata
        profile = label.iam_instance_profile or {}
        if "name" in profile:
            args["IamInstanceProfile"] = {"Name": profile["name"]}
        elif "arn" in profile:
            args["IamInstanceProfile"] = {"Arn": profile["arn"]}
        if label.imdsv2:
            args["MetadataOptions"] = {"HttpTokens": label.imdsv2,
                                       "HttpEndpoint": "enabled"}
        return args

    # -- launching ------------------------------------------------------------------

    def launch(self, hostname: str, label: "AwsLabel", image_id: str | None,
               metadata: dict[str, str], az: str | None) -> dict:
        """Start the instance; returns its description (InstanceId at least)."""
        image_id = image_id or self.cloud_image_id(label)
        tags = self.tags(hostname, metadata)
        if label.fleet is not None:
            return self._fleet(label, image_id, tags, az)
        args = self.instance_settings(label, image_id)
        args.update(MinCount=1, MaxCount=1, InstanceType=label.instance_type,
                    TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                                       {"ResourceType": "volume", "Tags": tags}])
        zone = az or label.availability_zone
        if zone:
            args["Placement"] = {"AvailabilityZone": zone}
        if label.use_spot:
            args["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time",
                                "InstanceInterruptionBehavior": "terminate"}}
        if label.dedicated_host:
            host = self._allocate_host(label, zone or "", tags)
            args["Placement"] = {"AvailabilityZone": zone, "HostId": host,
                                 "Tenancy": "host"}
            try:
                reply = self.api.call(self.api.ec2, "run_instances", **args)
            except Exception:
                self.adapter.release_host(host)
                raise
        else:
            reply = self.api.call(self.api.ec2, "run_instances", **args)
        instance = reply["Instances"][0]
        self._know_size(instance)
        log.info("Node %s: launched instance %s (%s)", metadata.get(META_NODE_ID),
                 instance["InstanceId"], label.name)
        return instance

    def _know_size(self, instance: dict) -> None:
        """Look the type's size up here, on the executor, so that the state
        machine's advance() finds it known (a fleet picks types we never
        asked about)."""
        try:
            self.adapter.types.size(instance.get("InstanceType") or "")
        except Exception as exc:
            log.warning("No size of instance type %s: %s",
                        instance.get("InstanceType"), exc)

    def _allocate_host(self, label: "AwsLabel", zone: str, tags: list[dict]) -> str:
        reply = self.api.call(
            self.api.ec2, "allocate_hosts", AvailabilityZone=zone,
            InstanceType=label.instance_type, Quantity=1,
            TagSpecifications=[{"ResourceType": "dedicated-host", "Tags": tags}])
        return reply["HostIds"][0]

    def _fleet(self, label: "AwsLabel", image_id: str, tags: list[dict],
               az: str | None) -> dict:
        template = self._template(label, image_id)
        overrides = []
        for instance_type in label.fleet.instance_types:
            override: dict[str, Any] = {"InstanceType": instance_type,
                                        "ImageId": image_id}
            if label.subnet_id:
                override["SubnetId"] = label.subnet_id
            if az or label.availability_zone:
                override["AvailabilityZone"] = az or label.availability_zone
            overrides.append(override)
        capacity = "spot" if label.use_spot else "on-demand"
        options = {"AllocationStrategy": label.fleet.allocation_strategy}
        reply = self.api.call(
            self.api.ec2, "create_fleet", Type="instant",
            LaunchTemplateConfigs=[{"LaunchTemplateSpecification": {
                "LaunchTemplateName": template, "Version": "$Latest"},
                "Overrides": overrides}],
            TargetCapacitySpecification={"TotalTargetCapacity": 1,
                                         "DefaultTargetCapacityType": capacity},
            **({"SpotOptions": options} if label.use_spot
               else {"OnDemandOptions": options}),
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                               {"ResourceType": "volume", "Tags": tags}])
        for group in reply.get("Instances") or []:
            for instance_id in group.get("InstanceIds") or []:
                instance = {"InstanceId": instance_id,
                            "InstanceType": group.get("InstanceType")}
                self._know_size(instance)
                return instance
        errors = reply.get("Errors") or []
        codes = {e.get("ErrorCode", "") for e in errors}
        message = "; ".join(f"{e.get('ErrorCode')}: {e.get('ErrorMessage')}"
                            for e in errors) or "no instance"
        if codes & QUOTA_ERRORS:
            raise QuotaError(f"fleet for {label.name}: {message}")
        raise LaunchError(f"fleet for {label.name}: {message}")

    def _template(self, label: "AwsLabel", image_id: str) -> str:
        """The launch template of a fleet label, made once (its name carries a
        digest of its settings, so a changed label gets a new one)."""
        data = self.instance_settings(label, image_id)
        data.pop("ImageId")
        if "UserData" in data:  # templates take it base64-encoded
            data["UserData"] = base64.b64encode(data["UserData"].encode()).decode()
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        name = f"nodepool-{self.adapter.provider.name}-{label.name}-{digest[:12]}"
        with self._lock:
            if name in self._templates:
                return name
        existing = self.api.call(self.api.ec2, "describe_launch_templates",
                                 Filters=[{"Name": "launch-template-name",
                                           "Values": [name]}])
        if not existing.get("LaunchTemplates"):
            self.api.call(
                self.api.ec2, "create_launch_template", LaunchTemplateName=name,
                LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tag_list(
                    {"nodepool_provider_name": self.adapter.provider.name})}])
        with self._lock:
            self._templates[name] = name
        return name
