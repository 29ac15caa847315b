"""Archive building blocks in-process: paths, structure checks, queries, index, lifecycle."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from pacsinfra.pacs.archive.attrs import DatasetUnreadable, check_structure, read_indexed
from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.archive.db import open_database
from pacsinfra.pacs.archive.index import Index
from pacsinfra.pacs.archive.lifecycle import run_lifecycle
from pacsinfra.pacs.archive.query import compile_query
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.archive.storage import Tier, sweep_temp_files, write_durable
from pacsinfra.pacs.archive.synth import make_instance
from pacsinfra.pacs.dicom import (
    TRANSFER_SYNTAXES,
    Status,
    scu_contexts,
    storage_contexts,
    uid_path,
    valid_uid,
)


def _encode(ds: Dataset, ts: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = ts == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("uid,ok", [
    ("1.2.840.10008.1.2", True), ("0.1", True), ("1.02", False), ("1..2", False),
    ("../../etc", False), ("1.2/3", False), ("", False), ("1." + "1" * 70, False),
])
def test_valid_uid(uid: str, ok: bool) -> None:
    assert valid_uid(uid) is ok


@pytest.mark.parametrize("study,series,sop", [
    ("../../..", "1.2", "1.3"), ("1.2", "/etc/passwd", "1.3"), ("1.2", "1.3", "../../x"),
    ("..", "..", ".."), ("1.2\x00", "a/b", "c\\d"),
])
def test_uid_path_never_escapes(tmp_path: Path, study: str, series: str, sop: str) -> None:
    root = tmp_path / "tier"
    p = uid_path(root, study, series, sop).resolve()
    assert root.resolve() in p.parents
    assert len(p.relative_to(root.resolve()).parts) == 4


def test_contexts() -> None:
    cxs = storage_contexts()
    assert len(cxs) > 128  # all storage classes, not pynetdicom's 128-limited list
    assert all(cx.transfer_syntax == TRANSFER_SYNTAXES for cx in cxs[:3])
    assert JPEGBaseline8Bit in TRANSFER_SYNTAXES and "1.2.840.10008.1.2.4.201" in TRANSFER_SYNTAXES
    pairs = [("1.2.840.10008.5.1.4.1.1.2", JPEGBaseline8Bit)] * 3 + [
        ("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)]
    out = scu_contexts(pairs)
    assert [cx.transfer_syntax[0] for cx in out] == [JPEGBaseline8Bit, ExplicitVRLittleEndian]
    assert out[0].transfer_syntax == [JPEGBaseline8Bit]  # never offer to transcode compressed


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_read_indexed_and_structure(ts: str) -> None:
    ds = make_instance(patient_id="X1", modality="MR")
    raw = _encode(ds, ts)
    attrs = read_indexed(raw, ts)
    assert attrs["patient_id"] == "X1" and attrs["modality"] == "MR"
    assert attrs["sop_uid"] == ds.SOPInstanceUID
    with pytest.raises(DatasetUnreadable):
        read_indexed(raw[:-10], ts)  # pixel data shorter than declared
    with pytest.raises(DatasetUnreadable):
        read_indexed(raw[:3], ts)


def test_structure_encapsulated() -> None:
    ds = make_instance(transfer_syntax=JPEGBaseline8Bit)
    raw = _encode(ds, ExplicitVRLittleEndian)
    check_structure(raw, False, True)
    with pytest.raises(DatasetUnreadable):
        check_structure(raw[:-8], False, True)  # sequence delimiter missing


def test_compile_query_matching_kinds() -> None:
    ident = Dataset()
    ident.PatientName = "DOE*"
    ident.StudyDate = "20240101-20240131"
    ident.StudyInstanceUID = "1.2\\1.3"
    ident.ModalitiesInStudy = "CT"
    ident.AccessionNumber = "A_1%*"
    ident.NumberOfStudyRelatedInstances = ""
    q = compile_query(ident, "STUDY")
    assert "lower(s.patient_name) LIKE ?" in q.sql
    assert "s.study_uid IN (?, ?)" in q.sql
    assert "s.study_date >= ?" in q.sql and "s.study_date <= ?" in q.sql
    assert "doe%" in q.params
    assert "A!_1!%%" in q.params  # LIKE metacharacters in values are literals
    assert q.returned[-1] == "NumberOfStudyRelatedInstances"


def _service(tmp_path: Path, **cfg: object) -> ArchiveService:
    config = ArchiveConfig.model_validate({"data_dir": str(tmp_path), **cfg})
    tiers = {t.name: Tier.from_config(t, tmp_path) for t in config.tiers}
    for t in tiers.values():
        t.root.mkdir(parents=True, exist_ok=True)
    return ArchiveService(config, Index(open_database(config.index, tmp_path)), tiers)


def _store(svc: ArchiveService, ds: Dataset) -> Status:
    raw = _encode(ds, ExplicitVRLittleEndian)
    return svc.store_raw(sop_class=ds.SOPClassUID, sop_uid=ds.SOPInstanceUID,
                         transfer_syntax=ExplicitVRLittleEndian, meta=b"", raw=raw, calling="T")


def test_store_counts_and_overwrite_recount(tmp_path: Path) -> None:
    svc = _service(tmp_path, duplicates="overwrite")
    try:
        ds = make_instance(patient_id="P", modality="CT")
        assert _store(svc, ds) == Status.SUCCESS
        ds2 = make_instance(patient_id="P", modality="MR", study_uid=ds.StudyInstanceUID)
        assert _store(svc, ds2) == Status.SUCCESS
        q = "SELECT num_series, num_instances, modalities FROM study"
        assert svc.index.db.query(q) == [(2, 2, "\\CT\\MR\\")]
        ds2.Modality = "US"  # overwrite moves nothing but the content
        assert _store(svc, ds2) == Status.SUCCESS
        rows = svc.index.db.query(q)
        assert rows[0][:2] == (2, 2)
        assert svc.index.db.query("SELECT num_instances, num_studies FROM patient") == [(2, 1)]
    finally:
        svc.index.close()


def test_write_durable_and_sweep(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.dcm"
    incoming = tmp_path / ".incoming"
    incoming.mkdir()
    assert write_durable(target, [b"abc", b"def"], tmp_dir=incoming) == 6
    assert target.read_bytes() == b"abcdef"
    (incoming / "x.dcm.tmp-123").write_bytes(b"half")
    assert sweep_temp_files(incoming) == 1
    assert list(incoming.iterdir()) == []


def test_lifecycle_moves_verifies_and_parks(tmp_path: Path) -> None:
    svc = _service(tmp_path, tiers=[{"name": "fast"}, {"name": "slow"}],
                   lifecycle=[{"from_tier": "fast", "to_tier": "slow", "older_than_days": 30}])
    try:
        good = make_instance(patient_id="OLD")
        bad = make_instance(patient_id="OLD2")
        fresh = make_instance(patient_id="NEW")
        for ds in (good, bad, fresh):
            assert _store(svc, ds) == Status.SUCCESS
        old = time.time() - 40 * 86400
        with svc.index.db.transaction() as cur:
            cur.execute("UPDATE study SET created_at = ? WHERE patient_id IN ('OLD', 'OLD2')",
                        (old,))
        # corrupt the second study's file: it must be parked, not moved, not deleted
        bad_inst = svc.index.get(bad.SOPInstanceUID)
        assert bad_inst is not None
        bad_path = svc.tiers["fast"].path(bad_inst.rel_path)
        with bad_path.open("r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"XXXX")
        report = run_lifecycle(svc.config, svc.index, svc.tiers)
        assert report.moved_studies == [good.StudyInstanceUID]
        assert list(report.failed_studies) == [bad.StudyInstanceUID]
        moved = svc.index.get(good.SOPInstanceUID)
        assert moved is not None and moved.tier == "slow"
        data = svc.tiers["slow"].path(moved.rel_path).read_bytes()
        assert hashlib.sha256(data[moved.ds_offset:]).hexdigest() == moved.sha256
        assert not svc.tiers["fast"].path(moved.rel_path).exists()
        assert bad_path.exists()
        fresh_inst = svc.index.get(fresh.SOPInstanceUID)
        assert fresh_inst is not None and fresh_inst.tier == "fast"
        # a second pass does nothing: no loop on the parked study, nothing left to move
        again = run_lifecycle(svc.config, svc.index, svc.tiers)
        assert again.moved_studies == [] and again.failed_studies == {}
    finally:
        svc.index.close()


def test_delete_series_recounts_and_retention_uses_newest_receive(tmp_path: Path) -> None:
    from pacsinfra.pacs.archive.delete import expired_studies

    svc = _service(tmp_path, retention_days=10)
    try:
        study = make_instance().StudyInstanceUID
        series = make_instance().SeriesInstanceUID
        ct = [make_instance(study_uid=study, series_uid=series, patient_id="P", instance_number=i)
              for i in (1, 2)]
        mr = make_instance(study_uid=study, patient_id="P", modality="MR")
        other = make_instance(patient_id="Q")
        for ds in (*ct, mr, other):
            assert _store(svc, ds) == Status.SUCCESS
        mr_inst = svc.index.get(mr.SOPInstanceUID)
        assert mr_inst is not None
        report = svc.delete(study, series_uid=mr.SeriesInstanceUID, actor="test")
        assert report is not None and report.instances == 1 and report.files_removed == 1
        assert not svc.tiers["fast"].path(mr_inst.rel_path).exists()
        row = svc.index.db.query("SELECT num_series, num_instances, modalities FROM study "
                                 "WHERE study_uid = ?", (study,))
        assert row == [(1, 2, "\\CT\\")]
        assert svc.counters.deleted == 1
        assert svc.delete(study, series_uid=mr.SeriesInstanceUID) is None

        now = time.time()
        with svc.index.db.transaction() as cur:  # one old instance, one recent: kept
            cur.execute("UPDATE instance SET received_at = ? WHERE sop_uid = ?",
                        (now - 20 * 86400, ct[0].SOPInstanceUID))
            cur.execute("UPDATE instance SET received_at = ? WHERE study_uid = ?",
                        (now - 11 * 86400, other.StudyInstanceUID))
        assert expired_studies(svc.index, 10, now) == [other.StudyInstanceUID]
        report2 = run_lifecycle(svc.config, svc.index, svc.tiers, now=now, service=svc)
        assert report2.deleted_studies == [other.StudyInstanceUID]
        assert svc.index.get(other.SOPInstanceUID) is None
        assert svc.index.get(ct[1].SOPInstanceUID) is not None
        assert svc.index.db.query("SELECT COUNT(*) FROM pending_unlink") == [(0,)]
        patients = svc.index.db.query("SELECT patient_id FROM patient ORDER BY patient_id")
        assert patients == [("P",)]
    finally:
        svc.index.close()


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("field,value", [
    ("PatientName", "Doe^John "), ("PatientName", " Doe^John"), ("PatientName", ""),
    ("PatientName", "Müller^Jörg"), ("PatientName", "A\\B"), ("SeriesNumber", "001"),
    ("SeriesNumber", " 7"), ("SeriesNumber", "+5"), ("InstanceNumber", "1\\2"),
    ("StudyDescription", "Chest  PA "), ("AccessionNumber", "ACC-1/2"),
    ("StudyDate", "20240115"), ("PatientID", "id\tx"),
])
def test_plain_fast_path_equals_pydicom(ts: str, field: str, value: str) -> None:
    """The byte-level fast path never gives a different answer from pydicom's decode."""
    from pacsinfra.pacs.archive.attrs import _pydicom_text

    ds = make_instance(patient_id="P1")
    if "ü" in value:
        ds.SpecificCharacterSet = "ISO_IR 100"
    ds.add_new(field, {"PatientName": "PN", "SeriesNumber": "IS", "InstanceNumber": "IS",
                       "StudyDescription": "LO", "AccessionNumber": "SH", "StudyDate": "DA",
                       "PatientID": "LO"}[field], value)
    raw = _encode(ds, ts)
    assert read_indexed(raw, ts) == _pydicom_text(raw, ts == ImplicitVRLittleEndian, True)


@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34", "2.25." + "9" * 58])
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit])
def test_streaming_file_meta_is_what_pydicom_writes(sop_uid: str, ts: str) -> None:
    """fastscp builds the file meta group by hand; pydicom's encoding of pynetdicom's
    file meta is the reference (odd and even UID lengths, long UIDs)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    from pynetdicom.dsutils import encode_file_meta

    from pacsinfra.pacs.fastscp.part10 import file_meta

    ref = FileMetaDataset()
    ref.FileMetaInformationVersion = b"\x00\x01"
    ref.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ref.MediaStorageSOPInstanceUID = UID(sop_uid)
    ref.TransferSyntaxUID = UID(ts)
    ref.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    ref.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    assert file_meta("1.2.840.10008.5.1.4.1.1.2", sop_uid, ts) == bytes(encode_file_meta(ref))


def test_ensure_dir_caches_durable_directories_and_recovers_from_removal(tmp_path: Path) -> None:
    from pacsinfra.pacs.archive import storage

    leaf = tmp_path / "study" / "series"
    storage.ensure_dir(leaf)
    assert leaf.is_dir() and {leaf, leaf.parent} <= storage._durable_dirs
    # removed behind the archive's back: the next durable write re-creates it
    leaf.rmdir()
    storage.write_durable(leaf / "x.dcm", [b"data"], tmp_dir=tmp_path / "incoming")
    assert (leaf / "x.dcm").read_bytes() == b"data"
    assert not list((tmp_path / "incoming").iterdir())


def test_check_matches_files_listed_out_of_study_order(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing that comes back to a study it already left (no walk or bucket listing
    does, but nothing must be reported twice or wrongly if one did)."""
    from pacsinfra.pacs.archive import check

    svc = _service(tmp_path)
    try:
        a, b = make_instance(patient_id="A"), make_instance(patient_id="B")
        a2 = make_instance(patient_id="A", study_uid=a.StudyInstanceUID,
                           series_uid=a.SeriesInstanceUID)
        for ds in (a, b, a2):
            assert _store(svc, ds) == Status.SUCCESS
        tiers = svc.tiers
        real = list(check._tier_files(tiers["fast"]))
        assert len(real) == 3
        study_a = check._study_key(next(r for r in real if a.SOPInstanceUID in r[0])[0])
        in_a = [r for r in real if r[0].startswith(study_a + "/")]
        not_a = [r for r in real if not r[0].startswith(study_a + "/")]
        shuffled = [in_a[0], *not_a, in_a[1]]  # A, B, A again
        monkeypatch.setattr(check, "_tier_files", lambda tier: iter(shuffled))
        report = check.check_archive(svc.index, tiers, verify=True)
        assert report.clean and report.verified == 3 and report.files == 3, report.as_dict()

        # rows on a tier the configuration no longer has are reported, not skipped
        with svc.index.db.transaction() as cur:
            cur.execute("UPDATE instance SET tier = 'gone' WHERE sop_uid = ?", (b.SOPInstanceUID,))
        report = check.check_archive(svc.index, tiers)
        assert [(p.sop_uid, p.detail) for p in report.missing] == [
            (b.SOPInstanceUID, "tier not configured")]
        assert len(report.young) == 1  # b's file, now unindexed on "fast", is fresh
    finally:
        svc.index.close()
