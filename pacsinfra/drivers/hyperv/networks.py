"""Networks on Hyper-V: a virtual switch each (internal, external on a host NIC, or
private), marked in its Notes. Mapping in :mod:`.infra`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.hyperv import classify as cls_mod
from pacsinfra.drivers.hyperv import infra
from pacsinfra.drivers.hyperv.host import HypervHost, claim, pick, refuse_unowned
from pacsinfra.drivers.hyperv.marks import MARK_PREFIX
from pacsinfra.drivers.hyperv.scripts import render
from pacsinfra.specs import ChangeKind, NetworkSpec, Observed, Ownership, Rendered


class Networks(KindHandler[NetworkSpec]):
    """Virtual switches."""

    def __init__(self, host: HypervHost) -> None:
        self.host = host

    def _observe(self, facts: dict[str, Any], desired: NetworkSpec | None) -> Observed:
        spec, owner = infra.parse_switch(facts, desired)
        return Observed(spec=spec, id=str(facts.get("id") or facts["name"]), owner=owner)

    def _switches(self, name: str | None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.host.run(
            "get-switch", {"name": name, "mark_prefix": MARK_PREFIX})["switches"]
        return found

    def read(self, spec: NetworkSpec) -> Observed | None:
        return pick([self._observe(f, spec) for f in self._switches(spec.name)], spec.address)

    def list_owned(self, site: str) -> list[Observed]:
        return [o for o in (self._observe(f, None) for f in self._switches(None))
                if o.owner is not None and o.owner.site == site]

    def render(self, spec: NetworkSpec, owner: Ownership) -> Rendered:
        script = render("new-switch", infra.switch_parameters(spec, owner))
        return Rendered("text/x-powershell", script.text, script.parameters)

    def classify(self, spec: NetworkSpec, field_name: str) -> ChangeKind:
        return cls_mod.classify(spec, field_name)

    def check(self, spec: NetworkSpec) -> list[str]:
        problems = []
        kind = infra.switch_type(spec.settings)
        if kind not in infra.SWITCH_TYPES:
            problems.append(f"{spec.address}: switch type must be internal, external or private")
        if kind == "external" and not spec.settings.get("adapter"):
            problems.append(f"{spec.address}: an external switch needs settings.adapter (a host NIC)")
        return problems

    def create(self, spec: NetworkSpec, owner: Ownership) -> Observed:
        found = self.read(spec)
        if claim(spec, found, owner):
            assert found is not None
            return found
        return self._observe(self.host.run("new-switch", infra.switch_parameters(spec, owner)),
                             spec)

    def update(self, spec: NetworkSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        refuse_unowned(observed, "change")
        assert observed.owner is not None
        notes = infra.switch_parameters(spec, observed.owner)["notes"]
        return self._observe(self.host.run("set-switch", {"name": spec.name, "notes": notes}),
                             spec)

    def delete(self, observed: Observed) -> None:
        refuse_unowned(observed, "delete")
        self.host.run("remove-switch", {"name": observed.spec.name})
