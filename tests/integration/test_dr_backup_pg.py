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
from test_archive_support import REPO, Archive, scu_ae

pytestmark = pytest.mark.integration

need_module("pynetdicom")
need_module("psycopg")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsinfra", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def studies(port: int) -> dict[str, int]:
    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.NumberOfStudyRelatedInstances = ""
    try:
        return {str(m.StudyInstanceUID): int(m.NumberOfStudyRelatedInstances)
                for st, m in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
                if st and st.Status == 0xFF00}
    finally:
        assoc.release()


def test_postgresql_index_backed_up_and_restored(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    arch = Archive(tmp_path / "data", config={"index": postgres.index_config()}).start()
    sent: dict[str, int] = {}
    try:
        ae = scu_ae()
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert assoc.is_established
        for s in range(3):
            uid = generate_uid()
            for _ in range(s + 2):
                ds = make_instance(rows=16, cols=16, patient_id=f"PGB{s}", study_uid=uid)
                assert assoc.send_c_store(ds).Status == 0
            sent[uid] = s + 2
        assoc.release()
        assert studies(arch.port) == sent
        cfg = tmp_path / "data.yaml"  # the config Archive wrote for the running archive
        r = cli("backup", "--archive-config", str(cfg), "--to", str(tmp_path / "b"), "--json")
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["studies"] == 3 and summary["instances"] == sum(sent.values())
    finally:
        arch.stop()
    r = cli("restore", "--from", str(tmp_path / "b"), "--data", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stderr
    again = Archive(tmp_path / "restored").start()  # quick form: SQLite index under --data
    try:
        assert studies(again.port) == sent
    finally:
        again.stop()
