"""Plan cases as data: one YAML file per case in tests/cases/plan/.

A case says what the hypervisor (the in-memory fake driver) holds, what the blueprint now
asks for, and which plan that must give:

``description``
    what the case is about (one line).
``applied``
    the site a first apply built (arguments of ``memdriver.fake_site``: ``archives``,
    ``viewers``, ``memory``, ``shares``); absent: nothing was applied.
``state``
    ``kept`` (default) or ``lost``: whether that apply's state file survives.
``hypervisor``
    changes made behind pacsinfra's back, in this order: ``mutate`` (object name ->
    fields to set; ``nics``/``disks`` as lists of mappings), ``remove`` (object names),
    ``unmarked`` (addresses of the desired site whose object appears without a mark).
``desired``
    the site the blueprint asks for now (``fake_site`` arguments; absent: the defaults).
``plan``
    how the plan is asked for: ``destroy`` (bool), ``targets`` (addresses).
``expect``
    ``steps`` (every step that changes something, by key: ``action``, and when the plan
    has them ``kind``, ``reason``, ``fields`` as name -> [before, after], or null where a
    value is not a scalar), ``summary``, ``warnings`` (substrings), ``error`` (the plan
    itself fails with this text), ``apply_error`` (applying it without --allow-replace
    fails with this text).

Unless the plan fails, every case is then applied (replacing what it replaces) and must
converge: the same plan asked again has no changes, and the driver was asked to create
and delete exactly what the plan said. Record the ``expect`` block of a case anew with
``PACSINFRA_RECORD=1 pytest tests/unit/test_plan_cases.py -k <case>``, then review it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from memdriver import MemDriver, fake_blueprint, fake_site
from support.record import recording

from pacsinfra.apply.engine import Engine
from pacsinfra.errors import PacsinfraError
from pacsinfra.plan.plan import Action, Plan
from pacsinfra.specs import DiskSpec, NicSpec, to_jsonable

CASES_DIR = Path(__file__).resolve().parents[1] / "cases" / "plan"
CASES = sorted(p.stem for p in CASES_DIR.glob("*.yaml"))
SCALARS = (str, int, float, bool, type(None))


def _engine(tmp_path: Path, drv: MemDriver, site: dict[str, Any] | None) -> Engine:
    return Engine(fake_blueprint(tmp_path, fake_site(**(site or {}))),  # type: ignore[arg-type]
                  tmp_path / "state.json", drv)


def _behind_the_back(drv: MemDriver, eng: Engine, changes: dict[str, Any]) -> None:
    """Change the fake hypervisor as an admin (or a crash) would."""
    for name, fields in (changes.get("mutate") or {}).items():
        values = dict(fields)
        if "nics" in values:
            values["nics"] = tuple(NicSpec(**n) for n in values["nics"])
        if "disks" in values:
            values["disks"] = tuple(DiskSpec(**d) for d in values["disks"])
        drv.mutate(name, **values)
    for name in changes.get("remove") or ():
        drv.remove(name)
    for address in changes.get("unmarked") or ():
        assert eng.desired is not None
        drv.put_unmarked(eng.desired.resources[address].spec)


def _observed(plan: Plan) -> dict[str, Any]:
    """The plan in the shape of a case's ``expect``."""
    steps: dict[str, Any] = {}
    for s in plan.changes:
        row: dict[str, Any] = {"action": s.action.value}
        if s.kind is not None:
            row["kind"] = s.kind.name
        if s.reason:
            row["reason"] = s.reason
        if s.fields:
            row["fields"] = {f.name: [to_jsonable(f.before), to_jsonable(f.after)]
                             if isinstance(f.before, SCALARS) and isinstance(f.after, SCALARS)
                             else None for f in s.fields}
        steps[s.key] = row
    return {"steps": steps, "summary": plan.summary(), "warnings": list(plan.warnings)}


def _matches(expected: dict[str, Any], got: dict[str, Any], name: str) -> None:
    assert set(expected.get("steps") or {}) == set(got["steps"]), \
        f"{name}: steps {sorted(got['steps'])}"
    for key, want in (expected.get("steps") or {}).items():
        have = got["steps"][key]
        for attr in ("action", "kind", "reason"):
            assert want.get(attr) == have.get(attr), f"{name}: {key}.{attr}: {have.get(attr)!r}"
        if "fields" in want or "fields" in have:
            assert set(want.get("fields") or {}) == set(have.get("fields") or {}), \
                f"{name}: {key}.fields: {have.get('fields')}"
            for field, values in (want.get("fields") or {}).items():
                if values is not None:
                    assert have["fields"][field] == values, f"{name}: {key}.{field}"
    assert got["summary"] == expected.get("summary"), name
    for text in expected.get("warnings") or ():
        assert any(text in w for w in got["warnings"]), f"{name}: no warning {text!r}"


def _record(path: Path, case: dict[str, Any], expect: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump({**case, "expect": expect}, sort_keys=False, width=100))


def test_there_are_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("name", CASES)
def test_plan_case(name: str, tmp_path: Path) -> None:
    path = CASES_DIR / f"{name}.yaml"
    case = yaml.safe_load(path.read_text())
    expect = case.get("expect") or {}
    drv = MemDriver()
    if "applied" in case:
        first = _engine(tmp_path, drv, case["applied"])
        first.apply(first.plan())
        if case.get("state", "kept") == "lost":
            (tmp_path / "state.json").unlink()
    eng = _engine(tmp_path, drv, case.get("desired"))
    _behind_the_back(drv, eng, case.get("hypervisor") or {})
    how = {"destroy": bool((case.get("plan") or {}).get("destroy")),
           "targets": tuple((case.get("plan") or {}).get("targets") or ())}

    if "error" in expect or (recording() and "steps" not in expect):
        try:
            plan = eng.plan(**how)
        except PacsinfraError as exc:
            if recording():
                _record(path, case, {"error": str(exc)})
                expect = {"error": str(exc)}
            assert expect.get("error") == str(exc), name
            return
        assert "error" not in expect, f"{name}: the plan did not fail"
    else:
        plan = eng.plan(**how)
    got = _observed(plan)
    refused: str | None = None
    if any(s.action is Action.REPLACE and s.holds_data for s in plan.steps):
        with pytest.raises(PacsinfraError) as info:
            eng.apply(plan)
        refused = str(info.value)
    if recording():
        recorded = {k: v for k, v in got.items() if v or k == "steps"}
        if refused:
            recorded["apply_error"] = refused
        _record(path, case, recorded)
        expect = recorded
    _matches(expect, got, name)
    assert expect.get("apply_error") == refused, f"{name}: applying without --allow-replace"

    # the plan, applied, converges, and the driver was asked for exactly what it said
    drv.calls.clear()
    eng.apply(plan, allow_replace=True)
    made = {a for op, a in drv.calls if op == "create"}
    gone = {a for op, a in drv.calls if op == "delete"}
    assert made == {s.address for s in plan.changes
                    if s.action in (Action.CREATE, Action.REPLACE)}, name
    assert gone == {s.address for s in plan.changes
                    if s.action in (Action.DELETE, Action.REPLACE)}, name
    again = eng.plan(**how)
    assert not again.has_changes, f"{name}: not converged: {_observed(again)['steps']}"


def test_a_case_can_name_every_kind_of_change() -> None:
    """The cases between them show every action a plan can hold."""
    seen = set()
    for name in CASES:
        expect = yaml.safe_load((CASES_DIR / f"{name}.yaml").read_text()).get("expect") or {}
        seen |= {s["action"] for s in (expect.get("steps") or {}).values()}
    assert seen == {a.value for a in Action} - {Action.NOOP.value}
