"""Modality Worklist and UPS-RS on a running archive: DCMTK findscu -W and pynetdicom as
MWL SCUs, UPS-RS over HTTP, the ``archive worklist`` CLI, and automatic completion once
a study has arrived and gone quiet."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module
from dicomweb_support import auth, start_web_archive, token_entries
from test_archive_support import REPO, Archive, dcmtk, scu_ae

pytestmark = pytest.mark.integration

need_module("starlette")
need_module("uvicorn")

import requests  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402

QUIET_S = 2.0
DICOM_JSON = {"Content-Type": "application/dicom+json"}


@dataclass
class Ran:
    """What one CLI run printed and its exit code."""

    returncode: int
    stdout: str
    stderr: str


def cli(arch: Archive, *args: str) -> Ran:
    """``pacsinfra archive worklist ...`` against the archive's config, run in this
    process through the CLI's entry point (exit codes and messages as a shell sees them)."""
    from pacsinfra.cli import main

    config = arch.data.parent / f"{arch.data.name}.yaml"
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(["archive", "worklist", args[0], "--config", str(config), *args[1:]])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("worklist")
    arch, url, _ = start_web_archive(base, {"tokens": token_entries(base)},
                                     worklist={"complete_after_s": QUIET_S})
    # the MWL fixtures: five scheduled steps, added as a script would
    rows = [("FS1", "Doe^John", "CT", "CT1", "20260105", "0800"),
            ("FS2", "Doe^Jane", "CT", "CT2", "20260105", "1400"),
            ("FS3", "Roe^Richard", "MR", "MR1", "20260106", "0900"),
            ("FS4", "Smith^Anna", "US", "US1", "20260110", "1000"),
            ("FS5", "Dolittle^Ann", "CT", "CT1", "20260201", "0930")]
    for pid, name, modality, station, date, when in rows:
        done = cli(arch, "add", "--patient-id", pid, "--patient-name", name,
                   "--modality", modality, "--station", station, "--date", date,
                   "--time", when, "--accession", f"ACC-{pid}", "--description", "Exam")
        assert done.returncode == 0, done.stderr
    yield arch, url
    assert arch.stop() == 0


def findscu(arch: Archive, out: Path, *keys: str) -> tuple[int, list[Dataset]]:
    """``findscu -W`` with ``keys``; (exit code, the answers it extracted)."""
    out.mkdir()
    args = [dcmtk("findscu"), "-W", "-aet", "MODALITY", "-aec", arch.aet, "-X", "-od",
            str(out)]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run([*args, "127.0.0.1", str(arch.port)], capture_output=True,
                          timeout=30, env={"TCP_NODELAY": "1"})
    return done.returncode, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


MWL_KEYS = ("PatientID=FS*", "PatientName", "ScheduledProcedureStepSequence[0].Modality",
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime")


@pytest.mark.parametrize(("keys", "expected"), [
    ((), {"FS1", "FS2", "FS3", "FS4", "FS5"}),
    (("ScheduledProcedureStepSequence[0].Modality=CT",), {"FS1", "FS2", "FS5"}),
    (("ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1",), {"FS1", "FS5"}),
    (("ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260105-20260106",),
     {"FS1", "FS2", "FS3"}),
    (("ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260105",
      "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1200-"), {"FS2"}),
    (("PatientName=Do*",), {"FS1", "FS2", "FS5"}),
    (("PatientName=D?e^J*",), {"FS1", "FS2"}),
    (("PatientName=doe^ja?e",), {"FS2"}),
    (("PatientID=FS?", "ScheduledProcedureStepSequence[0].Modality=XA"), set()),
])
def test_findscu_worklist_matching(site: Any, tmp_path: Path, keys: tuple[str, ...],
                                   expected: set[str]) -> None:
    arch, _ = site
    overrides = {k.split("=")[0] for k in keys}
    base = [k for k in MWL_KEYS if k.split("=")[0] not in overrides]
    code, answers = findscu(arch, tmp_path / "rsp", *base, *keys)
    assert code == 0
    assert {str(a.PatientID) for a in answers} == expected


def test_findscu_gets_only_the_requested_attributes(site: Any, tmp_path: Path) -> None:
    arch, _ = site
    code, answers = findscu(arch, tmp_path / "rsp", "PatientID=FS3", "PatientName",
                            "ScheduledProcedureStepSequence[0].Modality")
    assert code == 0 and len(answers) == 1
    answer = answers[0]
    top = {e.keyword for e in answer} - {"SpecificCharacterSet"}
    assert top == {"PatientID", "PatientName", "ScheduledProcedureStepSequence"}
    step = answer.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in step] == ["Modality"] and step.Modality == "MR"
    assert str(answer.PatientName) == "Roe^Richard"


def _mwl_query(**top: str) -> Dataset:
    q = Dataset()
    q.PatientID = top.get("PatientID", "")
    q.PatientName = ""
    step = Dataset()
    step.Modality = top.get("Modality", "")
    step.ScheduledProcedureStepStartDate = top.get("Date", "")
    q.ScheduledProcedureStepSequence = [step]
    return q


def test_pynetdicom_scu_statuses(site: Any) -> None:
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    arch, _ = site
    ae = scu_ae("WLSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", arch.port, ae_title=arch.aet)
    assert assoc.is_established
    try:
        got = list(assoc.send_c_find(_mwl_query(PatientID="FS*", Modality="CT"),
                                     ModalityWorklistInformationFind))
        statuses = [int(st.Status) for st, _ in got]
        assert statuses == [0xFF00, 0xFF00, 0xFF00, 0x0000]
        assert {str(ds.PatientID) for st, ds in got if ds is not None} == {"FS1", "FS2", "FS5"}
        # a malformed date range: 0xA900, and the association still works
        bad = list(assoc.send_c_find(_mwl_query(Date="2026-01-05"),
                                     ModalityWorklistInformationFind))
        assert [int(st.Status) for st, _ in bad] == [0xA900]
        again = list(assoc.send_c_find(_mwl_query(PatientID="FS4"),
                                       ModalityWorklistInformationFind))
        assert [int(st.Status) for st, _ in again] == [0xFF00, 0x0000]
    finally:
        assoc.release()


def test_cli_list_cancel_and_bad_input(site: Any, tmp_path: Path) -> None:
    arch, _ = site
    done = cli(arch, "add", "--patient-id", "CLI1", "--modality", "CT", "--date", "20260301")
    assert done.returncode == 0, done.stderr
    uid = done.stdout.strip()
    listing = cli(arch, "list", "--state", "SCHEDULED")
    assert listing.returncode == 0 and uid in listing.stdout and "CLI1" in listing.stdout
    as_json = json.loads(cli(arch, "list", "--json").stdout)
    assert any(d["00080018"]["Value"] == [uid] for d in as_json)
    assert cli(arch, "cancel", uid).returncode == 0
    # the installed command, as a script runs it
    shell = subprocess.run(
        [sys.executable, "-m", "pacsinfra", "archive", "worklist", "cancel", "--config",
         str(arch.data.parent / f"{arch.data.name}.yaml"), uid],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert shell.returncode == 0 and "already CANCELED" in shell.stdout, shell.stderr
    assert "CANCELED" in cli(arch, "list").stdout
    code, answers = findscu(arch, tmp_path / "rsp", "PatientID=CLI1")
    assert code == 0 and answers == []  # cancelled: no longer offered
    for args, why in [(("add", "--patient-id", "X", "--modality", "CT", "--date", "5.1.26"),
                       "YYYYMMDD"),
                      (("cancel", "not-a-uid"), "not a valid DICOM UID"),
                      (("cancel", generate_uid()), "no workitem"),
                      (("add", "--patient-id", "X", "--modality", "ct!", "--date", "20260101"),
                       "--modality")]:
        bad = cli(arch, *args)
        assert bad.returncode == 2 and why in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr


def _workitem(pid: str, study_uid: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "00100020": {"vr": "LO", "Value": [pid]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ups^Test"}]},
        "00400100": {"vr": "SQ", "Value": [{
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400001": {"vr": "AE", "Value": ["CT9"]},
            "00400002": {"vr": "DA", "Value": ["20260402"]},
            "00400003": {"vr": "TM", "Value": ["1015"]}}]},
    }
    if study_uid:
        doc["0020000D"] = {"vr": "UI", "Value": [study_uid]}
    return doc


def _state(url: str, uid: str) -> str:
    r = requests.get(f"{url}/workitems/{uid}", headers=auth("reader"), timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()[0]["00741000"]["Value"][0])


def test_ups_rs_lifecycle_and_refusals(site: Any, tmp_path: Path) -> None:
    arch, url = site
    uid = generate_uid()
    r = requests.post(f"{url}/workitems?{uid}", data=json.dumps([_workitem("UPS1")]),
                      headers={**auth("writer"), **DICOM_JSON}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith(f"/workitems/{uid}")
    assert _state(url, uid) == "SCHEDULED"
    # found by the MWL SCP and by QIDO on /workitems with the same matching
    code, answers = findscu(arch, tmp_path / "rsp", "PatientID=UPS1",
                            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle")
    assert code == 0 and [str(a.PatientID) for a in answers] == ["UPS1"]
    found = requests.get(f"{url}/workitems", params={
        "PatientID": "UPS*", "ScheduledProcedureStepSequence.Modality": "CT"},
        headers=auth("reader"), timeout=10)
    assert found.status_code == 200 and len(found.json()) == 1
    none = requests.get(f"{url}/workitems", params={"PatientID": "UPS*",
                                                    "ScheduledProcedureStepSequence.Modality": "MR"},
                        headers=auth("reader"), timeout=10)
    assert none.status_code == 204

    def put_state(state: str, txn: str | None) -> requests.Response:
        body: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [state]}}
        if txn:
            body["00081195"] = {"vr": "UI", "Value": [txn]}
        return requests.put(f"{url}/workitems/{uid}/state", data=json.dumps([body]),
                            headers={**auth("writer"), **DICOM_JSON}, timeout=10)

    txn = generate_uid()
    refused = put_state("COMPLETED", txn)  # not claimed yet
    assert refused.status_code == 409 and "Warning" in refused.headers
    assert "not IN PROGRESS" in refused.json()["error"]
    assert put_state("IN PROGRESS", None).status_code == 400  # no Transaction UID
    assert put_state("IN PROGRESS", txn).status_code == 200
    assert _state(url, uid) == "IN PROGRESS"
    got = requests.get(f"{url}/workitems/{uid}", headers=auth("reader"), timeout=10).json()[0]
    assert "00081195" not in got  # the transaction UID stays with its performer
    assert put_state("IN PROGRESS", generate_uid()).status_code == 409
    assert put_state("COMPLETED", generate_uid()).status_code == 409  # someone else's
    cancel = requests.post(f"{url}/workitems/{uid}/cancelrequest", headers=auth("writer"),
                           timeout=10)
    assert cancel.status_code == 409 and "Warning" in cancel.headers
    assert put_state("COMPLETED", txn).status_code == 200
    assert _state(url, uid) == "COMPLETED"
    code, answers = findscu(arch, tmp_path / "rsp2", "PatientID=UPS1")
    assert code == 0 and answers == []  # only SCHEDULED items are on the worklist

    # a second item cancelled by request
    other = requests.post(f"{url}/workitems", data=json.dumps(_workitem("UPS2")),
                          headers={**auth("writer"), **DICOM_JSON}, timeout=10)
    assert other.status_code == 201
    other_uid = other.headers["Location"].rsplit("/", 1)[1]
    assert requests.post(f"{url}/workitems/{other_uid}/cancelrequest", headers=auth("writer"),
                         timeout=10).status_code == 202
    assert _state(url, other_uid) == "CANCELED"

    # refusals: scopes, duplicates, bodies, unknown items, query keys — never a 500
    post = f"{url}/workitems"
    cases = [
        (requests.post(post, data=json.dumps(_workitem("X")), headers=DICOM_JSON), 401),
        (requests.post(post, data=json.dumps(_workitem("X")),
                       headers={**auth("reader"), **DICOM_JSON}), 403),
        (requests.post(f"{post}?{uid}", data=json.dumps(_workitem("X")),
                       headers={**auth("writer"), **DICOM_JSON}), 409),
        (requests.post(post, data="{not json", headers={**auth("writer"), **DICOM_JSON}), 400),
        (requests.post(post, data=json.dumps({"00100020": {"vr": "LO", "Value": ["X"]}}),
                       headers={**auth("writer"), **DICOM_JSON}), 400),
        (requests.post(post, data=json.dumps(_workitem("X")),
                       headers={**auth("writer"), "Content-Type": "text/plain"}), 415),
        (requests.get(f"{url}/workitems/{generate_uid()}", headers=auth("reader")), 404),
        (requests.get(f"{url}/workitems/not-a-uid", headers=auth("reader")), 400),
        (requests.get(post, params={"NoSuchKeyword": "1"}, headers=auth("reader")), 400),
        (requests.get(post, params={"ScheduledProcedureStepSequence."
                                    "ScheduledProcedureStepStartDate": "tomorrow"},
                      headers=auth("reader")), 400),
        (requests.get(post, headers=auth("writer")), 403),
        (requests.get(post, params={"Rows": "16"}, headers=auth("reader")), 400),
        (requests.post(post, data=json.dumps({**_workitem("X"), "00400100": {
            "vr": "SQ", "Value": "not a list"}}), headers={**auth("writer"), **DICOM_JSON}),
         400),
        (requests.post(post, data=json.dumps({**_workitem("X"), "00100020": {
            "vr": "LO", "Value": [{"nested": 1}]}}), headers={**auth("writer"), **DICOM_JSON}),
         400),
        (requests.post(post, data=json.dumps([_workitem("X"), _workitem("Y")]),
                       headers={**auth("writer"), **DICOM_JSON}), 400),
    ]
    for i, (resp, status) in enumerate(cases):
        assert resp.status_code == status, (i, resp.status_code, resp.text)
        assert "error" in resp.json(), i


def test_item_completes_after_its_study_arrives_and_goes_quiet(site: Any) -> None:
    from pynetdicom.sop_class import CTImageStorage

    arch, url = site
    study = generate_uid()
    waiting = generate_uid()
    uids = []
    for pid, st in (("AUTO1", study), ("AUTO2", waiting)):
        r = requests.post(f"{url}/workitems", data=json.dumps(_workitem(pid, st)),
                          headers={**auth("writer"), **DICOM_JSON}, timeout=10)
        assert r.status_code == 201, r.text
        uids.append(r.headers["Location"].rsplit("/", 1)[1])
    ae = scu_ae()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", arch.port, ae_title=arch.aet)
    assert assoc.is_established
    try:
        for _ in range(3):
            ds = make_instance(rows=16, cols=16, patient_id="AUTO1", study_uid=study)
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    stored = time.monotonic()
    assert _state(url, uids[0]) == "SCHEDULED"  # arrived, not yet quiet
    deadline = stored + QUIET_S + 10
    while _state(url, uids[0]) != "COMPLETED":
        assert time.monotonic() < deadline, "the item was not completed"
        time.sleep(0.2)
    assert time.monotonic() - stored >= QUIET_S - 0.3  # not before the study was quiet
    assert _state(url, uids[1]) == "SCHEDULED"  # its study never came
