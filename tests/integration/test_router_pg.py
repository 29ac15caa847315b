"""The router queue on PostgreSQL: the same queue semantics, and a router running on it."""

from __future__ import annotations

import importlib.util
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_module
from pg_fixture import PgCluster, postgres  # noqa: F401 - fixture
from test_router_support import Router, StatusSCP, instance, port, send, wait_for

from pacsinfra.pacs.router.queue import Queue

pytestmark = [pytest.mark.integration]

_spec = importlib.util.spec_from_file_location(
    "router_queue_cases", Path(__file__).parents[1] / "unit" / "test_router_queue.py")
assert _spec and _spec.loader
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)


def _reset(pg: PgCluster) -> None:
    import psycopg

    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS items, attempts, studies, affinity")


@pytest.fixture
def pgq(postgres: PgCluster) -> Iterator[Queue]:  # noqa: F811
    need_module("psycopg")
    _reset(postgres)
    q = Queue.postgresql(postgres.dsn())
    yield q
    q.close()


@pytest.mark.parametrize("case", [
    "test_study_order_and_one_claim_per_study",
    "test_recover_done_dead_retry_purge",
    "test_held_until_study_quiet",
    "test_reassign_resends_recent_rows_of_dead_node",
])
def test_queue_semantics_on_postgresql(pgq: Queue, tmp_path: Path, case: str) -> None:
    fn = getattr(cases, case)
    if "tmp_path" in fn.__code__.co_varnames[: fn.__code__.co_argcount]:
        fn(pgq, tmp_path)
    else:
        fn(pgq)


def test_router_on_postgresql(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    need_module("psycopg")
    _reset(postgres)
    dest = StatusSCP(0, "DEST")
    router = Router(tmp_path / "router", {
        "destinations": {"d": dest.dest()},
        "rules": [{"name": "all", "forward": ["d"]}],
        "queue": {"backend": "postgresql", "host": postgres.host, "port": postgres.port,
                  "database": postgres.database, "user": postgres.user},
    })
    router.start()
    try:
        dss = [instance() for _ in range(10)]
        assert set(send(router.port, dss).values()) == {0}
        wait_for(lambda: len(dest.received) == 10, 30, "deliveries")
        out = router.cli("queue", "list")
        assert "d: done=10" in out.stdout, out.stdout + out.stderr
    finally:
        router.stop()
        dest.stop()


def test_router_survives_a_database_restart(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    """The server drops every session of the router (what a restart or a failover does):
    at most the store that meets the dead session is refused (0xA700, never acknowledged),
    then the router reconnects, and everything acknowledged is delivered."""
    need_module("psycopg")
    import psycopg

    _reset(postgres)
    dest = StatusSCP(0, "DEST")
    router = Router(tmp_path / "router", {
        "destinations": {"d": dest.dest()},
        "rules": [{"name": "all", "forward": ["d"]}],
        "queue": {"backend": "postgresql", "host": postgres.host, "port": postgres.port,
                  "database": postgres.database, "user": postgres.user},
    })
    router.start()
    try:
        assert set(send(router.port, [instance() for _ in range(3)]).values()) == {0}
        wait_for(lambda: len(dest.received) == 3, 30, "first deliveries")
        with psycopg.connect(postgres.dsn(), autocommit=True) as c:
            killed = c.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
        assert killed and killed[0] >= 1
        statuses = send(router.port, [instance() for _ in range(6)])
        refused = [s for s in statuses.values() if s != 0]
        assert len(refused) <= 1 and set(refused) <= {0xA700}, statuses
        acked = sum(1 for s in statuses.values() if s == 0)
        wait_for(lambda: len(dest.received) == 3 + acked, 30, "deliveries after the restart")
    finally:
        router.stop()
        dest.stop()


def test_two_routers_share_one_queue_and_keep_study_order(postgres: PgCluster,  # noqa: F811
                                                         tmp_path: Path) -> None:
    need_module("psycopg")
    _reset(postgres)
    dest = StatusSCP(0, "DEST")
    shared = {
        "destinations": {"d": {**dest.dest(), "max_associations": 2}},
        "rules": [{"name": "all", "forward": ["d"]}],
        "spool_dir": str(tmp_path / "shared-spool"),  # both routers may send any row
        "queue": {"backend": "postgresql", "host": postgres.host, "port": postgres.port,
                  "database": postgres.database, "user": postgres.user},
    }
    a = Router(tmp_path / "a", {**shared, "metrics_port": port()})
    b = Router(tmp_path / "b", {**shared, "metrics_port": port()})
    a.start()
    b.start()
    try:
        studies = [instance().StudyInstanceUID for _ in range(8)]
        dss = [instance(study=s, number=n, rows=2) for n in range(1, 11) for s in studies]
        where = {str(d.SOPInstanceUID): (str(d.StudyInstanceUID), int(d.InstanceNumber))
                 for d in dss}
        half = len(dss) // 2
        assert set(send(a.port, dss[:half]).values()) == {0}
        assert set(send(b.port, dss[half:]).values()) == {0}
        wait_for(lambda: len(set(dest.received)) == len(dss), 60, "deliveries")
        order = [where[u] for u in dest.received]
        for s in studies:
            numbers = [n for st, n in order if st == s]
            assert numbers == sorted(numbers), numbers  # never out of order across routers

        def sent() -> list[int]:
            counts = []
            for r in (a, b):
                with urllib.request.urlopen(  # noqa: S310 - loopback
                        f"http://127.0.0.1:{r.cfg['metrics_port']}/metrics") as resp:
                    text = resp.read().decode()
                counts.append(int(next(
                    line.split()[-1] for line in text.splitlines()
                    if line.startswith('pacsinfra_router_sent_total{node="d"}'))))
            return counts

        # a router counts a row once the destination's answer is in: the last one may be
        # received a moment before it is counted
        wait_for(lambda: sum(sent()) >= len(dss), 10, "every row counted as sent")
        print(f"rows sent by router a, b: {sent()}")
    finally:
        a.stop()
        b.stop()
        dest.stop()
