"""Carry out a plan's steps: dependency order, bounded parallelism, state after every step.

- Order: a create/update waits for the steps of what it depends on; a delete
  waits for every step of what depended on the deleted object (destroy runs in
  reverse dependency order).
- Parallelism: independent steps run on a thread pool of ``parallelism`` workers.
- Durability: when a step completes, the state is updated and written (atomic
  file replace) before the step counts as done, so a crash loses at most the
  steps in flight; objects those steps created carry the ownership mark and are
  adopted by the next plan.
- Failure isolation: a failed step marks its dependents skipped; independent
  steps go on. The result lists what completed, what failed (with the
  hypervisor's message) and what was left behind or cleaned up.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pacsinfra.apply.events import Event, EventSink, NullSink
from pacsinfra.drivers.base import Driver
from pacsinfra.errors import ApplyError, PacsinfraError, StateError
from pacsinfra.plan.diff import TYPE_ORDER
from pacsinfra.plan.plan import Action, Step
from pacsinfra.specs import Observed, Ownership
from pacsinfra.state.store import ResourceState, State, StateStore

DELETING = (Action.DELETE, Action.FORGET)


@dataclass
class StepResult:
    """How one step ended."""

    key: str
    address: str
    action: str
    status: str  # done | failed | skipped
    message: str = ""
    cleanup: str = ""
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "address": self.address,
            "action": self.action,
            "status": self.status,
            "message": self.message,
            "cleanup": self.cleanup,
            "elapsed": round(self.elapsed, 3),
        }


@dataclass
class ApplyResult:
    """Every step's outcome, plus the state serial after the run."""

    results: list[StepResult] = field(default_factory=list)
    serial: int | None = None
    elapsed: float = 0.0

    def by_status(self, status: str) -> list[StepResult]:
        return [r for r in self.results if r.status == status]

    @property
    def ok(self) -> bool:
        return not self.by_status("failed") and not self.by_status("skipped")

    def summary(self) -> str:
        """``Apply complete: 3 done, 1 failed, 2 skipped.`` plus the failures and cleanups."""
        done, failed, skipped = (
            self.by_status("done"),
            self.by_status("failed"),
            self.by_status("skipped"),
        )
        counts: dict[str, int] = {}
        for r in done:
            counts[r.action] = counts.get(r.action, 0) + 1
        detail = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
        head = "Apply complete" if self.ok else "Apply FAILED"
        lines = [
            f"{head}: {len(done)} done ({detail or 'nothing'}), {len(failed)} failed, "
            f"{len(skipped)} skipped in {self.elapsed:.1f}s."
        ]
        for r in failed:
            lines.append(f"  failed  {r.address} ({r.action}): {r.message}")
            if r.cleanup:
                lines.append(f"          cleanup: {r.cleanup}")
        for r in skipped:
            lines.append(f"  skipped {r.address} ({r.action}): {r.message}")
        if failed or skipped:
            lines.append("Fix the cause and run apply again: completed steps are in the state.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "serial": self.serial,
            "elapsed": round(self.elapsed, 3),
            "results": [r.to_dict() for r in self.results],
        }


class ApplyFailed(ApplyError):
    """Some steps failed or were skipped; carries the full :class:`ApplyResult`."""

    def __init__(self, result: ApplyResult) -> None:
        super().__init__(result.summary())
        self.result = result


def order_edges(steps: list[Step], state: State | None) -> dict[str, set[str]]:
    """step key -> keys of the steps it must wait for."""
    by_addr: dict[str, list[Step]] = {}
    for s in steps:
        by_addr.setdefault(s.address, []).append(s)
    waits: dict[str, set[str]] = {s.key: set() for s in steps}
    old_deps: dict[str, set[str]] = {}
    for s in steps:
        deps = set(s.depends_on)
        if state is not None and s.address in state.resources:
            deps |= set(state.resources[s.address].depends_on)
        old_deps[s.key] = deps
    users: dict[str, set[str]] = {}
    for key, deps in old_deps.items():
        for d in deps:
            users.setdefault(d, set()).add(key)
    for s in steps:
        if s.action in DELETING:
            # wait for everything that used the object being removed
            waits[s.key] |= users.get(s.address, set()) - {s.key}
        else:
            for dep in s.depends_on:
                for other in by_addr.get(dep, ()):
                    if other.action not in DELETING:
                        waits[s.key].add(other.key)
    return waits


class Executor:
    """Runs steps against a driver, writing state through ``store`` after each one."""

    def __init__(
        self,
        driver: Driver,
        store: StateStore,
        state: State,
        *,
        parallelism: int = 10,
        sink: EventSink | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.driver = driver
        self.store = store
        self.state = state
        self.parallelism = max(1, int(parallelism))
        self.emit: Callable[[Event], None] = sink or NullSink()
        self.stop = stop or threading.Event()
        self._state_lock = threading.Lock()  # guards self.state in memory
        self._flush_lock = threading.Lock()  # one state write at a time
        self._changes = 0  # in-memory changes so far
        self._durable = 0  # changes covered by the last completed write

    # -- state ----------------------------------------------------------------------
    def _record(self, address: str, rec: ResourceState | None) -> None:
        """Put (or drop) one record and make it durable before returning.

        Group commit: a write covers every change made before it started, so
        when several steps finish while a write is in flight, the next single
        write records them all. Every step is still durable before it counts as
        done; only the number of writes (and serial increments) shrinks.
        """
        with self._state_lock:
            if rec is None:
                if self.state.resources.pop(address, None) is None:
                    return
            else:
                self.state.resources[address] = rec
            self._changes += 1
            mine = self._changes
        with self._flush_lock:
            if self._durable >= mine:
                return  # a write that started after our change already covered it
            with self._state_lock:
                upto = self._changes
                self.store.write(self.state)
            self._durable = upto

    # -- one step ---------------------------------------------------------------------
    def _owner(self, step: Step) -> Ownership:
        return Ownership(site=self.state.site, address=step.address, lineage=self.state.lineage)

    def _created(self, step: Step, obs: Observed, owner: Ownership) -> None:
        self._record(step.address, ResourceState.from_observed(obs, owner, step.depends_on))

    def run_step(self, step: Step) -> str:
        """Carry out one step; returns a note for the result. Raises on failure."""
        a = step.action
        if a is Action.CREATE:
            assert step.desired is not None
            owner = self._owner(step)
            self._created(step, self.driver.create(step.desired, owner), owner)
        elif a is Action.UPDATE:
            assert step.desired is not None and step.observed is not None
            obs = self.driver.update(step.desired, step.observed, [f.name for f in step.fields])
            self._created(step, obs, step.observed.owner or self._owner(step))
        elif a is Action.REPLACE:
            assert step.desired is not None and step.observed is not None
            self.driver.delete(step.observed)
            self._record(step.address, None)
            owner = self._owner(step)
            self._created(step, self.driver.create(step.desired, owner), owner)
        elif a is Action.DELETE:
            assert step.observed is not None
            self.driver.delete(step.observed)
            if step.key == step.address:
                self._record(step.address, None)
        elif a is Action.ADOPT:
            assert step.observed is not None
            self._created(step, step.observed, step.observed.owner or self._owner(step))
        elif a is Action.FORGET:
            self._record(step.address, None)
        return ""

    def _cleanup_note(self, step: Step) -> str:
        """After a failed create/replace: did the driver leave anything behind?"""
        if step.action not in (Action.CREATE, Action.REPLACE) or step.desired is None:
            return ""
        try:
            left = self.driver.read(step.desired)
        except Exception as exc:  # the report must not fail because the hypervisor is down
            return f"could not check for leftovers: {exc}"
        if left is None:
            return "nothing left behind (half-created parts removed)"
        if left.owner is None or left.owner.site != self.state.site:
            return f"an object named {step.name} that pacsinfra does not own exists (id {left.id}); not touched"
        return f"left behind {left.id} (marked for this site: the next apply adopts or removes it)"

    # -- the run -----------------------------------------------------------------------
    def run(self, steps: list[Step]) -> ApplyResult:
        """Run every step that changes something; never raises for a step's failure."""
        started = time.monotonic()
        todo = [s for s in steps if s.action is not Action.NOOP]
        waits = order_edges(todo, self.state)
        dependents: dict[str, set[str]] = {s.key: set() for s in todo}
        for k, ws in waits.items():
            for w in ws:
                dependents[w].add(k)
        by_key = {s.key: s for s in todo}
        pending = {k: set(ws) for k, ws in waits.items()}
        results: dict[str, StepResult] = {}
        running: dict[Future[str], tuple[Step, float]] = {}
        self.emit(
            Event(
                "begin",
                message=f"Applying {len(todo)} step(s), parallelism {self.parallelism}.",
                data={"steps": len(todo), "parallelism": self.parallelism},
            )
        )

        def priority(s: Step) -> tuple[bool, int, str]:
            # creates/updates before deletes, networks and storage before machines, then by key
            return (s.action in DELETING, TYPE_ORDER.get(s.type, 9), s.key)

        ready = [(priority(s), s.key) for s in todo if not waits[s.key]]
        heapq.heapify(ready)

        def skip_dependents(key: str, why: str) -> None:
            todo_keys = list(dependents.get(key, ()))
            while todo_keys:
                k = todo_keys.pop()
                if k in results:
                    continue
                s = by_key[k]
                results[k] = StepResult(k, s.address, s.action.value, "skipped", why)
                pending.pop(k, None)
                self.emit(Event("skip", s.address, s.action.value, why))
                todo_keys.extend(dependents.get(k, ()))

        fatal: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="apply") as pool:
            while True:
                if fatal is None and not self.stop.is_set():
                    while ready and len(running) < self.parallelism:
                        _, key = heapq.heappop(ready)
                        if key in results:  # skipped after it became ready
                            continue
                        s = by_key[key]
                        self.emit(Event("start", s.address, s.action.value))
                        running[pool.submit(self.run_step, s)] = (s, time.monotonic())
                if not running:
                    break
                try:
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    # Ctrl-C: start nothing new; let the steps in flight finish and be recorded.
                    self.stop.set()
                    self.emit(
                        Event(
                            "message",
                            message=f"interrupted: finishing {len(running)} step(s) in flight",
                        )
                    )
                    continue
                for fut in finished:
                    s, t0 = running.pop(fut)
                    took = time.monotonic() - t0
                    exc = fut.exception()
                    pending.pop(s.key, None)
                    if exc is None:
                        results[s.key] = StepResult(
                            s.key, s.address, s.action.value, "done", elapsed=took
                        )
                        self.emit(Event("done", s.address, s.action.value, elapsed=took))
                        for k in dependents.get(s.key, ()):
                            if k in pending:
                                pending[k].discard(s.key)
                                if not pending[k] and k not in results:
                                    heapq.heappush(ready, (priority(by_key[k]), k))
                        continue
                    msg = (
                        str(exc)
                        if isinstance(exc, PacsinfraError)
                        else f"{type(exc).__name__}: {exc}"
                    )
                    if isinstance(exc, StateError):
                        fatal = exc  # cannot record progress: stop starting new steps
                    cleanup = self._cleanup_note(s)
                    results[s.key] = StepResult(
                        s.key, s.address, s.action.value, "failed", msg, cleanup, took
                    )
                    self.emit(
                        Event("fail", s.address, s.action.value, msg, took, {"cleanup": cleanup})
                    )
                    skip_dependents(s.key, f"depends on {s.address}, which failed")
        why_not = "state could not be written" if fatal else "interrupted"
        for s in todo:
            if s.key not in results:
                results[s.key] = StepResult(s.key, s.address, s.action.value, "skipped", why_not)
                self.emit(Event("skip", s.address, s.action.value, why_not))
        out = ApplyResult(
            results=[results[s.key] for s in todo],
            serial=self.state.serial,
            elapsed=time.monotonic() - started,
        )
        self.emit(Event("end", message=out.summary(), data={"ok": out.ok, "result": out.to_dict()}))
        return out
