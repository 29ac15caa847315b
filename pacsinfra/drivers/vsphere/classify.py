"""How disruptive a change is on vSphere: one table per spec type, plus the value-aware cases.

In place where vSphere allows it on a running VM (allocation, NIC network,
disk growth, CPU/memory hot-add when enabled), power-off-and-reconfigure where
it does not, replace only when nothing else works (shrinking a disk, a new image).
"""

from __future__ import annotations

from pacsinfra.specs import ChangeKind, MachineSpec, NetworkSpec, Observed, Spec, StorageSpec

IN_PLACE, POWER_OFF, REPLACE = ChangeKind.IN_PLACE, ChangeKind.NEEDS_POWER_OFF, ChangeKind.REPLACE

MACHINE: dict[str, ChangeKind] = {
    "name": IN_PLACE,  # Rename_Task
    "role": REPLACE,
    "index": REPLACE,
    "image": REPLACE,  # a different template is a different machine
    "cpu_count": POWER_OFF,  # IN_PLACE when CPU hot-add is enabled and it grows
    "memory_mib": POWER_OFF,  # IN_PLACE when memory hot-add is enabled and it grows
    "cpu_reservation_mhz": IN_PLACE,
    "cpu_limit_mhz": IN_PLACE,
    "cpu_shares": IN_PLACE,
    "memory_reservation_mib": IN_PLACE,
    "memory_lock": IN_PLACE,
    "hugepages": IN_PLACE,  # ESXi backs guest memory with large pages already: recorded only
    "disks": IN_PLACE,  # growth, a new disk, IOPS limit, policy; shrink/removal/type -> REPLACE
    "nics": IN_PLACE,  # network change, hot-add/remove; address or MAC change -> POWER_OFF
    "gpu": POWER_OFF,  # PCI devices are not hot-pluggable
    "anti_affinity_group": IN_PLACE,  # a DRS rule
    "host_hint": IN_PLACE,  # vMotion
    "cluster_hint": REPLACE,
    "holds_data": IN_PLACE,
    "hostname": POWER_OFF,  # guest customization runs while off
    "ssh_authorized_keys": POWER_OFF,  # guestinfo cloud-init is read at boot
    "power_on": IN_PLACE,
}

NETWORK: dict[str, ChangeKind] = {
    "name": REPLACE,
    "purpose": IN_PLACE,
    "vlan": IN_PLACE,
    "cidr": IN_PLACE,
    "gateway": IN_PLACE,
    "mtu": IN_PLACE,
    "qos": IN_PLACE,
    "settings": REPLACE,  # standard <-> distributed, another switch
}

STORAGE: dict[str, ChangeKind] = {
    "name": REPLACE,
    "tier": IN_PLACE,
    "encrypted": IN_PLACE,
    "provisioning": IN_PLACE,
    "iops_limit": IN_PLACE,
    "iops_reservation": IN_PLACE,
    "settings": IN_PLACE,
}


def classify(spec: Spec, field_name: str) -> ChangeKind:
    """The table's answer (REPLACE for a field it does not know: the safe side)."""
    if isinstance(spec, MachineSpec):
        table = MACHINE
    elif isinstance(spec, NetworkSpec):
        table = NETWORK
    elif isinstance(spec, StorageSpec):
        table = STORAGE
    else:
        return REPLACE
    return table.get(field_name, REPLACE)


def classify_change(
    spec: Spec, observed: Observed, field_name: str, hot_add: tuple[bool, bool] = (False, False)
) -> ChangeKind:
    """Like :func:`classify`, looking at the actual value (growth vs shrink, hot-add)."""
    base = classify(spec, field_name)
    have = observed.spec
    if not isinstance(spec, MachineSpec) or not isinstance(have, MachineSpec):
        return base
    if field_name == "cpu_count":
        return IN_PLACE if hot_add[0] and spec.cpu_count > have.cpu_count else POWER_OFF
    if field_name == "memory_mib":
        return IN_PLACE if hot_add[1] and spec.memory_mib > have.memory_mib else POWER_OFF
    if field_name == "disks":
        return _disks(spec, have)
    if field_name == "nics":
        return _nics(spec, have)
    return base


def _disks(want: MachineSpec, have: MachineSpec) -> ChangeKind:
    if len(want.disks) < len(have.disks):
        return REPLACE  # removing a disk destroys its data
    for w, h in zip(want.disks, have.disks, strict=False):
        if w.size_mib < h.size_mib or w.provisioning != h.provisioning:
            return REPLACE  # vSphere cannot shrink a disk or change its type in place
    return IN_PLACE


def _nics(want: MachineSpec, have: MachineSpec) -> ChangeKind:
    for w, h in zip(want.nics, have.nics, strict=False):
        if (w.address, w.prefix, w.gateway) != (h.address, h.prefix, h.gateway):
            return POWER_OFF  # re-customization runs while off
        if w.mac is not None and w.mac != h.mac:
            return POWER_OFF
    return IN_PLACE
