"""How disruptive each field change is on KVM (the table in docs/drivers/kvm.md).

Our templates declare no hot-pluggable vCPUs, memory or devices, so anything that
changes the virtual hardware needs the guest off. Scheduler tuning and disk growth
apply to a running guest; a new image or a shrunk disk means a new machine.
"""

from __future__ import annotations

from pacsinfra.drivers.changes import ChangeTables
from pacsinfra.specs import ChangeKind, MachineSpec, Observed, Spec

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


TABLES = ChangeTables(MACHINE_TABLE, NETWORK_TABLE, STORAGE_TABLE)
classify = TABLES.classify
disk_changes = TABLES.disk_changes


def classify_change(desired: Spec, observed: Observed, field_name: str) -> ChangeKind:
    """Like :func:`classify`, but knowing the actual value (disk growth vs shrink)."""
    if (
        field_name == "disks"
        and isinstance(desired, MachineSpec)
        and isinstance(observed.spec, MachineSpec)
    ):
        return disk_changes(desired, observed.spec)
    return classify(desired, field_name)
