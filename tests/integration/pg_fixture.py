"""A private PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir on a free port.

Usage: ``from pg_fixture import postgres`` in a test module, then take ``postgres``
as a fixture; it yields a :class:`PgCluster` with host/port/database/user of an
empty database (trust auth on loopback, nothing outside the temp dir). PostgreSQL
refuses to run as root, so as root the cluster runs as the ``postgres`` user
(Debian's postgresql package creates it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, need


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return None


@dataclass
class PgCluster:
    """Where the test database is."""

    host: str
    port: int
    database: str
    user: str
    datadir: Path

    def index_config(self) -> dict[str, object]:
        """The archive's ``index:`` block for this database."""
        return {"backend": "postgresql", "host": self.host, "port": self.port,
                "database": self.database, "user": self.user}

    def dsn(self) -> str:
        """A libpq connection string."""
        return f"host={self.host} port={self.port} dbname={self.database} user={self.user}"


def _runner() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        need(False, "running as root needs a 'postgres' user to own the test cluster")
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def start_cluster(base: Path) -> tuple[PgCluster, list[str]]:
    """initdb + start a cluster under ``base``; returns it and the command prefix used."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    need(initdb is not None and pg_ctl is not None,
         "PostgreSQL server binaries (apt-get install postgresql)")
    assert initdb and pg_ctl
    prefix = _runner()
    base.mkdir(parents=True, exist_ok=True)
    datadir, sockdir = base / "pgdata", base / "sock"
    sockdir.mkdir(exist_ok=True)
    if prefix:
        shutil.chown(base, "postgres")
        shutil.chown(sockdir, "postgres")
    _run([*prefix, initdb, "-D", str(datadir), "-U", "pacs", "--auth=trust", "-E", "UTF8",
          "--no-sync"])
    port = free_port()
    opts = (f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c max_connections=60 -c shared_buffers=32MB")
    _run([*prefix, pg_ctl, "-D", str(datadir), "-o", opts, "-l", str(base / "pg.log"), "-w",
          "-t", "60", "start"])
    cluster = PgCluster("127.0.0.1", port, "postgres", "pacs", datadir)
    createdb = _pg_bin("createdb")
    if createdb:
        _run([*prefix, createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "pacs", "pacs"])
        cluster.database = "pacs"
    return cluster, prefix


def stop_cluster(cluster: PgCluster, prefix: list[str]) -> None:
    """Stop the cluster (fast shutdown)."""
    pg_ctl = _pg_bin("pg_ctl")
    assert pg_ctl
    subprocess.run([*prefix, pg_ctl, "-D", str(cluster.datadir), "-m", "fast", "-w", "stop"],
                   capture_output=True, cwd="/")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    """A running private PostgreSQL with an empty ``pacs`` database.

    Lives in its own /tmp directory, not pytest's: pytest resets its root temp dir to
    0700 at every session start (other sessions may run concurrently), which would
    lock the ``postgres`` user out of a running cluster.
    """
    base = Path(tempfile.mkdtemp(prefix="pacsinfra-pg-"))
    os.chmod(base, 0o755)
    t0 = time.monotonic()
    try:
        cluster, prefix = start_cluster(base / "cluster")
        assert time.monotonic() - t0 < 120
        try:
            yield cluster
        finally:
            stop_cluster(cluster, prefix)
    finally:
        shutil.rmtree(base, ignore_errors=True)
