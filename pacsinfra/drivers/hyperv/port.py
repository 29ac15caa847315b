"""How the services layer finds the VMs the hyperv driver makes: ``get-vm`` by name, the
one carrying pacsinfra's mark in its Notes (Hyper-V allows duplicate names), its static
addresses read from the mark's record. Hyper-V does not deliver those addresses to the
guest (no seed): the image must configure them. No channel to learn a new VM's SSH host
keys either: they are pinned in the blueprint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pacsinfra.drivers.hyperv.marks import MARK_PREFIX
from pacsinfra.specs import MachineSpec, Observed


class HypervPort:
    """The hyperv driver's VMs, for the services layer."""

    def __init__(self, run: Callable[[str, dict[str, Any]], Any],
                 observe: Callable[[dict[str, Any]], Observed]) -> None:
        self._run = run  # renders and runs one script on the host
        self._observe = observe  # a VM's facts as an observation

    def _vms(self, name: str | None) -> list[Observed]:
        facts = self._run("get-vm", {"name": name, "mark_prefix": MARK_PREFIX})["vms"]
        return [self._observe(f) for f in facts]

    def machine(self, name: str) -> Observed | None:
        found = self._vms(name)
        pick = [o for o in found if o.owner is not None] or found
        return pick[0] if pick else None

    def owned_machines(self, site: str) -> list[Observed]:
        return [o for o in self._vms(None) if o.owner is not None and o.owner.site == site]

    def learn_host_keys(self, spec: MachineSpec, wait: float) -> tuple[str, ...] | None:
        return None
