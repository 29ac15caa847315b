"""The durable queue (SQLite) and the backoff schedule, without any network."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.pacs.router.forwarder import Forwarder
from pacsinfra.pacs.router.queue import NewItem, Queue
from pacsinfra.pacs.router.spool import Spool


@pytest.fixture
def q(tmp_path: Path) -> Queue:
    queue = Queue.sqlite(tmp_path / "q.sqlite")
    yield queue
    queue.close()


def _items(dest: str, study: str, n: int, **kw: object) -> list[NewItem]:
    return [NewItem(dest, study, f"{study}.{i}", f"s/{study}.{i}", "r", **kw)  # type: ignore[arg-type]
            for i in range(n)]


def test_study_order_and_one_claim_per_study(q: Queue) -> None:
    q.enqueue(_items("a", "1", 3) + _items("a", "2", 2) + _items("b", "1", 1), now=100)
    b1 = q.next_batch("a", 10, now=101)
    assert [i.sop_uid for i in b1] == ["1.0", "1.1", "1.2"]
    assert q.claim([b1[0].id], "a", now=101) == [b1[0].id]
    # study 1 has a row in flight: the next claimable head is study 2
    b2 = q.next_batch("a", 10, now=101)
    assert [i.sop_uid for i in b2] == ["2.0", "2.1"]
    # a failed head holds its study back until its retry time, never overtaken
    q.failed(b1[0].id, status=0xA700, error="busy", next_at=200, node="a", now=101)
    assert [i.sop_uid for i in q.next_batch("a", 10, now=150)] == ["2.0", "2.1"]
    assert [i.sop_uid for i in q.next_batch("a", 10, now=200)][:1] == ["1.0"]
    assert q.claim([b1[0].id], "a") == [b1[0].id]
    assert q.claim([b1[0].id], "a") == []  # claimed once only
    # a group worker may look past a study whose member is busy
    assert [i.sop_uid for i in q.next_batch("a", 10, now=300, skip=["2"])] == []
    assert [i.sop_uid for i in q.next_batch("a", 10, now=300, skip=["1"])][:1] == ["2.0"]


def test_recover_done_dead_retry_purge(q: Queue, tmp_path: Path) -> None:
    ids = q.enqueue(_items("a", "1", 3), now=1)
    q.claim(ids, "a", now=2)
    assert q.recover(now=3) == 3  # crash while in flight: all back to pending
    q.claim(ids, "a", now=4)
    q.done(ids[:1], keep_seconds=0, node="a", now=5)
    q.failed(ids[1], status=0xA900, error="mismatch", next_at=None, node="a", now=5)
    q.release(ids[2:], now=5)
    st = q.stats(now=10)["a"]
    assert (st["done"], st["dead"], st["pending"]) == (1, 1, 1)
    assert st["oldest_age"] == pytest.approx(9)
    assert q.attempts_of(ids[1])[0][1] == 0xA900
    assert q.retry(dest="a", now=6) == 1
    assert q.rows(state="pending")[0].attempts == 0
    q.failed(ids[1], status=0xA900, error="mismatch", next_at=None, node="a", now=7)
    n, orphans = q.purge(state="dead")
    assert n == 1 and orphans == ["s/1.1"]
    with pytest.raises(ValueError):
        q.purge(state="pending")
    assert q.expired_spools(now=8) == ["s/1.0"]
    assert {i.sop_uid for i in q.rows()} == {"1.2"}


def test_held_until_study_quiet(q: Queue) -> None:
    q.enqueue(_items("a", "1", 2, held=True), now=10)
    assert q.next_batch("a", 10, now=11) == []
    assert q.release_held(5, now=12) == 0
    q.enqueue(_items("a", "1", 1, held=True)[:1], now=14)  # new instance: study not quiet
    assert q.release_held(5, now=18) == 0
    assert q.release_held(5, now=19) == 3
    assert len(q.next_batch("a", 10, now=19)) == 3


def test_reassign_resends_recent_rows_of_dead_node(q: Queue) -> None:
    ids = q.enqueue(_items("g", "1", 3), now=1)
    q.pin("g", "1", "n1")
    q.claim(ids[:2], "n1", now=2)
    q.done(ids[:2], keep_seconds=100, node="n1", now=3)
    assert q.reassign("g", "n1", now=4) == 2  # the delivered ones; the third had no node yet
    assert q.affinity("g", "1") is None
    assert [i.sop_uid for i in q.next_batch("g", 10, now=5)] == ["1.0", "1.1", "1.2"]


def test_backoff_is_capped_exponential_with_jitter(tmp_path: Path) -> None:
    cfg = RouterConfig.model_validate({
        "spool_dir": str(tmp_path), "retry": {"max_attempts": 8, "initial_backoff": 1,
                                              "max_backoff": 10, "jitter": 0.2}})
    fwd = Forwarder(cfg, Queue.sqlite(tmp_path / "q"), Spool(tmp_path / "spool"))
    delays = [fwd.next_attempt(k, 0.0) for k in range(7)]
    for k, d in enumerate(delays):
        assert d is not None
        base = min(10, 2 ** k)
        assert base * 0.8 - 1e-9 <= d <= min(10, base * 1.2) + 1e-9
    assert fwd.next_attempt(7, 0.0) is None  # 8th failure: dead-letter


def test_spool_write_and_sweep(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    keep = sp.write([b"abc", b"def"])
    gone = sp.write([b"x"])
    (sp.incoming / "leftover").write_bytes(b"partial")
    assert sp.path(keep).read_bytes() == b"abcdef"
    assert sp.sweep({keep}) == 2
    assert sp.path(keep).exists() and not sp.path(gone).exists()
