"""Study- and series-level completion over a real SQLite queue, at chosen moments."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsinfra.pacs.router.completion import Completer, series_matches
from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.pacs.router.queue import NewItem, Queue


@pytest.fixture
def q(tmp_path: Path) -> Queue:
    queue = Queue.sqlite(tmp_path / "q.sqlite")
    yield queue
    queue.close()


def _cfg(complete: dict[str, object] | None = None, **rule: object) -> RouterConfig:
    r: dict[str, object] = {"name": "whole", "forward": ["pacs"], **rule}
    if complete is not None:
        r["complete"] = complete
    return RouterConfig.model_validate({
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1"}},
        "rules": [r], "stable_study_seconds": 5})


def _arrive(q: Queue, study: str, series: str, desc: str, n: int, at: float) -> None:
    q.enqueue([NewItem("pacs", study, f"{series}.{i}", f"s/{series}.{i}", "whole", held=True,
                       series_uid=series, series_description=desc) for i in range(n)], now=at)


def test_patterns() -> None:
    assert series_matches("ax*", "AX T1 POST")
    assert not series_matches("COR*", "AX T1")
    assert series_matches("re:^(AX|SAG) T[12]$", "SAG T2")
    assert not series_matches("COR*", None)


def test_expected_series_then_quiet(q: Queue) -> None:
    done = Completer(_cfg({"quiet_seconds": 10, "expect_series": ["AX*", "COR*"],
                           "timeout_seconds": 600}), q)
    _arrive(q, "1", "1.1", "AX T1", 3, at=100)
    (a,) = done.assess_all(now=200)  # quiet, but COR* is missing
    assert a.action == "wait" and "expected series missing: COR*" in a.reasons
    _arrive(q, "1", "1.2", "COR T2", 2, at=205)
    assert done.assess_all(now=210)[0].action == "wait"  # not quiet yet
    assert done.step(now=214) == 0
    assert done.step(now=216) == 5  # all five rows at once: the study goes whole
    assert q.count(state="pending") == 5 and q.count(state="held") == 0


def test_timeout_send_hold_discard(q: Queue) -> None:
    for policy, state in (("send", "pending"), ("discard", "dead"), ("hold", "held")):
        study = f"9.{policy}"
        done = Completer(_cfg({"quiet_seconds": 1, "expect_series": ["COR*"],
                               "timeout_seconds": 60, "when_incomplete": policy}), q)
        _arrive(q, study, f"{study}.1", "AX", 2, at=1000)
        assert done.assess_all(now=1059)[-1].action == "wait"
        done.step(now=1061)
        rows = [r for r in q.rows(limit=100) if r.study_uid == study]
        assert {r.state for r in rows} == {state}, policy
        if policy == "discard":
            assert "discarded by rule 'whole'" in (rows[0].last_error or "")
            assert "expected series missing: COR*" in (rows[0].last_error or "")


def test_series_level_releases_each_series_on_its_own(q: Queue) -> None:
    done = Completer(_cfg({"level": "series", "quiet_seconds": 10}), q)
    _arrive(q, "2", "2.1", "AX", 2, at=100)
    _arrive(q, "2", "2.2", "COR", 2, at=150)
    assert done.step(now=115) == 2  # 2.1 is quiet, 2.2 is not there yet
    assert done.step(now=155) == 0
    assert done.step(now=161) == 2
    lines = "\n".join(done.explain("2", now=161))
    assert "no rows of study 2 are held" in lines and "'AX': 2 instance(s)" in lines


def test_per_study_is_the_quiet_time_alone(q: Queue) -> None:
    done = Completer(_cfg(per_study=True), q)
    _arrive(q, "3", "3.1", "", 1, at=100)
    assert done.step(now=104) == 0 and done.step(now=106) == 1


def test_explain_says_what_is_missing(q: Queue) -> None:
    done = Completer(_cfg({"quiet_seconds": 10, "expect_series": ["AX*", "COR*"],
                           "timeout_seconds": 600, "when_incomplete": "discard"}), q)
    _arrive(q, "4", "4.1", "AX T1", 3, at=100)
    lines = done.explain("4", now=120)
    assert lines[0].startswith("series 4.1 'AX T1': 3 instance(s)")
    assert "rule 'whole': 3 held row(s) waits" in lines
    assert "  expected series missing: COR*" in lines
    assert "  timeout in 580 s (then: discard)" in lines


def test_bad_completion_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="expect_series needs level: study"):
        _cfg({"level": "series", "expect_series": ["AX*"]})
    with pytest.raises(ValueError, match="not a regular expression"):
        _cfg({"expect_series": ["re:(unclosed"]})
    with pytest.raises(ValueError, match="per_study and complete both"):
        _cfg({"quiet_seconds": 1}, per_study=True)
