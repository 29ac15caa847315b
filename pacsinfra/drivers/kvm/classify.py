"""How disruptive each field change is on KVM (the table in docs/drivers/kvm.md).

Our templates declare no hot-pluggable vCPUs, memory or devices, so anything that
changes the virtual hardware needs the guest off. Scheduler tuning and disk growth
apply to a running guest; a new image or a shrunk disk means a new machine.
"""

from __future__ import annotations

from pacsinfra.drivers.base import (
    ChangeKind,
    MachineSpec,
    NetworkSpec,
    Observed,
    Spec,
    StorageSpec,
)

IN_PLACE, POWER_OFF, REPLACE = ChangeKind.IN_PLACE, ChangeKind.NEEDS_POWER_OFF, ChangeKind.REPLACE

MACHINE_TABLE: dict[str, ChangeKind] = {
    "name": REPLACE,  # the domain, its volumes and seed are named after it
    "image": REPLACE,  # the first disk is built from the image
    "role": IN_PLACE,  # recorded in metadata
    "index": IN_PLACE,
    "cpu_count": POWER_OFF,  # no hot-pluggable vCPUs
    "memory_mib": POWER_OFF,  # no memory hot-plug / balloon
    "cpu_shares": IN_PLACE,  # <shares>, set live with setSchedulerParameters
    "cpu_reservation_mhz": IN_PLACE,  # carried by <shares> (see domain.py)
    "cpu_limit_mhz": IN_PLACE,  # <global_quota>, set live
    "memory_reservation_mib": IN_PLACE,  # recorded only
    "memory_lock": POWER_OFF,  # <memoryBacking> is fixed at QEMU start
    "hugepages": POWER_OFF,
    "disks": POWER_OFF,  # adding/removing disks (no hot-plug); growth alone: see classify_change
    "disks.size_mib.grow": IN_PLACE,  # qemu-img / blockResize
    "disks.size_mib.shrink": REPLACE,  # qcow2 cannot shrink safely under a filesystem
    "disks.iops_limit": POWER_OFF,
    "disks.storage": REPLACE,  # moving a volume to another pool = a new disk
    "disks.provisioning": REPLACE,  # preallocation is chosen when the volume is created
    "disks.mount": IN_PLACE,  # a guest concern, recorded only
    "nics": POWER_OFF,  # network, VLAN, MTU, MAC, count: no hot-plug in our templates
    "gpu": POWER_OFF,
    "anti_affinity_group": IN_PLACE,  # single-host libvirt: recorded only
    "host_hint": IN_PLACE,
    "cluster_hint": IN_PLACE,
    "holds_data": IN_PLACE,
    "hostname": POWER_OFF,  # a new cloud-init seed, read at the next boot
    "ssh_authorized_keys": POWER_OFF,
    "power_on": IN_PLACE,
}

NETWORK_TABLE: dict[str, ChangeKind] = {
    "name": REPLACE,
    "purpose": IN_PLACE,
    "qos": IN_PLACE,
    "vlan": IN_PLACE,  # a port group's tag: redefine, applied as guests (re)connect
    "cidr": POWER_OFF,  # the network is restarted: its guests lose connectivity briefly
    "gateway": POWER_OFF,
    "mtu": POWER_OFF,
    "settings": POWER_OFF,  # forward mode / bridge / DHCP: redefine + restart the network
}

STORAGE_TABLE: dict[str, ChangeKind] = {
    "name": REPLACE,
    "settings": REPLACE,  # the pool's directory
    "tier": IN_PLACE,  # not modelled by libvirt
    "encrypted": REPLACE,  # would need every volume re-created with LUKS
    "provisioning": IN_PLACE,  # the default for new disks only
    "iops_limit": IN_PLACE,
    "iops_reservation": IN_PLACE,
}


def classify(spec: Spec, field_name: str) -> ChangeKind:
    """The worst case for changing ``field_name`` of ``spec`` (unknown fields: REPLACE)."""
    if isinstance(spec, MachineSpec):
        table = MACHINE_TABLE
    elif isinstance(spec, NetworkSpec):
        table = NETWORK_TABLE
    elif isinstance(spec, StorageSpec):
        table = STORAGE_TABLE
    else:  # pragma: no cover - Spec is a closed union
        return REPLACE
    return table.get(field_name, table.get(field_name.split(".")[0], REPLACE))


def disk_changes(desired: MachineSpec, actual: MachineSpec) -> ChangeKind:
    """The worst change among the disks, disk by disk (growth alone is IN_PLACE)."""
    have = {d.name: d for d in actual.disks}
    want = {d.name: d for d in desired.disks}
    kind = IN_PLACE
    if set(have) != set(want):
        kind = max(kind, POWER_OFF)
    for name, w in want.items():
        h = have.get(name)
        if h is None:
            continue
        if w.size_mib > h.size_mib:
            kind = max(kind, MACHINE_TABLE["disks.size_mib.grow"])
        elif w.size_mib < h.size_mib:
            kind = max(kind, MACHINE_TABLE["disks.size_mib.shrink"])
        for attr in ("storage", "provisioning", "iops_limit", "mount"):
            if getattr(w, attr) != getattr(h, attr):
                kind = max(kind, MACHINE_TABLE[f"disks.{attr}"])
    # the first disk is built from the image: its position must not change
    if desired.disks and actual.disks and desired.disks[0].name != actual.disks[0].name:
        kind = REPLACE
    return kind


def classify_change(desired: Spec, observed: Observed, field_name: str) -> ChangeKind:
    """Like :func:`classify`, but knowing the actual value (disk growth vs shrink)."""
    if (
        field_name == "disks"
        and isinstance(desired, MachineSpec)
        and isinstance(observed.spec, MachineSpec)
    ):
        return disk_changes(desired, observed.spec)
    return classify(desired, field_name)
