"""Backup of an archive whose index is in PostgreSQL, restored as a SQLite-indexed archive.

The backup format does not depend on the index backend: a PostgreSQL index is read
from one serializable snapshot into the backup's SQLite file, so `restore` and
`dr rebuild` work unchanged. Real PostgreSQL (pg_fixture), real archives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_module
from pg_fixture import PgCluster, postgres  # noqa: F401 - fixture
from test_archive_support import REPO, Archive, store_studies, study_counts

pytestmark = pytest.mark.integration

need_module("pynetdicom")
need_module("psycopg")




def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsinfra", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_postgresql_index_backed_up_and_restored(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    arch = Archive(tmp_path / "data", config={"index": postgres.index_config()}).start()
    try:
        sent = store_studies(arch.port, 3, 2, prefix="PGB")
        assert study_counts(arch.port) == sent
        cfg = tmp_path / "data.yaml"  # the config Archive wrote for the running archive
        r = cli("backup", "--archive-config", str(cfg), "--to", str(tmp_path / "b"), "--json")
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["studies"] == 3 and summary["instances"] == 6
    finally:
        arch.stop()
    r = cli("restore", "--from", str(tmp_path / "b"), "--data", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stderr
    again = Archive(tmp_path / "restored").start()  # quick form: SQLite index under --data
    try:
        assert study_counts(again.port) == sent
    finally:
        again.stop()
