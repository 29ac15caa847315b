"""The archive on a PostgreSQL index: same behaviour as SQLite through the same layer."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import need_module
from pg_fixture import PgCluster, postgres  # noqa: F401 - fixture
from test_archive_support import Archive, scu_ae

pytestmark = pytest.mark.integration

need_module("pynetdicom")
need_module("psycopg")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import _config as pnd_config  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacsinfra.pacs.archive.config import IndexConfig  # noqa: E402
from pacsinfra.pacs.archive.db import MIGRATIONS, migrate, open_database, schema_version  # noqa: E402
from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402
from pacsinfra.pacs.dicom import TCP_TUNING_HANDLER  # noqa: E402

pnd_config.STORE_SEND_CHUNKED_DATASET = True


def test_migrations_versioned_and_idempotent(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    db = open_database(IndexConfig(**postgres.index_config()), tmp_path)  # type: ignore[arg-type]
    try:
        assert schema_version(db) == MIGRATIONS[-1][0]
        assert migrate(db) == MIGRATIONS[-1][0]  # second run: nothing to do
        assert db.query("SELECT COUNT(*) FROM instance") == [(0,)]
    finally:
        db.close()


def test_store_and_find_on_postgres(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    study = generate_uid()
    files = [write(make_instance(study_uid=study, patient_id="PGPAT", patient_name="Pg^Patient",
                                 modality=("CT", "MR")[i % 2], series_uid=None,
                                 instance_number=i), tmp_path / f"{i}.dcm") for i in range(6)]
    arch = Archive(tmp_path / "data", config={"index": postgres.index_config()}).start()
    try:
        ae = scu_ae()
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE",
                             evt_handlers=[TCP_TUNING_HANDLER])
        assert assoc.is_established
        assert [assoc.send_c_store(f).Status for f in files] == [0] * 6
        assert assoc.send_c_store(files[0]).Status == 0  # identical duplicate accepted
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.PatientName = "pg*"
        ident.StudyInstanceUID = ""
        ident.ModalitiesInStudy = ""
        ident.NumberOfStudyRelatedInstances = ""
        results = [ds for st, ds in assoc.send_c_find(
            ident, StudyRootQueryRetrieveInformationModelFind) if st and st.Status == 0xFF00]
        assoc.release()
        assert len(results) == 1
        assert results[0].StudyInstanceUID == study
        assert int(results[0].NumberOfStudyRelatedInstances) == 6
        assert sorted(results[0].ModalitiesInStudy) == ["CT", "MR"]
    finally:
        assert arch.stop() == 0
