"""kill -9 the router at random moments during a 2,000-instance flow; nothing acknowledged is lost.

A sender thread keeps storing instances into the router (an instance the router did
not answer with Success is sent again later). The router is killed with SIGKILL ten
times at random moments and restarted on the same port. At the end every instance
the sender saw acknowledged must be at every destination its rules name: CT at
both storescp destinations, MR at the second only.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from test_router_support import Router, Sender, StoreSCP, instance, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_INSTANCES = 2000
TRIALS = 10


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int(os.environ.get("ROUTER_CRASH_SEED", time.time()))
    rnd = random.Random(seed)
    print(f"ROUTER_CRASH_SEED={seed}")
    a = StoreSCP(tmp_path / "a", "DESTA")
    b = StoreSCP(tmp_path / "b", "DESTB")
    a.start()
    b.start()
    router = Router(tmp_path / "router", {
        "destinations": {"a": a.dest(), "b": b.dest()},
        "rules": [{"name": "ct", "match": {"tag": "Modality", "equals": "CT"},
                   "forward": ["a", "b"]},
                  {"name": "mr", "match": {"tag": "Modality", "equals": "MR"},
                   "forward": ["b"]}],
        "retry": {"initial_backoff": 0.2, "max_backoff": 1, "max_attempts": 100},
        "queue": {"keep_done_seconds": 0},
    })
    dss = []
    for s in range(N_INSTANCES // 20):
        study = instance().StudyInstanceUID
        mod = "CT" if s % 2 == 0 else "MR"
        dss += [instance(modality=mod, study=study, number=i, rows=2) for i in range(1, 21)]
    modality = {str(d.SOPInstanceUID): str(d.Modality) for d in dss}
    router.start()
    sender = Sender(lambda: router.port, dss)
    sender.start()
    kills = []
    try:
        for _ in range(TRIALS):
            time.sleep(rnd.uniform(0.2, 1.5))
            kills.append(len(sender.acked))
            router.kill()
            time.sleep(rnd.uniform(0, 0.3))
            router.start()
        sender.join(180)
        assert not sender.is_alive(), f"sender stuck with {len(sender.todo)} left"
        assert len(sender.acked) == N_INSTANCES
        assert kills[0] < N_INSTANCES, "the kills happened after the flow ended"
        want_a = {u for u in sender.acked if modality[u] == "CT"}
        want_b = set(sender.acked)
        wait_for(lambda: a.sop_uids() >= want_a and b.sop_uids() >= want_b, 120,
                 "every acknowledged instance at its destinations")
        wait_for(router.drained, 30, "queue drained")
        assert a.sop_uids() == want_a  # nothing unexpected either
        assert b.sop_uids() == want_b
        print(f"acknowledged before each kill: {kills}")
    finally:
        sender.stop_flag.set()
        router.stop()
        a.stop()
        b.stop()
