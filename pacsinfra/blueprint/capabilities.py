"""What each driver can do, as far as validation needs to know before any host is asked.

A small table, deliberately: the drivers know the details (a vSphere host lists its
vGPU types, libvirt its mdev types) and check them at plan time; this table only
rejects what a driver can *never* do, so the mistake shows up in ``validate``.

GPU modes:

- ``vgpu``: a mediated/virtual GPU profile — KVM (mdev, e.g. NVIDIA GRID ``nvidia-…``
  or ``grid_…`` types) and vSphere (shared PCI, ``grid_a40-8q``).
- ``partition``: Hyper-V GPU partitioning (GPU-P, ``Add-VMGpuPartitionAdapter``); the
  only shared-GPU mode Hyper-V has, so ``vgpu`` on Hyper-V is an error pointing here.
- ``passthrough``: a whole PCI device — KVM (VFIO hostdev), vSphere (DirectPath I/O),
  Hyper-V (Discrete Device Assignment).
- ``local`` runs services on this box, ``static`` on hosts that already exist (over SSH):
  neither makes machines, so no GPUs, no reservations, no VLANs, no images.
"""

from __future__ import annotations

from typing import Final

GPU_MODES: Final[dict[str, frozenset[str]]] = {
    "kvm": frozenset({"vgpu", "passthrough"}),
    "vsphere": frozenset({"vgpu", "passthrough"}),
    "hyperv": frozenset({"partition", "passthrough"}),
    "local": frozenset(),
    "static": frozenset(),
}

#: Drivers whose machines already exist (this box, or hosts reached over SSH): they need
#: no image and no NICs, and their storage classes are directories, not hypervisor objects.
EXISTING_HOSTS: Final[frozenset[str]] = frozenset({"local", "static"})

#: Features beyond GPUs; a blueprint asking for a missing one is an error.
FEATURES: Final[dict[str, frozenset[str]]] = {
    "kvm": frozenset(
        {"cpu_reservation", "cpu_limit", "cpu_shares", "memory_reservation", "memory_lock",
         "hugepages", "vlan", "jumbo_frames", "iops_limit", "anti_affinity"}
    ),
    "vsphere": frozenset(
        {"cpu_reservation", "cpu_limit", "cpu_shares", "memory_reservation", "memory_lock",
         "vlan", "jumbo_frames", "iops_limit", "iops_reservation", "storage_policy",
         "anti_affinity"}
    ),
    "hyperv": frozenset(
        {"cpu_reservation", "cpu_limit", "cpu_shares", "memory_reservation", "vlan",
         "jumbo_frames", "iops_limit", "iops_reservation", "anti_affinity"}
    ),
    "local": frozenset(),
    "static": frozenset(),
}

FEATURE_TEXT: Final[dict[str, str]] = {
    "cpu_reservation": "a CPU reservation",
    "cpu_limit": "a CPU limit",
    "cpu_shares": "CPU shares",
    "memory_reservation": "a memory reservation",
    "memory_lock": "locked memory",
    "hugepages": "huge pages",
    "vlan": "VLAN tagging",
    "jumbo_frames": "jumbo frames (MTU above 1500)",
    "iops_limit": "an IOPS limit",
    "iops_reservation": "an IOPS reservation",
    "storage_policy": "storage policies",
    "anti_affinity": "anti-affinity placement",
}


def can(driver: str, feature: str) -> bool:
    """Whether ``driver`` can do ``feature`` (a key of :data:`FEATURES`)."""
    return feature in FEATURES.get(driver, frozenset())


def drivers_that_can(feature: str) -> list[str]:
    """The drivers offering ``feature`` (for hints)."""
    return sorted(d for d, f in FEATURES.items() if feature in f)


__all__ = ["EXISTING_HOSTS", "FEATURES", "FEATURE_TEXT", "GPU_MODES", "can", "drivers_that_can"]
