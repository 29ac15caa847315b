"""Worklist matching (PS3.4 K.6) and the worklist's state machine on a real SQLite index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsinfra.pacs.archive.config import IndexConfig
from pacsinfra.pacs.archive.db import MIGRATIONS, Database, migrate, open_database
from pacsinfra.pacs.archive.worklist import (
    CANCEL,
    CANCELED,
    COMPLETED,
    IDENTIFIER_MISMATCH,
    IN_PROGRESS,
    PENDING,
    SCHEDULED,
    Worklist,
    WorklistError,
    mwl_find,
)
from pacsinfra.pacs.archive.worklistmatch import (
    IdentifierError,
    check_identifier,
    dataset_matches,
    project,
)


def item(pid: str = "P1", name: str = "Doe^John", modality: str = "CT", station: str = "CT1",
         date: str = "20260105", time: str = "093000", acc: str = "A1") -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = pid, name, acc
    ds.PatientBirthDate = "19700101"
    step = Dataset()
    step.Modality, step.ScheduledStationAETitle = modality, station
    step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime = date, time
    step.ScheduledProcedureStepDescription = "Chest"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def query(**step: str) -> Dataset:
    q = Dataset()
    q.PatientID = step.pop("PatientID", "")
    q.PatientName = step.pop("PatientName", "")
    sps = Dataset()
    for key in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                "ScheduledProcedureStepStartTime"):
        setattr(sps, key, step.pop(key, ""))
    assert not step
    q.ScheduledProcedureStepSequence = [sps]
    return q


@pytest.mark.parametrize(("keys", "hit"), [
    ({}, True),
    ({"Modality": "CT"}, True),
    ({"Modality": "MR"}, False),
    ({"ScheduledStationAETitle": "CT1"}, True),
    ({"ScheduledStationAETitle": "CT2"}, False),
    ({"ScheduledProcedureStepStartDate": "20260101-20260110"}, True),
    ({"ScheduledProcedureStepStartDate": "20260106-"}, False),
    ({"ScheduledProcedureStepStartDate": "-20260105"}, True),
    ({"ScheduledProcedureStepStartDate": "20260105"}, True),
    ({"ScheduledProcedureStepStartDate": "20260104"}, False),
    ({"ScheduledProcedureStepStartTime": "0900-1000"}, True),
    ({"ScheduledProcedureStepStartTime": "1000-"}, False),
    ({"ScheduledProcedureStepStartTime": "-09"}, True),
    ({"PatientName": "doe*"}, True),  # person names: case-insensitive
    ({"PatientName": "D?e^J*"}, True),
    ({"PatientName": "Smith*"}, False),
    ({"PatientID": "P?"}, True),
    ({"PatientID": "P"}, False),
    ({"PatientID": "p1"}, False),  # LO is case-sensitive
])
def test_k6_matching(keys: dict[str, str], hit: bool) -> None:
    assert dataset_matches(query(**keys), item()) is hit


def test_only_requested_attributes_are_returned() -> None:
    q = Dataset()
    q.PatientName = ""
    sps = Dataset()
    sps.Modality = ""
    q.ScheduledProcedureStepSequence = [sps]
    q.RequestedProcedureID = ""  # not in the item: returned empty
    answer = project(q, item())
    assert sorted(e.keyword for e in answer) == [
        "PatientName", "RequestedProcedureID", "ScheduledProcedureStepSequence"]
    assert str(answer.PatientName) == "Doe^John" and answer.RequestedProcedureID in ("", None)
    step = answer.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in step] == ["Modality"] and step.Modality == "CT"


@pytest.mark.parametrize("bad", [
    {"ScheduledProcedureStepStartDate": "2026-01-05"},
    {"ScheduledProcedureStepStartDate": "yesterday"},
    {"ScheduledProcedureStepStartTime": "9am"},
])
def test_malformed_keys_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(IdentifierError):
        check_identifier(query(**bad))
    two = query()
    two.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(IdentifierError, match="at most one item"):
        check_identifier(two)


@pytest.fixture
def worklist(tmp_path: Path) -> Any:
    db = open_database(IndexConfig(), tmp_path)
    yield Worklist(db)
    db.close()


def test_find_returns_scheduled_items_and_honours_cancel(worklist: Worklist) -> None:
    a = worklist.add(item(pid="P1", modality="CT"))
    worklist.add(item(pid="P2", modality="MR"))
    worklist.add(item(pid="P3", modality="CT", date="20260301"))
    answers = list(mwl_find(worklist, query(Modality="CT")))
    assert [s for s, _ in answers] == [PENDING, PENDING]
    assert {str(ds.PatientID) for _, ds in answers} == {"P1", "P3"}
    worklist.cancel(a)  # no longer offered
    assert [str(ds.PatientID) for _, ds in mwl_find(worklist, query(Modality="CT"))] == ["P3"]
    calls = iter([False, True])
    assert [s for s, _ in mwl_find(worklist, query(), cancelled=lambda: next(calls))] == [
        PENDING, CANCEL]
    bad = query(ScheduledProcedureStepStartDate="soon")
    assert list(mwl_find(worklist, bad)) == [(IDENTIFIER_MISMATCH, None)]


def test_ups_state_machine(worklist: Worklist) -> None:
    uid = worklist.add(item())
    got = worklist.get(uid)
    assert got is not None and got.state == SCHEDULED and "StudyInstanceUID" in got.dataset
    with pytest.raises(WorklistError) as exc:
        worklist.add(item(), uid)
    assert exc.value.status == 409
    txn, other = generate_uid(), generate_uid()
    with pytest.raises(WorklistError) as exc:
        worklist.change_state(uid, COMPLETED, txn)  # not claimed yet
    assert exc.value.status == 409
    with pytest.raises(WorklistError) as exc:
        worklist.change_state(uid, IN_PROGRESS, None)
    assert exc.value.status == 400
    assert worklist.change_state(uid, IN_PROGRESS, txn) == ""
    with pytest.raises(WorklistError) as exc:
        worklist.change_state(uid, IN_PROGRESS, other)  # claimed twice
    assert exc.value.status == 409
    with pytest.raises(WorklistError) as exc:
        worklist.change_state(uid, COMPLETED, other)  # wrong transaction
    assert exc.value.status == 409
    with pytest.raises(WorklistError) as exc:
        worklist.cancel(uid)  # under way: not by request
    assert exc.value.status == 409
    assert worklist.change_state(uid, CANCELED, txn) == ""
    assert "already" in worklist.change_state(uid, CANCELED, txn)
    with pytest.raises(WorklistError) as exc:
        worklist.change_state(generate_uid(), IN_PROGRESS, txn)
    assert exc.value.status == 404


@pytest.mark.parametrize("change", [
    lambda ds: ds.__delattr__("ScheduledProcedureStepSequence"),
    lambda ds: setattr(ds.ScheduledProcedureStepSequence[0],
                       "ScheduledProcedureStepStartDate", ""),
    lambda ds: setattr(ds, "ProcedureStepState", "COMPLETED"),
    lambda ds: setattr(ds, "StudyInstanceUID", "not-a-uid"),
])
def test_bad_items_are_refused(worklist: Worklist, change: Any) -> None:
    ds = item()
    change(ds)
    with pytest.raises(WorklistError) as exc:
        worklist.add(ds)
    assert exc.value.status == 400


def test_migration_fills_a_gap_in_an_index_already_newer(tmp_path: Path) -> None:
    db = open_database(IndexConfig(), tmp_path)
    try:
        with db.transaction() as cur:  # an index migrated before the worklist table existed
            cur.execute("DROP TABLE worklist")
            cur.execute("DELETE FROM schema_version WHERE version = 7")
        assert migrate(db) == MIGRATIONS[-1][0]
        assert isinstance(db, Database) and db.query("SELECT COUNT(*) FROM worklist") == [(0,)]
    finally:
        db.close()


def test_find_answers_c000_when_the_index_cannot(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "empty.sqlite")  # an index without the worklist table
    db = Database("sqlite", lambda: sqlite3.connect(path, check_same_thread=False))
    try:
        assert list(mwl_find(Worklist(db), query())) == [(0xC000, None)]
    finally:
        db.close()


def test_a_query_retrieve_level_is_not_a_worklist_key() -> None:
    q = query()
    q.QueryRetrieveLevel = "STUDY"
    with pytest.raises(IdentifierError, match="not a worklist key"):
        check_identifier(q)
