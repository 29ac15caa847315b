"""Machines on Hyper-V: generation 2 VMs, their VHDX disks, NICs and GPU partitions.

One script per operation (``new-vm``, ``set-vm``, ``remove-vm``, ``get-vm``); the
mapping between the spec and the scripts' JSON is :mod:`.vm`. The mark is in the VM's
Notes (Hyper-V allows duplicate names: the one marked for the address wins). A create
that fails removes the half-made VM carrying its mark and the disk files named after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.hyperv import classify as cls_mod
from pacsinfra.drivers.hyperv import vm as mach
from pacsinfra.drivers.hyperv.host import HypervHost, claim, pick, refuse_unowned
from pacsinfra.drivers.hyperv.marks import MARK_PREFIX
from pacsinfra.drivers.hyperv.scripts import render
from pacsinfra.drivers.settings import setting
from pacsinfra.errors import CapabilityError, TaskFailed
from pacsinfra.specs import ChangeKind, MachineSpec, Observed, Ownership, Rendered

WINDOWS_FILE_NAME_FORBIDDEN = '<>:"/\\|?*'
POWERSHELL_WILDCARDS = "[]`"


class Machines(KindHandler[MachineSpec]):
    """Hyper-V VMs."""

    def __init__(self, host: HypervHost) -> None:
        self.host = host

    # -- reading ---------------------------------------------------------------------
    def observe(self, facts: dict[str, Any], desired: MachineSpec | None = None) -> Observed:
        """A VM's facts (from ``get-vm``) as an observation."""
        spec, owner, power, addresses = mach.parse_vm(facts, desired, self.host.context())
        return Observed(spec=spec, id=str(facts["id"]), owner=owner, power=power,
                        addresses=addresses)

    def _vms(self, name: str | None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.host.run(
            "get-vm", {"name": name, "mark_prefix": MARK_PREFIX})["vms"]
        return found

    def read(self, spec: MachineSpec) -> Observed | None:
        return pick([self.observe(f, spec) for f in self._vms(spec.name)], spec.address)

    def list_owned(self, site: str) -> list[Observed]:
        return [o for o in (self.observe(f) for f in self._vms(None))
                if o.owner is not None and o.owner.site == site]

    # -- planning --------------------------------------------------------------------
    def render(self, spec: MachineSpec, owner: Ownership) -> Rendered:
        script = render("new-vm", mach.new_vm_parameters(spec, owner, self.host.context()))
        return Rendered("text/x-powershell", script.text, script.parameters)

    def classify(self, spec: MachineSpec, field_name: str) -> ChangeKind:
        return cls_mod.classify(spec, field_name)

    def classify_change(self, spec: MachineSpec, observed: Observed, field_name: str) -> ChangeKind:
        return cls_mod.classify_change(spec, observed, field_name)

    def check(self, spec: MachineSpec) -> list[str]:
        """What Hyper-V cannot do for ``spec`` (pure)."""
        problems: list[str] = []
        where = spec.address
        bad = sorted(set(spec.name) & set(WINDOWS_FILE_NAME_FORBIDDEN))
        if bad:
            # the VHDX files are named after the VM
            problems.append(f"{where}: the name {spec.name!r} contains {''.join(bad)!r}, "
                            "which Windows file names cannot hold")
        wild = sorted(set(spec.name) & set(POWERSHELL_WILDCARDS))
        if wild:
            # VHDX paths pass through -Path parameters, which expand wildcards
            problems.append(f"{where}: the name {spec.name!r} contains {''.join(wild)!r}, "
                            "PowerShell wildcard characters")
        if not spec.image.get("vhdx"):
            problems.append(f"{where}: the image needs a hyperv entry with a vhdx path")
        if str(spec.image.get("mode", "copy")) not in ("copy", "differencing"):
            problems.append(f"{where}: image mode must be copy or differencing")
        if not spec.disks:
            problems.append(f"{where}: a Hyper-V machine needs a disk for its image")
        if spec.image.get("generation") not in (None, 2) or setting(
                self.host.config, "generation") not in (None, 2):
            problems.append(f"{where}: pacsinfra builds generation 2 VMs only (UEFI, SCSI boot)")
        if spec.gpu is not None and spec.gpu.mode != "partition":
            problems.append(f"{where}: Hyper-V shares a GPU by partitioning only (gpu mode "
                            "partition)")
        mhz = self.host.context().host_mhz
        for label, value in (("reservation", spec.cpu_reservation_mhz),
                             ("limit", spec.cpu_limit_mhz)):
            if value and mhz and value > spec.cpu_count * mhz:
                problems.append(
                    f"{where}: cpu {label} {value}MHz exceeds {spec.cpu_count} vCPUs x {mhz}MHz")
        lp = self.host.facts.get("logical_processors")
        if lp and spec.cpu_count > int(lp):
            problems.append(f"{where}: {spec.cpu_count} vCPUs but the host has {lp} logical "
                            "processors")
        return problems

    # -- acting ----------------------------------------------------------------------
    def create(self, spec: MachineSpec, owner: Ownership) -> Observed:
        """Create the VM; a failed create removes what it left behind, then raises."""
        found = self.read(spec)
        if claim(spec, found, owner):
            assert found is not None
            return found
        try:
            facts = self.host.run("new-vm", mach.new_vm_parameters(spec, owner,
                                                                   self.host.context()))
        except TaskFailed:
            self._cleanup(spec, owner)
            raise
        return self.observe(facts, spec)

    def _cleanup(self, spec: MachineSpec, owner: Ownership) -> None:
        """Remove a half-created VM carrying ``owner``'s mark, and its disk files."""
        ctx = self.host.context()
        paths = [mach.disk_path(spec.name, d, ctx) for d in spec.disks]
        ours = [f for f in self._vms(spec.name) if (o := self.observe(f, spec).owner) is not None
                and (o.site, o.address, o.lineage) == (owner.site, owner.address, owner.lineage)]
        for f in ours or [{"id": None}]:
            self.host.run("remove-vm", {"id": f["id"], "paths": paths})

    def update(self, spec: MachineSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Bring ``fields`` to ``spec``; stops a running VM first when classify says so."""
        refuse_unowned(observed, "change")
        assert observed.owner is not None
        kinds = {f: self.classify_change(spec, observed, f) for f in fields}
        replace = sorted(f for f, k in kinds.items() if k is ChangeKind.REPLACE)
        if replace:
            raise CapabilityError(f"hyperv: changing {', '.join(replace)} of {spec.name} "
                                  "needs a replace")
        stop_first = max(kinds.values(), default=ChangeKind.IN_PLACE) >= ChangeKind.NEEDS_POWER_OFF
        params = mach.set_vm_parameters(
            spec, observed.id, observed.owner, fields, stop_first=stop_first,
            ctx=self.host.context(), shutdown_timeout=self.host.settings.shutdown_timeout)
        return self.observe(self.host.run("set-vm", params), spec)

    def delete(self, observed: Observed) -> None:
        """The VM's disks first, the VM last. Absent is success; unowned is refused."""
        refuse_unowned(observed, "delete")
        spec = observed.spec
        assert isinstance(spec, MachineSpec)
        ctx = self.host.context()
        paths = [mach.disk_path(spec.name, d, ctx) for d in spec.disks]
        self.host.run("remove-vm", {"id": observed.id, "paths": paths})
