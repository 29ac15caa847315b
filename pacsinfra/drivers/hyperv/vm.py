"""MachineSpec <-> the JSON contract of the VM scripts (new-vm, set-vm, get-vm).

Pure functions: no I/O. The same mapping renders a spec into script parameters and parses
the facts a script reports back into a MachineSpec, so a plan compares like with like.

Hyper-V speaks percentages and weights where the blueprint speaks MHz and shares:

* ``Reserve`` / ``Maximum`` are percent of the VM's own vCPUs (100 = every vCPU a whole
  host core): ``percent = ceil(MHz * 100 / (vCPUs * host MHz))`` for a reservation,
  ``round(...)`` for a limit (100 = no limit).
* ``RelativeWeight`` (1..10000, default 100) is the shares per vCPU / 10, so the blueprint's
  normal (1000 per vCPU) is Hyper-V's default 100.

A value read back that equals what the desired value would be set to is reported as the
desired value (the conversion is not one-to-one); anything else is converted back, so a
change made behind pacsinfra's back shows up as drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacsinfra.drivers.hyperv.marks import make_mark, parse_mark
from pacsinfra.specs import DiskSpec, GpuSpec, MachineSpec, NicSpec, Ownership, PowerState

GENERATION = 2
DEFAULT_WEIGHT = 100
LINUX_SECURE_BOOT = "MicrosoftUEFICertificateAuthority"
WINDOWS_SECURE_BOOT = "MicrosoftWindows"

# Hyper-V's VMState names -> PowerState; unknowns map to UNKNOWN
STATE_MAP: dict[str, PowerState] = {
    "Running": PowerState.ON,
    "Off": PowerState.OFF,
    "Paused": PowerState.SUSPENDED,
    "Saved": PowerState.SUSPENDED,
}

# Spec fields Hyper-V does not model: kept in the VM's Notes mark and read back from there.
RECORDED_FIELDS = (
    "role",
    "index",
    "holds_data",
    "hostname",
    "ssh_authorized_keys",
    "anti_affinity_group",
    "host_hint",
    "cluster_hint",
    "memory_lock",
    "hugepages",
)


@dataclass(frozen=True)
class HostContext:
    """What the mapping needs to know about the host and the settings."""

    host_mhz: int | None
    storage_root: str
    vm_path: str | None = None


# -- paths -------------------------------------------------------------------------
def is_absolute(path: str) -> bool:
    """``D:\\x`` or ``\\\\server\\share``: a Windows absolute path."""
    return (len(path) > 2 and path[1] == ":" and path[2] in "\\/") or path.startswith("\\\\")


def storage_dir(storage: str, ctx: HostContext) -> str:
    """The directory of a storage class: absolute as given, else under ``storage_root``."""
    storage = storage.rstrip("\\/")
    return storage if is_absolute(storage) else f"{ctx.storage_root}\\{storage}"


def disk_path(vm: str, disk: DiskSpec, ctx: HostContext) -> str:
    """``<storage dir>\\<vm>-<disk>.vhdx``: every disk is named after its VM."""
    return f"{storage_dir(disk.storage, ctx)}\\{vm}-{disk.name}.vhdx"


def split_path(path: str) -> tuple[str, str]:
    """Directory and file name of a Windows path."""
    head, _, tail = path.replace("/", "\\").rpartition("\\")
    return head, tail


# -- conversions -------------------------------------------------------------------
def reserve_percent(mhz: int | None, count: int, host_mhz: int | None) -> int:
    if not mhz or not host_mhz:
        return 0
    return max(0, min(100, math.ceil(mhz * 100 / (count * host_mhz))))


def limit_percent(mhz: int | None, count: int, host_mhz: int | None) -> int:
    if not mhz or not host_mhz:
        return 100
    return max(1, min(100, round(mhz * 100 / (count * host_mhz))))


def weight(shares: int | None, count: int) -> int:
    if shares is None:
        return DEFAULT_WEIGHT
    return max(1, min(10000, round(shares / max(count, 1) / 10)))


def observe(candidates: tuple[Any, ...], actual_raw: Any, to_raw: Callable[[Any], Any],
            default_raw: Any, from_raw: Callable[[Any], Any]) -> Any:
    """The first candidate (desired, then recorded) that maps onto what is set, else the
    actual value converted back (None for Hyper-V's default)."""
    for value in candidates:
        if value is not None and to_raw(value) == actual_raw:
            return value
    if actual_raw == default_raw:
        return None
    return from_raw(actual_raw)


def memory_section(spec: MachineSpec) -> dict[str, Any]:
    """Static memory, or dynamic between the reservation and the size."""
    res = spec.memory_reservation_mib
    dynamic = res is not None and res < spec.memory_mib and not spec.memory_lock
    return {
        "dynamic": dynamic,
        "startup_mib": spec.memory_mib,
        "minimum_mib": res if dynamic else spec.memory_mib,
        "maximum_mib": spec.memory_mib,
    }


def processor_section(spec: MachineSpec, ctx: HostContext) -> dict[str, Any]:
    return {
        "count": spec.cpu_count,
        "reserve": reserve_percent(spec.cpu_reservation_mhz, spec.cpu_count, ctx.host_mhz),
        "maximum": limit_percent(spec.cpu_limit_mhz, spec.cpu_count, ctx.host_mhz),
        "weight": weight(spec.cpu_shares, spec.cpu_count),
    }


def hyperv_mac(mac: str | None) -> str | None:
    """``00:15:5d:0a:0b:0c`` -> ``00155D0A0B0C`` (what Set-VMNetworkAdapter takes)."""
    return mac.replace(":", "").replace("-", "").upper() if mac else None


def normal_mac(mac: str | None) -> str | None:
    """Hyper-V's ``00155D0A0B0C`` -> ``00:15:5d:0a:0b:0c``; an unassigned all-zero MAC -> None."""
    if not mac:
        return None
    raw = mac.replace(":", "").replace("-", "").lower()
    if len(raw) != 12 or raw == "0" * 12:
        return None
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def adapters_section(spec: MachineSpec) -> list[dict[str, Any]]:
    return [
        {"name": f"nic{i}", "switch": nic.network, "vlan": nic.vlan, "mac": hyperv_mac(nic.mac)}
        for i, nic in enumerate(spec.nics)
    ]


def disks_section(spec: MachineSpec, ctx: HostContext) -> list[dict[str, Any]]:
    out = []
    for i, d in enumerate(spec.disks):
        source = spec.image.get("vhdx") if i == 0 else None
        out.append(
            {
                "path": disk_path(spec.name, d, ctx),
                "size_mib": d.size_mib,
                "type": "Fixed" if d.provisioning == "thick" else "Dynamic",
                "source": source,
                "mode": str(spec.image.get("mode", "copy")) if source else None,
                "maximum_iops": int(d.iops_limit or 0),
            }
        )
    return out


def gpus_section(spec: MachineSpec) -> list[dict[str, Any]]:
    if spec.gpu is None or spec.gpu.mode != "partition":
        return []
    return [{"instance_path": spec.gpu.device} for _ in range(spec.gpu.count)]


def secure_boot(spec: MachineSpec) -> dict[str, Any]:
    """Secure Boot on, with the Linux (UEFI CA) template unless the image says Windows."""
    enabled = bool(spec.image.get("secure_boot", True))
    template = spec.image.get("secure_boot_template") or (
        WINDOWS_SECURE_BOOT if str(spec.image.get("os", "linux")).lower() == "windows" else LINUX_SECURE_BOOT
    )
    return {"enabled": enabled, "template": str(template)}


def recorded(spec: MachineSpec) -> dict[str, Any]:
    """The fields kept in the Notes mark."""
    rec: dict[str, Any] = {f: getattr(spec, f) for f in RECORDED_FIELDS}
    rec["ssh_authorized_keys"] = list(spec.ssh_authorized_keys)
    rec["image"] = dict(spec.image)
    rec["nics"] = [
        {"address": n.address, "prefix": n.prefix, "gateway": n.gateway, "mtu": n.mtu} for n in spec.nics
    ]
    rec["mounts"] = {d.name: d.mount for d in spec.disks if d.mount is not None}
    rec["gpu_profile"] = spec.gpu.profile if spec.gpu else None
    # what the percentages / weight were computed from, so a spec listed without its
    # desired counterpart (adoption) reads back the same MHz and shares
    rec["cpu"] = {"reservation_mhz": spec.cpu_reservation_mhz, "limit_mhz": spec.cpu_limit_mhz,
                  "shares": spec.cpu_shares}
    rec["memory_reservation_mib"] = spec.memory_reservation_mib
    return rec


def notes(spec: MachineSpec, owner: Ownership) -> str:
    return make_mark(owner, recorded(spec))


def new_vm_parameters(spec: MachineSpec, owner: Ownership, ctx: HostContext) -> dict[str, Any]:
    """The new-vm script's parameters document."""
    first_dir = storage_dir(spec.disks[0].storage, ctx) if spec.disks else ctx.storage_root
    return {
        "name": spec.name,
        "generation": GENERATION,
        "path": ctx.vm_path or first_dir,
        "notes": notes(spec, owner),
        "processor": processor_section(spec, ctx),
        "memory": memory_section(spec),
        "secure_boot": secure_boot(spec),
        "adapters": adapters_section(spec),
        "disks": disks_section(spec, ctx),
        "gpus": gpus_section(spec),
        "start": spec.power_on,
    }


CPU_FIELDS = frozenset({"cpu_count", "cpu_reservation_mhz", "cpu_limit_mhz", "cpu_shares"})
MEMORY_FIELDS = frozenset({"memory_mib", "memory_reservation_mib", "memory_lock"})


def set_vm_parameters(spec: MachineSpec, vm_id: str, owner: Ownership, fields: Sequence[str], *,
                      stop_first: bool, ctx: HostContext, shutdown_timeout: int = 120) -> dict[str, Any]:
    """The set-vm script's parameters: only the sections ``fields`` touch are non-null."""
    wanted = set(fields)
    return {
        "id": vm_id,
        "name": spec.name,
        "stop_first": stop_first,
        "shutdown_timeout": shutdown_timeout,  # seconds of guest shutdown before a power-off
        "notes": notes(spec, owner),  # always: recorded fields and the MHz behind the percentages
        "processor": processor_section(spec, ctx) if wanted & CPU_FIELDS else None,
        "memory": memory_section(spec) if wanted & MEMORY_FIELDS else None,
        "adapters": adapters_section(spec) if "nics" in wanted else None,
        "disks": disks_section(spec, ctx) if "disks" in wanted else None,
        "gpus": gpus_section(spec) if "gpu" in wanted else None,
        "start": spec.power_on if (stop_first or "power_on" in wanted) else None,
    }


# -- parsing -----------------------------------------------------------------------
def _storage_name(directory: str, want: DiskSpec | None, ctx: HostContext) -> str:
    if want is not None and storage_dir(want.storage, ctx).lower() == directory.lower():
        return want.storage
    prefix = ctx.storage_root + "\\"
    if directory.lower().startswith(prefix.lower()) and "\\" not in directory[len(prefix) :]:
        return directory[len(prefix) :]
    return directory


def parse_disks(facts: Mapping[str, Any], desired: MachineSpec | None, rec: Mapping[str, Any],
                ctx: HostContext) -> tuple[DiskSpec, ...]:
    name = str(facts["name"])
    want = {d.name: d for d in desired.disks} if desired else {}
    mounts = rec.get("mounts") or {}
    out = []
    for d in facts.get("disks") or []:
        directory, file = split_path(str(d["path"]))
        stem = file[:-5] if file.lower().endswith(".vhdx") else file
        disk_name = stem[len(name) + 1 :] if stem.startswith(name + "-") else stem
        out.append(
            DiskSpec(
                name=disk_name,
                size_mib=int(d["size_mib"]),
                storage=_storage_name(directory, want.get(disk_name), ctx),
                provisioning="thick" if d.get("type") == "Fixed" else "thin",
                mount=mounts.get(disk_name),
                iops_limit=int(d.get("maximum_iops") or 0) or None,
            )
        )
    return tuple(out)


def parse_nics(facts: Mapping[str, Any], rec: Mapping[str, Any]) -> tuple[NicSpec, ...]:
    guest = list(rec.get("nics") or [])
    adapters = sorted(facts.get("adapters") or [], key=lambda a: _nic_order(str(a.get("name", ""))))
    out = []
    for i, a in enumerate(adapters):
        g = guest[i] if i < len(guest) and isinstance(guest[i], dict) else {}
        out.append(
            NicSpec(
                network=str(a.get("switch") or ""),
                address=g.get("address"),
                prefix=g.get("prefix"),
                gateway=g.get("gateway"),
                vlan=a.get("vlan"),
                mtu=int(g.get("mtu") or 1500),
                mac=normal_mac(a.get("mac")),
            )
        )
    return tuple(out)


def _nic_order(name: str) -> tuple[int, str]:
    return (int(name[3:]), name) if name.startswith("nic") and name[3:].isdigit() else (1 << 30, name)


def parse_image(facts: Mapping[str, Any], rec: Mapping[str, Any]) -> dict[str, Any]:
    """The image record, corrected by what the first disk shows (its differencing parent)."""
    image = dict(rec.get("image") or {})
    disks = facts.get("disks") or []
    if disks and image.get("mode") == "differencing":
        parent = disks[0].get("parent")
        if parent:
            image["vhdx"] = parent
        else:
            image["mode"] = "copy"
    return image


def parse_vm(facts: Mapping[str, Any], desired: MachineSpec | None, ctx: HostContext,
             ) -> tuple[MachineSpec, Ownership | None, PowerState, tuple[str, ...]]:
    """A VM's facts as (MachineSpec, owner, power, IPv4 addresses)."""
    mark = parse_mark(facts.get("notes"))
    owner, rec = mark if mark else (None, {})
    proc = facts["processor"]
    mem = facts["memory"]
    count = int(proc["count"])
    mhz = ctx.host_mhz
    cpu_rec = rec.get("cpu") or {}

    def candidates(name: str, rec_name: str) -> tuple[Any, ...]:
        return (getattr(desired, name) if desired else None, cpu_rec.get(rec_name))

    reservation = observe(
        candidates("cpu_reservation_mhz", "reservation_mhz"), int(proc["reserve"]),
        lambda v: reserve_percent(v, count, mhz), 0,
        lambda p: round(p * count * (mhz or 0) / 100) or None,
    )
    limit = observe(
        candidates("cpu_limit_mhz", "limit_mhz"), int(proc["maximum"]),
        lambda v: limit_percent(v, count, mhz), 100,
        lambda p: round(p * count * (mhz or 0) / 100) or None,
    )
    shares = observe(candidates("cpu_shares", "shares"), int(proc["weight"]),
                     lambda v: weight(v, count), DEFAULT_WEIGHT, lambda w: int(w) * 10 * count)
    mem_res: int | None
    if mem.get("dynamic"):
        memory_mib, mem_res = int(mem["maximum_mib"]), int(mem["minimum_mib"])
    else:
        # static memory: a reservation at or above the size (or none) reads back as asked
        memory_mib = int(mem["startup_mib"])
        mem_res = None
        for value in (desired.memory_reservation_mib if desired else None, rec.get("memory_reservation_mib")):
            if value is not None and value >= memory_mib:
                mem_res = int(value)
                break
    gpus = facts.get("gpus") or []
    gpu = None
    if gpus:
        gpu = GpuSpec(mode="partition", profile=rec.get("gpu_profile"), count=len(gpus),
                      device=gpus[0].get("instance_path") or None)
    name = str(facts["name"])
    address = owner.address if owner else (desired.address if desired else f"machine.{name}")
    spec = MachineSpec(
        address=address,
        name=name,
        role=str(rec.get("role", desired.role if desired else "")),
        index=int(rec.get("index", desired.index if desired else 0)),
        image=parse_image(facts, rec),
        cpu_count=count,
        memory_mib=memory_mib,
        cpu_reservation_mhz=reservation,
        cpu_limit_mhz=limit,
        cpu_shares=shares,
        memory_reservation_mib=mem_res,
        memory_lock=bool(rec.get("memory_lock", False)),
        hugepages=bool(rec.get("hugepages", False)),
        disks=parse_disks(facts, desired, rec, ctx),
        nics=parse_nics(facts, rec),
        gpu=gpu,
        anti_affinity_group=rec.get("anti_affinity_group"),
        host_hint=rec.get("host_hint"),
        cluster_hint=rec.get("cluster_hint"),
        holds_data=bool(rec.get("holds_data", False)),
        hostname=rec.get("hostname"),
        ssh_authorized_keys=tuple(rec.get("ssh_authorized_keys") or ()),
        power_on=str(facts.get("state")) == "Running",
    )
    addresses = tuple(
        str(ip)
        for a in facts.get("adapters") or []
        for ip in a.get("addresses") or []
        if ":" not in str(ip)
    )
    power = STATE_MAP.get(str(facts.get("state")), PowerState.UNKNOWN)
    return spec, owner, power, addresses
