"""Many runners, one site, through pgbouncer in transaction mode on a real PostgreSQL.

Eight applies of the same site start at once from eight working directories, each
a separate process. Their hypervisor is the engine's fake driver, saved to one
shared file after every change and loaded when the driver connects (inside the
lock): if two applies ever ran at once, both would see an empty hypervisor and
create the same objects twice, and the state history would fork.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, need, need_module
from pg_fixture import PgCluster, postgres  # noqa: F401  # the fixture

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
RUNNERS = 8

RUNNER = textwrap.dedent(
    """
    import json, os, pickle, sys, threading
    from pathlib import Path
    SAVING = threading.Lock()
    sys.path.insert(0, sys.argv[3])
    from memdriver import MemDriver, fake_blueprint, fake_site
    from pacsinfra.apply.engine import Engine

    hv = Path(sys.argv[2])

    class SharedDriver(MemDriver):
        def list_owned(self, site):  # the engine's first look at the hypervisor: load it
            if hv.exists():
                self.objects = pickle.loads(hv.read_bytes())
                self._ids = iter(range(len(self.objects) + 1, 10**6))
            return super().list_owned(site)
        def _save(self, op, what):
            with SAVING:  # worker threads save in turn, the newest snapshot last
                tmp = hv.with_suffix(".tmp")
                tmp.write_bytes(pickle.dumps(dict(self.objects)))
                os.replace(tmp, hv)
                with open(hv.with_suffix(".log"), "a") as log:
                    log.write(f"{op} {what}\\n")
        def create(self, spec, owner):
            out = super().create(spec, owner)
            self._save("create", spec.address)
            return out
        def update(self, spec, observed, fields):
            out = super().update(spec, observed, fields)
            self._save("update", spec.address)
            return out
        def delete(self, observed):
            super().delete(observed)
            self._save("delete", observed.spec.address)

    bp = fake_blueprint(Path.cwd(), fake_site(archives=2, viewers=1))
    driver = SharedDriver()
    driver.delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    with Engine(bp, sys.argv[1], driver, lock_timeout=120) as eng, eng.locked("apply"):
        plan = eng.plan()
        result = eng.apply(plan, parallelism=4)
        print(json.dumps({"steps": len(plan.steps) if plan.has_changes else 0, "summary": plan.summary(),
                          "serial": result.serial}), flush=True)
    """
)

PGBOUNCER_INI = """\
[databases]
pacs = host={host} port={port} dbname={db} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 100
default_pool_size = 4
server_reset_query =
logfile = {base}/pgbouncer.log
pidfile = {base}/pgbouncer.pid
"""


@pytest.fixture(scope="module")
def pgbouncer(postgres: PgCluster) -> Iterator[int]:  # noqa: F811
    """pgbouncer in transaction mode in front of the test cluster; yields its port."""
    exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer"
                                        if Path("/usr/sbin/pgbouncer").exists() else None)
    need(exe is not None, "pgbouncer (apt-get install pgbouncer)")
    assert exe
    base = Path(tempfile.mkdtemp(prefix="pacsinfra-pgb-"))
    os.chmod(base, 0o777)
    listen = free_port()
    ini = base / "pgbouncer.ini"
    ini.write_text(PGBOUNCER_INI.format(host=postgres.host, port=postgres.port,
                                        db=postgres.database, user=postgres.user,
                                        listen=listen, base=base))
    os.chmod(ini, 0o644)
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([*prefix, exe, str(ini)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd="/")
    try:
        import socket

        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"pgbouncer did not start: {err}")
                time.sleep(0.1)
        yield listen
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_eight_applies_of_one_site_run_one_at_a_time_through_pgbouncer(
        pgbouncer: int, postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    need_module("psycopg")
    from pacsinfra.state.postgres import PostgresStateStore

    url = f"postgresql://{postgres.user}@127.0.0.1:{pgbouncer}/pacs?schema=conc&lease=5s"
    hv = tmp_path / "hypervisor.pickle"
    env = {k: v for k, v in os.environ.items() if k != "PACSINFRA_STATE"}
    env["PYTHONPATH"] = str(ROOT)
    procs = []
    for i in range(RUNNERS):
        wd = tmp_path / f"runner-{i}"
        wd.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-c", RUNNER, url, str(hv), str(ROOT / "tests" / "unit")],
            cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    changed = [o for o in outs if o["steps"]]
    assert len(changed) == 1, outs  # the first apply did everything, the others found no change
    steps = changed[0]["steps"]
    creates = [line.split()[1] for line in (hv.with_suffix(".log")).read_text().splitlines()]
    assert len(creates) == steps and not [a for a, n in Counter(creates).items() if n > 1]
    store = PostgresStateStore(postgres.dsn(), "conc", "st-mary")
    try:
        history = store.history()
        state = store.read()
    finally:
        store.close()
    assert state is not None and sorted(state.resources) == sorted(creates)
    assert [h["serial"] for h in history] == list(range(1, steps + 1))  # one per change, no fork
    assert len({h["lineage"] for h in history}) == 1
    assert all(o["serial"] == steps for o in outs)


def test_kill_9_mid_apply_then_the_next_runner_converges_after_the_lease(
        pgbouncer: int, postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    need_module("psycopg")
    from pacsinfra.state.postgres import PostgresStateStore

    url = f"postgresql://{postgres.user}@127.0.0.1:{pgbouncer}/pacs?schema=killed&lease=2s"
    hv = tmp_path / "hypervisor.pickle"
    env = {k: v for k, v in os.environ.items() if k != "PACSINFRA_STATE"}
    env["PYTHONPATH"] = str(ROOT)
    args = [sys.executable, "-c", RUNNER, url, str(hv), str(ROOT / "tests" / "unit")]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = subprocess.Popen([*args, "0.5"], cwd=tmp_path / "a", env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = hv.with_suffix(".log")
    deadline = time.monotonic() + 60
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.kill()  # SIGKILL: no release, no last write
    first.communicate()
    killed = time.monotonic()
    second = subprocess.run(args, cwd=tmp_path / "b", env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    waited = time.monotonic() - killed
    assert waited >= 1.0  # it had to wait for the dead holder's lease to run out
    creates = [line.split()[1] for line in log.read_text().splitlines()]
    assert not [a for a, n in Counter(creates).items() if n > 1], creates  # no duplicates
    store = PostgresStateStore(postgres.dsn(), "killed", "st-mary")
    try:
        state = store.read()
        history = store.history()
    finally:
        store.close()
    assert state is not None and sorted(state.resources) == sorted(creates) and len(creates) == 6
    assert [h["serial"] for h in history] == list(range(1, len(history) + 1))
    third = subprocess.run(args, cwd=tmp_path / "b", env=env, capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0 and json.loads(third.stdout.splitlines()[-1])["steps"] == 0, \
        (second.stdout, third.stdout)


def test_two_sites_in_one_schema_through_pgbouncer_never_wait(
        pgbouncer: int, postgres: PgCluster) -> None:  # noqa: F811
    need_module("psycopg")
    from pacsinfra.state.postgres import PostgresStateStore
    from pacsinfra.state.store import State

    dsn = f"host=127.0.0.1 port={pgbouncer} dbname=pacs user={postgres.user}"
    a, b = PostgresStateStore(dsn, "pair", "site-a"), PostgresStateStore(dsn, "pair", "site-b")
    try:
        with a.lock("apply"):
            t0 = time.monotonic()
            with b.lock("apply", timeout=0):
                for _ in range(20):  # more than psycopg's prepare threshold: nothing is prepared
                    b.write(st := b.read() or State(site="site-b", driver="kvm"))
            assert time.monotonic() - t0 < 2.0
            assert st.serial == 20
    finally:
        a.close()
        b.close()
