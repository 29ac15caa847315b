"""Storage classes on Hyper-V: a directory each (``path``, else under ``storage_root``),
marked by a small file in it. Mapping in :mod:`.infra`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.hyperv import classify as cls_mod
from pacsinfra.drivers.hyperv import infra
from pacsinfra.drivers.hyperv import vm as mach
from pacsinfra.drivers.hyperv.host import HypervHost, claim, refuse_unowned
from pacsinfra.drivers.hyperv.scripts import render
from pacsinfra.errors import TaskFailed
from pacsinfra.specs import ChangeKind, MachineSpec, Observed, Ownership, Rendered, StorageSpec


class Storage(KindHandler[StorageSpec]):
    """Storage directories."""

    def __init__(self, host: HypervHost, machines: Any) -> None:
        self.host = host
        # the machines handler: the site's directories are found through its VMs' disks
        self.machines = machines

    def _observe(self, facts: dict[str, Any], desired: StorageSpec | None) -> Observed:
        spec, owner = infra.parse_storage(facts, desired, self.host.context())
        return Observed(spec=spec, id=str(facts["path"]), owner=owner)

    def read(self, spec: StorageSpec) -> Observed | None:
        path = mach.storage_dir(spec.name, self.host.context())
        dirs = self.host.run("get-storage", {"paths": [path], "root": None})["directories"]
        present = [self._observe(d, spec) for d in dirs if d.get("exists")]
        return present[0] if present else None

    def list_owned(self, site: str, machines: list[Observed] | None = None) -> list[Observed]:
        """The marked directories of ``site``: under the storage root, and those its
        machines' disks live in (``machines``: the site's machines, when just listed)."""
        ctx = self.host.context()
        vms = self.machines.list_owned(site) if machines is None else machines
        dirs = sorted({mach.storage_dir(d.storage, ctx)
                       for o in vms if isinstance(o.spec, MachineSpec) for d in o.spec.disks})
        found = self.host.run("get-storage", {"paths": dirs, "root": ctx.storage_root})["directories"]
        out = []
        for d in found:
            if d.get("exists"):
                obs = self._observe(d, None)
                if obs.owner is not None and obs.owner.site == site:
                    out.append(obs)
        return out

    def render(self, spec: StorageSpec, owner: Ownership) -> Rendered:
        script = render("ensure-storage",
                        infra.storage_parameters(spec, owner, self.host.context()))
        return Rendered("text/x-powershell", script.text, script.parameters)

    def classify(self, spec: StorageSpec, field_name: str) -> ChangeKind:
        return cls_mod.classify(spec, field_name)

    def create(self, spec: StorageSpec, owner: Ownership) -> Observed:
        found = self.read(spec)
        if claim(spec, found, owner):
            assert found is not None
            return found
        self.host.run("ensure-storage", infra.storage_parameters(spec, owner, self.host.context()))
        made = self.read(spec)
        if made is None:
            raise TaskFailed(f"hyperv: directory for {spec.address} missing right after creating it")
        return made

    def update(self, spec: StorageSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        refuse_unowned(observed, "change")
        assert observed.owner is not None
        self.host.run("ensure-storage",
                      infra.storage_parameters(spec, observed.owner, self.host.context()))
        got = self.read(spec)
        if got is None:
            raise TaskFailed(f"hyperv: directory for {spec.address} vanished during update")
        return got

    def delete(self, observed: Observed) -> None:
        refuse_unowned(observed, "delete")
        self.host.run("remove-storage",
                      {"path": mach.storage_dir(observed.spec.name, self.host.context())})
