"""The router queue on PostgreSQL: the same queue semantics, and a router running on it."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_module
from pg_fixture import PgCluster, postgres  # noqa: F401 - fixture
from test_router_support import Router, StatusSCP, instance, send, wait_for

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
