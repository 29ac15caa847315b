"""Rejection notes (IHE IOCM) against a running archive, over DIMSE and DICOMweb.

A study of four CT images is stored; a Key Object Selection document titled 113001
(Rejected for Quality Reasons) names one of them. From then on the image is gone from
C-FIND (with the study's counts), C-MOVE to DCMTK's storescp, QIDO-RS and WADO-RS; sent
again it is refused (0x0111) and stays hidden. A note naming an instance that has not
arrived yet refuses it when it comes. ``archive check`` knows the hidden file, the
audit trail records the rejection, ``archive rejections restore`` brings the image back.
113039 (Data Retention Policy Expired) deletes the file, and cannot be undone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from test_archive_support import REPO, Archive, dcmtk, wait_port

pytestmark = pytest.mark.integration
need_module("pynetdicom")
need_module("requests")

import requests  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from test_archive_dicom import find, index_rows, q, send_files, stored_path  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
TOKEN = "rejection-token-0123456789abcdef"


def rejection_note(code: str, study: str, refs: list[tuple[str, str, str]],
                   path: Path) -> tuple[Path, str]:
    """A KOS titled ``code`` naming ``refs`` ((series, SOP class, SOP instance)) of ``study``."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = KOS, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "SYNTH1", "Doe^John", "KO"
    ds.SeriesNumber, ds.InstanceNumber = "99", "1"
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = code, "DCM"
    title.CodeMeaning = "Rejected"
    ds.ConceptNameCodeSequence = Sequence([title])
    series_items = []
    for series in sorted({s for s, _, _ in refs}):
        se = Dataset()
        se.SeriesInstanceUID = series
        items = []
        for _, cls, sop in (r for r in refs if r[0] == series):
            it = Dataset()
            it.ReferencedSOPClassUID, it.ReferencedSOPInstanceUID = cls, sop
            items.append(it)
        se.ReferencedSOPSequence = Sequence(items)
        series_items.append(se)
    st = Dataset()
    st.StudyInstanceUID = study
    st.ReferencedSeriesSequence = Sequence(series_items)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([st])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = KOS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsinfra", "archive", *args, "--config",
                           str(cfg)], capture_output=True, text=True, cwd=REPO, timeout=60)


def image_uids(port: int, study: str) -> set[str]:
    matches, status = find(port, q("IMAGE", StudyInstanceUID=study, SOPInstanceUID=""))
    assert status == 0
    return {str(m.SOPInstanceUID) for m in matches}


def study_count(port: int, study: str) -> int:
    (m,), _ = find(port, q("STUDY", StudyInstanceUID=study, NumberOfStudyRelatedInstances=""))
    return int(m.NumberOfStudyRelatedInstances)


@pytest.fixture()
def lab(tmp_path: Path) -> Any:
    out = tmp_path / "received"
    out.mkdir()
    scp_port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "DEST", "-od", str(out), str(scp_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(scp_port, proc=scp)
    (tmp_path / "token").write_text(TOKEN)
    http = free_port()
    arch = Archive(tmp_path / "data", config={
        "peers": {"DEST": {"ae_title": "DEST", "host": "127.0.0.1", "port": scp_port}},
        "audit": {"file": str(tmp_path / "audit.jsonl")},
        "dicomweb": {"enabled": True, "bind": "127.0.0.1", "port": http,
                     "token": {"file": str(tmp_path / "token")}, "warm_metadata": False},
    }).start()
    wait_port(http, proc=arch.proc)
    study, series = generate_uid(), generate_uid()
    files = [write(make_instance(study_uid=study, series_uid=series, instance_number=i + 1,
                                 rows=16, cols=16, random_pixels=True), tmp_path / f"{i}.dcm")
             for i in range(4)]
    assert send_files(arch.port, files) == [0] * 4
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    try:
        yield {"archive": arch, "root": tmp_path, "out": out, "study": study, "series": series,
               "uids": uids, "files": files, "http": f"http://127.0.0.1:{http}",
               "cfg": tmp_path / "data.yaml", "data": tmp_path / "data"}
    finally:
        assert arch.stop() == 0, arch.logs()
        scp.terminate()
        scp.wait()


def test_rejected_for_quality_is_hidden_everywhere_and_can_be_restored(lab: dict[str, Any]) -> None:
    arch, study, series, uids = lab["archive"], lab["study"], lab["series"], lab["uids"]
    ct = "1.2.840.10008.5.1.4.1.1.2"
    gone = uids[1]
    gone_file = stored_path(lab["data"], gone)
    note, note_uid = rejection_note("113001", study, [(series, ct, gone)], lab["root"] / "n.dcm")
    assert send_files(arch.port, [note]) == [0]

    # C-FIND: the image is gone, the study counts the three others and the note
    assert image_uids(arch.port, study) == {*uids[:1], *uids[2:], note_uid}
    assert study_count(arch.port, study) == 4
    # C-MOVE of the study: everything but the rejected image
    mv = subprocess.run([dcmtk("movescu"), "-S", "-aet", "TESTSCU", "-aec", "ARCHIVE",
                         "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY", "-k",
                         f"StudyInstanceUID={study}", "127.0.0.1", str(arch.port)],
                        capture_output=True, text=True, timeout=60)
    assert mv.returncode == 0, mv.stderr
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in lab["out"].iterdir()}
    assert received == {*uids[:1], *uids[2:], note_uid}
    # DICOMweb: QIDO does not list it, WADO does not serve it
    auth = {"Authorization": f"Bearer {TOKEN}"}
    qido = requests.get(f"{lab['http']}/studies/{study}/instances", headers=auth,
                        timeout=10)
    listed = {i["00080018"]["Value"][0] for i in qido.json()}
    assert gone not in listed and uids[0] in listed
    wado = requests.get(f"{lab['http']}/studies/{study}/series/{series}/instances/"
                        f"{gone}", headers={**auth, "Accept": "multipart/related; "
                                            "type=\"application/dicom\""}, timeout=10)
    assert wado.status_code == 404, wado.status_code

    # sent again: refused, still hidden
    assert send_files(arch.port, [lab["files"][1]]) == [0x0111]
    assert gone not in image_uids(arch.port, study)
    assert "rejected (113001" in arch.logs()

    # the file is kept and known
    assert gone_file.exists()
    check = cli(lab["cfg"], "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["rejected_files"] == 1 and report["orphans"] == [] and report["clean"]

    # audited
    audit = [json.loads(line) for line in (lab["root"] / "audit.jsonl").read_text().splitlines()]
    rejected = [a for a in audit if a["EventIdentification"]["EventActionCode"] == "U"]
    assert rejected and rejected[0]["ParticipantObjectIdentification"][0][
        "ParticipantObjectDescription"]["RejectionCode"] == "113001"

    listing = cli(lab["cfg"], "rejections", "list")
    assert listing.returncode == 0 and gone in listing.stdout and note_uid in listing.stdout
    restored = cli(lab["cfg"], "rejections", "restore", note_uid)
    assert restored.returncode == 0, restored.stderr
    assert "1 instance(s) no longer rejected" in restored.stdout
    assert gone in image_uids(arch.port, study)
    assert study_count(arch.port, study) == 5
    assert cli(lab["cfg"], "rejections", "restore", note_uid).returncode != 0  # nothing left


def test_a_note_before_its_instance_and_retention_expired_deletes(lab: dict[str, Any]) -> None:
    arch, study, series, uids = lab["archive"], lab["study"], lab["series"], lab["uids"]
    ct = "1.2.840.10008.5.1.4.1.1.2"
    # a note naming an instance that has not arrived: the instance is refused when it does
    late = make_instance(study_uid=study, series_uid=series, instance_number=9, rows=16,
                         cols=16)
    late_file = write(late, lab["root"] / "late.dcm")
    note, _ = rejection_note("113037", study, [(series, ct, str(late.SOPInstanceUID))],
                             lab["root"] / "early.dcm")
    assert send_files(arch.port, [note]) == [0]
    assert send_files(arch.port, [late_file]) == [0x0111]
    assert str(late.SOPInstanceUID) not in image_uids(arch.port, study)

    # 113039: the file goes, for good
    victim = uids[2]
    path = stored_path(lab["data"], victim)
    note, note_uid = rejection_note("113039", study, [(series, ct, victim)],
                                    lab["root"] / "expired.dcm")
    assert send_files(arch.port, [note]) == [0]
    assert not path.exists()
    assert victim not in image_uids(arch.port, study)
    assert index_rows(lab["data"], "SELECT COUNT(*) FROM pending_unlink") == [(0,)]
    restored = cli(lab["cfg"], "rejections", "restore", note_uid)
    assert restored.returncode == 1
    assert "cannot come back" in restored.stderr
    check = cli(lab["cfg"], "check", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["clean"], check.stdout
