"""An in-memory driver: a test double for the engine's own logic (unit tests only).

It keeps objects in a dict, marks them like a real driver, assigns MACs the way a
hypervisor does, and can be told to fail a given object's create. Integration
tests use the real KVM driver on libvirt's test:///default instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from pacsinfra.drivers.base import (
    Capability,
    ChangeKind,
    Driver,
    MachineSpec,
    Observed,
    Ownership,
    PowerState,
    Rendered,
    Spec,
)
from pacsinfra.errors import AlreadyExists, TaskFailed

POWER_OFF_FIELDS = frozenset({"cpu_count", "memory_mib", "nics", "gpu", "hugepages", "memory_lock"})
REPLACE_FIELDS = frozenset({"name", "image", "disks", "role", "index", "cidr", "tier", "purpose"})


class MemDriver(Driver):
    """A hypervisor held in a dict: name -> (spec, id, owner)."""

    name: ClassVar[str] = "mem"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)

    def __init__(self, config: Any = None, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self.objects: dict[tuple[str, str], tuple[Spec, str, Ownership | None]] = {}
        self.fail_create: set[str] = set()
        self.fail_after_create: set[str] = set()  # created, then the call fails (leaves it behind)
        self.delay = 0.0
        self.calls: list[tuple[str, str]] = []
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
        return Observed(spec=spec, id=oid, owner=owner, power=PowerState.ON)

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
        return Rendered("application/json", repr(spec))

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
                if self.key(spec) in self.objects:
                    raise AlreadyExists(f"{spec.name} exists")
                oid = str(next(self._ids))
                stored = self._assign(spec, oid)
                self.objects[self.key(spec)] = (stored, oid, owner)
            if spec.address in self.fail_after_create:
                raise TaskFailed(f"create {spec.name}: timed out waiting for the task")
            return self._observed(stored, oid, owner)
        finally:
            self._leave()

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        self._enter("update", spec.address)
        try:
            with self._lock:
                cur, oid, owner = self.objects[self.key(spec)]
                changes = {f: getattr(spec, f) for f in fields}
                new = self._assign(dataclasses.replace(cur, **changes), oid)  # type: ignore[arg-type]
                self.objects[self.key(spec)] = (new, oid, owner)
            return self._observed(new, oid, owner)
        finally:
            self._leave()

    def delete(self, observed: Observed) -> None:
        self._enter("delete", observed.spec.address)
        try:
            with self._lock:
                self.objects.pop(self.key(observed.spec), None)
        finally:
            self._leave()


# -- a blueprint-shaped site built from plain namespaces (engine unit tests only) ------------
def fake_site(
    name: str = "st-mary",
    *,
    archives: int = 2,
    viewers: int = 1,
    memory: int = 4096,
    shares: Any = "high",
) -> Any:
    """A minimal object with the attributes of the blueprint contract's Site."""
    from types import SimpleNamespace as NS

    img = NS(kvm={"volume": "debian12.qcow2", "pool": "default"}, mem={"template": "debian12"})
    nets = {
        "dicom": NS(
            purpose="dicom",
            vlan=110,
            cidr="10.10.110.0/24",
            gateway="10.10.110.1",
            mtu=9000,
            qos="high",
            mem=None,
        ),
        "management": NS(
            purpose="management",
            vlan=None,
            cidr="10.10.1.0/24",
            gateway=None,
            mtu=1500,
            qos=None,
            mem=None,
        ),
    }
    storage = {
        "flash": NS(
            tier="performance",
            encrypted=True,
            provisioning="thin",
            iops_limit=20000,
            iops_reservation=None,
            mem={"pool": "flash-pool"},
        ),
    }
    archive = NS(
        count=archives,
        image="debian12",
        cpu=NS(count=2, reservation=None, shares=shares, limit=None),
        memory=NS(size=memory, reservation=None, lock=False, hugepages=False),
        disks=[NS(name="os", size=10240, storage="flash", mount=None)],
        nics=[
            NS(network="dicom", addresses=[f"10.10.110.{11 + i}" for i in range(archives)]),
            NS(network="management", addresses=[]),
        ],
        gpu=None,
        placement=NS(anti_affinity=True, hosts=[], cluster=None),
        services=["archive"],
        holds_data=None,
    )
    viewer = NS(
        count=viewers,
        image="debian12",
        cpu=NS(count=1, reservation=None, shares=None, limit=None),
        memory=NS(size=1024, reservation=None, lock=False, hugepages=False),
        disks=[],
        nics=[NS(network="management", addresses=[])],
        gpu=NS(mode="vgpu", profile="grid_a40-8q", count=1, device=None),
        placement=None,
        services=["viewer"],
        holds_data=None,
    )
    machines = {"archive": archive}
    if viewers:
        machines["viewer"] = viewer
    services = {
        "archive": NS(kind="archive", config={"ae_title": "ARCHIVE"}),
        "viewer": NS(kind="viewer", config={}),
    }
    return NS(
        metadata=NS(name=name),
        provider=NS(driver="mem", mem={}, model_dump=lambda **kw: {"driver": "mem"}),
        images={"debian12": img},
        networks=nets,
        storage=storage,
        machines=machines,
        services=services,
    )


def fake_blueprint(tmp_path: Any, site: Any = None, overlay: str | None = None) -> Any:
    """A LoadedBlueprint-shaped object around :func:`fake_site`."""
    from pathlib import Path
    from types import SimpleNamespace as NS

    path = Path(tmp_path) / "site.yaml"
    path.write_text("# fake\n")
    return NS(
        site=site if site is not None else fake_site(), path=path, site_name=overlay, warnings=[]
    )
