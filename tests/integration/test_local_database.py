"""The ``database`` service on the local provider: PostgreSQL from this machine's packages.

A site with a database service, an archive whose index is on it and a router whose
queue is on it: apply -> PostgreSQL runs (as the ``postgres`` user when the test runs
as root) -> the archive's index rows are in PostgreSQL (read with psycopg) -> verify
passes -> an empty plan -> a database config change restarts the database alone, and
the archive (same pid) keeps working on the restarted server -> destroy leaves no
postgres process. And: the password is nowhere in state, plan JSON, logs or configs.
Real PostgreSQL, real supervisor, archive and router on free loopback ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, need, need_module
from support.procs import cmdline, processes_under

pytestmark = pytest.mark.integration

SITE = "dbsite"
DB_MACHINE = f"{SITE}-db-1"
PACS_MACHINE = f"{SITE}-pacs-1"
PASSWORD = "s3cret-Pg-pässwörd-4711"  # noqa: S105 - the test's own throwaway secret
PW_ENV = "PXTEST_DB_PASSWORD"


def pg_binaries() -> None:
    """PostgreSQL server binaries (Debian's layout) and, as root, the postgres user."""
    found = any(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    need(found, "PostgreSQL server binaries (apt-get install -y postgresql)")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            need(False, "a 'postgres' user (the postgresql package creates it)")


def pg_version() -> int:
    return max(int(p.parent.parent.name) for p in Path("/usr/lib/postgresql").glob("*/bin/postgres"))


def blueprint(db: int, archive: int, router: int, receiver: int, *, max_conn: int = 50) -> str:
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: {SITE}}}
provider: {{driver: local}}
storage:
  disk: {{tier: performance, encrypted: true}}
machines:
  db:
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    disks: [{{name: data, size: 1GiB, storage: disk}}]
    services: [pacsdb]
  pacs:
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    disks: [{{name: data, size: 1GiB, storage: disk}}]
    services: [archive, router]
services:
  pacsdb:
    kind: database
    config:
      version: {pg_version()}
      port: {db}
      databases: [pacs, router]
      user: pacs
      password: {{env: {PW_ENV}}}
      max_connections: {max_conn}
      shared_buffers: 32MiB
  archive:
    kind: archive
    config:
      ae_title: ARCHIVE
      port: {archive}
      index: {{backend: postgresql, service: pacsdb}}
      dicomweb: {{enabled: false}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 127.0.0.1, port: {receiver}}}}}
  router:
    kind: router
    config:
      ae_title: ROUTER
      port: {router}
      queue: {{backend: postgresql, service: pacsdb, database: router}}
      destinations: {{arch: {{ae_title: ARCHIVE, service: archive, port: {archive}}}}}
      rules: [{{name: all, forward: [arch]}}]
"""


class Site:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.bp = base / "site.yaml"
        self.ports = (free_port(), free_port(), free_port(), free_port())
        self.env = {**os.environ, "PACSINFRA_LOCAL_ROOT": str(self.root), PW_ENV: PASSWORD}
        self.env.pop("PACSINFRA_DEBUG", None)
        self.write()

    def write(self, max_conn: int = 50) -> None:
        self.bp.write_text(blueprint(*self.ports, max_conn=max_conn))

    def run_dir(self, machine: str) -> Path:
        return self.root / SITE / "machines" / machine / "run"

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=self.base)

    def ok(self, *args: str, rc: int = 0) -> str:
        r = self.cli(*args)
        assert r.returncode == rc, (f"pacsinfra {' '.join(args)} -> {r.returncode}\n"
                                    f"{r.stdout}\n{r.stderr}")
        return r.stdout

    def state(self, machine: str, service: str) -> dict[str, object]:
        return dict(json.loads((self.run_dir(machine) / f"{service}.state.json").read_text()))

    def pid(self, machine: str, service: str) -> int:
        st = self.state(machine, service)
        assert st["state"] == "running", st
        return int(str(st["pid"]))

    def processes(self) -> list[str]:
        """Live processes that mention this site's root (postgres, archive, router, supervisors)."""
        return [f"{pid}: {cmdline(pid)}" for pid in processes_under(self.root)]

    def connect(self, database: str) -> object:
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.ports[0], dbname=database,
                               user="pacs", password=PASSWORD, connect_timeout=5)


@pytest.fixture
def site() -> Iterator[Site]:
    need_module("pynetdicom")
    need_module("psycopg")
    pg_binaries()
    # Not pytest's tmp_path: its root is 0700 and owned by root, which the postgres user
    # could not traverse (the deploy refuses such a data_dir with a clear message).
    base = Path(tempfile.mkdtemp(prefix="pxdb-"))
    os.chmod(base, 0o755)
    s = Site(base)
    try:
        yield s
    finally:
        s.cli("destroy", str(s.bp), "--auto-approve")
        from pacsinfra.services import supervisor

        for machine in (DB_MACHINE, PACS_MACHINE):
            run = s.run_dir(machine)
            for lock in run.glob("*.lock") if run.exists() else []:
                supervisor.stop(run, lock.name[: -len(".lock")])
        shutil.rmtree(base, ignore_errors=True)


def _store_one(port: int, tmp: Path, aec: str = "ARCHIVE") -> tuple[int, str]:
    """C-STORE one synthetic CR instance with pynetdicom; (status, SOP Instance UID)."""
    from pynetdicom import AE

    from pacsinfra.verify.study import PROFILES, make_study

    ds = make_study(PROFILES["cr"], series=1, instances=1, scale=0.05)[0]
    ae = AE(ae_title="PXTEST")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(getattr(rsp, "Status", -1)), str(ds.SOPInstanceUID)


def test_local_database_lifecycle(site: Site) -> None:
    db_port, archive_port, router_port, _ = site.ports
    bp = str(site.bp)
    site.ok("validate", "--strict", bp)

    plan = json.loads(site.ok("plan", bp, "--json"))
    steps = {s["address"]: s for s in plan["steps"]}
    assert {"service.pacsdb[0]", "service.archive[0]", "service.router[0]"} <= set(steps)

    t0 = time.monotonic()
    out = site.ok("apply", bp, "--auto-approve")
    apply_s = time.monotonic() - t0
    assert "Apply complete: 6 done (6 create)" in out, out
    # the database came first: the archive and router depend on it
    lines = out.splitlines()
    db_done = lines.index("service.pacsdb[0]: " + next(
        x.split(": ", 1)[1] for x in lines if x.startswith("service.pacsdb[0]: created")))
    for svc in ("archive", "router"):
        assert lines.index(f"service.{svc}[0]: creating...") > db_done, out

    # PostgreSQL runs from this machine's packages, as the postgres user when we are root
    pg_pid = site.pid(DB_MACHINE, "pacsdb")
    exe = os.readlink(f"/proc/{pg_pid}/exe")
    assert exe.startswith("/usr/lib/postgresql/") and exe.endswith("/bin/postgres"), exe
    if os.geteuid() == 0:
        assert os.stat(f"/proc/{pg_pid}").st_uid != 0, "postgres runs as root"

    # the rendered archive config points at the database, the password stays a reference
    import yaml

    cfg_path = site.root / SITE / "machines" / PACS_MACHINE / "services/archive/config.yaml"
    index = yaml.safe_load(cfg_path.read_text())["index"]
    assert index == {"backend": "postgresql", "host": "127.0.0.1", "port": db_port,
                     "database": "pacs", "user": "pacs", "password": {"env": PW_ENV}}, index

    # a study through the router lands in the archive, whose index rows are in PostgreSQL
    out = site.ok("verify", bp, "--keep")
    assert "smoke test PASSED" in out, out
    with site.connect("pacs") as conn:  # type: ignore[attr-defined]
        n_inst = conn.execute("SELECT count(*) FROM instance").fetchone()[0]
        n_study = conn.execute("SELECT count(*) FROM study").fetchone()[0]
    assert n_inst >= 12 and n_study >= 1, (n_inst, n_study)
    # the router's durable queue is in its own database on the same server
    with site.connect("router") as conn:  # type: ignore[attr-defined]
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    assert tables, "the router created no queue tables in PostgreSQL"
    # only SCRAM over TCP: a wrong password is refused
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=db_port, dbname="pacs", user="pacs",
                        password="wrong", connect_timeout=5)

    # nothing to do right after apply
    t0 = time.monotonic()
    site.ok("plan", bp, "--detailed-exitcode")
    replan_s = time.monotonic() - t0

    # a database setting changes: one in-place update that restarts the database alone
    archive_pid, router_pid = site.pid(PACS_MACHINE, "archive"), site.pid(PACS_MACHINE, "router")
    site.write(max_conn=60)
    plan = json.loads(site.ok("plan", bp, "--json"))
    changing = [s for s in plan["steps"] if s["action"] != "no-op"]
    assert [(s["address"], s["action"], s["kind"]) for s in changing] == [
        ("service.pacsdb[0]", "update", "IN_PLACE")], changing
    out = site.ok("apply", bp, "--auto-approve")
    assert "1 done (1 update)" in out, out
    assert site.pid(DB_MACHINE, "pacsdb") != pg_pid
    assert site.pid(PACS_MACHINE, "archive") == archive_pid
    assert site.pid(PACS_MACHINE, "router") == router_pid
    with site.connect("pacs") as conn:  # type: ignore[attr-defined]
        assert conn.execute("SHOW max_connections").fetchone()[0] == "60"

    from pacsinfra.services import supervisor

    # The archive's pooled connections died with the old server: a store that meets one
    # is refused (never acknowledged without its index row), and the archive reconnects.
    # What must hold: within a few attempts a store succeeds and is indexed.
    statuses = []
    for _ in range(12):
        status, sop = _store_one(archive_port, site.base)
        statuses.append(status)
        if status == 0:
            break
    assert statuses[-1] == 0, statuses
    with site.connect("pacs") as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT count(*) FROM instance WHERE sop_uid = %s",
                            (sop,)).fetchone()[0] == 1

    # The router's queue connection died too: the store that meets it is refused (never
    # acknowledged without its queue row), then the queue reconnects, the router stays.
    router_statuses = []
    for _ in range(6):
        status, _ = _store_one(router_port, site.base, aec="ROUTER")
        router_statuses.append(status)
        if status == 0:
            break
    assert router_statuses[-1] == 0 and len(router_statuses) <= 3, router_statuses
    assert site.pid(PACS_MACHINE, "router") == router_pid
    out = site.ok("verify", bp, "--keep")
    assert "smoke test PASSED" in out, out
    site.ok("plan", bp, "--detailed-exitcode")

    # a killed database is drift; the next apply brings it back
    supervisor.stop(site.run_dir(DB_MACHINE), "pacsdb")
    plan = json.loads(site.ok("plan", bp, "--json"))
    changing = [s for s in plan["steps"] if s["action"] != "no-op"]
    assert [(s["address"], [f["name"] for f in s["fields"]]) for s in changing] == [
        ("service.pacsdb[0]", ["running"])], changing
    site.ok("apply", bp, "--auto-approve")

    # destroy: services before the database, nothing left running, no postgres process
    out = site.ok("destroy", bp, "--auto-approve")
    assert "6 delete" in out, out
    left = site.processes()
    assert left == [], left
    print(f"\napply {apply_s:.1f}s, no-op plan {replan_s:.1f}s, "
          f"store statuses after the db restart: archive {statuses}, router {router_statuses}")


def test_database_password_never_written(site: Site) -> None:
    """The password is in no state file, plan, config, supervisor file or log."""
    bp = str(site.bp)
    plan_json = site.ok("plan", bp, "--json")
    site.ok("plan", bp, "--out", str(site.base / "saved-plan.json"))
    out = site.ok("apply", str(site.base / "saved-plan.json"))
    out += site.ok("verify", bp, "--keep")
    out += site.ok("plan", bp)
    # a failing connection attempt with a wrong password lands in the server's log
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=site.ports[0], dbname="pacs", user="pacs",
                        password="wrong", connect_timeout=5)
    state_dir = site.base / ".pacsinfra"
    files = [p for p in [*site.root.rglob("*"), *state_dir.rglob("*"),
                         site.base / "saved-plan.json"] if p.is_file()]
    assert any(p.name.endswith(".state.json") for p in state_dir.rglob("*")), "no state file"
    assert any(p.name == "pacsdb.log" for p in files), "no database log"
    needles = [PASSWORD.encode(), PASSWORD.encode("latin-1", "ignore")]
    readable = 0
    for path in files:
        try:
            data = path.read_bytes()
        except PermissionError:
            continue
        readable += 1
        for needle in needles:
            assert needle not in data, f"the password is in {path}"
    assert readable > 20, readable
    for text in (plan_json, out):
        assert PASSWORD not in text
    site.ok("destroy", bp, "--auto-approve")
    assert site.processes() == []
