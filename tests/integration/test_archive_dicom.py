"""The archive against real peers: DCMTK tools and pynetdicom clients.

One archive subprocess serves the module; tests needing other settings start their own.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from test_archive_support import Archive, dcmtk, scu_ae, wait_port

pytestmark = pytest.mark.integration

need_module("pynetdicom")

from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filereader import read_file_meta_info  # noqa: E402
from pydicom.uid import (  # noqa: E402
    HEVCMP51,
    HTJ2K,
    JPEG2000,
    MPEG2MPML,
    MPEG4HP41,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import _config as pnd_config  # noqa: E402
from pynetdicom import build_context, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsinfra.pacs.archive.synth import CT_IMAGE, MR_IMAGE, make_instance, write  # noqa: E402
from pacsinfra.pacs.dicom import TCP_TUNING_HANDLER  # noqa: E402

ALL_TS = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2K, RLELossless, MPEG2MPML, MPEG4HP41, HEVCMP51,
]

# Send files exactly as they are on disk (raw dataset bytes, no re-encoding).
pnd_config.STORE_SEND_CHUNKED_DATASET = True


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a DICOM file (after preamble and file meta)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    glen = int.from_bytes(data[140:144], "little")
    return data[144 + glen:]


def index_rows(data: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(data / "index.sqlite")
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def stored_path(data: Path, sop_uid: str) -> Path:
    rows = index_rows(data, "SELECT tier, rel_path FROM instance WHERE sop_uid = ?", (sop_uid,))
    assert rows, f"{sop_uid} not indexed"
    return data / rows[0][0] / rows[0][1]


def send_files(port: int, files: list[Path], aet: str = "TESTSCU",
               called: str = "ARCHIVE") -> list[int | None]:
    """C-STORE files as-is over one association; the status of each (None: not sent)."""
    ae = scu_ae(aet)
    pairs = set()
    for f in files:
        meta = read_file_meta_info(f)
        pairs.add((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID))
    for sop, ts in pairs:
        ae.add_requested_context(sop, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[TCP_TUNING_HANDLER])
    assert assoc.is_established
    out: list[int | None] = []
    try:
        for f in files:
            try:
                st = assoc.send_c_store(f)
                out.append(int(st.Status) if "Status" in st else None)
            except (RuntimeError, ValueError):
                out.append(None)
    finally:
        assoc.release()
    return out


def find(port: int, ident: Dataset, model: str = StudyRootQueryRetrieveInformationModelFind
         ) -> tuple[list[Dataset], int]:
    """C-FIND; returns (matches, final status)."""
    ae = scu_ae()
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    matches: list[Dataset] = []
    final = -1
    try:
        for status, identifier in assoc.send_c_find(ident, model):
            if status is None or "Status" not in status:
                break
            if status.Status in (0xFF00, 0xFF01):
                matches.append(identifier)
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    return matches, final


def q(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# -- the shared archive and its content ---------------------------------------------------------

class Site:
    """UIDs of the fixture content."""

    def __init__(self) -> None:
        self.st_a = generate_uid()  # PAT1, 2024-01-15, CT + MR series
        self.st_b = generate_uid()  # PAT1, 2023-06-01, CT
        self.st_c = generate_uid()  # PAT2, 2024-02-20, MR
        self.se_a_ct = generate_uid()
        self.se_a_mr = generate_uid()
        self.se_b = generate_uid()
        self.se_c = generate_uid()
        self.sops: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A DCMTK storescp accepting every transfer syntax: the C-MOVE destination."""
    out = tmp_path_factory.mktemp("movedest")
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "+xa", "-aet", "MOVEDEST", "-od", str(out),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc=proc)
    yield port, out
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, storescp: Any) -> Any:
    data = tmp_path_factory.mktemp("arch") / "data"
    arch = Archive(data, peers={"MOVEDEST": storescp[0], "DEADPEER": free_port()}).start()
    yield arch
    assert arch.stop() == 0, arch.logs()  # SIGTERM is a clean shutdown


@pytest.fixture(scope="module")
def site(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Site:
    s = Site()
    d = tmp_path_factory.mktemp("site")
    files = []
    spec = [
        (s.st_a, s.se_a_ct, "PAT1", "Doe^John", "CT", CT_IMAGE, "20240115", "101500", "ACC-A", 3),
        (s.st_a, s.se_a_mr, "PAT1", "Doe^John", "MR", MR_IMAGE, "20240115", "101500", "ACC-A", 2),
        (s.st_b, s.se_b, "PAT1", "Doe^John", "CT", CT_IMAGE, "20230601", "083000", "ACC-B", 2),
        (s.st_c, s.se_c, "PAT2", "Roe^Jane", "MR", MR_IMAGE, "20240220", "153000", "ACC-C", 1),
    ]
    for st, se, pid, name, mod, sop_class, date, time_, acc, n in spec:
        for i in range(n):
            ds = make_instance(patient_id=pid, patient_name=name, study_uid=st, series_uid=se,
                               sop_class=sop_class, modality=mod, study_date=date,
                               study_time=time_, accession=acc, instance_number=i + 1)
            s.sops.setdefault(se, []).append(ds.SOPInstanceUID)
            files.append(write(ds, d / f"{ds.SOPInstanceUID}.dcm"))
    assert send_files(archive.port, files) == [0] * len(files)
    return s


# -- C-ECHO / C-STORE ---------------------------------------------------------------------------

def test_dcmtk_echo(archive: Archive) -> None:
    r = subprocess.run([dcmtk("echoscu"), "-aec", "ARCHIVE", "127.0.0.1", str(archive.port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_every_transfer_syntax_stored_byte_identical(archive: Archive, tmp_path: Path) -> None:
    files = []
    for ts in ALL_TS:
        ds = make_instance(transfer_syntax=ts, patient_id="TSPAT", random_pixels=True)
        files.append(write(ds, tmp_path / f"{ts}.dcm"))
    statuses = send_files(archive.port, files)
    assert statuses == [0] * len(files)
    for f in files:
        sop = dcmread(f, stop_before_pixels=True).SOPInstanceUID
        stored = stored_path(archive.data, sop)
        assert dataset_bytes(stored) == dataset_bytes(f), f.name  # as received, byte for byte
        meta = dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
        private = dcmread(stored)[0x00411001].value  # private kept (UN in implicit VR)
        assert private in ("kept as received", b"kept as received")
    studies = tuple(dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files)
    marks = ",".join("?" * len(files))
    rows = index_rows(archive.data, f"SELECT COUNT(*) FROM instance WHERE study_uid IN ({marks})",
                      studies)
    assert rows[0][0] == len(files)


@pytest.mark.parametrize("flag,ts", [("-xy", JPEGBaseline8Bit), ("-xv", JPEG2000Lossless),
                                     ("-xr", RLELossless), ("-xs", "1.2.840.10008.1.2.4.70")])
def test_dcmtk_storescu_compressed_then_getscu(archive: Archive, tmp_path: Path, flag: str,
                                               ts: str) -> None:
    ds = make_instance(transfer_syntax=ts, patient_id="DCMTKPAT", random_pixels=True)
    f = write(ds, tmp_path / "in.dcm")
    r = subprocess.run([dcmtk("storescu"), flag, "-aec", "ARCHIVE", "127.0.0.1",
                        str(archive.port), str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert dataset_bytes(stored_path(archive.data, ds.SOPInstanceUID)) == dataset_bytes(f)
    out = tmp_path / "got"
    out.mkdir()
    r = subprocess.run([dcmtk("getscu"), "-S", "+" + flag[1:], "-aec", "ARCHIVE", "-od", str(out),
                        "-k", "QueryRetrieveLevel=IMAGE",
                        "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                        "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                        "-k", f"SOPInstanceUID={ds.SOPInstanceUID}",
                        "127.0.0.1", str(archive.port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = list(out.iterdir())
    assert len(got) == 1
    assert dcmread(got[0]).PixelData == ds.PixelData


def test_unreadable_and_mismatched_datasets_fail(archive: Archive, tmp_path: Path) -> None:
    good = write(make_instance(), tmp_path / "good.dcm")
    raw = good.read_bytes()
    truncated = tmp_path / "trunc.dcm"
    truncated.write_bytes(raw[:-40])  # pixel data shorter than its declared length
    # A lying length: the first dataset element claims far more bytes than exist.
    glen = int.from_bytes(raw[140:144], "little")
    start = 144 + glen
    lying = bytearray(raw)
    lying[start + 6:start + 8] = (0xFFF0).to_bytes(2, "little")
    lying_path = tmp_path / "lying.dcm"
    lying_path.write_bytes(bytes(lying))
    statuses = send_files(archive.port, [truncated, lying_path, good])
    assert statuses[0] == 0xC000 and statuses[1] == 0xC000
    assert statuses[2] == 0  # the association keeps working
    sop = read_file_meta_info(good).MediaStorageSOPInstanceUID
    assert index_rows(archive.data, "SELECT COUNT(*) FROM instance WHERE sop_uid=?", (sop,)) == [(1,)]


def test_hostile_uids_never_escape(archive: Archive, tmp_path: Path) -> None:
    from pydicom import config as pydicom_config

    old = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        bad_sop = make_instance(sop_uid="../../../../tmp/pwned")
        bad_study = make_instance(study_uid="1.2/../../../etc")
        files = [write(bad_sop, tmp_path / "a.dcm"), write(bad_study, tmp_path / "b.dcm")]
    finally:
        pydicom_config.settings.writing_validation_mode = old
    statuses = send_files(archive.port, files)
    assert all(s is None or s >= 0xA000 for s in statuses), statuses
    assert not Path("/tmp/pwned.dcm").exists()
    escaped = [p for p in archive.data.parent.rglob("*") if "etc" in p.name or "pwned" in p.name]
    assert escaped == []


def test_duplicate_keep_if_identical(archive: Archive, tmp_path: Path) -> None:
    ds = make_instance(patient_id="DUPPAT")
    f = write(ds, tmp_path / "one.dcm")
    assert send_files(archive.port, [f, f]) == [0, 0]
    ds.PatientName = "Changed^Name"
    f2 = write(ds, tmp_path / "two.dcm")
    assert send_files(archive.port, [f2]) == [0x0111]
    assert dataset_bytes(stored_path(archive.data, ds.SOPInstanceUID)) == dataset_bytes(f)


def test_concurrent_associations(archive: Archive, tmp_path: Path) -> None:
    study = generate_uid()
    groups = []
    for g in range(4):
        files = [write(make_instance(study_uid=study, patient_id="CONC", instance_number=i),
                       tmp_path / f"{g}-{i}.dcm") for i in range(25)]
        groups.append(files)
    results: list[list[int | None]] = [[] for _ in groups]

    def run(i: int) -> None:
        results[i] = send_files(archive.port, groups[i], aet=f"SCU{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == [0] * 25 for r in results), results
    matches, final = find(archive.port, q("STUDY", StudyInstanceUID=study,
                                           NumberOfStudyRelatedInstances="",
                                           NumberOfStudyRelatedSeries=""))
    assert final == 0 and len(matches) == 1
    assert int(matches[0].NumberOfStudyRelatedInstances) == 100
    assert int(matches[0].NumberOfStudyRelatedSeries) == 100  # synth: a series per instance


# -- C-FIND -------------------------------------------------------------------------------------

def test_study_level_aggregated(archive: Archive, site: Site) -> None:
    matches, final = find(archive.port, q(
        "STUDY", PatientID="PAT1", StudyInstanceUID="", ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="", StudyDate=""))
    assert final == 0
    by_uid = {m.StudyInstanceUID: m for m in matches}
    assert set(by_uid) == {site.st_a, site.st_b}  # one match per study, not per instance
    a = by_uid[site.st_a]
    assert int(a.NumberOfStudyRelatedSeries) == 2 and int(a.NumberOfStudyRelatedInstances) == 5
    assert sorted(a.ModalitiesInStudy) == ["CT", "MR"]
    # only requested attributes (plus the level) come back
    assert {e.keyword for e in a} == {
        "QueryRetrieveLevel", "PatientID", "StudyInstanceUID", "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyDate"}


@pytest.mark.parametrize("keys,expected", [
    ({"PatientName": "doe*"}, {"a", "b"}),  # PN wildcard, case-insensitive
    ({"PatientName": "?oe^Jane"}, {"c"}),
    ({"PatientID": "PAT*"}, {"a", "b", "c"}),
    ({"StudyDate": "20240101-20241231"}, {"a", "c"}),
    ({"StudyDate": "-20231231"}, {"b"}),
    ({"StudyDate": "20240201-"}, {"c"}),
    ({"StudyDate": "20230601"}, {"b"}),
    ({"StudyTime": "080000-110000"}, {"a", "b"}),
    ({"StudyTime": "1500-"}, {"c"}),
    ({"AccessionNumber": "ACC-C"}, {"c"}),
    ({"ModalitiesInStudy": "MR"}, {"a", "c"}),
    ({"ModalitiesInStudy": "CT"}, {"a", "b"}),
    ({"PatientID": "PAT1", "ModalitiesInStudy": "MR"}, {"a"}),
    ({"PatientID": "NOBODY"}, set()),
])
def test_study_matching(archive: Archive, site: Site, keys: dict[str, str],
                        expected: set[str]) -> None:
    names = {site.st_a: "a", site.st_b: "b", site.st_c: "c"}
    ident = q("STUDY", StudyInstanceUID="", **keys)
    matches, final = find(archive.port, ident)
    assert final == 0
    got = {names[m.StudyInstanceUID] for m in matches if m.StudyInstanceUID in names}
    assert got == expected


def test_uid_list_matching(archive: Archive, site: Site) -> None:
    matches, _ = find(archive.port, q("STUDY", StudyInstanceUID=f"{site.st_a}\\{site.st_c}"))
    assert {m.StudyInstanceUID for m in matches} == {site.st_a, site.st_c}


def test_series_and_image_levels(archive: Archive, site: Site) -> None:
    matches, final = find(archive.port, q("SERIES", StudyInstanceUID=site.st_a,
                                          SeriesInstanceUID="", Modality="",
                                          NumberOfSeriesRelatedInstances=""))
    assert final == 0
    got = {m.SeriesInstanceUID: (m.Modality, int(m.NumberOfSeriesRelatedInstances))
           for m in matches}
    assert got == {site.se_a_ct: ("CT", 3), site.se_a_mr: ("MR", 2)}
    matches, _ = find(archive.port, q("SERIES", StudyInstanceUID=site.st_a, Modality="MR",
                                      SeriesInstanceUID=""))
    assert [m.SeriesInstanceUID for m in matches] == [site.se_a_mr]
    matches, _ = find(archive.port, q("IMAGE", StudyInstanceUID=site.st_a,
                                      SeriesInstanceUID=site.se_a_ct, SOPInstanceUID="",
                                      InstanceNumber=""))
    assert {m.SOPInstanceUID for m in matches} == set(site.sops[site.se_a_ct])
    matches, _ = find(archive.port, q("IMAGE", SeriesInstanceUID=site.se_a_ct,
                                      SOPInstanceUID="", InstanceNumber="2"))
    assert len(matches) == 1


def test_patient_root(archive: Archive, site: Site) -> None:
    model = PatientRootQueryRetrieveInformationModelFind
    matches, final = find(archive.port, q("PATIENT", PatientID="PAT*", PatientName="",
                                          NumberOfPatientRelatedStudies=""), model)
    assert final == 0
    got = {m.PatientID: int(m.NumberOfPatientRelatedStudies) for m in matches}
    assert got["PAT1"] == 2 and got["PAT2"] == 1
    matches, _ = find(archive.port, q("STUDY", PatientID="PAT2", StudyInstanceUID=""), model)
    assert [m.StudyInstanceUID for m in matches] == [site.st_c]
    # the study root has no patient level
    _, final = find(archive.port, q("PATIENT", PatientID="PAT1"))
    assert final != 0 and final >= 0xA000


def test_sequence_matching(archive: Archive, site: Site) -> None:
    universal = q("STUDY", PatientID="PAT2", StudyInstanceUID="")
    item = Dataset()
    item.CodeValue = ""
    universal.ProcedureCodeSequence = [item]
    matches, _ = find(archive.port, universal)
    assert [m.StudyInstanceUID for m in matches] == [site.st_c]
    assert "ProcedureCodeSequence" in matches[0]
    valued = q("STUDY", PatientID="PAT2", StudyInstanceUID="")
    item2 = Dataset()
    item2.CodeValue = "XYZ"
    valued.ProcedureCodeSequence = [item2]
    matches, _ = find(archive.port, valued)
    assert matches == []  # the index holds no such code: nothing can match it


def test_dcmtk_findscu(archive: Archive, site: Site) -> None:
    r = subprocess.run([dcmtk("findscu"), "-S", "-aec", "ARCHIVE",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT1",
                        "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances",
                        "127.0.0.1", str(archive.port)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0
    text = r.stdout + r.stderr
    assert text.count("Find Response:") == 2 or text.count("(Pending)") == 2, text
    assert site.st_a in text and site.st_b in text


# -- C-MOVE / C-GET -----------------------------------------------------------------------------

def test_dcmtk_movescu_to_peer_and_unknown(archive: Archive, site: Site, storescp: Any) -> None:
    _, out = storescp
    r = subprocess.run([dcmtk("movescu"), "-S", "-aec", "ARCHIVE", "-aem", "MOVEDEST",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={site.st_a}",
                        "127.0.0.1", str(archive.port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    names = {p.name.split(".", 1)[1] for p in out.iterdir()}
    assert set(site.sops[site.se_a_ct]) | set(site.sops[site.se_a_mr]) <= names
    r = subprocess.run([dcmtk("movescu"), "-S", "-aec", "ARCHIVE", "-aem", "STRANGER",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={site.st_a}",
                        "127.0.0.1", str(archive.port)], capture_output=True, text=True, timeout=60)
    assert "MoveDestinationUnknown" in r.stdout + r.stderr or "a801" in (r.stdout + r.stderr).lower()


def test_pynetdicom_move_statuses(archive: Archive, site: Site) -> None:
    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
    try:
        ident = q("SERIES", StudyInstanceUID=site.st_b, SeriesInstanceUID=site.se_b)
        finals = [s for s, _ in assoc.send_c_move(ident, "NOWHERE",
                                                  StudyRootQueryRetrieveInformationModelMove)]
        assert finals[-1].Status == 0xA801
        finals = [s for s, _ in assoc.send_c_move(ident, "MOVEDEST",
                                                  StudyRootQueryRetrieveInformationModelMove)]
        assert finals[-1].Status == 0x0000
        assert finals[-1].NumberOfCompletedSuboperations == 2
        # a configured peer that is down: refused, not Success
        finals = [s for s, _ in assoc.send_c_move(ident, "DEADPEER",
                                                  StudyRootQueryRetrieveInformationModelMove)]
        assert finals[-1].Status != 0x0000
    finally:
        assoc.release()


def test_pynetdicom_get(archive: Archive, site: Site) -> None:
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0

    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop in (CT_IMAGE, MR_IMAGE):
        ae.add_requested_context(sop, [ExplicitVRLittleEndian])
        from pynetdicom import build_role

        roles.append(build_role(sop, scp_role=True))
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        finals = list(assoc.send_c_get(q("STUDY", StudyInstanceUID=site.st_a),
                                       StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert finals[-1][0].Status == 0
    assert {d.SOPInstanceUID for d in received} == set(site.sops[site.se_a_ct]) | set(
        site.sops[site.se_a_mr])
    assert all(d[0x00411001].value == "kept as received" for d in received)


# -- hostile transport --------------------------------------------------------------------------

def _echo_ok(port: int) -> bool:
    ae = scu_ae()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    if not assoc.is_established:
        return False
    st = assoc.send_c_echo()
    assoc.release()
    return bool(st and st.Status == 0)


def test_malformed_pdus_do_not_hurt_others(archive: Archive) -> None:
    import socket

    payloads = [
        b"\x00" * 64,  # not a PDU type
        b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 20,  # A-ASSOCIATE-RQ claiming 4 GiB
        b"\x01\x00\x00\x00\x00\x10" + b"\x00\x01" + b"\x00" * 8,  # truncated RQ
        b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",  # P-DATA before association
        bytes(range(256)) * 8,
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", archive.port), timeout=5) as s:
            try:
                s.sendall(payload)
                s.settimeout(3)
                s.recv(1024)
            except OSError:
                pass
    assert _echo_ok(archive.port)


def test_abort_mid_transfer_leaves_nothing(archive: Archive, tmp_path: Path) -> None:
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    ds = make_instance(rows=256, cols=256, patient_id="ABORTPAT")
    f = write(ds, tmp_path / "big.dcm")
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE", max_pdu=16384)
    assert assoc.is_established
    cx = next(iter(assoc.accepted_contexts))
    prim = C_STORE()
    prim.MessageID = 7
    prim.AffectedSOPClassUID = CTImageStorage
    prim.AffectedSOPInstanceUID = ds.SOPInstanceUID
    prim.Priority = 2
    from io import BytesIO

    prim.DataSet = BytesIO(dataset_bytes(f))
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    pdus = list(msg.encode_msg(cx.context_id, 16384))
    from pynetdicom.pdu import P_DATA_TF

    sock = assoc.dul.socket.socket
    for prim_pdata in pdus[: len(pdus) // 2]:  # half of the fragments, then vanish
        pdu = P_DATA_TF()
        pdu.from_primitive(prim_pdata)
        sock.sendall(pdu.encode())
    assoc.abort()
    assert _echo_ok(archive.port)
    assert index_rows(archive.data, "SELECT COUNT(*) FROM instance WHERE sop_uid=?",
                      (ds.SOPInstanceUID,)) == [(0,)]
    assert not list(archive.data.rglob(f"{ds.SOPInstanceUID}*"))


def test_unknown_sop_class_refused_by_default(archive: Archive) -> None:
    ae = scu_ae()
    ae.add_requested_context("1.2.3.4.5.6.7", ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="ARCHIVE")
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        assert "1.2.3.4.5.6.7" not in accepted
    finally:
        assoc.release()


_ = build_context  # re-exported helpers used by other archive test modules
