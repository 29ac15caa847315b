"""Destination outages and refusals: backoff, study order, dead-letter, ``queue retry``."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import need_binary
from test_router_support import Orthanc, Router, StatusSCP, instance, send, wait_for

pytestmark = [pytest.mark.integration]


def _orthanc_order(orth: Orthanc) -> list[tuple[str, int]]:
    """(StudyInstanceUID, InstanceNumber) in the order Orthanc stored them."""
    base = f"http://127.0.0.1:{orth.http}"
    with urllib.request.urlopen(f"{base}/changes?limit=10000") as r:  # noqa: S310 - loopback
        changes = json.load(r)["Changes"]
    out = []
    for ch in sorted(changes, key=lambda c: c["Seq"]):
        if ch["ChangeType"] != "NewInstance":
            continue
        with urllib.request.urlopen(f"{base}/instances/{ch['ID']}/simplified-tags") as r:  # noqa: S310
            tags = json.load(r)
        out.append((tags["StudyInstanceUID"], int(tags["InstanceNumber"])))
    return out


def test_outage_backoff_then_everything_in_study_order(tmp_path: Path) -> None:
    need_binary("Orthanc")
    orth = Orthanc(tmp_path / "orthanc")  # not started: the destination is down
    router = Router(tmp_path / "router", {
        "destinations": {"pacs": {**orth.dest(), "max_associations": 1}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "retry": {"max_attempts": 50, "initial_backoff": 0.5, "max_backoff": 4, "jitter": 0.2},
        "queue": {"keep_done_seconds": 600},
    })
    router.start()
    try:
        studies = [instance().StudyInstanceUID for _ in range(3)]
        dss = [instance(study=s, number=n) for n in range(1, 6) for s in studies]
        assert set(send(router.port, dss).values()) == {0}
        time.sleep(8)  # attempts at ~0, 0.5, 1.5, 3.5, 7.5 s
        listing = json.loads(router.cli("queue", "list", "--json").stdout)
        rows = listing["rows"]
        assert (listing["total"], listing["shown"], listing["truncated"]) == (15, 15, False)
        short = json.loads(router.cli("queue", "list", "--json", "--limit", "4").stdout)
        assert (short["total"], short["shown"], short["truncated"]) == (15, 4, True)
        assert [r["id"] for r in short["rows"]] == [r["id"] for r in rows[:4]]  # oldest first
        assert "showing the oldest 4 of 15 rows" in router.cli("queue", "list", "--limit",
                                                                "4").stdout
        heads = [r for r in rows if r["attempt_log"]]
        assert {r["study_uid"] for r in heads} == set(studies)  # only study heads are tried
        for r in heads:
            log = r["attempt_log"]
            assert len(log) >= 4, log
            for k, a in enumerate(log):
                base = min(4.0, 0.5 * 2 ** k)
                assert base * 0.8 - 0.01 <= a["next_at"] - a["at"] <= base * 1.2 + 0.01
                if k:
                    assert a["at"] >= log[k - 1]["next_at"] - 0.01  # never retried early
            gaps = [b["at"] - a["at"] for a, b in zip(log, log[1:], strict=False)]
            assert gaps[-1] > gaps[0] * 2  # it backs off
        # nothing delivered or dead-lettered during the outage; a head may be caught mid-attempt
        assert all(r["state"] in ("pending", "inflight") for r in rows), rows
        orth.start()
        wait_for(lambda: router.drained(), 40, "queue to drain after the outage")
        order = _orthanc_order(orth)
        assert sorted(order) == sorted((s, n) for s in studies for n in range(1, 6))
        for s in studies:
            assert [n for st, n in order if st == s] == [1, 2, 3, 4, 5]
    finally:
        router.stop()
        orth.stop()


def test_refusals_dead_letter_and_queue_retry(tmp_path: Path) -> None:
    picky = StatusSCP(0xA900, "PICKY")  # data set does not match SOP class: permanent
    busy = StatusSCP(0xA700, "BUSY")  # out of resources: transient, until max_attempts
    router = Router(tmp_path / "router", {
        "destinations": {"picky": picky.dest(), "busy": busy.dest()},
        "rules": [{"name": "ct", "match": {"tag": "Modality", "equals": "CT"},
                   "forward": ["picky"]},
                  {"name": "mr", "match": {"tag": "Modality", "equals": "MR"},
                   "forward": ["busy"]}],
        "retry": {"max_attempts": 3, "initial_backoff": 0.2, "max_backoff": 1, "jitter": 0},
    })
    router.start()
    try:
        ct = [instance(modality="CT") for _ in range(3)]
        mr = [instance(modality="MR") for _ in range(2)]
        assert set(send(router.port, ct + mr).values()) == {0}
        wait_for(lambda: router.states().get("dead", 0) == 5, 30, "dead letters")
        with router.db() as c:
            rows = c.execute("SELECT dest, attempts, last_status FROM items").fetchall()
        assert sorted(rows) == sorted([("picky", 1, 0xA900)] * 3 + [("busy", 3, 0xA700)] * 2)
        listing = router.cli("queue", "list", "--state", "dead")
        assert "status=0xA900" in listing.stdout and "status=0xA700" in listing.stdout
        # the destinations are fixed; retry the dead letters of one of them, then the rest
        picky.status = busy.status = 0
        out = router.cli("queue", "retry", "--dest", "busy")
        assert out.returncode == 0 and "2 row(s) re-queued" in out.stdout
        wait_for(lambda: len(busy.received) == 2, 20, "retried rows delivered")
        assert router.states().get("dead") == 3 and picky.received == []
        assert "3 row(s) re-queued" in router.cli("queue", "retry").stdout
        wait_for(lambda: len(picky.received) == 3, 20, "retried rows delivered")
        assert set(picky.received) == {str(d.SOPInstanceUID) for d in ct}
        out = router.cli("queue", "purge", "--state", "done")
        assert "5 row(s) purged, 5 spool file(s) removed" in out.stdout
    finally:
        router.stop()
        picky.stop()
        busy.stop()
