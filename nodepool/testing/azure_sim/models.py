"""How the simulated ARM checks and makes each kind of resource, and when
it refuses a delete (as ARM does: a NIC still on a VM, an address still on
a NIC, a disk still attached)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nodepool.testing.azure_sim.http import ApiError

if TYPE_CHECKING:  # pragma: no cover
    from nodepool.testing.azure_sim import AzureSimulator

SUBNET = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                    r"Microsoft\.Network/virtualNetworks/([^/]+)/subnets/([^/]+)$", re.I)


def invalid(message: str, code: str = "InvalidParameter") -> ApiError:
    return ApiError(400, code, message)


def create_publicIPAddresses(sim: "AzureSimulator", group: str, name: str,
                             body: dict) -> tuple[dict, str]:
    props = body.get("properties") or {}
    version = props.get("publicIPAddressVersion", "IPv4")
    if version not in ("IPv4", "IPv6"):
        raise invalid(f"Invalid publicIPAddressVersion {version}")
    resource = sim.store(group, "publicIPAddresses", name, body, {
        "provisioningState": "Updating", "publicIPAddressVersion": version,
        "publicIPAllocationMethod": props.get("publicIPAllocationMethod", "Static"),
        "ipAddress": sim.address(True, version)})
    return resource, sim.operation("Microsoft.Network", sim.knobs.operation_delay,
                                   lambda: _succeeded(resource))


def create_networkInterfaces(sim: "AzureSimulator", group: str, name: str,
                             body: dict) -> tuple[dict, str]:
    configs = []
    for config in (body.get("properties") or {}).get("ipConfigurations") or []:
        props = config.get("properties") or {}
        subnet = (props.get("subnet") or {}).get("id") or ""
        match = SUBNET.match(subnet)
        if not match or match.group(2) not in NETWORKS_OF(match.group(1)):
            raise invalid(f"Subnet {subnet} referenced by resource "
                          f"{name} was not found.", "InvalidResourceReference")
        version = props.get("privateIPAddressVersion", "IPv4")
        made = {"privateIPAddressVersion": version, "subnet": {"id": subnet},
                "privateIPAddress": sim.address(False, version),
                "primary": bool(props.get("primary"))}
        pip = (props.get("publicIPAddress") or {}).get("id")
        if pip:
            if sim.by_id(pip) is None:
                raise invalid(f"Resource {pip} referenced by resource {name} was "
                              "not found.", "InvalidResourceReference")
            made["publicIPAddress"] = {"id": pip}
        configs.append({"name": config.get("name"), "properties": made})
    if not configs:
        raise invalid("A network interface needs at least one IP configuration.")
    resource = sim.store(group, "networkInterfaces", name, body, {
        "provisioningState": "Updating", "ipConfigurations": configs})
    return resource, sim.operation("Microsoft.Network", sim.knobs.operation_delay,
                                   lambda: _succeeded(resource))


def NETWORKS_OF(network: str) -> tuple[str, ...]:
    from nodepool.testing.azure_sim import NETWORKS
    return NETWORKS.get(network, ())


def create_virtualMachines(sim: "AzureSimulator", group: str, name: str,
                           body: dict) -> tuple[dict, str]:
    from nodepool.testing.azure_sim import VM_SIZES
    knobs = sim.knobs
    if not re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,62}", name):
        raise invalid(f"The VM name {name!r} is invalid.", "InvalidParameter")
    props = body.get("properties") or {}
    size = (props.get("hardwareProfile") or {}).get("vmSize")
    if size not in VM_SIZES:
        raise invalid(f"The value {size} provided for the VM size is not valid.")
    if knobs.sku_unavailable > 0:
        knobs.sku_unavailable -= 1
        raise ApiError(409, "SkuNotAvailable", f"The requested VM size for resource "
                       f"'Following SKUs have failed for Capacity Restrictions: {size}' "
                       f"is currently not available in location 'westeurope'.")
    cores, vms = sim.usage()
    need = VM_SIZES[size][0]
    if knobs.cores is not None and cores + need > knobs.cores:
        raise ApiError(409, "OperationNotAllowed", f"Operation could not be completed "
                       f"as it results in exceeding approved Total Regional Cores quota. "
                       f"Location: westeurope, Current Limit: {knobs.cores:g}, Current "
                       f"Usage: {cores}, Additional Required: {need}.")
    if knobs.virtual_machines is not None and vms + 1 > knobs.virtual_machines:
        raise ApiError(409, "OperationNotAllowed", "Operation could not be completed as "
                       "it results in exceeding approved virtualMachines quota.")
    storage = props.get("storageProfile") or {}
    check_image(sim, storage.get("imageReference") or {})
    os_profile = props.get("osProfile") or {}
    if not os_profile.get("adminUsername"):
        raise invalid("Required parameter 'adminUsername' is missing (null).")
    ssh = ((os_profile.get("linuxConfiguration") or {}).get("ssh") or {}).get(
        "publicKeys")
    if not ssh and not os_profile.get("adminPassword"):
        raise invalid("Either an SSH public key or an admin password is required.")
    nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
    attached = [sim.by_id(n.get("id")) for n in nics]
    if not nics or None in attached:
        raise invalid(f"Network interface of VM {name} not found.",
                      "InvalidResourceReference")
    os_disk = dict(storage.get("osDisk") or {})
    disk_name = os_disk.get("name") or f"{name}_OsDisk_1"
    disk = sim.store(group, "disks", disk_name, {"tags": {}}, {
        "provisioningState": "Succeeded", "diskState": "Attached",
        "diskSizeGB": os_disk.get("diskSizeGB", 30)})
    os_disk["managedDisk"] = dict(os_disk.get("managedDisk") or {}, id=disk["id"])
    vm = sim.store(group, "virtualMachines", name, body, {
        "provisioningState": "Creating", "vmId": f"vm-{name}",
        "hardwareProfile": {"vmSize": size},
        "storageProfile": {"imageReference": storage.get("imageReference"),
                           "osDisk": os_disk},
        "osProfile": {k: v for k, v in os_profile.items() if k != "adminPassword"},
        "networkProfile": {"networkInterfaces": nics}})
    # Kept apart: ARM never returns userData, or the password, unless asked.
    vm["sim"] = {"userData": props.get("userData"),
                 "password": os_profile.get("adminPassword")}
    for nic in attached:
        nic["properties"]["virtualMachine"] = {"id": vm["id"]}
    disk["properties"]["managedBy"] = vm["id"]
    delay = knobs.boot_delay
    failing = knobs.capacity_failures > 0
    if failing:
        knobs.capacity_failures -= 1
    elif knobs.boot_hangs > 0:
        knobs.boot_hangs -= 1
        delay = None

    def boot():
        if vm["properties"]["provisioningState"] == "Deleting":
            return None
        if failing:
            vm["properties"]["provisioningState"] = "Failed"
            return ApiError(200, "AllocationFailed", "Allocation failed. We do not have "
                            f"sufficient capacity for the requested VM size {size} in "
                            "this region.")
        vm["properties"]["provisioningState"] = "Succeeded"
        return None

    return vm, sim.operation("Microsoft.Compute", delay, boot)


def check_image(sim: "AzureSimulator", reference: dict) -> None:
    from nodepool.testing.azure_sim import GALLERY_IMAGES, MARKETPLACE
    if reference.get("id"):
        if sim.by_id(reference["id"]) is None:
            raise invalid(f"The platform image '{reference['id']}' is not available.",
                          "InvalidParameter")
        return
    for key in ("sharedGalleryImageId", "communityGalleryImageId"):
        if reference.get(key):
            if reference[key] not in GALLERY_IMAGES:
                raise invalid(f"Gallery image {reference[key]} was not found.")
            return
    marketplace = (reference.get("publisher"), reference.get("offer"),
                   reference.get("sku"))
    if marketplace not in MARKETPLACE or not reference.get("version"):
        raise invalid(f"The platform image '{':'.join(map(str, marketplace))}:"
                      f"{reference.get('version')}' is not available.")


def create_disks(sim: "AzureSimulator", group: str, name: str,
                 body: dict) -> tuple[dict, str]:
    creation = (body.get("properties") or {}).get("creationData") or {}
    if creation.get("createOption") != "Upload":
        raise invalid("Only disks made for upload are simulated.")
    size = int(creation.get("uploadSizeBytes") or 0)
    if size <= 0 or size % 512:
        raise invalid("uploadSizeBytes must be a positive multiple of 512.")
    resource = sim.store(group, "disks", name, body, {
        "provisioningState": "Succeeded", "diskState": "ReadyToUpload",
        "creationData": creation})
    sim.state.blobs[name.lower()] = bytearray(size)
    return resource, sim.operation("Microsoft.Compute", sim.knobs.operation_delay)


def create_images(sim: "AzureSimulator", group: str, name: str,
                  body: dict) -> tuple[dict, str]:
    os_disk = ((body.get("properties") or {}).get("storageProfile") or {}).get(
        "osDisk") or {}
    disk = sim.by_id((os_disk.get("managedDisk") or {}).get("id"))
    if disk is None or disk["properties"].get("diskState") not in ("Unattached",):
        raise invalid("The source disk must exist and be uploaded (Unattached).")
    resource = sim.store(group, "images", name, body, {
        "provisioningState": "Creating", "storageProfile": {"osDisk": dict(os_disk)}})
    # What was uploaded, for tests to compare (ARM does not show it).
    resource["sim"] = {"data": bytes(sim.state.blobs.get(disk["name"].lower(), b""))}
    return resource, sim.operation("Microsoft.Compute", sim.knobs.operation_delay,
                                   lambda: _succeeded(resource))


def check_deletable(sim: "AzureSimulator", kind: str, resource: dict) -> None:
    props = resource["properties"]
    if kind == "networkInterfaces" and props.get("virtualMachine"):
        if sim.by_id(props["virtualMachine"]["id"]) is not None:
            raise ApiError(400, "NicInUse", f"Network Interface {resource['id']} is "
                           "used by existing resource "
                           f"{props['virtualMachine']['id']}.")
    if kind == "publicIPAddresses":
        for (other, _), nic in sim.state.resources.items():
            if other != "networkInterfaces":
                continue
            for config in nic["properties"]["ipConfigurations"]:
                pip = (config["properties"].get("publicIPAddress") or {}).get("id")
                if pip and pip.lower() == resource["id"].lower():
                    raise ApiError(400, "PublicIPAddressCannotBeDeleted",
                                   f"Public IP address {resource['id']} can not be "
                                   f"deleted since it is still allocated to {nic['id']}.")
    if kind == "disks" and props.get("managedBy"):
        if sim.by_id(props["managedBy"]) is not None:
            raise ApiError(409, "OperationNotAllowed", f"Disk {resource['name']} is "
                           f"attached to VM {props['managedBy']}.")


def _succeeded(resource: dict) -> None:
    resource["properties"]["provisioningState"] = "Succeeded"
    return None
