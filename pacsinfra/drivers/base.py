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


Spec: TypeAlias = NetworkSpec | StorageSpec | MachineSpec


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

    def check(self, spec: Spec) -> list[str]:
        """Problems with ``spec`` this driver can see before touching anything (pure)."""
        return []

    # -- acting (each idempotent) -------------------------------------------------
    @abc.abstractmethod
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Create the object; on failure, remove whatever was half-created, then raise."""

    @abc.abstractmethod
    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Bring ``fields`` of the object to ``spec`` (powering off first when classify says so)."""

    @abc.abstractmethod
    def delete(self, observed: Observed) -> None:
        """Remove the object and what it owns (disks, seeds). Absent is success."""

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """The machine's first reachable IPv4 address (static addresses need no wait)."""
        for nic in getattr(observed.spec, "nics", ()):
            if nic.address:
                return str(nic.address)
        if observed.addresses:
            return observed.addresses[0]
        from pacsinfra.errors import CapabilityError

        raise CapabilityError(f"{self.name}: no address known for {observed.spec.address}")


def spec_fields(spec: Spec) -> dict[str, Any]:
    """The comparable fields of a spec (everything but the address)."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "address"}


def changed_fields(desired: Spec, observed: Observed) -> list[str]:
    """Names of the fields where the hypervisor differs from the desired spec."""
    want, have = spec_fields(desired), spec_fields(observed.spec)
    out = []
    for name, value in want.items():
        if name in observed.unobservable:
            continue
        if have.get(name) != value:
            out.append(name)
    return out
