"""How disruptive each field change is on Hyper-V (the table in docs/drivers/hyperv.md).

Processor count and static memory are fixed while a VM runs; weight, reserve and limit,
VLANs, switch connections and VHDX growth (Resize-VHD on a SCSI disk) apply live. Fields
pacsinfra only records in the Notes mark change in place. A new image or a shrunk disk
means a new machine.
"""

from __future__ import annotations

from pacsinfra.drivers.changes import ChangeTables
from pacsinfra.specs import ChangeKind, MachineSpec, Observed, Spec

IN_PLACE, POWER_OFF, REPLACE = ChangeKind.IN_PLACE, ChangeKind.NEEDS_POWER_OFF, ChangeKind.REPLACE

MACHINE_TABLE: dict[str, ChangeKind] = {
    "name": REPLACE,  # the VM and its VHDX files are named after it
    "image": REPLACE,  # the first disk is copied / differenced from the image
    "role": IN_PLACE,  # recorded in Notes
    "index": IN_PLACE,
    "cpu_count": POWER_OFF,  # Set-VMProcessor -Count needs the VM off
    "memory_mib": POWER_OFF,  # startup memory is fixed while the VM runs
    "memory_reservation_mib": POWER_OFF,  # static <-> dynamic switches need the VM off
    "cpu_shares": IN_PLACE,  # RelativeWeight, live
    "cpu_reservation_mhz": IN_PLACE,  # Reserve, live
    "cpu_limit_mhz": IN_PLACE,  # Maximum, live
    "memory_lock": IN_PLACE,  # recorded (static memory is never paged by Hyper-V)
    "hugepages": IN_PLACE,  # recorded only: Hyper-V has no such setting (validate warns)
    "disks": POWER_OFF,  # adding / removing disks; growth alone: see classify_change
    "disks.size_mib.grow": IN_PLACE,  # Resize-VHD on a SCSI-attached VHDX, live
    "disks.size_mib.shrink": REPLACE,  # never shrink a VHDX under a filesystem
    "disks.storage": REPLACE,  # another directory = another disk
    "disks.provisioning": REPLACE,  # fixed vs dynamic is chosen at New-VHD
    "disks.iops_limit": IN_PLACE,  # Storage QoS MaximumIOPS, live
    "disks.mount": IN_PLACE,  # a guest concern, recorded
    "nics": POWER_OFF,  # adapter count or static MAC; switch / VLAN alone: see classify_change
    "nics.network": IN_PLACE,  # Connect-VMNetworkAdapter, live
    "nics.vlan": IN_PLACE,  # Set-VMNetworkAdapterVlan -Access, live
    "nics.guest": IN_PLACE,  # address / prefix / gateway / MTU: recorded
    "gpu": POWER_OFF,  # GPU partition adapters need the VM off
    "anti_affinity_group": IN_PLACE,  # one host: recorded
    "host_hint": IN_PLACE,
    "cluster_hint": IN_PLACE,
    "holds_data": IN_PLACE,
    "hostname": IN_PLACE,  # recorded (no seed on Hyper-V yet)
    "ssh_authorized_keys": IN_PLACE,
    "power_on": IN_PLACE,
}

NETWORK_TABLE: dict[str, ChangeKind] = {
    "name": REPLACE,
    "settings": REPLACE,  # switch type / uplink adapter: the switch is re-created
    "purpose": IN_PLACE,  # recorded in the switch's Notes
    "vlan": IN_PLACE,  # VLANs live on the adapters (nics.vlan)
    "cidr": IN_PLACE,
    "gateway": IN_PLACE,
    "mtu": IN_PLACE,
    "qos": IN_PLACE,
}

STORAGE_TABLE: dict[str, ChangeKind] = {
    "name": REPLACE,  # the directory
    "settings": REPLACE,
    "tier": IN_PLACE,  # recorded in the directory's mark
    "encrypted": IN_PLACE,  # BitLocker is per volume, outside pacsinfra: recorded
    "provisioning": IN_PLACE,  # the default for new disks only
    "iops_limit": IN_PLACE,
    "iops_reservation": IN_PLACE,
}


TABLES = ChangeTables(MACHINE_TABLE, NETWORK_TABLE, STORAGE_TABLE)
classify = TABLES.classify
disk_changes = TABLES.disk_changes


def nic_changes(desired: MachineSpec, actual: MachineSpec) -> ChangeKind:
    """Switch and VLAN changes apply live; adapter count or a pinned MAC need the VM off."""
    if len(desired.nics) != len(actual.nics):
        return POWER_OFF
    kind = IN_PLACE
    for w, h in zip(desired.nics, actual.nics, strict=True):
        if w.mac is not None and w.mac != h.mac:
            kind = max(kind, POWER_OFF)
        if w.network != h.network:
            kind = max(kind, MACHINE_TABLE["nics.network"])
        if w.vlan != h.vlan:
            kind = max(kind, MACHINE_TABLE["nics.vlan"])
    return kind


def classify_change(desired: Spec, observed: Observed, field_name: str) -> ChangeKind:
    """Like :func:`classify`, knowing the actual value (disk growth, switch/VLAN-only NIC changes)."""
    actual = observed.spec
    if isinstance(desired, MachineSpec) and isinstance(actual, MachineSpec):
        if field_name == "disks":
            return disk_changes(desired, actual)
        if field_name == "nics":
            return nic_changes(desired, actual)
        if field_name == "memory_reservation_mib" and desired.memory_mib == actual.memory_mib:
            static = [
                r is None or r >= m.memory_mib or m.memory_lock
                for r, m in ((desired.memory_reservation_mib, desired), (actual.memory_reservation_mib, actual))
            ]
            if all(static):
                return IN_PLACE  # static memory either way: only the record changes
    return classify(desired, field_name)
