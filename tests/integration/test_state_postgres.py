"""The PostgreSQL state backend on a real PostgreSQL: leases, fencing, CAS, history, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_module
from pg_fixture import PgCluster, postgres  # noqa: F401  # the fixture

from pacsinfra.errors import StateError, StateLockedError
from pacsinfra.specs import NetworkSpec, Ownership
from pacsinfra.state.store import ResourceState, State

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _url(pg: PgCluster, schema: str = "pacsinfra", lease: str = "") -> str:
    extra = f"&lease={lease}" if lease else ""
    return f"postgresql://{pg.user}@{pg.host}:{pg.port}/{pg.database}?schema={schema}{extra}"


@pytest.fixture
def store_factory(postgres: PgCluster, request: pytest.FixtureRequest) -> Iterator[object]:  # noqa: F811
    need_module("psycopg")
    from pacsinfra.state.postgres import PostgresStateStore

    schema = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    made: list[PostgresStateStore] = []

    def make(site: str = "st-mary", lease: float = 120.0, **kw: object) -> PostgresStateStore:
        s = PostgresStateStore(postgres.dsn(), schema, site, lease=lease, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _record(addr: str) -> ResourceState:
    spec = NetworkSpec(address=addr, name=f"st-mary-{addr}", purpose="dicom", settings={})
    return ResourceState(addr, f"id-{addr}", spec, Ownership("st-mary", addr, "L"))


def test_write_read_history_and_cas(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = store_factory(errored_dir=tmp_path)
    assert store.read() is None
    st = State(site="st-mary", driver="kvm")
    with pytest.raises(StateError, match="needs its lock"):
        store.write(st)
    with store.lock("apply") as info:
        assert info.token >= 1 and info.expires
        store.write(st)
        st.resources["a"] = _record("a")
        store.write(st)
        stale = store.read()
        st.resources["b"] = _record("b")
        store.write(st)
        assert stale is not None and stale.serial == 2
        stale.resources["c"] = _record("c")
        with pytest.raises(StateError, match="moved under this run .* serial 2; now .* serial 3"):
            store.write(stale)
        assert stale.serial == 2
    kept = json.loads((tmp_path / "st-mary.errored.state.json").read_text())
    assert kept["serial"] == 3 and [r["address"] for r in kept["resources"]] == ["a", "c"]
    back = store.read()
    assert back is not None and (back.serial, sorted(back.resources)) == (3, ["a", "b"])
    assert [h["serial"] for h in store.history()] == [1, 2, 3]
    assert sorted(store.version(2).resources) == ["a"]
    assert store.lock_info() is None


def test_secrets_never_reach_the_database(store_factory) -> None:  # type: ignore[no-untyped-def]
    store = store_factory()
    st = State(site="st-mary", driver="kvm")
    spec = NetworkSpec(address="n", name="n", purpose="dicom", settings={"password": "hunter2"})
    st.resources["n"] = ResourceState("n", "1", spec, Ownership("st-mary", "n", "L"))
    with store.lock("apply"), pytest.raises(StateError, match="secret-looking field"):
        store.write(st)
    assert store.read() is None and store.history() == []


def test_lock_names_the_holder_and_sites_never_block_each_other(store_factory) -> None:  # type: ignore[no-untyped-def]
    a1, a2, b = store_factory("site-a"), store_factory("site-a"), store_factory("site-b")
    with a1.lock("apply") as held:
        t0 = time.monotonic()
        with b.lock("apply"):  # another site in the same schema: no wait
            pass
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(StateLockedError) as exc, a2.lock("plan"):
            pass
        msg = str(exc.value)
        assert f"force-unlock {held.id}" in msg and f"pid {os.getpid()}" in msg
        assert "operation apply" in msg and "lease until" in msg
        info = a2.lock_info()
        assert info is not None and info.id == held.id and info.cmdline
    released = threading.Event()

    def hold() -> None:
        with a1.lock("apply"):
            time.sleep(0.8)
        released.set()

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    with a2.lock("apply", timeout=10) as second:
        waited = time.monotonic() - t0
        assert released.is_set() and second.token > held.token
    t.join()
    assert 0.3 < waited < 5


def test_heartbeat_keeps_a_short_lease_alive(store_factory) -> None:  # type: ignore[no-untyped-def]
    holder, other = store_factory(lease=1.0), store_factory(lease=1.0)
    with holder.lock("apply"):
        time.sleep(2.5)  # 2.5 lease lengths: only renewals keep it
        with pytest.raises(StateLockedError), other.lock("apply"):
            pass
        holder.write(State(site="st-mary", driver="kvm"))


def test_a_writer_whose_lease_was_taken_over_is_fenced(store_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    slow, fast = store_factory(lease=1.0, errored_dir=tmp_path), store_factory(lease=1.0)
    with slow.lock("apply") as old:
        st = State(site="st-mary", driver="kvm")
        slow.write(st)
        assert slow._heartbeat is not None
        slow._heartbeat.stop()  # the process freezes (GC pause, suspended VM): no renewals
        time.sleep(1.3)
        with fast.lock("apply") as new:
            assert new.token == old.token + 1
            theirs = fast.read()
            assert theirs is not None
            theirs.resources["x"] = _record("x")
            fast.write(theirs)
            st.resources["y"] = _record("y")
            with pytest.raises(StateLockedError, match=f"fencing token {old.token}"):
                slow.write(st)
    final = fast.read()
    assert final is not None and (final.serial, sorted(final.resources)) == (2, ["x"])
    assert (tmp_path / "st-mary.errored.state.json").exists()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pacsinfra.state.postgres import PostgresStateStore
    from pacsinfra.state.store import State
    s = PostgresStateStore(sys.argv[1], sys.argv[2], "st-mary", lease=1.0)
    with s.lock("apply") as info:
        s.write(State(site="st-mary", driver="kvm"))
        print(info.id, flush=True)
        time.sleep(60)
    """
)


def test_kill_9_of_the_holder_frees_the_lock_when_the_lease_runs_out(  # type: ignore[no-untyped-def]
        store_factory, postgres: PgCluster) -> None:  # noqa: F811
    store = store_factory(lease=1.0)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, postgres.dsn(), store.schema],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        lock_id = p.stdout.readline().strip()
        assert lock_id
        with pytest.raises(StateLockedError, match=lock_id), store.lock("apply"):
            pass
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        killed = time.monotonic()
        with store.lock("apply", timeout=10) as info:
            waited = time.monotonic() - killed
            st = store.read()
            assert st is not None
            st.resources["after"] = _record("after")
            store.write(st)
        assert info.id != lock_id and waited < 3.0
        assert [h["serial"] for h in store.history()] == [1, 2]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_force_unlock_needs_the_id(  # type: ignore[no-untyped-def]
        store_factory, postgres: PgCluster,  # noqa: F811
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    holder, admin = store_factory(), store_factory()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site.yaml").write_text((ROOT / "examples" / "quickstart.yaml").read_text())
    url = _url(postgres, holder.schema)
    with store_factory("local-demo").lock("apply") as cli_held:
        r = _cli(["force-unlock", "wrong-id", "site.yaml", "--state", url], capsys)
        assert r.returncode == 1 and "holder of " in r.stderr and cli_held.id in r.stderr
        r = _cli(["force-unlock", cli_held.id, "site.yaml", "--state", url], capsys)
        assert r.returncode == 0 and "Unlocked (was held for 0m0" in r.stdout, r.stderr
        assert "operation apply" in r.stdout
    with holder.lock("apply") as info:
        with pytest.raises(StateError, match="does not match the holder"):
            admin.force_unlock("nope")
        shown = admin.force_unlock(info.id)
        assert shown.id == info.id
        with admin.lock("apply"), pytest.raises(StateLockedError, match="taken over"):
            holder.write(State(site="st-mary", driver="kvm"))


class _Run:
    """What one in-process CLI run printed and its exit code."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.returncode, self.stdout, self.stderr = code, out, err


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> _Run:
    """``pacsinfra ARGS`` in this process (the real entry point: messages and exit codes)."""
    from pacsinfra.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return _Run(code, out.out, out.err)


def test_cli_history_pull_push_rollback_migrate(
        postgres: PgCluster,  # noqa: F811
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    need_module("psycopg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACSINFRA_STATE", raising=False)
    from pacsinfra.state.local import LocalStateStore

    site = tmp_path / "site.yaml"
    site.write_text((ROOT / "examples" / "quickstart.yaml").read_text())
    local = LocalStateStore(tmp_path / "old.json")
    st = State(site="quickstart", driver="local")
    with local.lock("setup"):
        for addr in ("a", "b"):
            st.resources[addr] = _record(addr)
            local.write(st)
    r = _cli(["state", "pull", "site.yaml", "--state", "old.json"], capsys)
    assert r.returncode == 0 and json.loads(r.stdout)["site"] != "", r.stderr
    url = _url(postgres, "cli")
    r = _cli(["state", "migrate", "--to", url, "site.yaml", "--state", "old.json"], capsys)
    assert r.returncode == 0, r.stderr
    r = _cli(["state", "pull", "site.yaml", "--state", url], capsys)
    assert r.returncode == 0, r.stderr
    pulled = json.loads(r.stdout)
    assert pulled["serial"] == 2 and pulled["lineage"] == st.lineage
    r = _cli(["state", "history", "site.yaml", "--state", url, "--json"], capsys)
    assert [h["serial"] for h in json.loads(r.stdout)] == [2]
    pulled["resources"] = pulled["resources"][:1]
    pulled["serial"] = 3
    (tmp_path / "edit.json").write_text(json.dumps(pulled))
    r = _cli(["state", "push", "edit.json", "-b", "site.yaml", "--state", url], capsys)
    assert r.returncode == 0, r.stderr
    r = _cli(["state", "push", "edit.json", "-b", "site.yaml", "--state", url], capsys)
    assert r.returncode == 2 and "not newer than the stored 3" in r.stderr, r.stderr
    r = _cli(["state", "rollback", "--to", "2", "-b", "site.yaml", "--state", url], capsys)
    assert r.returncode == 0, r.stderr
    r = _cli(["state", "history", "site.yaml", "--state", url], capsys)
    assert [line.split()[1] for line in r.stdout.splitlines()] == ["2", "3", "4"]
    r = _cli(["state", "list", "site.yaml", "--state", url], capsys)
    assert r.stdout.split() == ["a", "b"], r.stderr
    r = _cli(["state", "history", "site.yaml", "--state", "old.json"], capsys)
    assert r.returncode == 2 and "keeps no history" in r.stderr
    r = _cli(["state", "migrate", "--to", url, "site.yaml", "--state", "old.json"], capsys)
    assert r.returncode == 1 and "already holds a state" in r.stderr, r.stderr


def test_database_restart_while_holding_the_lock(store_factory, postgres: PgCluster) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from pg_fixture import _pg_bin, _runner

    pg_ctl = _pg_bin("pg_ctl")
    assert pg_ctl
    store = store_factory()
    with store.lock("apply") as info:
        st = State(site="st-mary", driver="kvm")
        st.resources["a"] = _record("a")
        store.write(st)
        log = str(postgres.datadir.parent / "pg.log")  # the server must not hold our pipes
        r = subprocess.run([*_runner(), pg_ctl, "-D", str(postgres.datadir), "-l", log, "-m",
                            "fast", "-w", "restart"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, cwd="/", timeout=60)
        assert r.returncode == 0, r.stderr
        st.resources["b"] = _record("b")
        store.write(st)  # reconnects; the lease row survived the restart
        assert store.lock_info() is not None and store.lock_info().id == info.id  # type: ignore[union-attr]
    back = store.read()
    assert back is not None and (back.serial, sorted(back.resources)) == (2, ["a", "b"])
    assert [h["serial"] for h in store.history()] == [1, 2]
