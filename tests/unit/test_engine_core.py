"""Apply against the in-memory driver: state writes, order, failures, parallelism,
interrupts, saved plans. What a plan holds for a given site and hypervisor is in the
data cases of tests/cases/plan/ (tests/unit/test_plan_cases.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from memdriver import MemDriver, fake_blueprint, fake_site

from pacsinfra.apply.engine import Engine
from pacsinfra.apply.executor import ApplyFailed
from pacsinfra.errors import PlanError


def _engine(tmp_path: Path, driver: MemDriver, **site_kw: object) -> Engine:
    return Engine(fake_blueprint(tmp_path, fake_site(**site_kw)), tmp_path / "state.json", driver)  # type: ignore[arg-type]


def _actions(plan) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s.key: s.action.value for s in plan.changes}


def test_plan_apply_plan_is_empty(tmp_path: Path) -> None:
    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    result = eng.apply(eng.plan(), parallelism=1)
    assert result.ok and len(result.by_status("done")) == 6
    assert len(drv.objects) == 6
    # MACs were assigned by the "hypervisor"; they must not show as drift
    again = eng.plan()
    assert not again.has_changes, _actions(again)
    state = eng.read_state()
    assert state is not None and state.serial == 6  # parallelism 1: one write per completed step
    assert set(state.resources) == {s.address for s in again.steps}


def test_networks_and_storage_come_before_machines(tmp_path: Path) -> None:
    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    eng.apply(eng.plan(), parallelism=4)
    order = [addr for op, addr in drv.calls if op == "create"]
    first_machine = min(i for i, a in enumerate(order) if a.startswith("machine."))
    assert all(not a.startswith("machine.") for a in order[:first_machine])
    assert first_machine == 3


def test_failure_is_isolated_and_rerun_converges(tmp_path: Path) -> None:
    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    drv.fail_create = {"network.dicom"}
    with pytest.raises(ApplyFailed) as err:
        eng.apply(eng.plan())
    res = err.value.result
    status = {r.address: r.status for r in res.results}
    assert status["network.dicom"] == "failed"
    assert status["machine.archive[0]"] == status["machine.archive[1]"] == "skipped"
    assert status["machine.viewer[0]"] == "done"  # only on management: independent
    assert "image volume" in err.value.result.by_status("failed")[0].message
    assert "nothing left behind" in res.by_status("failed")[0].cleanup
    assert "Apply FAILED: 3 done" in str(err.value)
    drv.fail_create = set()
    plan = eng.plan()
    assert sorted(_actions(plan)) == ["machine.archive[0]", "machine.archive[1]", "network.dicom"]
    eng.apply(plan)
    assert not eng.plan().has_changes


def test_parallelism_is_bounded(tmp_path: Path) -> None:
    drv = MemDriver()
    drv.delay = 0.02
    eng = _engine(tmp_path, drv, archives=12)
    eng.apply(eng.plan(), parallelism=3)
    assert drv.max_concurrency == 3
    assert len(drv.objects) == 3 + 12 + 1


def test_destroy_runs_in_reverse_order(tmp_path: Path) -> None:
    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    eng.apply(eng.plan())
    drv.calls.clear()
    eng.destroy(parallelism=4)
    deletes = [a for op, a in drv.calls if op == "delete"]
    last_machine = max(i for i, a in enumerate(deletes) if a.startswith("machine."))
    assert all(a.startswith("machine.") for a in deletes[: last_machine + 1])
    assert drv.objects == {}
    state = eng.read_state()
    assert state is not None and state.resources == {}


def test_stale_saved_plan_is_refused(tmp_path: Path) -> None:
    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    plan = eng.plan()
    plan_file = tmp_path / "plan.json"
    plan.save(plan_file)
    eng.apply(eng.plan(), parallelism=2)  # the state moves on
    from pacsinfra.plan.plan import Plan

    saved = Plan.load(plan_file)
    with pytest.raises(PlanError, match="state changed since this plan was made"):
        Engine.from_plan(saved, tmp_path / "state.json", drv).apply(saved)


def test_saved_plan_applies_without_blueprint(tmp_path: Path) -> None:
    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    eng.plan().save(tmp_path / "plan.json")
    from pacsinfra.plan.plan import Plan

    saved = Plan.load(tmp_path / "plan.json")
    Engine.from_plan(saved, tmp_path / "state.json", drv).apply(saved)
    assert not eng.plan().has_changes


def test_interrupt_stops_new_steps_and_keeps_state(tmp_path: Path) -> None:
    drv = MemDriver()
    drv.delay = 0.05
    eng = _engine(tmp_path, drv, archives=10)
    stop = threading.Event()
    timer = threading.Timer(0.12, stop.set)
    timer.start()
    with pytest.raises(ApplyFailed) as err:
        eng.apply(eng.plan(), parallelism=1, stop=stop)
    done = err.value.result.by_status("done")
    assert 0 < len(done) < 14
    state = eng.read_state()
    assert state is not None and set(state.resources) == {r.address for r in done}
    eng.apply(eng.plan())
    assert len(drv.objects) == 3 + 10 + 1


def test_a_create_that_leaves_something_behind_is_reported_and_adopted(tmp_path: Path) -> None:
    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    drv.fail_after_create = {"machine.viewer[0]"}
    with pytest.raises(ApplyFailed) as err:
        eng.apply(eng.plan())
    failed = err.value.result.by_status("failed")
    assert [r.address for r in failed] == ["machine.viewer[0]"]
    assert "left behind" in failed[0].cleanup and "adopts or removes it" in failed[0].cleanup
    drv.fail_after_create = set()
    assert _actions(eng.plan()) == {"machine.viewer[0]": "adopt"}
    eng.apply(eng.plan())
    assert not eng.plan().has_changes and len(drv.objects) == 6


def test_parallel_steps_share_state_writes_but_each_is_recorded(tmp_path: Path) -> None:
    drv = MemDriver()
    drv.delay = 0.01
    eng = _engine(tmp_path, drv, archives=30)
    writes: list[int] = []
    store_write = eng.store.write

    def counting_write(state) -> None:  # type: ignore[no-untyped-def]
        writes.append(len(state.resources))
        store_write(state)

    eng.store.write = counting_write  # type: ignore[method-assign]
    eng.apply(eng.plan(), parallelism=10)
    state = eng.read_state()
    assert state is not None and len(state.resources) == 3 + 30 + 1
    assert state.serial == len(writes) <= 34
    assert writes == sorted(writes)  # each write holds at least what the one before held


def test_one_object_listed_twice_is_not_a_duplicate_but_two_are(tmp_path: Path) -> None:
    import dataclasses

    drv = MemDriver()
    eng = _engine(tmp_path, drv)
    eng.apply(eng.plan())
    spec, oid, owner = drv.objects[("StorageSpec", "st-mary-flash")]
    alias = dataclasses.replace(spec, name="flash-dir")
    drv.objects[("StorageSpec", "flash-dir")] = (alias, oid, owner)  # same id, second name
    assert not eng.plan().has_changes
    drv.objects[("StorageSpec", "flash-dir")] = (alias, "other-id", owner)  # a real duplicate
    plan = eng.plan()
    dup = [s for s in plan.changes if s.action.value == "delete"]
    assert [(s.key, s.name) for s in dup] == [("storage.flash~other-id", "flash-dir")]
