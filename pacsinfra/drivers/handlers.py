"""The shape every hypervisor driver shares: one handler per kind of object.

A hypervisor driver (kvm, vsphere, hyperv) is its connection plus three handlers —
:class:`KindHandler` for networks, storage and machines — and :class:`HandlerDriver`
hands each spec to the handler of its kind. The handlers sit in ``networks.py``,
``storage.py`` and ``machines.py`` of every driver package, with the same methods, so a
reader who knows one driver finds the same thing in the others::

    drivers/<name>/
      declaration.py   settings, capabilities, how machines are reached (pure)
      client.py        the SDK behind one class; its errors translated once
      driver.py        connect / close, the three handlers, the machine port
      networks.py      Networks: read / create / update / delete / render / classify / check
      storage.py       Storage:  the same for storage classes
      machines.py      Machines: the same for machines
      classify.py      the change tables
      port.py          the MachinePort the services layer reaches machines through

``render``, ``classify`` and ``check`` are pure (no connection): the planner calls them
before anything is read.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pacsinfra.drivers.base import Driver
from pacsinfra.specs import (
    ChangeKind,
    MachineSpec,
    NetworkSpec,
    Observed,
    Ownership,
    Rendered,
    Spec,
    StorageSpec,
)

S = TypeVar("S", NetworkSpec, StorageSpec, MachineSpec)


class KindHandler(abc.ABC, Generic[S]):
    """Everything a driver does with one kind of object."""

    @abc.abstractmethod
    def list_owned(self, site: str) -> list[Observed]:
        """Every object of this kind carrying ``site``'s mark."""

    @abc.abstractmethod
    def read(self, spec: S) -> Observed | None:
        """The object ``spec`` names (by mark or name), or None when absent."""

    @abc.abstractmethod
    def render(self, spec: S, owner: Ownership) -> Rendered:
        """The payload ``create`` would send. Pure."""

    @abc.abstractmethod
    def classify(self, spec: S, field_name: str) -> ChangeKind:
        """How disruptive changing ``field_name`` is. Pure."""

    def classify_change(self, spec: S, observed: Observed, field_name: str) -> ChangeKind:
        """Like :meth:`classify`, knowing the actual value (default: :meth:`classify`)."""
        return self.classify(spec, field_name)

    def check(self, spec: S) -> list[str]:
        """Problems visible before touching anything. Pure."""
        return []

    @abc.abstractmethod
    def create(self, spec: S, owner: Ownership) -> Observed:
        """Create the object (idempotent; half-made parts removed on failure)."""

    @abc.abstractmethod
    def update(self, spec: S, observed: Observed, fields: Sequence[str]) -> Observed:
        """Bring ``fields`` to ``spec``."""

    @abc.abstractmethod
    def delete(self, observed: Observed) -> None:
        """Remove the object and what it owns (absent is success)."""


@dataclass(frozen=True)
class Handlers:
    """A driver's three handlers."""

    networks: KindHandler[NetworkSpec]
    storage: KindHandler[StorageSpec]
    machines: KindHandler[MachineSpec]


class HandlerDriver(Driver):
    """A driver made of three :class:`KindHandler`; every contract method dispatches."""

    @property
    @abc.abstractmethod
    def handlers(self) -> Handlers:
        """The handlers (built without I/O; they connect on first use)."""

    def _handler(self, spec: Spec) -> KindHandler[Any]:
        h = self.handlers
        if isinstance(spec, MachineSpec):
            return h.machines
        if isinstance(spec, NetworkSpec):
            return h.networks
        if isinstance(spec, StorageSpec):
            return h.storage
        raise TypeError(f"the {self.name} driver has no {type(spec).__name__}")

    def list_owned(self, site: str) -> list[Observed]:
        """Networks, storage, then machines marked for ``site``."""
        h = self.handlers
        return [*h.networks.list_owned(site), *h.storage.list_owned(site),
                *h.machines.list_owned(site)]

    def read(self, spec: Spec) -> Observed | None:
        return self._handler(spec).read(spec)

    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        return self._handler(spec).render(spec, owner)

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        return self._handler(spec).classify(spec, field_name)

    def classify_change(self, spec: Spec, observed: Observed, field_name: str) -> ChangeKind:
        return self._handler(spec).classify_change(spec, observed, field_name)

    def check(self, spec: Spec) -> list[str]:
        return self._handler(spec).check(spec)

    def create(self, spec: Spec, owner: Ownership) -> Observed:
        return self._handler(spec).create(spec, owner)

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        return self._handler(spec).update(spec, observed, fields)

    def delete(self, observed: Observed) -> None:
        self._handler(observed.spec).delete(observed)
