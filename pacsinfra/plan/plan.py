"""The plan: what apply will do, step by step, and its JSON form.

A plan is self-contained: each step carries the desired spec and what was
observed, the plan carries the provider and deploy settings (secret *references* only,
never values) and the state serial/lineage it was made against, so ``apply plan.json``
can refuse a plan the state has moved past.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsinfra.errors import PlanError, UsageError
from pacsinfra.specs import (
    ChangeKind,
    Observed,
    Ownership,
    PowerState,
    Spec,
    spec_from_dict,
    spec_to_dict,
    to_jsonable,
)
from pacsinfra.state.store import assert_no_secrets, utcnow

PLAN_FORMAT = "pacsinfra-plan/1"


class Action(enum.Enum):
    """What a step does to one resource."""

    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    ADOPT = "adopt"  # found, owned by this site, not in state: record it
    FORGET = "forget"  # in state, gone from the hypervisor, not wanted: drop the record
    NOOP = "no-op"


@dataclass(frozen=True)
class FieldChange:
    """One attribute that differs, with how disruptive changing it is."""

    name: str
    before: Any
    after: Any
    kind: ChangeKind

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "before": self.before, "after": self.after, "kind": self.kind.name}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FieldChange:
        return cls(d["name"], d.get("before"), d.get("after"), ChangeKind[d["kind"]])


def observed_to_dict(obs: Observed) -> dict[str, Any]:
    """JSON form of an :class:`Observed`."""
    return {
        "id": obs.id,
        "owner": obs.owner.to_dict() if obs.owner else None,
        "power": obs.power.value,
        "addresses": list(obs.addresses),
        "unobservable": sorted(obs.unobservable),
        "spec": spec_to_dict(obs.spec),
        **({"leftover": obs.leftover} if obs.leftover else {}),
    }


def observed_from_dict(d: Mapping[str, Any]) -> Observed:
    """Inverse of :func:`observed_to_dict`."""
    return Observed(
        spec=spec_from_dict(d["spec"]),
        id=str(d["id"]),
        owner=Ownership(**d["owner"]) if d.get("owner") else None,
        power=PowerState(d.get("power", "unknown")),
        addresses=tuple(d.get("addresses", ())),
        unobservable=frozenset(d.get("unobservable", ())),
        leftover=d.get("leftover"),
    )


@dataclass
class Step:
    """One resource's change."""

    key: str  # unique within the plan: the address, or address~id for a duplicate orphan
    address: str
    type: str  # network | storage | machine
    name: str  # hypervisor object name
    action: Action
    desired: Spec | None = None
    observed: Observed | None = None
    fields: list[FieldChange] = field(default_factory=list)
    kind: ChangeKind | None = None  # worst field kind for update / replace
    depends_on: tuple[str, ...] = ()  # addresses the desired resource depends on
    holds_data: bool = False
    reason: str = ""  # why (drift, orphan, adoption, state lost)

    @property
    def forces(self) -> list[str]:
        """The fields that force a replace."""
        return [f.name for f in self.fields if f.kind == ChangeKind.REPLACE]

    @property
    def changes_something(self) -> bool:
        return self.action is not Action.NOOP

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "address": self.address,
            "type": self.type,
            "name": self.name,
            "action": self.action.value,
            "kind": self.kind.name if self.kind else None,
            "reason": self.reason,
            "holds_data": self.holds_data,
            "depends_on": list(self.depends_on),
            "fields": [f.to_dict() for f in self.fields],
            "desired": spec_to_dict(self.desired) if self.desired else None,
            "observed": observed_to_dict(self.observed) if self.observed else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step:
        return cls(
            key=str(d["key"]),
            address=str(d["address"]),
            type=str(d["type"]),
            name=str(d["name"]),
            action=Action(d["action"]),
            desired=spec_from_dict(d["desired"]) if d.get("desired") else None,
            observed=observed_from_dict(d["observed"]) if d.get("observed") else None,
            fields=[FieldChange.from_dict(f) for f in d.get("fields", [])],
            kind=ChangeKind[d["kind"]] if d.get("kind") else None,
            depends_on=tuple(d.get("depends_on", ())),
            holds_data=bool(d.get("holds_data", False)),
            reason=str(d.get("reason", "")),
        )


@dataclass
class Plan:
    """Every step for one site, and what the plan was made against."""

    site: str  # ownership site id
    name: str  # metadata.name
    overlay: str | None
    driver: str
    provider: dict[str, Any]  # the driver's provider settings, secret references only
    state_lineage: str | None
    state_serial: int | None
    steps: list[Step] = field(default_factory=list)
    destroy: bool = False
    blueprint: str = ""
    created: str = field(default_factory=utcnow)
    warnings: list[str] = field(default_factory=list)
    # the blueprint's deploy settings (how services reach their machines), references only
    deploy: dict[str, Any] = field(default_factory=dict)
    format: str = PLAN_FORMAT

    # -- queries ------------------------------------------------------------------
    @property
    def changes(self) -> list[Step]:
        """The steps that do something."""
        return [s for s in self.steps if s.changes_something]

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        """add / change / destroy / adopt / forget, Terraform-style (a replace is 1 add + 1 destroy)."""
        c = {"add": 0, "change": 0, "destroy": 0, "adopt": 0, "forget": 0}
        for s in self.steps:
            if s.action is Action.CREATE:
                c["add"] += 1
            elif s.action is Action.UPDATE:
                c["change"] += 1
            elif s.action is Action.REPLACE:
                c["add"] += 1
                c["destroy"] += 1
            elif s.action is Action.DELETE:
                c["destroy"] += 1
            elif s.action is Action.ADOPT:
                c["adopt"] += 1
            elif s.action is Action.FORGET:
                c["forget"] += 1
        return c

    def summary(self) -> str:
        """``Plan: 2 to add, 1 to change, 0 to destroy.`` (plus adopt / forget when any)."""
        if not self.has_changes:
            return "No changes. The hypervisor matches the blueprint."
        c = self.counts()
        extra = "".join(f", {c[k]} to {k}" for k in ("adopt", "forget") if c[k])
        return f"Plan: {c['add']} to add, {c['change']} to change, {c['destroy']} to destroy{extra}."

    # -- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": self.format,
            "site": self.site,
            "name": self.name,
            "overlay": self.overlay,
            "driver": self.driver,
            "provider": to_jsonable(self.provider),
            "deploy": to_jsonable(self.deploy),
            "state": {"lineage": self.state_lineage, "serial": self.state_serial},
            "destroy": self.destroy,
            "blueprint": self.blueprint,
            "created": self.created,
            "warnings": list(self.warnings),
            "summary": self.counts(),
            "steps": [s.to_dict() for s in self.steps],
        }
        assert_no_secrets(data)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        if not isinstance(d, Mapping) or d.get("format") != PLAN_FORMAT:
            raise PlanError(f"not a pacsinfra plan (expected format {PLAN_FORMAT!r})")
        try:
            state = d.get("state") or {}
            return cls(
                site=str(d["site"]),
                name=str(d["name"]),
                overlay=d.get("overlay"),
                driver=str(d["driver"]),
                provider=dict(d.get("provider") or {}),
                deploy=dict(d.get("deploy") or {}),
                state_lineage=state.get("lineage"),
                state_serial=state.get("serial"),
                steps=[Step.from_dict(s) for s in d.get("steps", [])],
                destroy=bool(d.get("destroy", False)),
                blueprint=str(d.get("blueprint", "")),
                created=str(d.get("created", "")),
                warnings=list(d.get("warnings", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"malformed plan file: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON (mode 0600: it names infrastructure)."""
        p = Path(path)
        p.write_text(self.to_json(), encoding="utf-8")
        p.chmod(0o600)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read plan {path}: {exc.strerror}") from None
        return cls.from_json(text)


def looks_like_plan(path: str | Path) -> bool:
    """Whether ``path`` is a saved plan (JSON with the plan format marker) rather than a blueprint."""
    p = Path(path)
    if p.suffix.lower() != ".json":
        return False
    try:
        head = p.read_text(encoding="utf-8")[:4096]
    except OSError:
        return False
    return PLAN_FORMAT in head
