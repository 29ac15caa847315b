"""STOW-RS against a real archive: each part answered on its own with its PS3.18
Failure Reason, stored files in the archive's layout (a client's preamble is not
kept), a body that is not multipart refused 400 (never 200), limits on size and
parts refused 413 before anything is stored, and a large body stored (and retrieved
by WADO-RS) in little memory."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module
from dicomweb_support import (
    BOUNDARY,
    Raw,
    auth,
    error_of,
    multipart,
    part10,
    start_web_archive,
    stow_headers,
    token_entries,
)

pytestmark = pytest.mark.integration

need_module("starlette")
need_module("uvicorn")
need_module("httpx")

import httpx  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402

FAILED, REFERENCED, OTHER = "00081198", "00081199", "0008119A"
REASON, SOP_UID, RETRIEVE_URL = "00081197", "00081155", "00081190"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("stow")
    arch, url, port = start_web_archive(base, {
        "tokens": token_entries(base),
        "limits": {"max_stow_bytes": 8 * 1024 * 1024, "max_stow_parts": 10}},
        audit={"file": str(base / "audit.jsonl")})
    yield arch, url, port
    assert arch.stop() == 0


def _post(url: str, body: bytes, path: str = "/studies", **headers: str) -> httpx.Response:
    return httpx.post(url + path, content=body, headers={**stow_headers(), **headers},
                      timeout=60)


def _reasons(doc: dict[str, Any]) -> dict[str, int]:
    return {item.get(SOP_UID, {}).get("Value", [""])[0]: item[REASON]["Value"][0]
            for item in doc.get(FAILED, {}).get("Value", [])}


def _stored_file(arch: Any, sop_uid: str) -> Path:
    (path,) = [p for p in (arch.data / "fast").rglob(f"{sop_uid}.*.dcm")]
    return path


def test_each_part_gets_its_own_answer(web: Any) -> None:
    arch, url, _ = web
    study = generate_uid()
    with_preamble = make_instance(study_uid=study, patient_id="STOWPAT")
    no_preamble = make_instance(study_uid=study, patient_id="STOWPAT")
    no_dicm = make_instance(study_uid=study, patient_id="STOWPAT")
    unknown_class = make_instance(study_uid=study, sop_class="1.2.3.4.5.6")
    mismatch = make_instance(study_uid=study)
    raw_mismatch = part10(mismatch)
    uid = mismatch.SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    raw_mismatch = raw_mismatch.replace(uid, other, 1)  # the file meta only
    first = make_instance(study_uid=study, patient_id="DUP")
    assert _post(url, multipart([part10(first)])).status_code == 200
    changed = copy.deepcopy(first)
    changed.PatientName = "Somebody^Else"

    parts = [
        part10(with_preamble, preamble=b"MZ\x90\x00" + b"\xcc" * 124),  # junk preamble
        part10(no_preamble, preamble=None),
        part10(no_dicm, preamble=None)[4:],  # group 2 straight away
        b"not dicom at all",
        part10(first),  # the same bytes again: Success
        part10(unknown_class),
        raw_mismatch,
        part10(changed),  # same SOP Instance UID, other bytes
    ]
    r = _post(url, multipart(parts))
    assert r.status_code == 202, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    doc = r.json()
    stored = [i[SOP_UID]["Value"][0] for i in doc[REFERENCED]["Value"]]
    assert stored == [with_preamble.SOPInstanceUID, no_preamble.SOPInstanceUID,
                      no_dicm.SOPInstanceUID, first.SOPInstanceUID]
    assert all(i[RETRIEVE_URL]["Value"][0].startswith(f"{url}/studies/{study}/series/")
               for i in doc[REFERENCED]["Value"])
    assert _reasons(doc) == {
        "": 0xC000,  # not a Part 10 payload: no UIDs to name
        unknown_class.SOPInstanceUID: 0x0122,
        other.decode(): 0xA900,
        first.SOPInstanceUID: 0x0111,
    }
    # stored in the archive's layout: zero preamble, the sent file meta and data set
    for ds, sent in ((with_preamble, parts[0]), (no_preamble, parts[1])):
        on_disk = _stored_file(arch, ds.SOPInstanceUID).read_bytes()
        assert on_disk[:128] == b"\0" * 128 and on_disk[128:132] == b"DICM"
        assert on_disk[132:] == sent[-(len(on_disk) - 132):]
    # and retrievable through WADO-RS
    got = httpx.get(f"{url}/studies/{study}/series/{no_dicm.SeriesInstanceUID}/instances/"
                    f"{no_dicm.SOPInstanceUID}", headers=auth("reader"), timeout=30)
    assert got.status_code == 200 and parts[2][-200:] in got.content


def test_a_body_that_is_not_multipart_is_400(web: Any) -> None:
    _, url, _ = web
    cases = {
        "no boundary in the body": (b"x" * 70_000, {}),
        "no parts at all": (f"--{BOUNDARY}--\r\n".encode(), {}),
        "empty": (b"", {}),
        "no boundary parameter": (b"--x\r\n\r\n--x--",
                                  {"Content-Type": "multipart/related; type=application/dicom"}),
        "unterminated quote": (b"--x", {"Content-Type": 'multipart/related; boundary="x'}),
    }
    for what, (body, headers) in cases.items():
        r = _post(url, body, **headers)
        assert r.status_code in (400, 415), what
        assert error_of(r.content), what
    for ctype in ("application/json", "multipart/related; type=\"application/dicom+json\"; "
                                      "boundary=x", "text/plain"):
        assert _post(url, b"{}", **{"Content-Type": ctype}).status_code == 415, ctype
    one_garbage = multipart([b"not dicom"])
    r = _post(url, one_garbage)
    assert r.status_code == 409 and _reasons(r.json()) == {"": 0xC000}


def test_a_truncated_body_keeps_what_was_complete(web: Any) -> None:
    _, url, _ = web
    ds = make_instance(patient_id="TRUNC")
    body = multipart([part10(ds)])[:-len(f"--{BOUNDARY}--\r\n")]
    body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nDICM...".encode()
    r = _post(url, body)
    assert r.status_code == 202, r.text
    doc = r.json()
    assert [i[SOP_UID]["Value"][0] for i in doc[REFERENCED]["Value"]] == [ds.SOPInstanceUID]
    assert doc[OTHER]["Value"][0][REASON]["Value"] == [0xC000]


def test_instances_of_another_study_are_refused(web: Any) -> None:
    _, url, _ = web
    target, ds = generate_uid(), make_instance(patient_id="WRONGSTUDY")
    r = _post(url, multipart([part10(ds)]), path=f"/studies/{target}")
    assert r.status_code == 409 and _reasons(r.json()) == {ds.SOPInstanceUID: 0xC409}
    q = httpx.get(f"{url}/studies", params={"PatientID": "WRONGSTUDY"},
                  headers=auth("reader"), timeout=30)
    assert q.json() == []
    ok = _post(url, multipart([part10(ds)]), path=f"/studies/{ds.StudyInstanceUID}")
    assert ok.status_code == 200
    assert _post(url, b"", path="/studies/not..a.uid").status_code == 400


def test_size_and_part_limits_refuse_before_storing(web: Any) -> None:
    arch, url, port = web
    # Content-Length says too much: 413 before a byte of the body is sent
    for announced in (9 * 1024 * 1024, 100 * 10**9):
        raw = Raw(port)
        started = time.monotonic()
        raw.send((f"POST /studies HTTP/1.1\r\nHost: t\r\nContent-Length: {announced}\r\n"
                  f"Content-Type: {stow_headers()['Content-Type']}\r\n"
                  f"Authorization: {auth('writer')['Authorization']}\r\n\r\n").encode())
        status, _, body = raw.response()
        assert status == 413 and time.monotonic() - started < 2
        assert "max_stow_bytes" in error_of(body)
        raw.close()
    # no Content-Length (chunked): refused when the count passes the limit
    many = [part10(make_instance(patient_id="TOOMANY")) for _ in range(11)]

    def chunks() -> Any:
        yield multipart(many[:1])[:-len(f"\r\n--{BOUNDARY}--\r\n")]
        for _ in range(200):
            yield b"\0" * 65536  # the part goes on: 12.8 MiB in all

    r = httpx.post(url + "/studies", content=chunks(), headers=stow_headers(), timeout=60)
    assert r.status_code == 413 and "max_stow_bytes" in error_of(r.content)
    r = _post(url, multipart(many))
    assert r.status_code == 413 and "max_stow_parts" in error_of(r.content)
    q = httpx.get(f"{url}/studies", params={"PatientID": "TOOMANY"}, headers=auth("reader"),
                  timeout=30)
    assert q.json() == []  # the 11-part body stored nothing
    events = [json.loads(line) for line in (arch.data.parent / "audit.jsonl").read_text()
              .splitlines()]
    assert any(e["EventIdentification"].get("EventOutcomeDescription", "").startswith(
        "more than 10 parts") for e in events)


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise KeyError("VmHWM")


def _parts_of(response: httpx.Response) -> list[bytes]:
    """The payloads of a multipart/related answer."""
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    chunks = response.content.split(f"--{boundary}".encode())[1:-1]
    return [c.split(b"\r\n\r\n", 1)[1][:-2] for c in chunks]


def test_a_large_instance_is_stored_and_retrieved_in_little_memory(tmp_path: Path) -> None:
    arch, url, _ = start_web_archive(tmp_path, {})
    try:
        ds = make_instance(rows=1024, cols=1024, patient_id="BIG")
        ds.NumberOfFrames = 64  # 128 MiB of 16-bit pixels
        frame = 1024 * 1024 * 2
        pixels = b"".join(hashlib.sha256(str(i).encode()).digest() * (frame // 32)
                          for i in range(64))
        ds.PixelData = pixels
        body = multipart([part10(ds)])
        del ds.PixelData
        assert arch.proc is not None
        before = _hwm_kib(arch.proc.pid)
        r = httpx.post(url + "/studies", content=body, timeout=300, headers={
            "Content-Type": stow_headers()["Content-Type"]})
        assert r.status_code == 200, r.text
        del body
        grown = (_hwm_kib(arch.proc.pid) - before) / 1024
        assert grown < 40, f"STOW-RS of 128 MiB grew the archive by {grown:.0f} MiB"
        digest = hashlib.sha256()
        size = 0
        with httpx.stream("GET", f"{url}/studies/{ds.StudyInstanceUID}", timeout=300) as got:
            assert got.status_code == 200
            for block in got.iter_bytes():
                digest.update(block)
                size += len(block)
        assert size > 128 * 1024 * 1024
        inst = (f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                f"{ds.SOPInstanceUID}")
        meta = httpx.get(f"{inst}/metadata", timeout=60).json()
        assert meta[0]["7FE00010"]["BulkDataURI"] == f"{inst}/bulk/7FE00010"
        assert meta[0]["00100020"]["Value"] == ["BIG"]
        got = _parts_of(httpx.get(f"{inst}/frames/1,64,7", timeout=60))
        assert got == [pixels[:frame], pixels[63 * frame:], pixels[6 * frame:7 * frame]]
        with httpx.stream("GET", f"{inst}/bulk/7FE00010", timeout=300) as bulk:
            assert bulk.status_code == 200
            assert sum(len(b) for b in bulk.iter_bytes()) > len(pixels)
        grown = (_hwm_kib(arch.proc.pid) - before) / 1024
        assert grown < 40, f"WADO-RS of 128 MiB grew the archive by {grown:.0f} MiB"
    finally:
        assert arch.stop() == 0


def test_frames_of_a_large_encapsulated_instance(web: Any) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    _, url, _ = web
    frames = [bytes([i]) * 300_000 + b"\xff\xd9" for i in range(5)]  # > the read-later size
    ds = make_instance(transfer_syntax=JPEGBaseline8Bit, patient_id="ENCAPS")
    ds.NumberOfFrames = 5
    ds.PixelData = encapsulate(frames, has_bot=False)
    ds["PixelData"].VR = "OB"
    r = _post(url, multipart([part10(ds)]), **{"Authorization": "Bearer admin-token-"
                                                                 "0123456789abcdefgh"})
    assert r.status_code == 200, r.text
    inst = (f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
            f"{ds.SOPInstanceUID}")
    got = httpx.get(f"{inst}/frames/5,2", headers=auth("reader"), timeout=60)
    assert got.status_code == 200
    assert _parts_of(got) == [frames[4], frames[1]]
    meta = httpx.get(f"{inst}/metadata", headers=auth("reader"), timeout=60).json()
    assert "BulkDataURI" in meta[0]["7FE00010"]
