"""What the engine plans with: specs of every resource, observations, ownership marks.

The engine hands whoever carries out a step (a hypervisor driver for networks, storage
and machines; the services layer for services) *specs* — plain frozen dataclasses
derived from the blueprint, already normalised (sizes in MiB, frequencies in MHz, names
final) — and gets back *observations*: the same spec type parsed back from what exists,
plus the object's id, ownership mark and power state. Because both sides are the same
type, a plan is a field-by-field comparison, and a plan right after an apply is empty.

Comparison rule (binding for everyone who observes): report what really exists,
including values the hypervisor assigned itself (a NIC's MAC). The diff
(:func:`changed_fields`) ignores such a field when the desired spec left it ``None``
(see :data:`ASSIGNED_WHEN_NONE`), so it never shows up as drift; a field that cannot be
reported at all is listed in ``Observed.unobservable`` instead. Everything else must
round-trip exactly: normalise before returning.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias


class ChangeKind(enum.IntEnum):
    """How disruptive a change to one field is (ordered: the worst field decides)."""

    IN_PLACE = 1  # applied to a running machine
    NEEDS_POWER_OFF = 2  # applied after a clean shutdown, then started again
    REPLACE = 3  # only by destroying and re-creating the object


class PowerState(enum.Enum):
    """Normalised power state; drivers map theirs through a class-level table."""

    ON = "on"
    OFF = "off"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Ownership:
    """pacsinfra's mark on every object it creates."""

    site: str  # blueprint metadata.name (plus overlay, e.g. "st-mary/dr")
    address: str  # resource address, e.g. "machine.archive[0]"
    lineage: str  # the state lineage that created it

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NetworkSpec:
    """A network segment as a hypervisor object (libvirt network, port group, vSwitch)."""

    address: str  # "network.dicom"
    name: str  # hypervisor object name, e.g. "st-mary-dicom"
    purpose: str
    vlan: int | None = None
    cidr: str | None = None
    gateway: str | None = None
    mtu: int = 1500
    qos: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # per-driver mapping from blueprint


@dataclass(frozen=True)
class StorageSpec:
    """A storage class as a hypervisor object (libvirt pool, storage policy, directory)."""

    address: str  # "storage.flash"
    name: str
    tier: str
    encrypted: bool = False
    provisioning: str = "thin"  # thin | thick
    iops_limit: int | None = None
    iops_reservation: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DiskSpec:
    """One virtual disk of a machine."""

    name: str
    size_mib: int
    storage: str  # hypervisor name of the storage object (pool / policy / path)
    provisioning: str = "thin"
    mount: str | None = None
    iops_limit: int | None = None


@dataclass(frozen=True)
class NicSpec:
    """One network adapter of a machine."""

    network: str  # hypervisor name of the network object
    address: str | None = None  # static IPv4, or None for a pool/DHCP
    prefix: int | None = None
    gateway: str | None = None
    vlan: int | None = None
    mtu: int = 1500
    mac: str | None = None  # chosen by the hypervisor when None; never diffed when None


@dataclass(frozen=True)
class GpuSpec:
    """A vGPU profile or a passed-through device."""

    mode: str  # "vgpu" | "passthrough"
    profile: str | None = None
    count: int = 1
    device: str | None = None  # PCI address for passthrough; mdev parent for vgpu


@dataclass(frozen=True)
class MachineSpec:
    """One virtual machine (one member of a role)."""

    address: str  # "machine.archive[0]"
    name: str  # hypervisor name, e.g. "st-mary-archive-1"
    role: str
    index: int
    image: Mapping[str, Any]  # the driver's entry of the blueprint image
    cpu_count: int
    memory_mib: int
    cpu_reservation_mhz: int | None = None
    cpu_limit_mhz: int | None = None
    cpu_shares: int | None = None  # normalised: low=500, normal=1000, high=2000 per vCPU
    memory_reservation_mib: int | None = None
    memory_lock: bool = False
    hugepages: bool = False
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    gpu: GpuSpec | None = None
    anti_affinity_group: str | None = None  # members sharing a group are kept apart
    host_hint: str | None = None
    cluster_hint: str | None = None
    holds_data: bool = False  # replace refused without --allow-replace
    hostname: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    power_on: bool = True


@dataclass(frozen=True)
class ServiceSpec:
    """One PACS service (archive, router) on one machine: its rendered config file.

    ``config`` is exactly what the service reads (``ArchiveConfig`` / ``RouterConfig``
    as JSON, with ``service:`` references resolved to host and port). Only drivers
    that run services themselves (``local``, ``static``) get these; a changed ``config``
    is an in-place update that restarts that service alone.
    """

    address: str  # "service.archive[0]": the service's i-th host
    name: str  # "<machine name>-<service>", e.g. "st-mary-pacs-1-archive"
    service: str  # the blueprint's service name
    kind: str  # archive | router
    machine: str  # address of the machine it runs on
    config: Mapping[str, Any] = field(default_factory=dict)
    running: bool = True  # observed: a supervisor runs it; desired: always True
    # where the pacsinfra machine and the other services reach its machine (None: this box)
    host: str | None = None


Spec: TypeAlias = NetworkSpec | StorageSpec | MachineSpec | ServiceSpec


@dataclass(frozen=True)
class Observed:
    """What a driver found on the hypervisor for one spec.

    ``spec`` is parsed back from the hypervisor into the spec's own type, so the
    engine compares like with like. A field the hypervisor cannot report is set
    to the desired value by the driver and listed in ``unobservable`` (shown as
    "not verifiable" instead of as drift).

    ``leftover`` marks what an interrupted create left behind (its parts, marked as a
    machine's, without the machine itself): never adopted; deleted when the blueprint
    no longer wants that address, else left to the create, which replaces it.
    """

    spec: Spec
    id: str  # the hypervisor's stable id (uuid, moref, VM id)
    owner: Ownership | None
    power: PowerState = PowerState.UNKNOWN
    addresses: tuple[str, ...] = ()
    unobservable: frozenset[str] = frozenset()
    leftover: str | None = None  # why this is a leftover (shown as the delete's reason)


@dataclass(frozen=True)
class Rendered:
    """The exact payload a driver would send for a spec (XML, PowerShell + JSON, spec JSON)."""

    media_type: str  # "application/xml", "text/x-powershell", "application/json"
    text: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


# Fields the hypervisor chooses when the desired spec leaves them None (a NIC's MAC).
# Drivers report the real value; the diff ignores it unless the blueprint pinned one.
ASSIGNED_WHEN_NONE: dict[type, frozenset[str]] = {NicSpec: frozenset({"mac"})}

SPEC_TYPES: dict[str, type] = {
    "network": NetworkSpec,
    "storage": StorageSpec,
    "machine": MachineSpec,
    "service": ServiceSpec,
}


def spec_kind(spec: Spec) -> str:
    """``network`` | ``storage`` | ``machine``: the resource type of a spec."""
    for kind, cls in SPEC_TYPES.items():
        if isinstance(spec, cls):
            return kind
    raise TypeError(f"not a spec: {type(spec).__name__}")


def spec_fields(spec: Spec) -> dict[str, Any]:
    """The comparable fields of a spec (everything but the address)."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "address"}


def same_value(want: Any, have: Any) -> bool:
    """Whether an observed value matches a desired one.

    Equal values match. Nested specs (disks, NICs, GPU) compare field by field, and
    a field listed in :data:`ASSIGNED_WHEN_NONE` matches anything when the desired
    value is None (the hypervisor picked it). Sequences match element by element;
    mappings key by key.
    """
    if want == have:
        return True
    if dataclasses.is_dataclass(want) and not isinstance(want, type):
        if type(want) is not type(have):
            return False
        ignore = ASSIGNED_WHEN_NONE.get(type(want), frozenset())
        for f in dataclasses.fields(want):
            w, h = getattr(want, f.name), getattr(have, f.name)
            if w is None and f.name in ignore:
                continue
            if not same_value(w, h):
                return False
        return True
    if isinstance(want, tuple | list) and isinstance(have, tuple | list):
        return len(want) == len(have) and all(same_value(w, h) for w, h in zip(want, have, strict=True))
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        return set(want) == set(have) and all(same_value(want[k], have[k]) for k in want)
    return False


def changed_fields(desired: Spec, observed: Observed) -> list[str]:
    """Names of the fields where the hypervisor differs from the desired spec.

    Fields listed in ``observed.unobservable`` are skipped; hypervisor-assigned
    values the blueprint left open (``NicSpec.mac=None``) never count as drift.
    """
    want, have = spec_fields(desired), spec_fields(observed.spec)
    out = []
    for name, value in want.items():
        if name in observed.unobservable:
            continue
        if not same_value(value, have.get(name)):
            out.append(name)
    return out


def to_jsonable(value: Any) -> Any:
    """A spec (or any value inside one) as plain JSON types: dataclasses become dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """A spec as a JSON-ready dict, with its resource type under ``"type"``."""
    data = to_jsonable(spec)
    assert isinstance(data, dict)
    return {"type": spec_kind(spec), **data}


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """The inverse of :func:`spec_to_dict` (raises ValueError on a malformed dict)."""
    kind = data.get("type")
    cls = SPEC_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown spec type {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    unknown = set(data) - names - {"type"}
    if unknown:
        raise ValueError(f"unknown {kind} spec fields: {', '.join(sorted(unknown))}")
    if cls is MachineSpec:
        kwargs["disks"] = tuple(DiskSpec(**d) for d in kwargs.get("disks", ()))
        kwargs["nics"] = tuple(NicSpec(**n) for n in kwargs.get("nics", ()))
        if kwargs.get("gpu") is not None:
            kwargs["gpu"] = GpuSpec(**kwargs["gpu"])
        kwargs["ssh_authorized_keys"] = tuple(kwargs.get("ssh_authorized_keys", ()))
        kwargs["image"] = dict(kwargs.get("image") or {})
    elif cls is ServiceSpec:
        kwargs["config"] = dict(kwargs.get("config") or {})
    else:
        kwargs["settings"] = dict(kwargs.get("settings") or {})
    try:
        spec: Spec = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"malformed {kind} spec: {exc}") from None
    return spec
