"""Study- and series-level routing: when a held study (or series) is complete.

Rows of a rule with ``complete`` (or ``per_study``) are queued ``held``. Every half
second :meth:`Completer.step` looks at each held group — (rule, study), or (rule,
study, series) at series level — and decides with :meth:`Completer.assess`:

- complete (quiet for ``quiet_seconds``, and every ``expect_series`` pattern matched by
  a SeriesDescription): its rows become pending, and the study goes out whole;
- not complete, and ``timeout_seconds`` since its first instance: ``send`` releases it
  as it is, ``discard`` dead-letters its rows with the reason, ``hold`` keeps waiting;
- otherwise it waits.

:meth:`Completer.explain` says the same in words for ``router explain --study``.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pacsinfra.pacs.router.config import Completion, RouterConfig
from pacsinfra.pacs.router.queue import Queue

LOG = logging.getLogger("pacsinfra.router")
_NEVER = 1e18  # per_study rules have no timeout


def series_matches(pattern: str, description: str | None) -> bool:
    """Whether a SeriesDescription matches an ``expect_series`` pattern."""
    text = description or ""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], text) is not None
    return fnmatch.fnmatchcase(text.upper(), pattern.upper())


@dataclass
class Assessment:
    """The state of one held group and what is done with it now."""

    rule: str
    study_uid: str
    series_uid: str  # "" at study level
    ids: list[int]
    action: str  # release | wait | hold | discard
    reasons: list[str] = field(default_factory=list)


class Completer:
    """Releases or discards held rows as their studies complete (module docstring)."""

    def __init__(self, cfg: RouterConfig, queue: Queue,
                 dropped: Callable[[str, str, int], None] | None = None) -> None:
        self.queue = queue
        self.dropped = dropped  # (study, why, rows) for the audit trail
        self.rules: dict[str, Completion] = {}
        for r in cfg.rules:
            if r.complete is not None:
                self.rules[r.name] = r.complete
            elif r.per_study:
                self.rules[r.name] = Completion(quiet_seconds=cfg.stable_study_seconds,
                                                timeout_seconds=_NEVER)

    def assess_all(self, now: float | None = None) -> list[Assessment]:
        """Every held group, assessed."""
        now = time.time() if now is None else now
        groups: dict[tuple[str, str, str], list[int]] = {}
        for item_id, rule, study, series in self.queue.held():
            done = self.rules.get(rule)
            key = (rule, study, series if done is not None and done.level == "series" else "")
            groups.setdefault(key, []).append(item_id)
        seen: dict[str, list[tuple[str, str | None, float, float, int]]] = {}
        out = []
        for (rule, study, series), ids in groups.items():
            if study not in seen:
                seen[study] = self.queue.series_seen(study)
            out.append(self.assess(rule, study, series, ids, seen[study], now))
        return out

    def assess(self, rule: str, study: str, series: str, ids: list[int],
               seen: list[tuple[str, str | None, float, float, int]], now: float) -> Assessment:
        """One group: complete, timed out, or waiting, with the reasons."""
        done = self.rules.get(rule)
        if done is None:
            return Assessment(rule, study, series, ids, "release",
                              ["its rule no longer holds studies: released"])
        rows = [s for s in seen if not series or s[0] == series]
        if not rows:  # held before series were recorded: judge by the rows alone
            return Assessment(rule, study, series, ids, "release",
                              ["no series recorded for it: released"])
        first = min(s[2] for s in rows)
        last = max(s[3] for s in rows)
        reasons = []
        quiet = now - last
        complete = quiet >= done.quiet_seconds
        reasons.append(f"quiet for {quiet:.0f} s of {done.quiet_seconds:.0f} s"
                       + ("" if complete else " (still arriving)"))
        missing = [p for p in done.expect_series
                   if not any(series_matches(p, s[1]) for s in rows)]
        if done.expect_series:
            if missing:
                complete = False
                reasons.append("expected series missing: " + ", ".join(missing))
            else:
                reasons.append("every expected series is there: " + ", ".join(done.expect_series))
        age = now - first
        if complete:
            return Assessment(rule, study, series, ids, "release", ["complete", *reasons])
        if age < done.timeout_seconds:
            reasons.append(f"timeout in {done.timeout_seconds - age:.0f} s "
                           f"(then: {done.when_incomplete})")
            return Assessment(rule, study, series, ids, "wait", ["incomplete", *reasons])
        reasons.append(f"incomplete {age:.0f} s after its first instance "
                       f"(timeout {done.timeout_seconds:.0f} s): {done.when_incomplete}")
        action = {"send": "release", "discard": "discard", "hold": "hold"}[done.when_incomplete]
        return Assessment(rule, study, series, ids, action, ["incomplete", *reasons])

    def step(self, now: float | None = None) -> int:
        """Apply every decision that is due; the number of rows released."""
        released = 0
        for a in self.assess_all(now):
            what = f"study {a.study_uid}" + (f" series {a.series_uid}" if a.series_uid else "")
            if a.action == "release":
                n = self.queue.unhold(a.ids)
                released += n
                if n:
                    LOG.info("rule %r: %s released (%d rows): %s", a.rule, what, n,
                             "; ".join(a.reasons))
            elif a.action == "discard":
                why = f"discarded by rule {a.rule!r}: " + "; ".join(a.reasons[1:])
                n = self.queue.discard(a.ids, why)
                if n:
                    LOG.warning("rule %r: %s: %d rows %s", a.rule, what, n, why)
                    if self.dropped is not None:
                        self.dropped(a.study_uid, why, n)
        return released

    def explain(self, study_uid: str, now: float | None = None) -> list[str]:
        """Why each held group of ``study_uid`` is or is not complete, in words."""
        now = time.time() if now is None else now
        lines = []
        seen = self.queue.series_seen(study_uid)
        for s_uid, desc, first, last, n in seen:
            lines.append(f"series {s_uid} {desc or '(no description)'!r}: {n} instance(s), "
                         f"first {now - first:.0f} s ago, last {now - last:.0f} s ago")
        groups = [a for a in self.assess_all(now) if a.study_uid == study_uid]
        for a in groups:
            where = f" series {a.series_uid}" if a.series_uid else ""
            verdict = {"release": "goes now", "wait": "waits", "hold": "held on",
                       "discard": "discarded"}[a.action]
            lines.append(f"rule {a.rule!r}{where}: {len(a.ids)} held row(s) {verdict}")
            lines.extend(f"  {r}" for r in a.reasons)
        if not groups:
            lines.append(f"no rows of study {study_uid} are held")
        return lines


__all__ = ["Assessment", "Completer", "series_matches"]
