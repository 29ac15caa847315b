"""Compare desired specs, pacsinfra's state and what the hypervisor reports -> steps.

Sources, in order of authority:

1. the hypervisor, through ``driver.list_owned(site)`` (one call for the whole
   site) and ``driver.read(spec)`` for desired objects not found that way (to see
   a name taken by an object pacsinfra does not own);
2. the state, for what pacsinfra manages and what it used to depend on;
3. the desired specs from the blueprint.

An object carrying this site's mark but missing from the state is *adopted*
(never created twice); one carrying no mark, or another site's, with a desired
name is an :class:`AlreadyExists` error. Owned objects no longer desired are
deleted; state records whose object is gone are forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pacsinfra.drivers.base import Driver
from pacsinfra.errors import AlreadyExists, PlanError
from pacsinfra.plan.desired import DesiredSite, Resource
from pacsinfra.plan.plan import Action, FieldChange, Plan, Step
from pacsinfra.specs import (
    ChangeKind,
    MachineSpec,
    Observed,
    Spec,
    changed_fields,
    spec_kind,
    to_jsonable,
)
from pacsinfra.state.store import State

TYPE_ORDER = {"network": 0, "storage": 1, "machine": 2, "service": 3}


@dataclass(frozen=True)
class Observation:
    """What the hypervisor holds for a site, indexed for the diff."""

    by_address: dict[str, Observed]
    extra: list[Observed]  # duplicates of an address (kept to be deleted)
    leftovers: list[Observed]  # parts of interrupted creates, by no object of their own


def observe(
    driver: Driver, site: str, state: State | None, names: Mapping[str, str] | None = None
) -> Observation:
    """List every object marked for ``site``: one per address, the rest kept as duplicates.

    Of two objects marked with the same address, the one whose id the state
    records wins, then the one carrying the desired name (``names``: address -> name).
    Two entries with the same id are one object listed under two names: kept once,
    never deleted as a duplicate.
    """
    by_address: dict[str, Observed] = {}
    extra: list[Observed] = []
    leftovers: list[Observed] = []

    def rank(obs: Observed) -> tuple[bool, bool]:
        known = state.resources.get(obs.spec.address) if state else None
        addr = obs.owner.address if obs.owner else ""
        return (
            known is not None and known.id == obs.id,
            names is not None and names.get(addr) == obs.spec.name,
        )

    for obs in driver.list_owned(site):
        if obs.owner is None:
            continue
        if obs.leftover:
            leftovers.append(obs)
            continue
        addr = obs.owner.address
        prev = by_address.get(addr)
        if prev is None:
            by_address[addr] = obs
            continue
        if rank(obs) > rank(prev):
            by_address[addr], obs = obs, prev
        if obs.id != by_address[addr].id:  # the same object listed twice is not a duplicate
            extra.append(obs)
    return Observation(by_address, extra, leftovers)


def spec_dependencies(spec: Spec, names: Mapping[tuple[str, str], str]) -> tuple[str, ...]:
    """Addresses a spec depends on, found by the hypervisor names its NICs and disks use."""
    if not isinstance(spec, MachineSpec):
        return ()
    deps = {names[("network", n.network)] for n in spec.nics if ("network", n.network) in names}
    deps |= {names[("storage", d.storage)] for d in spec.disks if ("storage", d.storage) in names}
    return tuple(sorted(deps))


def _field_changes(driver: Driver, desired: Spec, obs: Observed) -> list[FieldChange]:
    out = []
    for name in changed_fields(desired, obs):
        out.append(
            FieldChange(
                name=name,
                before=to_jsonable(getattr(obs.spec, name, None)),
                after=to_jsonable(getattr(desired, name)),
                kind=driver.classify_change(desired, obs, name),
            )
        )
    return out


def _desired_step(
    res: Resource,
    action: Action,
    reason: str = "",
    *,
    observed: Observed | None = None,
    fields: list[FieldChange] | None = None,
    kind: ChangeKind | None = None,
) -> Step:
    spec = res.spec
    return Step(
        key=res.address,
        address=res.address,
        type=spec_kind(spec),
        name=spec.name,
        action=action,
        desired=spec,
        observed=observed,
        fields=fields or [],
        kind=kind,
        depends_on=res.depends_on,
        holds_data=bool(getattr(spec, "holds_data", False)),
        reason=reason,
    )


def _sort_key(step: Step) -> tuple[int, str, str]:
    return (TYPE_ORDER.get(step.type, 9), step.address, step.key)


def compute_plan(
    desired: DesiredSite,
    state: State | None,
    driver: Driver,
    *,
    provider: dict[str, object],
    deploy: dict[str, object] | None = None,
    destroy: bool = False,
    blueprint: str = "",
) -> Plan:
    """The plan bringing the hypervisor from what it holds to ``desired`` (or to nothing)."""
    wanted = {} if destroy else desired.resources
    problems = [p for res in wanted.values() for p in driver.check(res.spec)]
    if problems:
        raise PlanError(
            f"the {desired.driver} driver cannot do what the blueprint asks:\n  "
            + "\n  ".join(problems)
        )
    seen = observe(driver, desired.site, state, {a: r.spec.name for a, r in wanted.items()})
    steps: list[Step] = []
    collisions: list[str] = []
    state_res = state.resources if state else {}

    for addr, res in wanted.items():
        spec = res.spec
        obs = seen.by_address.get(addr)
        found: Observed | None = None
        if obs is None:
            found = driver.read(spec)
            if found is not None:
                if found.owner is None or found.owner.site != desired.site:
                    who = (
                        f"site {found.owner.site!r}"
                        if found.owner
                        else "nothing (no pacsinfra mark)"
                    )
                    collisions.append(
                        f"{addr}: a {spec_kind(spec)} named {spec.name!r} already exists "
                        f"(id {found.id}) and is owned by {who}; pacsinfra never touches it. "
                        "Rename it or remove it, or choose another name in the blueprint."
                    )
                    continue
                obs = found

        if obs is None:
            reason = (
                "gone from the hypervisor (deleted outside pacsinfra)" if addr in state_res else ""
            )
            steps.append(_desired_step(res, Action.CREATE, reason))
            continue
        in_state = state_res.get(addr)
        adopting = in_state is None or in_state.id != obs.id
        fields = _field_changes(driver, spec, obs)
        if fields and found is None:
            # list_owned reads without the desired spec; some drivers can only fill
            # unobservable fields from it. Re-read with it before calling anything drift.
            again = driver.read(spec)
            if again is not None and again.owner is not None and again.owner.site == desired.site:
                obs = again
                fields = _field_changes(driver, spec, obs)
        if not fields:
            action = Action.ADOPT if adopting else Action.NOOP
            reason = "owned by this site but missing from the state" if adopting else ""
            steps.append(_desired_step(res, action, reason, observed=obs))
            continue
        kind = max(f.kind for f in fields)
        action = Action.REPLACE if kind is ChangeKind.REPLACE else Action.UPDATE
        reason = "drift or blueprint change"
        if adopting:
            reason += "; adopting an object missing from the state"
        steps.append(_desired_step(res, action, reason, observed=obs, fields=fields, kind=kind))

    if collisions:
        raise AlreadyExists("\n".join(collisions))

    # Deletes: owned objects no longer wanted, state records no longer wanted.
    done = {s.address for s in steps}
    names: dict[tuple[str, str], str] = {}
    for obs in seen.by_address.values():
        names[(spec_kind(obs.spec), obs.spec.name)] = obs.spec.address
    for rec in state_res.values():
        names.setdefault((rec.type, rec.name), rec.address)
    for addr, obs in seen.by_address.items():
        if addr in done:
            continue
        old = state_res.get(addr)
        deps = old.depends_on if old else spec_dependencies(obs.spec, names)
        steps.append(
            Step(
                key=addr,
                address=addr,
                type=spec_kind(obs.spec),
                name=obs.spec.name,
                action=Action.DELETE,
                observed=obs,
                depends_on=deps,
                holds_data=bool(getattr(obs.spec, "holds_data", False)),
                reason="destroy"
                if destroy
                else (
                    "not in the blueprint"
                    if old
                    else "owned by this site, not in the blueprint or state"
                ),
            )
        )
        done.add(addr)
    for addr, rec in state_res.items():
        if addr in done:
            continue
        steps.append(
            Step(
                key=addr,
                address=addr,
                type=rec.type,
                name=rec.name,
                action=Action.FORGET,
                depends_on=rec.depends_on,
                reason="gone from the hypervisor",
            )
        )
    for obs in seen.leftovers:
        # A wanted address not yet made: its create replaces these parts (never adopted:
        # they are not the object). Otherwise nothing will: delete them.
        assert obs.owner is not None
        if obs.owner.address in wanted and obs.owner.address not in seen.by_address:
            continue
        steps.append(
            Step(
                key=f"{obs.owner.address}~{obs.id}",
                address=obs.owner.address,
                type=spec_kind(obs.spec),
                name=obs.spec.name,
                action=Action.DELETE,
                observed=obs,
                depends_on=spec_dependencies(obs.spec, names),
                reason=f"leftover: {obs.leftover}",
            )
        )
    for obs in seen.extra:
        addr = obs.spec.address
        steps.append(
            Step(
                key=f"{addr}~{obs.id}",
                address=addr,
                type=spec_kind(obs.spec),
                name=obs.spec.name,
                action=Action.DELETE,
                observed=obs,
                depends_on=spec_dependencies(obs.spec, names),
                reason="duplicate object marked with the same address",
            )
        )
    steps.sort(key=_sort_key)
    warnings = [
        f"{s.address} holds data and would be replaced (forced by {', '.join(s.forces)}); "
        "apply refuses this without --allow-replace"
        for s in steps
        if s.action is Action.REPLACE and s.holds_data
    ]
    return Plan(
        site=desired.site,
        name=desired.name,
        overlay=desired.overlay,
        driver=desired.driver,
        provider=provider,
        deploy=dict(deploy or {}),
        state_lineage=state.lineage if state else None,
        state_serial=state.serial if state else None,
        steps=steps,
        destroy=destroy,
        blueprint=blueprint,
        warnings=warnings,
    )


def select_targets(plan: Plan, targets: Iterable[str]) -> Plan:
    """Keep only the steps for ``targets`` (an address, or a prefix like ``machine.archive``).

    A create/update/replace brings what it depends on along; a delete brings
    along the deletes of whatever depends on the deleted object (no machine is
    left on a removed network).
    """
    wanted = [t for t in targets if t]
    if not wanted:
        return plan

    def matches(addr: str) -> bool:
        return any(
            addr == t or addr.startswith(t + "[") or addr.startswith(t + ".") for t in wanted
        )

    by_addr: dict[str, list[Step]] = {}
    users: dict[str, set[str]] = {}
    for s in plan.steps:
        by_addr.setdefault(s.address, []).append(s)
        for d in s.depends_on:
            users.setdefault(d, set()).add(s.address)
    keep: set[str] = set()
    todo = [s.address for s in plan.steps if matches(s.address)]
    while todo:
        a = todo.pop()
        if a in keep:
            continue
        keep.add(a)
        for step in by_addr.get(a, ()):
            if step.action in (Action.DELETE, Action.FORGET):
                todo.extend(
                    u
                    for u in users.get(a, ())
                    if any(x.action in (Action.DELETE, Action.FORGET) for x in by_addr.get(u, ()))
                )
            else:
                todo.extend(step.depends_on)
    plan.steps = [s for s in plan.steps if s.address in keep]
    return plan
