"""MachineSpec <-> vSphere ConfigSpec: build one from the other and parse the VM back.

Pure: no I/O. Whatever needs the inventory (a port group's backing, a storage
policy's id, a datastore's name) is asked of a :class:`Resolver`; render() uses
one that only knows names. Parsing reads the same fields back with the same
normalisation (MiB, MHz, shares per the spec's scale), so a plan right after
an apply is empty; what vSphere cannot tell (a disk's name, a static address
given to guest customization) comes from the intent pacsinfra wrote into
``extraConfig`` when it created the machine.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pyVmomi import vim

from pacsinfra.specs import DiskSpec, GpuSpec, MachineSpec, NicSpec, Ownership, PowerState

OWNER_KEY = "pacsinfra.owner"
INTENT_KEY = "pacsinfra.intent"
DEFAULT_GUEST_ID = "otherLinux64Guest"
SCSI_UNITS = [u for u in range(16) if u != 7]  # unit 7 is the controller itself
SHARES_PER_VCPU = {"low": 500, "normal": 1000, "high": 2000}  # vSphere's own CPU share levels
DEFAULT_LEVEL_SHARES = "normal"

POWER_MAP: dict[str, PowerState] = {
    "poweredOn": PowerState.ON,
    "poweredOff": PowerState.OFF,
    "suspended": PowerState.SUSPENDED,
}


class Resolver(Protocol):
    """Inventory lookups the ConfigSpec builder needs."""

    def nic_backing(self, network: str) -> Any:
        """The VirtualEthernetCard backing for a port group name."""

    def disk_datastore(self, disk: DiskSpec) -> str:
        """The datastore name a new disk of this storage class goes on."""

    def policy_id(self, storage: str) -> str | None:
        """The PBM profile id of a storage policy name (None: no policy, datastore only)."""

    def passthrough(self, device: str) -> Any:
        """The DeviceBackingInfo of a host PCI device (by PCI address) for DirectPath I/O."""


class NameResolver:
    """A Resolver for render(): names only, no inventory."""

    def __init__(self, datastore: str = "datastore") -> None:
        self.datastore = datastore

    def nic_backing(self, network: str) -> Any:
        return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network)

    def disk_datastore(self, disk: DiskSpec) -> str:
        return self.datastore

    def policy_id(self, storage: str) -> str | None:
        return f"<policy {storage}>"

    def passthrough(self, device: str) -> Any:
        return vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
            id=device, deviceId="<from host>", systemId="<from host>", vendorId=0, deviceName=device
        )


# -- intent: what vSphere cannot report back ----------------------------------------------
def intent_of(spec: MachineSpec) -> dict[str, Any]:
    """The fields of ``spec`` that are not observable on the VM (kept in extraConfig)."""
    return {
        "image": dict(spec.image),
        "role": spec.role,
        "index": spec.index,
        "hugepages": spec.hugepages,
        "anti_affinity_group": spec.anti_affinity_group,
        "host_hint": spec.host_hint,
        "cluster_hint": spec.cluster_hint,
        "holds_data": spec.holds_data,
        "hostname": spec.hostname,
        "ssh_authorized_keys": list(spec.ssh_authorized_keys),
        "disks": [{"name": d.name, "storage": d.storage, "mount": d.mount} for d in spec.disks],
        "nics": [
            {"address": n.address, "prefix": n.prefix, "gateway": n.gateway, "vlan": n.vlan, "mtu": n.mtu}
            for n in spec.nics
        ],
    }


def owner_of(extra: Mapping[str, str]) -> Ownership | None:
    """The ownership mark in a VM's extraConfig, or None (not ours)."""
    raw = extra.get(OWNER_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Ownership(site=str(data["site"]), address=str(data["address"]), lineage=str(data["lineage"]))
    except (ValueError, KeyError, TypeError):
        return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def cloud_init(spec: MachineSpec) -> dict[str, str]:
    """guestinfo keys for cloud-init's VMware datasource (metadata + userdata, base64)."""
    hostname = spec.hostname or spec.name
    ethernets: dict[str, Any] = {}
    for i, nic in enumerate(spec.nics):
        conf: dict[str, Any]
        if nic.address:
            conf = {"addresses": [f"{nic.address}/{nic.prefix or 24}"]}
            if nic.gateway:
                conf["routes"] = [{"to": "default", "via": nic.gateway}] if i == 0 else []
        else:
            conf = {"dhcp4": True}
        if nic.mtu != 1500:
            conf["mtu"] = nic.mtu
        if nic.mac:
            conf["match"] = {"macaddress": nic.mac}
        ethernets[f"nic{i}"] = conf
    meta = {
        "instance-id": spec.name,
        "local-hostname": hostname,
        "network": {"version": 2, "ethernets": ethernets},
    }
    user: dict[str, Any] = {"hostname": hostname, "preserve_hostname": False}
    if spec.ssh_authorized_keys:
        user["ssh_authorized_keys"] = list(spec.ssh_authorized_keys)
    userdata = "#cloud-config\n" + json.dumps(user, sort_keys=True)
    return {
        "guestinfo.metadata": _b64(json.dumps(meta, sort_keys=True)),
        "guestinfo.metadata.encoding": "base64",
        "guestinfo.userdata": _b64(userdata),
        "guestinfo.userdata.encoding": "base64",
    }


# -- building -------------------------------------------------------------------------------
@dataclass
class Extras:
    """Driver settings that shape a ConfigSpec but are not part of MachineSpec."""

    guest_id: str = DEFAULT_GUEST_ID
    hot_add: bool = False
    latency_sensitivity: str | None = None  # "high" etc., when asked
    cloud_init: bool = True
    owner: Ownership | None = None
    # Template disks the spec does not declare (a role without ``disks`` cloned from a
    # template keeps the template's OS disk): (first position, count) among the VM's
    # disks; kept, never destroyed, and not reported.
    kept_disks: tuple[int, int] = (0, 0)


def cpu_allocation(spec: MachineSpec) -> Any:
    """CPU reservation / limit / shares (custom level carrying the normalised integer)."""
    alloc = vim.ResourceAllocationInfo(
        reservation=spec.cpu_reservation_mhz or 0,
        limit=spec.cpu_limit_mhz if spec.cpu_limit_mhz is not None else -1,
    )
    if spec.cpu_shares is not None:
        alloc.shares = vim.SharesInfo(level="custom", shares=spec.cpu_shares)
    else:
        alloc.shares = vim.SharesInfo(level=DEFAULT_LEVEL_SHARES, shares=0)
    return alloc


def memory_allocation(spec: MachineSpec) -> Any:
    """Memory reservation (MiB); a vGPU machine reserves all of its memory."""
    reservation = spec.memory_reservation_mib or 0
    return vim.ResourceAllocationInfo(reservation=reservation)


def extra_config(spec: MachineSpec, extras: Extras) -> list[Any]:
    """extraConfig: the ownership mark, the intent, cloud-init guestinfo."""
    intent = intent_of(spec)
    if extras.kept_disks[1]:
        intent["kept_disks"] = list(extras.kept_disks)
    values: dict[str, str] = {INTENT_KEY: json.dumps(intent, sort_keys=True)}
    if extras.owner is not None:
        values[OWNER_KEY] = json.dumps(extras.owner.to_dict(), sort_keys=True)
    if extras.cloud_init:
        values.update(cloud_init(spec))
    return [vim.option.OptionValue(key=k, value=v) for k, v in sorted(values.items())]


def annotation(owner: Ownership) -> str:
    """The human-readable note shown in the vSphere client."""
    return (
        f"Managed by pacsinfra (site {owner.site}, {owner.address}). "
        "Changes made by hand are reported as drift and reverted by the next apply."
    )


def base_config(spec: MachineSpec, extras: Extras) -> Any:
    """The ConfigSpec fields that are not devices (used for create and for full reconfigure)."""
    cfg = vim.vm.ConfigSpec(
        numCPUs=spec.cpu_count,
        memoryMB=spec.memory_mib,
        cpuAllocation=cpu_allocation(spec),
        memoryAllocation=memory_allocation(spec),
        memoryReservationLockedToMax=spec.memory_lock,
        extraConfig=extra_config(spec, extras),
    )
    if extras.owner is not None:
        cfg.annotation = annotation(extras.owner)
    if extras.latency_sensitivity:
        cfg.latencySensitivity = vim.LatencySensitivity(level=extras.latency_sensitivity)
    return cfg


def new_config(spec: MachineSpec, extras: Extras, datastore: str, resolver: Resolver) -> Any:
    """The ConfigSpec of CreateVM_Task for an empty machine."""
    cfg = base_config(spec, extras)
    cfg.name = spec.name
    cfg.guestId = extras.guest_id
    cfg.files = vim.vm.FileInfo(vmPathName=f"[{datastore}]")
    cfg.cpuHotAddEnabled = extras.hot_add
    cfg.memoryHotAddEnabled = extras.hot_add
    policy = _home_policy(spec, resolver)
    if policy:
        cfg.vmProfile = [vim.vm.DefinedProfileSpec(profileId=policy)]
    cfg.deviceChange = device_changes(spec, [], resolver)
    return cfg


def _home_policy(spec: MachineSpec, resolver: Resolver) -> str | None:
    # The VM home (vmx, logs, swap) follows the first disk's storage class.
    return resolver.policy_id(spec.disks[0].storage) if spec.disks else None


@dataclass
class _Keys:
    next: int = -100

    def take(self) -> int:
        self.next -= 1
        return self.next


def _disk_spec(disk: DiskSpec, ctrl_key: int, unit: int, key: int, resolver: Resolver) -> Any:
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        diskMode="persistent",
        thinProvisioned=disk.provisioning == "thin",
        eagerlyScrub=False,
        fileName=f"[{resolver.disk_datastore(disk)}]",
    )
    dev = vim.vm.device.VirtualDisk(
        key=key,
        controllerKey=ctrl_key,
        unitNumber=unit,
        capacityInKB=disk.size_mib * 1024,
        backing=backing,
    )
    if disk.iops_limit:
        dev.storageIOAllocation = vim.StorageResourceManager.IOAllocationInfo(limit=disk.iops_limit)
    change = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=dev)
    policy = resolver.policy_id(disk.storage)
    if policy:
        change.profile = [vim.vm.DefinedProfileSpec(profileId=policy)]
    return change


def _nic_device(nic: NicSpec, key: int, resolver: Resolver) -> Any:
    dev = vim.vm.device.VirtualVmxnet3(
        key=key,
        backing=resolver.nic_backing(nic.network),
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, allowGuestControl=True, connected=True),
    )
    if nic.mac:
        dev.addressType = "manual"
        dev.macAddress = nic.mac
    else:
        dev.addressType = "generated"
    return dev


def _gpu_device(gpu: GpuSpec, key: int, resolver: Resolver) -> Any:
    backing: Any
    if gpu.mode == "vgpu":
        backing = vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo(vgpu=gpu.profile)
    else:
        backing = resolver.passthrough(gpu.device or "")
    return vim.vm.device.VirtualPCIPassthrough(key=key, backing=backing)


def disks_of(devices: Sequence[Any]) -> list[Any]:
    """The VM's virtual disks in a stable order (controller, unit)."""
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    return sorted(disks, key=lambda d: (d.controllerKey or 0, d.unitNumber or 0))


def nics_of(devices: Sequence[Any]) -> list[Any]:
    """The VM's network adapters in device-key order (the order the guest enumerates them)."""
    return sorted((d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)), key=lambda d: d.key)


def gpus_of(devices: Sequence[Any]) -> list[Any]:
    return sorted((d for d in devices if isinstance(d, vim.vm.device.VirtualPCIPassthrough)), key=lambda d: d.key)


def device_changes(
    spec: MachineSpec,
    devices: Sequence[Any],
    resolver: Resolver,
    *,
    only: frozenset[str] = frozenset({"disks", "nics", "gpu"}),
    kept_disks: tuple[int, int] = (0, 0),
) -> list[Any]:
    """deviceChange bringing ``devices`` (the VM's, or [] for a new VM) to ``spec``.

    Disks and NICs are matched by position. Disks only grow (shrinking is refused
    by classify before we get here); the ``kept_disks`` range (template disks the
    spec does not declare) is skipped and left alone; surplus NICs are removed;
    GPUs are rebuilt.
    """
    keys = _Keys()
    out: list[Any] = []
    if "disks" in only:
        out += _disk_changes(spec, devices, resolver, keys, kept_disks)
    if "nics" in only:
        out += _nic_changes(spec, devices, resolver, keys)
    if "gpu" in only:
        out += _gpu_changes(spec, devices, keys, resolver)
    return out


def without_kept(disks: list[Any], kept: tuple[int, int]) -> list[Any]:
    """The VM's disks less the kept template disks (positions kept[0] .. kept[0]+kept[1]-1)."""
    start, count = kept
    return disks[:start] + disks[start + count :] if count else disks


def _format_backing(backing: Any, provisioning: str) -> bool:
    """Set a flat disk backing to ``provisioning`` (thick is eager-zeroed); True if it changed."""
    thin = provisioning == "thin"
    if bool(getattr(backing, "thinProvisioned", False)) == thin:
        return False
    backing.thinProvisioned = thin
    backing.eagerlyScrub = not thin
    return True


def clone_disk_locators(spec: MachineSpec, template_devices: Sequence[Any], datastore: Any) -> list[Any]:
    """RelocateSpec disk locators that clone each template disk the spec keeps in the
    spec's format (vCenter converts thin <-> thick while copying)."""
    out = []
    for disk, dev in zip(spec.disks, disks_of(template_devices), strict=False):
        thin = disk.provisioning == "thin"
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            diskMode="persistent", thinProvisioned=thin, eagerlyScrub=not thin, fileName="")
        out.append(vim.vm.RelocateSpec.DiskLocator(diskId=dev.key, datastore=datastore,
                                                   diskBackingInfo=backing))
    return out


def _disk_changes(
    spec: MachineSpec, devices: Sequence[Any], resolver: Resolver, keys: _Keys, kept: tuple[int, int] = (0, 0)
) -> list[Any]:
    out: list[Any] = []
    have = without_kept(disks_of(devices), kept)
    scsi = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]
    if scsi:
        ctrl_key = scsi[0].key
        used = {d.unitNumber for d in devices if getattr(d, "controllerKey", None) == ctrl_key}
    else:
        ctrl_key = keys.take()
        used = set()
        if spec.disks:
            ctrl = vim.vm.device.ParaVirtualSCSIController(key=ctrl_key, busNumber=0, sharedBus="noSharing")
            out.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=ctrl))
    free = [u for u in SCSI_UNITS if u not in used]
    for i, disk in enumerate(spec.disks):
        if i < len(have):
            dev = have[i]
            changed = False
            if (dev.capacityInKB or 0) < disk.size_mib * 1024:
                dev.capacityInKB = disk.size_mib * 1024
                dev.capacityInBytes = disk.size_mib * 1024 * 1024
                changed = True
            if _format_backing(dev.backing, disk.provisioning):
                changed = True  # a clone vCenter did not convert (the simulator ignores locators)
            limit = getattr(getattr(dev, "storageIOAllocation", None), "limit", None)
            want = disk.iops_limit if disk.iops_limit else -1
            if (limit if limit is not None else -1) != want:
                dev.storageIOAllocation = vim.StorageResourceManager.IOAllocationInfo(limit=want)
                changed = True
            change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)
            policy = resolver.policy_id(disk.storage)
            if policy:
                change.profile = [vim.vm.DefinedProfileSpec(profileId=policy)]
                changed = True
            if changed:
                out.append(change)
            continue
        if not free:
            raise ValueError(f"{spec.name}: more disks than one SCSI controller holds")
        out.append(_disk_spec(disk, ctrl_key, free.pop(0), keys.take(), resolver))
    for dev in have[len(spec.disks) :]:
        out.append(vim.vm.device.VirtualDeviceSpec(operation="remove", fileOperation="destroy", device=dev))
    return out


def _nic_changes(spec: MachineSpec, devices: Sequence[Any], resolver: Resolver, keys: _Keys) -> list[Any]:
    out: list[Any] = []
    have = nics_of(devices)
    for i, nic in enumerate(spec.nics):
        if i < len(have):
            dev = have[i]
            backing = resolver.nic_backing(nic.network)
            if not _same_backing(dev.backing, backing) or (nic.mac and nic.mac != dev.macAddress):
                dev.backing = backing
                if nic.mac:
                    dev.addressType, dev.macAddress = "manual", nic.mac
                out.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev))
            continue
        out.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=_nic_device(nic, keys.take(), resolver)))
    for dev in have[len(spec.nics) :]:
        out.append(vim.vm.device.VirtualDeviceSpec(operation="remove", device=dev))
    return out


def _same_backing(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        return bool(a.port and b.port and a.port.portgroupKey == b.port.portgroupKey)
    return bool(getattr(a, "deviceName", None) == getattr(b, "deviceName", None))


def _gpu_changes(spec: MachineSpec, devices: Sequence[Any], keys: _Keys, resolver: Resolver) -> list[Any]:
    have = gpus_of(devices)
    if parse_gpu(have) == spec.gpu:
        return []
    out = [vim.vm.device.VirtualDeviceSpec(operation="remove", device=d) for d in have]
    if spec.gpu is not None:
        for _ in range(spec.gpu.count):
            out.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=_gpu_device(spec.gpu, keys.take(), resolver)))
    return out


def customization(spec: MachineSpec, domain: str = "local") -> Any | None:
    """Guest customization for hostname + static addresses (None when nothing is static)."""
    if not any(n.address for n in spec.nics):
        return None
    adapters = []
    for nic in spec.nics:
        if nic.address:
            ip = vim.vm.customization.IPSettings(
                ip=vim.vm.customization.FixedIp(ipAddress=nic.address),
                subnetMask=_mask(nic.prefix or 24),
            )
            if nic.gateway:
                ip.gateway = [nic.gateway]
        else:
            ip = vim.vm.customization.IPSettings(ip=vim.vm.customization.DhcpIpGenerator())
        adapters.append(vim.vm.customization.AdapterMapping(adapter=ip))
    return vim.vm.customization.Specification(
        identity=vim.vm.customization.LinuxPrep(
            hostName=vim.vm.customization.FixedName(name=(spec.hostname or spec.name)[:63]), domain=domain
        ),
        globalIPSettings=vim.vm.customization.GlobalIPSettings(),
        nicSettingMap=adapters,
    )


def _mask(prefix: int) -> str:
    bits = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((bits >> s) & 0xFF) for s in (24, 16, 8, 0))


def parse_gpu(devices: Sequence[Any]) -> GpuSpec | None:
    """vGPU (VmiopBackingInfo profile) or passthrough devices, as one GpuSpec."""
    if not devices:
        return None
    first = devices[0].backing
    if isinstance(first, vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo):
        return GpuSpec(mode="vgpu", profile=first.vgpu, count=len(devices))
    return GpuSpec(mode="passthrough", device=getattr(first, "id", None) or None, count=len(devices))
