"""A VM's properties parsed back into a MachineSpec (the inverse of :mod:`.spec`).

Same normalisation as the builder: MiB, MHz, shares in the spec's scale (custom
level as given; a named level per vCPU; vSphere's default ``normal`` as unset).
Fields vSphere cannot report (a disk's name, its storage policy, a static
address given to guest customization) come from the intent pacsinfra wrote
into ``extraConfig`` when it created the machine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from pacsinfra.drivers.vsphere.spec import (
    DEFAULT_LEVEL_SHARES,
    INTENT_KEY,
    POWER_MAP,
    SHARES_PER_VCPU,
    disks_of,
    gpus_of,
    nics_of,
    owner_of,
    parse_gpu,
    without_kept,
)
from pacsinfra.specs import DiskSpec, MachineSpec, NicSpec, Ownership, PowerState


@dataclass
class ParsedVm:
    """A VM read back: the spec, and what classify/update need beyond it."""

    spec: MachineSpec
    owner: Ownership | None
    power: PowerState
    addresses: tuple[str, ...]
    hot_add: tuple[bool, bool] = (False, False)
    kept_disks: tuple[int, int] = (0, 0)
    unobservable: frozenset[str] = field(default_factory=frozenset)


def parse_shares(alloc: Any, vcpus: int) -> int | None:
    """The normalised share count: custom as given, a named level per vCPU, default normal as None."""
    shares = getattr(alloc, "shares", None)
    if shares is None:
        return None
    level = str(shares.level)
    if level == "custom":
        return int(shares.shares)
    if level == DEFAULT_LEVEL_SHARES:
        return None  # vSphere's default: the blueprint left shares unset
    return SHARES_PER_VCPU.get(level, 1000) * vcpus


def parse_vm(
    props: Mapping[str, Any],
    portgroup_names: Mapping[str, str],
    desired: MachineSpec | None = None,
) -> ParsedVm | None:
    """A VM's properties (``name``, ``config``, ``runtime.powerState``, ``guest.net``) as a MachineSpec.

    ``portgroup_names`` maps distributed port group keys to names. Fields only the
    intent holds come from it; a storage policy (unobservable through vcsim's and
    vCenter's PBM association queries in this driver) is taken from the intent.
    """
    cfg = props.get("config")
    if cfg is None:
        return None
    extra = {o.key: str(o.value) for o in cfg.extraConfig or ()}
    owner = owner_of(extra)
    try:
        intent = json.loads(extra.get(INTENT_KEY, "{}"))
    except ValueError:
        intent = {}
    devices = list(cfg.hardware.device or ())
    vcpus = int(cfg.hardware.numCPU)
    disks = []
    disk_intent = intent.get("disks") or []
    raw_kept = intent.get("kept_disks") or [0, 0]
    kept = (int(raw_kept[0]), int(raw_kept[1])) if isinstance(raw_kept, list) and len(raw_kept) == 2 else (0, 0)
    vm_disks = without_kept(disks_of(devices), kept)  # template disks the spec does not declare
    for i, dev in enumerate(vm_disks):
        meta = disk_intent[i] if i < len(disk_intent) else {}
        limit = getattr(getattr(dev, "storageIOAllocation", None), "limit", None)
        disks.append(
            DiskSpec(
                name=str(meta.get("name") or f"disk{i}"),
                size_mib=int(dev.capacityInKB or 0) // 1024,
                storage=str(meta.get("storage") or _datastore_of(dev)),
                provisioning="thin" if getattr(dev.backing, "thinProvisioned", False) else "thick",
                mount=meta.get("mount"),
                iops_limit=limit if limit and limit > 0 else None,
            )
        )
    nics = []
    nic_intent = intent.get("nics") or []
    for i, dev in enumerate(nics_of(devices)):
        meta = nic_intent[i] if i < len(nic_intent) else {}
        nics.append(
            NicSpec(
                network=_network_name(dev.backing, portgroup_names),
                address=meta.get("address"),
                prefix=meta.get("prefix"),
                gateway=meta.get("gateway"),
                vlan=meta.get("vlan"),
                mtu=int(meta.get("mtu") or 1500),
                mac=dev.macAddress or None,
            )
        )
    cpu = cfg.cpuAllocation
    mem = cfg.memoryAllocation
    power = POWER_MAP.get(str(props.get("runtime.powerState")), PowerState.UNKNOWN)
    index = intent.get("index", desired.index if desired else 0)
    spec = MachineSpec(
        address=owner.address if owner else (desired.address if desired else ""),
        name=str(props.get("name") or cfg.name),
        role=str(intent.get("role", desired.role if desired else "")),
        index=int(index),
        image=dict(intent.get("image") or {}),
        cpu_count=vcpus,
        memory_mib=int(cfg.hardware.memoryMB),
        cpu_reservation_mhz=(cpu.reservation or None) if cpu else None,
        cpu_limit_mhz=(cpu.limit if cpu and cpu.limit is not None and cpu.limit >= 0 else None),
        cpu_shares=parse_shares(cpu, vcpus),
        memory_reservation_mib=(mem.reservation or None) if mem else None,
        memory_lock=bool(cfg.memoryReservationLockedToMax),
        hugepages=bool(intent.get("hugepages", False)),
        disks=tuple(disks),
        nics=tuple(nics),
        gpu=parse_gpu(gpus_of(devices)),
        anti_affinity_group=intent.get("anti_affinity_group"),
        host_hint=intent.get("host_hint"),
        cluster_hint=intent.get("cluster_hint"),
        holds_data=bool(intent.get("holds_data", False)),
        hostname=intent.get("hostname"),
        ssh_authorized_keys=tuple(intent.get("ssh_authorized_keys") or ()),
        power_on=power is PowerState.ON,
    )
    addresses: list[str] = []
    for net in props.get("guest.net") or ():
        addresses += [str(a) for a in net.ipAddress or () if ":" not in str(a)]
    return ParsedVm(
        spec=spec,
        owner=owner,
        power=power,
        addresses=tuple(addresses),
        hot_add=(bool(cfg.cpuHotAddEnabled), bool(cfg.memoryHotAddEnabled)),
        kept_disks=kept,
    )


def _datastore_of(dev: Any) -> str:
    name = str(getattr(dev.backing, "fileName", "") or "")
    return name[1 : name.index("]")] if name.startswith("[") and "]" in name else name


def _network_name(backing: Any, portgroup_names: Mapping[str, str]) -> str:
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = str(backing.port.portgroupKey or "") if backing.port else ""
        return portgroup_names.get(key, key)
    return str(getattr(backing, "deviceName", "") or "")
