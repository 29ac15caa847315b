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
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pacsinfra.specs import ChangeKind, MachineSpec, Observed, Ownership, Rendered, Spec


class Capability(enum.Enum):
    """A blueprint feature that not every provider can carry out.

    Each driver declares the ones it can (:attr:`Declaration.capabilities
    <pacsinfra.drivers.declaration.Declaration.capabilities>`); ``validate`` reads the
    same declaration, so what it passes is what ``apply`` does.
    """

    CPU_RESERVATION = "cpu_reservation"
    CPU_LIMIT = "cpu_limit"
    CPU_SHARES = "cpu_shares"
    MEMORY_RESERVATION = "memory_reservation"
    MEMORY_LOCK = "memory_lock"
    HUGEPAGES = "hugepages"
    VGPU = "vgpu"
    GPU_PARTITION = "partition"
    GPU_PASSTHROUGH = "passthrough"
    VLAN = "vlan"
    JUMBO_FRAMES = "jumbo_frames"
    IOPS_LIMIT = "iops_limit"
    IOPS_RESERVATION = "iops_reservation"
    ANTI_AFFINITY = "anti_affinity"

    @property
    def text(self) -> str:
        """What the feature is, for messages (``the kvm driver cannot apply <text>``)."""
        return _CAPABILITY_TEXT[self]

    @property
    def gpu_mode(self) -> str | None:
        """The blueprint's ``gpu.mode`` this capability is (None: not a GPU mode)."""
        return self.value if self in GPU_MODES else None


_CAPABILITY_TEXT: dict[Capability, str] = {
    Capability.CPU_RESERVATION: "a CPU reservation",
    Capability.CPU_LIMIT: "a CPU limit",
    Capability.CPU_SHARES: "CPU shares",
    Capability.MEMORY_RESERVATION: "a memory reservation",
    Capability.MEMORY_LOCK: "locked memory",
    Capability.HUGEPAGES: "huge pages",
    Capability.VGPU: "a vGPU profile (gpu mode vgpu)",
    Capability.GPU_PARTITION: "a GPU partition (gpu mode partition)",
    Capability.GPU_PASSTHROUGH: "a passed-through GPU (gpu mode passthrough)",
    Capability.VLAN: "VLAN tagging",
    Capability.JUMBO_FRAMES: "jumbo frames (MTU above 1500)",
    Capability.IOPS_LIMIT: "an IOPS limit",
    Capability.IOPS_RESERVATION: "an IOPS reservation",
    Capability.ANTI_AFFINITY: "anti-affinity placement",
}

#: the capabilities that are GPU modes (``machines.<role>.gpu.mode``)
GPU_MODES = frozenset({Capability.VGPU, Capability.GPU_PARTITION, Capability.GPU_PASSTHROUGH})


@dataclass(frozen=True)
class Endpoint:
    """Where pacsinfra reaches a machine's sshd, and whether through a user-mode NAT."""

    address: str
    port: int
    user_mode: bool = False


class MachinePort(Protocol):
    """What a hypervisor driver tells the services layer about its machines.

    Only how to find a machine and reach it — nothing about services: the services
    layer (:mod:`pacsinfra.services`) logs in and runs them. Where a machine is reached
    before it exists (plan time) is the pure :attr:`Declaration.reach
    <pacsinfra.drivers.declaration.Declaration.reach>`; this is the running side.
    """

    def machine(self, name: str) -> Observed | None:
        """Machine ``name`` as the hypervisor reports it (None when absent)."""
        ...

    def owned_machines(self, site: str) -> list[Observed]:
        """Every machine carrying ``site``'s mark."""
        ...

    def learn_host_keys(self, spec: MachineSpec, wait: float) -> tuple[str, ...] | None:
        """SSH host keys learnt out of band (a console, a guest channel), waiting up to
        ``wait`` seconds; None when this hypervisor has no such source or they are not
        known yet. Never from the SSH connection itself."""
        ...


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

    def machine_port(self) -> MachinePort | None:
        """How the services layer finds and reaches this driver's machines (None: it
        cannot run services on them)."""
        return None
