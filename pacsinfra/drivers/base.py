"""The driver contract: pacsinfra's meaning of a site, mapped onto one hypervisor.

The engine hands a driver *specs* — plain frozen dataclasses derived from the
blueprint, already normalised (sizes in MiB, frequencies in MHz, names final) —
and gets back *observations*: the same spec type parsed back from the
hypervisor, plus the object's id, ownership mark and power state. Because both
sides are the same type, a plan is a field-by-field comparison, and a plan right
after an apply is empty.

A driver never decides *whether* to act; the engine does. A driver only says how
disruptive changing a field is (:meth:`Driver.classify`) and carries out
create / update / delete idempotently.

Every object a driver creates carries the :class:`Ownership` mark, so a lost
state file can be rebuilt by adoption (:meth:`Driver.list_owned`) and nothing is
ever created twice; objects without the mark are never touched.

Comparison rule (decided here, binding for drivers): a driver reports what the
hypervisor really has, including values it assigned itself (a NIC's MAC). The
engine's diff (:func:`changed_fields`) ignores such a field when the desired
spec left it ``None`` (see :data:`ASSIGNED_WHEN_NONE`), so it never shows up as
drift; a field the hypervisor cannot report at all is listed in
``Observed.unobservable`` instead. Everything else must round-trip exactly:
normalise in the driver (``pc-q35-7.2`` -> ``q35``, KiB -> MiB) before returning.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias


class Capability(enum.Enum):
    """Things a driver can do that not every hypervisor can."""

    CPU_RESERVATION = "cpu_reservation"
    CPU_LIMIT = "cpu_limit"
    CPU_SHARES = "cpu_shares"
    MEMORY_RESERVATION = "memory_reservation"
    MEMORY_LOCK = "memory_lock"
    HUGEPAGES = "hugepages"
    VGPU = "vgpu"
    GPU_PASSTHROUGH = "gpu_passthrough"
    VLAN = "vlan"
    JUMBO_FRAMES = "jumbo_frames"
    STORAGE_POLICY = "storage_policy"
    ANTI_AFFINITY = "anti_affinity"
    HOT_ADD = "hot_add"
    CLOUD_INIT = "cloud_init"


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
    """

    spec: Spec
    id: str  # the hypervisor's stable id (uuid, moref, VM id)
    owner: Ownership | None
    power: PowerState = PowerState.UNKNOWN
    addresses: tuple[str, ...] = ()
    unobservable: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rendered:
    """The exact payload a driver would send for a spec (XML, PowerShell + JSON, spec JSON)."""

    media_type: str  # "application/xml", "text/x-powershell", "application/json"
    text: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


class Driver(abc.ABC):
    """Base class of every hypervisor driver. Subclasses are registered by dotted path."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, config: Any, *, client: Any = None) -> None:
        """Store settings; do no I/O (tests pass ``client`` to swap the SDK connection)."""
        self.config = config
        self._client = client

    # -- connection -------------------------------------------------------------
    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection (no-op when a client was passed in)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Driver:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------
    @abc.abstractmethod
    def list_owned(self, site: str) -> list[Observed]:
        """Every object carrying pacsinfra's mark for ``site`` (for adoption and orphans)."""

    @abc.abstractmethod
    def read(self, spec: Spec) -> Observed | None:
        """The object for ``spec`` (found by its mark or name), or None when absent."""

    # -- planning ---------------------------------------------------------------
    @abc.abstractmethod
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The payload ``create`` would send. Pure: no I/O."""

    @abc.abstractmethod
    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        """How disruptive changing ``field_name`` of ``spec`` is on this hypervisor."""

    def classify_change(self, spec: Spec, observed: Observed, field_name: str) -> ChangeKind:
        """Like :meth:`classify`, knowing the actual value (a disk that grows vs. shrinks).

        The engine calls this one; the default defers to :meth:`classify`.
        """
        return self.classify(spec, field_name)

    def check(self, spec: Spec) -> list[str]:
        """Problems with ``spec`` this driver can see before touching anything (pure)."""
        return []

    # -- acting (each idempotent) -------------------------------------------------
    @abc.abstractmethod
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Create the object; on failure, remove whatever was half-created, then raise.

        Must also succeed after an earlier create or delete of the same object was
        killed at any point (kill -9 runs no cleanup): parts this driver names after
        the object (disk volumes, seeds) that no object uses any more are leftovers,
        to be replaced, never a reason to fail. The engine's crash test
        (bench/crash_apply.py) checks exactly this.
        """

    @abc.abstractmethod
    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Bring ``fields`` of the object to ``spec`` (powering off first when classify says so)."""

    @abc.abstractmethod
    def delete(self, observed: Observed) -> None:
        """Remove the object and what it owns (disks, seeds). Absent is success.

        Remove the parts first and the marked object last, so a delete killed
        half-way leaves a marked object (deleted again by the next run), not
        unmarked orphans.
        """

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """The machine's first reachable IPv4 address (static addresses need no wait)."""
        for nic in getattr(observed.spec, "nics", ()):
            if nic.address:
                return str(nic.address)
        if observed.addresses:
            return observed.addresses[0]
        from pacsinfra.errors import CapabilityError

        raise CapabilityError(f"{self.name}: no address known for {observed.spec.address}")


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
