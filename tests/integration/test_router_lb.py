"""Destination groups over two pacsinfra archive nodes: split, health checks, failover."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from test_router_support import REPO, Proc, Router, Sender, instance, port, wait_for, wait_port

pytestmark = [pytest.mark.integration]


class ArchiveNode(Proc):
    """``pacsinfra archive serve`` (the real archive) as a group member."""

    def __init__(self, folder: Path, aet: str) -> None:
        self.folder, self.aet, self.port = folder, aet, port()
        super().__init__([sys.executable, "-m", "pacsinfra", "archive", "serve", "--aet", aet,
                          "--port", str(self.port), "--bind", "127.0.0.1", "--data",
                          str(folder)], folder.parent / f"{aet}.log", cwd=REPO)

    def start(self) -> None:
        super().start()
        wait_port(self.port, proc=self.proc)

    def stored(self) -> dict[str, str]:
        """SOP Instance UID -> Study Instance UID of every stored instance."""
        out = {}
        for p in self.folder.rglob("*.dcm"):
            if ".incoming" in p.parts:
                continue
            ds = dcmread(p, stop_before_pixels=True)
            out[str(ds.SOPInstanceUID)] = str(ds.StudyInstanceUID)
        return out

    def dest(self) -> dict[str, object]:
        return {"ae_title": self.aet, "host": "127.0.0.1", "port": self.port}


def _setup(tmp_path: Path, strategy: str) -> tuple[ArchiveNode, ArchiveNode, Router]:
    n1, n2 = ArchiveNode(tmp_path / "n1", "NODE1"), ArchiveNode(tmp_path / "n2", "NODE2")
    n1.start()
    n2.start()
    router = Router(tmp_path / "router", {
        "destinations": {"n1": n1.dest(), "n2": n2.dest()},
        "groups": {"archive": {"members": ["n1", "n2"], "strategy": strategy,
                               "health_check_interval": 0.5, "resend_window": 600}},
        "rules": [{"name": "all", "forward": ["archive"]}],
        "retry": {"initial_backoff": 0.2, "max_backoff": 2, "max_attempts": 100},
        "metrics_port": port(),
    })
    router.start()
    return n1, n2, router


def _studies(n_studies: int, per_study: int) -> list:
    out = []
    for _ in range(n_studies):
        s = instance().StudyInstanceUID
        out += [instance(study=s, number=i, rows=2) for i in range(1, per_study + 1)]
    return out


@pytest.mark.parametrize("strategy", ["by_study", "least_outstanding"])
def test_both_up_work_is_split(tmp_path: Path, strategy: str) -> None:
    n1, n2, router = _setup(tmp_path, strategy)
    try:
        dss = _studies(20, 10)
        sender = Sender(lambda: router.port, dss)
        sender.start()
        sender.join(120)
        assert len(sender.acked) == len(dss)
        wait_for(lambda: len(n1.stored()) + len(n2.stored()) >= len(dss), 60, "deliveries")
        wait_for(router.drained, 30, "queue drained")
        s1, s2 = n1.stored(), n2.stored()
        assert set(s1) | set(s2) == {str(d.SOPInstanceUID) for d in dss}
        share = len(s1) / (len(s1) + len(s2))
        print(f"{strategy}: n1 {len(s1)} n2 {len(s2)} share {share:.2f}")
        assert 0.4 <= share <= 0.6, (len(s1), len(s2))
        if strategy == "by_study":  # every study whole on one node
            assert not set(s1.values()) & set(s2.values())
    finally:
        router.stop()
        n1.stop()
        n2.stop()


def test_node_killed_mid_run_survivor_gets_every_study(tmp_path: Path) -> None:
    n1, n2, router = _setup(tmp_path, "by_study")
    try:
        dss = _studies(30, 10)
        sender = Sender(lambda: router.port, dss)
        sender.start()
        wait_for(lambda: len(n2.stored()) >= 30, 60, "node 2 to have some work")
        n2.kill()
        wait_for(lambda: "n2" not in _healthy(router), 10, "node 2 taken out")
        killed_at = time.monotonic()
        sender.join(120)
        assert len(sender.acked) == len(dss)
        wait_for(lambda: len(n1.stored()) >= len(dss), 90, "every instance on the survivor")
        wait_for(router.drained, 30, "queue drained")
        by_study = Counter(n1.stored().values())
        assert len(by_study) == 30 and set(by_study.values()) == {10}
        metrics = router.cli("queue", "list").stdout
        assert "archive:" in metrics
        # the dead node is taken out by the health check, and put back when it returns
        n2.start()
        wait_for(lambda: "n2" in _healthy(router), 10, "node 2 back in the group")
        print(f"failover done {time.monotonic() - killed_at:.1f}s after the kill")
    finally:
        router.stop()
        n1.stop()
        n2.stop()


def _healthy(router: Router) -> set[str]:
    """Members the router reports up on its metrics endpoint."""
    import urllib.request

    with urllib.request.urlopen(  # noqa: S310 - loopback
            f"http://127.0.0.1:{router.cfg['metrics_port']}/metrics") as r:
        text = r.read().decode()
    return {line.split('"')[1] for line in text.splitlines()
            if line.startswith("pacsinfra_router_node_up") and line.endswith(" 1")}
