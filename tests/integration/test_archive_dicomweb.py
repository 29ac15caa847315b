"""DICOMweb round trip with dicomweb-client: STOW-RS, QIDO-RS, WADO-RS; token auth; metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from test_archive_support import Archive, wait_port

pytestmark = pytest.mark.integration

need_module("dicomweb_client")
need_module("starlette")
need_module("uvicorn")

import requests  # noqa: E402
from dicomweb_client.api import DICOMwebClient  # noqa: E402
from pydicom.uid import JPEGBaseline8Bit, generate_uid  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("web")
    token_file = base / "token"
    token_file.write_text(TOKEN)
    http = free_port()
    arch = Archive(base / "data", config={"dicomweb": {
        "enabled": True, "bind": "127.0.0.1", "port": http,
        "token": {"file": str(token_file)}}}).start()
    wait_port(http, proc=arch.proc)
    yield arch, f"http://127.0.0.1:{http}"
    assert arch.stop() == 0


def _client(url: str) -> DICOMwebClient:
    return DICOMwebClient(url=url, headers={"Authorization": f"Bearer {TOKEN}"})


def test_round_trip(web: Any) -> None:
    arch, url = web
    client = _client(url)
    study = generate_uid()
    series = generate_uid()
    sent = [make_instance(study_uid=study, series_uid=series, patient_id="WEBPAT",
                          patient_name="Web^Patient", instance_number=i + 1, random_pixels=True,
                          rows=64, cols=64)
            for i in range(3)]
    sent.append(make_instance(study_uid=study, patient_id="WEBPAT", patient_name="Web^Patient",
                              transfer_syntax=JPEGBaseline8Bit, modality="MR"))
    result = client.store_instances(sent)
    assert len(result.ReferencedSOPSequence) == 4
    assert "FailedSOPSequence" not in result

    studies = client.search_for_studies(search_filters={"PatientID": "WEBPAT"})
    assert len(studies) == 1
    st = studies[0]
    assert st["0020000D"]["Value"] == [study]
    assert st["00201208"]["Value"] == [4]  # NumberOfStudyRelatedInstances
    assert sorted(st["00080061"]["Value"]) == ["CT", "MR"]
    series_found = client.search_for_series(study, search_filters={"Modality": "CT"})
    assert [s["0020000E"]["Value"][0] for s in series_found] == [series]
    inst = client.search_for_instances(study, series)
    assert {i["00080018"]["Value"][0] for i in inst} == {d.SOPInstanceUID for d in sent[:3]}
    assert client.search_for_studies(search_filters={"PatientName": "web*"})  # wildcard, PN

    got = client.retrieve_instance(study, series, sent[0].SOPInstanceUID)
    assert got.PixelData == sent[0].PixelData
    assert got[0x00411001].value == "kept as received"
    whole = client.retrieve_study(study)
    assert len(whole) == 4
    jpeg = [d for d in whole if d.file_meta.TransferSyntaxUID == JPEGBaseline8Bit]
    assert len(jpeg) == 1 and jpeg[0].PixelData == sent[3].PixelData  # not transcoded

    meta = client.retrieve_series_metadata(study, series)
    assert len(meta) == 3
    assert all("BulkDataURI" in m["7FE00010"] for m in meta)
    frames = client.retrieve_instance_frames(study, series, sent[1].SOPInstanceUID, [1])
    assert frames == [sent[1].PixelData]
    from pydicom.encaps import generate_frames

    encapsulated = client.retrieve_instance_frames(study, sent[3].SeriesInstanceUID,
                                                   sent[3].SOPInstanceUID, [1])
    assert encapsulated == list(generate_frames(sent[3].PixelData, number_of_frames=1))

    # bulk data of one element, and the errors of the single-instance routes
    auth = {"Authorization": f"Bearer {TOKEN}"}
    inst_url = f"{url}/studies/{study}/series/{series}/instances/{sent[1].SOPInstanceUID}"
    bulk = requests.get(f"{inst_url}/bulk/7FE00010", headers=auth, timeout=10)
    assert bulk.status_code == 200 and sent[1].PixelData in bulk.content
    assert requests.get(f"{inst_url}/bulk/zz", headers=auth, timeout=10).status_code == 400
    assert requests.get(f"{inst_url}/frames/x", headers=auth, timeout=10).status_code == 400
    assert requests.get(f"{inst_url}/frames/9", headers=auth, timeout=10).status_code == 404
    missing = f"{url}/studies/{study}/series/{series}/instances/{generate_uid()}/bulk/7FE00010"
    assert requests.get(missing, headers=auth, timeout=10).status_code == 404
    assert requests.get(f"{inst_url}/bulk/7FE00010", timeout=10).status_code == 401


def test_token_required(web: Any) -> None:
    _, url = web
    assert requests.get(f"{url}/studies", timeout=10).status_code == 401
    assert requests.get(f"{url}/studies", headers={"Authorization": "Bearer wrong"},
                        timeout=10).status_code == 401
    r = requests.get(f"{url}/studies", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200


def test_stow_rejects_garbage_part(web: Any) -> None:
    _, url = web
    boundary = "xyz"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + \
        b"not dicom at all" + f"\r\n--{boundary}--\r\n".encode()
    r = requests.post(f"{url}/studies", data=body, timeout=10, headers={
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 409
    assert "00081198" in r.json()  # FailedSOPSequence


def test_metrics(web: Any) -> None:
    _, url = web
    r = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200
    assert "pacs_archive_instances_stored_total" in r.text
    assert "pacs_archive_tier_usage_ratio" in r.text


def _metric(url: str, name: str) -> float:
    import re

    r = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    m = re.search(rf"^{name} (\S+)$", r.text, re.M)
    assert m, r.text
    return float(m[1])


def test_metadata_of_new_instances_is_ready_before_the_first_ask(web: Any) -> None:
    """Each stored instance's metadata is encoded in the background right after the store:
    the first viewer to open the series is answered from memory, with its own base URL
    in the BulkDataURIs."""
    import time

    _, url = web
    warmed = _metric(url, "pacs_archive_metadata_warmed_total")
    study, series = generate_uid(), generate_uid()
    sent = [make_instance(study_uid=study, series_uid=series, patient_id="WARM",
                          instance_number=i + 1, rows=32, cols=32) for i in range(5)]
    _client(url).store_instances(sent)
    deadline = time.monotonic() + 30
    while _metric(url, "pacs_archive_metadata_warmed_total") < warmed + 5:
        assert time.monotonic() < deadline, "metadata of the new instances never encoded"
        time.sleep(0.05)
    hits = _metric(url, "pacs_archive_metadata_cache_hits_total")
    misses = _metric(url, "pacs_archive_metadata_cache_misses_total")
    r = requests.get(f"{url}/studies/{study}/series/{series}/metadata", timeout=10,
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    docs = r.json()
    assert sorted(d["00080018"]["Value"][0] for d in docs) == sorted(
        str(ds.SOPInstanceUID) for ds in sent)
    assert all(d["7FE00010"]["BulkDataURI"].startswith(f"{url}/studies/{study}/series/")
               for d in docs), docs[0]["7FE00010"]
    assert _metric(url, "pacs_archive_metadata_cache_hits_total") == hits + 5
    assert _metric(url, "pacs_archive_metadata_cache_misses_total") == misses


def test_audit_log(tmp_path: Path) -> None:
    import json
    import sqlite3  # noqa: F401 - the archive's own index is not needed here

    audit = tmp_path / "audit.jsonl"
    arch = Archive(tmp_path / "data", config={"audit": {"file": str(audit)}}).start()
    try:
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom import _config as pnd_config
        from pynetdicom.sop_class import CTImageStorage
        from test_archive_support import scu_ae

        from pacsinfra.pacs.archive.synth import write

        pnd_config.STORE_SEND_CHUNKED_DATASET = True
        ds = make_instance(patient_id="AUDIT")
        f = write(ds, tmp_path / "a.dcm")
        ae = scu_ae("AUDITSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert assoc.send_c_store(f).Status == 0
        assoc.release()
    finally:
        arch.stop()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    stored = [e for e in events if e["EventIdentification"]["EventID"]["code"] == "110104"]
    assert stored and stored[0]["ActiveParticipant"][0]["UserID"] == "AUDITSCU"
    assert stored[0]["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == \
        ds.StudyInstanceUID
