"""Verified reads: a stored file that no longer matches its checksum never leaves the archive.

Three instances are stored; one file is then changed on disk behind the archive's back
(one pixel byte, same size: what bit rot looks like). Every way out refuses it and only
it: C-MOVE to DCMTK's storescp and C-GET (0xB000, the instance in the Failed SOP
Instance UID List), WADO-RS (the study: 206 with a Warning and the two sound instances;
the instance, its frames, its metadata: 410). The instance is flagged: ``archive
check`` lists it and exits 1, the audit trail has a Security Alert naming it, the
metrics count the refused reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import free_port, need_module
from test_archive_support import REPO, Archive, dcmtk, scu_ae, wait_port

pytestmark = pytest.mark.integration
need_module("pynetdicom")
need_module("requests")

import requests  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import build_role, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from test_archive_dicom import index_rows, send_files, stored_path  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

TOKEN = "verified-reads-token-0123456789"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("verified")
    out = root / "received"
    out.mkdir()
    scp_port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "+xa", "-aet", "DEST", "-od", str(out),
                            str(scp_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(scp_port, proc=scp)
    (root / "token").write_text(TOKEN)
    http = free_port()
    data = root / "data"
    arch = Archive(data, config={
        "peers": {"DEST": {"ae_title": "DEST", "host": "127.0.0.1", "port": scp_port}},
        "audit": {"file": str(root / "audit.jsonl")},
        "dicomweb": {"enabled": True, "bind": "127.0.0.1", "port": http,
                     "token": {"file": str(root / "token")}, "warm_metadata": False},
    }).start()
    wait_port(http, proc=arch.proc)
    try:
        study, series = generate_uid(), generate_uid()
        files = [write(make_instance(study_uid=study, series_uid=series, instance_number=i + 1,
                                     rows=64, cols=64, random_pixels=True),
                       root / f"{i}.dcm") for i in range(3)]
        assert send_files(arch.port, files) == [0, 0, 0]
        uids = [r[0] for r in index_rows(data, "SELECT sop_uid FROM instance ORDER BY sop_uid")]
        bad = uids[1]
        path = stored_path(data, bad)
        raw = bytearray(path.read_bytes())
        raw[-100] ^= 0xFF  # a pixel byte, size unchanged
        path.write_bytes(bytes(raw))
        yield {"archive": arch, "root": root, "out": out, "study": study, "series": series,
               "uids": uids, "bad": bad, "http": f"http://127.0.0.1:{http}", "data": data}
    finally:
        assert arch.stop() == 0, arch.logs()
        scp.terminate()
        scp.wait()


def _ident(study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study
    return ds


def test_c_move_leaves_the_damaged_instance_out(lab: dict[str, Any]) -> None:
    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", lab["archive"].port, ae_title="ARCHIVE")
    try:
        responses = list(assoc.send_c_move(_ident(lab["study"]), "DEST",
                                           StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    final, ident = responses[-1]
    assert final.Status == 0xB000, final
    assert final.NumberOfCompletedSuboperations == 2 and final.NumberOfFailedSuboperations == 1
    assert ident.FailedSOPInstanceUIDList == lab["bad"]
    received = {p.name.split(".", 1)[1] for p in lab["out"].iterdir()}
    assert received == set(lab["uids"]) - {lab["bad"]}


def test_c_get_leaves_the_damaged_instance_out(lab: dict[str, Any]) -> None:
    got: list[str] = []

    def on_store(event: Any) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", lab["archive"].port, ae_title="ARCHIVE",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        responses = list(assoc.send_c_get(_ident(lab["study"]),
                                          StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xB000 and final.NumberOfFailedSuboperations == 1, final
    assert sorted(got) == sorted(set(lab["uids"]) - {lab["bad"]})


def test_dicomweb_refuses_the_damaged_instance(lab: dict[str, Any]) -> None:
    h = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{lab['http']}/studies/{lab['study']}"
    r = requests.get(base, headers=h, timeout=30)
    assert r.status_code == 206, r.text[:300]
    assert "1 of 3 instances left out" in r.headers["Warning"]
    assert r.content.count(b"Content-Type: application/dicom") == 2
    assert lab["bad"].encode() not in r.content
    inst = f"{base}/series/{lab['series']}/instances/{lab['bad']}"
    for url in (inst, f"{inst}/frames/1", f"{inst}/metadata"):
        r = requests.get(url, headers=h, timeout=30)
        assert r.status_code == 410, (url, r.status_code, r.text[:300])
        assert "no longer matches its checksum" in r.json()["error"]
    good = f"{base}/series/{lab['series']}/instances/{lab['uids'][0]}/frames/1"
    assert requests.get(good, headers=h, timeout=30).status_code == 200


def test_the_instance_is_flagged_audited_and_counted(lab: dict[str, Any]) -> None:
    # after the tests above (module order): at least one refused read happened
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check", "--data",
                        str(lab["data"]), "--json"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert [f["sop_uid"] for f in report["flagged"]] == [lab["bad"]]
    assert "checksum mismatch" in report["flagged"][0]["detail"]
    alerts = [json.loads(line) for line in (lab["root"] / "audit.jsonl").read_text().splitlines()]
    corrupt = [a for a in alerts if a["EventIdentification"]["EventID"]["code"] == "110113"
               and "checksum" in a["EventIdentification"].get("EventOutcomeDescription", "")]
    assert corrupt and corrupt[0]["ParticipantObjectIdentification"][0][
        "ParticipantObjectDescription"]["SOPInstanceUID"] == lab["bad"]
    metrics = requests.get(f"{lab['http']}/metrics", timeout=30,
                           headers={"Authorization": f"Bearer {TOKEN}"}).text
    line = next(ln for ln in metrics.splitlines()
                if ln.startswith("pacs_archive_corrupt_reads_total"))
    assert float(line.split()[-1]) >= 3
