"""The worklist on a PostgreSQL index: migration 7, matching, the state machine and
completion by Accession Number through the same SQL as on SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import need_module
from pg_fixture import PgCluster, postgres  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

need_module("psycopg")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pacsinfra.pacs.archive.config import IndexConfig  # noqa: E402
from pacsinfra.pacs.archive.db import open_database  # noqa: E402
from pacsinfra.pacs.archive.index import Index, InstanceRecord  # noqa: E402
from pacsinfra.pacs.archive.worklist import (  # noqa: E402
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    Worklist,
    WorklistError,
    mwl_find,
)


def _item(pid: str, accession: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = pid, "Pg^Worklist", accession
    step = Dataset()
    step.Modality, step.ScheduledStationAETitle = modality, "PGST"
    step.ScheduledProcedureStepStartDate = "20260707"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def test_worklist_on_postgres(postgres: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    db = open_database(IndexConfig(**postgres.index_config()), tmp_path)  # type: ignore[arg-type]
    index = Index(db)
    try:
        wl = Worklist(db)
        by_acc = wl.add(_item("PGW1", "ACC-PG", "CT"))
        waiting = wl.add(_item("PGW2", "ACC-NONE", "MR"))
        q = Dataset()
        q.PatientID = "PGW*"
        step = Dataset()
        step.Modality = "MR"
        q.ScheduledProcedureStepSequence = [step]
        assert [str(ds.PatientID) for _, ds in mwl_find(wl, q)] == ["PGW2"]
        txn = generate_uid()
        wl.change_state(by_acc, IN_PROGRESS, txn)
        with pytest.raises(WorklistError):
            wl.change_state(by_acc, IN_PROGRESS, generate_uid())
        # a study under another UID but with the item's accession number, quiet for 10 s
        index.commit(InstanceRecord(
            sop_uid=generate_uid(), series_uid=generate_uid(), study_uid=generate_uid(),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
            tier="fast", rel_path="x.dcm", size=1, sha256="0" * 64, ds_offset=0,
            received_at=time.time() - 10, patient_id="PGW1", accession_number="ACC-PG"))
        assert wl.complete_quiet(30) == []  # not quiet long enough yet
        assert wl.complete_quiet(5) == [by_acc]
        got, other = wl.get(by_acc), wl.get(waiting)
        assert got is not None and got.state == COMPLETED
        assert other is not None and other.state == SCHEDULED
    finally:
        index.close()
