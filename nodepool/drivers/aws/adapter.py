"""The ``aws`` driver's adapter: the contract of ``drivers/base.py`` over
boto3. Launching is in ``launch.py``, the state machines in ``machines.py``,
images in ``images.py``, quota in ``quotas.py`` and API plumbing in
``api.py``."""

from __future__ import annotations

import logging
import re

from nodepool.config.model import ProviderDiskImage
from nodepool.drivers.base import (
    META_PROVIDER, Adapter, Instance, NotFound, Resource, cloud_image_found,
)
from nodepool.drivers.aws.api import (
    AwsApi, InstanceListing, TerminateBatcher, tag_dict,
)
from nodepool.drivers.aws.config import AwsDiskImage, AwsLabel, AwsProvider
from nodepool.drivers.aws.images import Importer
from nodepool.drivers.aws.launch import Launcher
from nodepool.drivers.aws.machines import AwsCreate, AwsDelete
from nodepool.drivers.aws.quotas import InstanceTypes, quota_code
from nodepool.drivers.ratelimit import cloud_executor
from nodepool.resources import Resources

log = logging.getLogger("nodepool.drivers.aws")

IMPORT_TASK = re.compile(r"(import-(?:snap|ami)-\w+)")


class AwsAdapter(Adapter):
    provider: AwsProvider

    def __init__(self, provider: AwsProvider):
        super().__init__(provider)
        from nodepool.stats import make_client
        self.api = AwsApi(provider, make_client())
        self.executor = cloud_executor("aws", provider.name, provider.rate)
        self.listing = InstanceListing(self.api, provider.name)
        self.terminator = TerminateBatcher(self.api, provider.name)
        self.launcher = Launcher(self)
        self.types = InstanceTypes(self.api)
        self.importer = Importer(self.api, provider)
        # Untagged imports already found not to be ours.
        self._not_ours: set[str] = set()

    def reconfigure(self, provider: AwsProvider) -> None:
        super().reconfigure(provider)
        self.importer.provider = provider

    def stop(self) -> None:
        self.listing.stop()
        self.terminator.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- instances --------------------------------------------------------------

    def pool_label(self, pool_name: str | None) -> AwsLabel | None:
        """Any label of a pool (they share its network settings)."""
        pool = self.provider.pools.get(pool_name or "")
        if pool is None:
            return None
        return next(iter(pool.labels.values()), None)  # type: ignore[return-value]

    def instance(self, data: dict, label: AwsLabel | None = None) -> Instance:
        """An EC2 instance description as the launcher sees it."""
        tags = tag_dict(data.get("Tags"))
        if label is None:
            label = self.pool_label(tags.get("nodepool_pool_name"))
        private = data.get("PrivateIpAddress")
        public = data.get("PublicIpAddress")
        public6 = None
        for nic in (data.get("NetworkInterfaces") or [])[:1]:
            for address in nic.get("Ipv6Addresses") or []:
                public6 = address.get("Ipv6Address")
                break
        if label is not None and label.use_internal_ip:
            interface = private or public6 or public
        else:
            interface = public or public6 or private
        placement = data.get("Placement") or {}
        resources = None
        instance_type = data.get("InstanceType")
        if instance_type:
            try:
                resources = dict(self.types.resources(
                    instance_type, data.get("InstanceLifecycle") == "spot"))
            except Exception as exc:
                log.debug("No size of instance type %s: %s", instance_type, exc)
        return Instance(
            external_id=data["InstanceId"], interface_ip=interface,
            public_ipv4=public, private_ipv4=private, public_ipv6=public6,
            cloud="AWS", region=self.provider.region_name,
            az=placement.get("AvailabilityZone"), host_id=placement.get("HostId"),
            metadata=tags, resources=resources)

    def create_state_machine(self, hostname, label, image_external_id, metadata,
                             request, az):
        return AwsCreate(self, hostname, label, image_external_id, metadata, az)

    def delete_state_machine(self, external_id):
        return AwsDelete(self, external_id)

    def list_instances(self) -> list[Instance]:
        return [self.instance(i) for i in self.listing.fetch().values()]

    def release_host(self, host_id: str) -> None:
        reply = self.api.call(self.api.ec2, "release_hosts", HostIds=[host_id])
        if reply.get("Unsuccessful"):
            failure = reply["Unsuccessful"][0].get("Error") or {}
            if "NotFound" in str(failure.get("Code")):
                raise NotFound(host_id)
            raise RuntimeError(f"cannot release host {host_id}: {failure}")

    # -- leaks ---------------------------------------------------------------------

    def list_resources(self) -> list[Resource]:
        """Everything that may carry our tags: live instances, unattached
        volumes, our AMIs and snapshots, dedicated hosts, and the objects
        in the image bucket."""
        api = self.api
        found = [Resource("instance", i, tag_dict(d.get("Tags")))
                 for i, d in self.listing.fetch().items()]
        for volume in api.pages(api.ec2, "describe_volumes", "Volumes",
                                Filters=[{"Name": "status", "Values": ["available"]}]):
            found.append(Resource("volume", volume["VolumeId"],
                                  tag_dict(volume.get("Tags"))))
        images = api.call(api.ec2, "describe_images", Owners=["self"]).get("Images") or []
        snapshots = api.pages(api.ec2, "describe_snapshots", "Snapshots",
                              OwnerIds=["self"])
        self._adopt_imports(images, snapshots)
        for image in images:
            found.append(Resource("ami", image["ImageId"], tag_dict(image.get("Tags"))))
        for snapshot in snapshots:
            found.append(Resource("snapshot", snapshot["SnapshotId"],
                                  tag_dict(snapshot.get("Tags"))))
        for host in api.pages(api.ec2, "describe_hosts", "Hosts"):
            if host.get("State") not in ("released", "released-permanent-failure"):
                found.append(Resource("host", host["HostId"],
                                      tag_dict(host.get("Tags"))))
        bucket = self.provider.object_storage_bucket
        if bucket:
            for item in api.pages(api.s3, "list_objects_v2", "Contents", Bucket=bucket):
                tags = api.call(api.s3, "get_object_tagging", Bucket=bucket,
                                Key=item["Key"]).get("TagSet")
                found.append(Resource("object", item["Key"], tag_dict(tags)))
        return found

    def _adopt_imports(self, images: list[dict], snapshots: list[dict]) -> None:
        """AWS leaves what an import made untagged: an AMI or snapshot whose
        import task carries our tags gets them (until then it is invisible
        to the leak cleanup), so an upload interrupted between the import and
        our tagging is still cleaned up."""
        api = self.api
        for kind, items, key, text in (
                ("ami", images, "ImageId", "Name"),
                ("snapshot", snapshots, "SnapshotId", "Description")):
            for item in items:
                match = IMPORT_TASK.search(item.get(text) or "")
                if item.get("Tags") or item[key] in self._not_ours or not match:
                    continue
                task_id = match.group(1)
                if task_id.startswith("import-snap"):
                    reply = api.call(api.ec2, "describe_import_snapshot_tasks",
                                     ImportTaskIds=[task_id])
                    tasks = reply.get("ImportSnapshotTasks") or []
                else:
                    reply = api.call(api.ec2, "describe_import_image_tasks",
                                     ImportTaskIds=[task_id])
                    tasks = reply.get("ImportImageTasks") or []
                tags = tag_dict((tasks[0] if tasks else {}).get("Tags"))
                if tags.get(META_PROVIDER) != self.provider.name:
                    self._not_ours.add(item[key])
                    continue
                log.info("Tagging %s %s from its import task %s", kind, item[key],
                         task_id)
                api.call(api.ec2, "create_tags", Resources=[item[key]],
                         Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
                item["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]

    def delete_resource(self, resource: Resource) -> None:
        api = self.api
        kind, rid = resource.type, resource.id
        if kind == "instance":
            api.call(api.ec2, "terminate_instances", InstanceIds=[rid])
        elif kind == "volume":
            api.call(api.ec2, "delete_volume", VolumeId=rid)
        elif kind == "ami":
            api.call(api.ec2, "deregister_image", ImageId=rid)
        elif kind == "snapshot":
            api.call(api.ec2, "delete_snapshot", SnapshotId=rid)
        elif kind == "host":
            self.release_host(rid)
        elif kind == "object":
            api.call(api.s3, "delete_object", Bucket=self.provider.object_storage_bucket,
                     Key=rid)

    def cleanup_leaks(self, report) -> None:
        """Our launch templates of fleet labels no longer configured."""
        api = self.api
        reply = api.call(api.ec2, "describe_launch_templates", Filters=[{
            "Name": "tag:nodepool_provider_name", "Values": [self.provider.name]}])
        wanted = tuple(f"nodepool-{self.provider.name}-{name}-"
                       for pool in self.provider.pools.values()
                       for name, label in pool.labels.items()
                       if getattr(label, "fleet", None) is not None)
        removed = 0
        for template in reply.get("LaunchTemplates") or []:
            if not template["LaunchTemplateName"].startswith(wanted or ("\0",)):
                api.call(api.ec2, "delete_launch_template",
                         LaunchTemplateId=template["LaunchTemplateId"])
                removed += 1
        if removed:
            report("launchtemplates", removed)

    # -- quota -------------------------------------------------------------------------

    def quota_for_label(self, label: AwsLabel) -> Resources:
        if label.fleet is not None:
            # The fleet picks the type: counted once launched (as upstream).
            return Resources({"instances": 1})
        return self.types.resources(label.instance_type or "", label.use_spot)

    def quota_limits(self) -> Resources:
        """The EC2 service quotas (vCPUs) of the instance families this
        provider's labels use."""
        codes = set()
        for pool in self.provider.pools.values():
            for label in pool.labels.values():
                types = [label.instance_type] if label.instance_type else \
                    (label.fleet.instance_types if label.fleet else [])
                codes.update(quota_code(t, label.use_spot) for t in types)
        limits = Resources(default=float("inf"))
        for code in sorted(c for c in codes if c):
            try:
                reply = self.api.call(self.api.quotas, "get_service_quota",
                                      ServiceCode="ec2", QuotaCode=code)
            except NotFound:
                continue
            except Exception as exc:
                if "NoSuchResource" in str(exc):
                    log.warning("Provider %s: no service quota %s", self.provider.name,
                                code)
                    continue
                raise
            limits[code] = float(reply["Quota"]["Value"])
        return limits

    def label_ready(self, label: AwsLabel) -> bool:
        return cloud_image_found(self, label, lambda: self.launcher.cloud_image_id(label))

    # -- images ----------------------------------------------------------------------

    def upload_image(self, image_name: str, filename: str, image_format: str,
                     metadata: dict[str, str],
                     provider_image: ProviderDiskImage | None = None) -> str:
        image = provider_image if isinstance(provider_image, AwsDiskImage) \
            else AwsDiskImage(name=image_name)
        return self.importer.upload(image_name, filename, image_format, metadata, image)

    def delete_image(self, external_id: str) -> None:
        self.importer.delete(external_id)

    def list_images(self) -> list[dict]:
        images = self.api.call(self.api.ec2, "describe_images",
                               Owners=["self"]).get("Images") or []
        return [{"id": i["ImageId"], "name": i.get("Name"),
                 "properties": tag_dict(i.get("Tags"))} for i in images]
