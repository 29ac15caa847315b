"""The fake driver: a hypervisor held in memory, for the engine's own tests and for trying it out.

It keeps objects in a dict, marks them like a real driver, assigns MACs the way a
hypervisor does, keeps machines on or off as their spec says (counting each start, so a
test can see a power-off update restart one), refuses what a real driver refuses (an
update its own change table calls a replace, touching an object without the mark), and
can be told to fail a given object's create or to leave an object behind when its create
fails. Everything is lost when the process ends, so it
is not selectable in a blueprint; the driver contract suite runs it beside the real
drivers (libvirt's test:///default, the vSphere simulator, the Hyper-V model).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from pacsinfra.drivers.base import Capability, Driver
from pacsinfra.drivers.fake.declaration import DECLARATION
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound, TaskFailed
from pacsinfra.specs import (
    ChangeKind,
    MachineSpec,
    Observed,
    Ownership,
    PowerState,
    Rendered,
    Spec,
    spec_to_dict,
)

POWER_OFF_FIELDS = frozenset({"cpu_count", "memory_mib", "nics", "gpu", "hugepages", "memory_lock"})
REPLACE_FIELDS = frozenset({"name", "image", "disks", "role", "index", "cidr", "tier", "purpose"})


class FakeDriver(Driver):
    """A hypervisor held in a dict: name -> (spec, id, owner)."""

    name: ClassVar[str] = "fake"
    capabilities: ClassVar[frozenset[Capability]] = DECLARATION.capabilities

    def __init__(self, config: Any = None, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self.objects: dict[tuple[str, str], tuple[Spec, str, Ownership | None]] = {}
        self.fail_create: set[str] = set()
        self.fail_after_create: set[str] = set()  # created, then the call fails (leaves it behind)
        self.delay = 0.0
        self.calls: list[tuple[str, str]] = []
        self.starts: Counter[str] = Counter()  # machine name -> how many times it was started
        self.max_concurrency = 0
        self._active = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- helpers for tests -------------------------------------------------------------
    @staticmethod
    def key(spec: Spec) -> tuple[str, str]:
        return (type(spec).__name__, spec.name)

    def put_unmarked(self, spec: Spec) -> None:
        """An object created outside pacsinfra (no mark)."""
        self.objects[self.key(spec)] = (spec, f"foreign-{next(self._ids)}", None)

    def mutate(self, name: str, **changes: Any) -> None:
        """Drift: change an object behind pacsinfra's back."""
        for k, (spec, oid, owner) in list(self.objects.items()):
            if spec.name == name:
                self.objects[k] = (dataclasses.replace(spec, **changes), oid, owner)  # type: ignore[arg-type]
                return
        raise KeyError(name)

    def remove(self, name: str) -> None:
        for k, (spec, _, _) in list(self.objects.items()):
            if spec.name == name:
                del self.objects[k]
                return
        raise KeyError(name)

    def _observed(self, spec: Spec, oid: str, owner: Ownership | None) -> Observed:
        off = isinstance(spec, MachineSpec) and not spec.power_on
        return Observed(spec=spec, id=oid, owner=owner,
                        power=PowerState.OFF if off else PowerState.ON)

    def _enter(self, op: str, name: str) -> None:
        with self._lock:
            self.calls.append((op, name))
            self._active += 1
            self.max_concurrency = max(self.max_concurrency, self._active)
        if self.delay:
            time.sleep(self.delay)

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    # -- the contract ------------------------------------------------------------------------
    def connect(self) -> None:
        return None

    def close(self) -> None:
        return None

    def list_owned(self, site: str) -> list[Observed]:
        with self._lock:
            return [
                self._observed(s, oid, o)
                for s, oid, o in self.objects.values()
                if o is not None and o.site == site
            ]

    def read(self, spec: Spec) -> Observed | None:
        with self._lock:
            got = self.objects.get(self.key(spec))
        return self._observed(*got) if got else None

    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The spec and its mark as JSON: what a hypervisor would be sent."""
        payload = {"owner": owner.to_dict(), "spec": spec_to_dict(spec)}
        return Rendered("application/json", json.dumps(payload, indent=2, sort_keys=True))

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        if field_name in REPLACE_FIELDS:
            return ChangeKind.REPLACE
        if field_name in POWER_OFF_FIELDS:
            return ChangeKind.NEEDS_POWER_OFF
        return ChangeKind.IN_PLACE

    def _assign(self, spec: Spec, oid: str) -> Spec:
        if isinstance(spec, MachineSpec):
            nics = tuple(
                dataclasses.replace(n, mac=n.mac or f"52:54:00:00:{int(oid) % 256:02x}:{i:02x}")
                for i, n in enumerate(spec.nics)
            )
            return dataclasses.replace(spec, nics=nics)
        return spec

    def create(self, spec: Spec, owner: Ownership) -> Observed:
        self._enter("create", spec.address)
        try:
            if spec.address in self.fail_create or spec.name in self.fail_create:
                raise TaskFailed(f"create {spec.name}: image volume 'missing.qcow2' not found")
            with self._lock:
                found = self.objects.get(self.key(spec))
                if found is not None:
                    if found[2] != owner:  # unmarked, or another site's / address's
                        raise AlreadyExists(f"{spec.name} exists")
                    return self._observed(*found)  # an earlier create of this very object
                oid = str(next(self._ids))
                stored = self._assign(spec, oid)
                self.objects[self.key(spec)] = (stored, oid, owner)
                if isinstance(spec, MachineSpec) and spec.power_on:
                    self.starts[spec.name] += 1
            if spec.address in self.fail_after_create:
                raise TaskFailed(f"create {spec.name}: timed out waiting for the task")
            return self._observed(stored, oid, owner)
        finally:
            self._leave()

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        self._enter("update", spec.address)
        try:
            with self._lock:
                found = self.objects.get(self.key(spec))
                if found is None:
                    raise NotFound(f"{spec.name} does not exist")
                cur, oid, owner = found
                if owner is None:
                    raise AlreadyExists(f"{spec.name} carries no pacsinfra mark")
                kinds = {f: self.classify(spec, f) for f in fields}
                replace = sorted(f for f, k in kinds.items() if k is ChangeKind.REPLACE)
                if replace:
                    raise CapabilityError(f"changing {', '.join(replace)} of {spec.name} "
                                          "needs a replace")
                changes = {f: getattr(spec, f) for f in fields}
                new = self._assign(dataclasses.replace(cur, **changes), oid)  # type: ignore[arg-type]
                if isinstance(cur, MachineSpec) and isinstance(new, MachineSpec) and new.power_on:
                    stopped = ChangeKind.NEEDS_POWER_OFF in kinds.values()
                    if stopped or not cur.power_on:
                        self.starts[new.name] += 1
                self.objects[self.key(spec)] = (new, oid, owner)
            return self._observed(new, oid, owner)
        finally:
            self._leave()

    def delete(self, observed: Observed) -> None:
        self._enter("delete", observed.spec.address)
        try:
            with self._lock:
                found = self.objects.get(self.key(observed.spec))
                if found is not None and found[2] is None:
                    raise AlreadyExists(f"{observed.spec.name} carries no pacsinfra mark")
                self.objects.pop(self.key(observed.spec), None)
        finally:
            self._leave()
