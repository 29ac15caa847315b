"""Malformed QIDO-RS and WADO-RS requests against a real archive: each a 4xx with a JSON
reason naming what is wrong (the query key, the frame list, the tag), never a 500;
well-formed searches of the same kinds still answer."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import need_module
from dicomweb_support import error_of, multipart, part10, start_web_archive, stow_headers

pytestmark = pytest.mark.integration

need_module("starlette")
need_module("uvicorn")
need_module("httpx")

import httpx  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("errors")
    arch, url, _ = start_web_archive(base, {})  # loopback, no tokens: anonymous read/write
    ds = make_instance(patient_id="ERRPAT", patient_name="Err^Patient", rows=4, cols=4)
    r = httpx.post(url + "/studies", content=multipart([part10(ds)]),
                   headers={"Content-Type": stow_headers()["Content-Type"]}, timeout=30)
    assert r.status_code == 200, r.text
    yield arch, url, ds
    assert arch.stop() == 0


BAD_SEARCHES = [  # (query, the key the answer must name)
    ({"offset": "99999999999999999999"}, "offset"),
    ({"offset": "-1"}, "offset"),
    ({"limit": "0"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "100001"}, "limit"),
    ({"Foo": "x"}, "Foo"),
    ({"ReferencedStudySequence": ""}, "ReferencedStudySequence"),
    ({"ReferencedStudySequence.ReferencedSOPInstanceUID": "1.2"},
     "ReferencedStudySequence.ReferencedSOPInstanceUID"),
    ({"00081110": ""}, "ReferencedStudySequence"),
    ({"Rows": "512"}, "Rows"),
    ({"StudyDate": "2024-01-01"}, "StudyDate"),
    ({"StudyDate": "20240101-2024"}, "StudyDate"),
    ({"StudyTime": "25x"}, "StudyTime"),
    ({"StudyInstanceUID": "not-a-uid"}, "StudyInstanceUID"),
    ({"PatientID": "ab\x00c"}, "PatientID"),
    ({"PatientID": "x" * 65}, "PatientID"),
    ({"NumberOfStudyRelatedInstances": "5"}, "NumberOfStudyRelatedInstances"),
    ({"SOPInstanceUID": "1.2.3"}, "SOPInstanceUID"),
    ({"SeriesNumber": "one"}, "SeriesNumber"),
    ({"includefield": "NoSuchAttribute"}, "includefield"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
]


@pytest.mark.parametrize(("query", "key"), BAD_SEARCHES,
                         ids=[k for _, k in BAD_SEARCHES])
def test_bad_search_keys_are_400_naming_the_key(web: Any, query: dict[str, str],
                                                key: str) -> None:
    _, url, _ = web
    r = httpx.get(f"{url}/studies", params=query, timeout=30)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["key"] == key and key.split(".")[0] in error_of(r.content)


def test_repeated_and_misplaced_keys(web: Any) -> None:
    _, url, ds = web
    r = httpx.get(f"{url}/studies?PatientID=A&PatientID=B", timeout=30)
    assert r.status_code == 400 and "more than once" in error_of(r.content)
    study = ds.StudyInstanceUID
    r = httpx.get(f"{url}/studies/{study}/series", params={"StudyInstanceUID": study},
                  timeout=30)
    assert r.status_code == 400 and r.json()["key"] == "StudyInstanceUID"
    r = httpx.get(f"{url}/studies/not..uid/series", timeout=30)
    assert r.status_code == 400 and r.json()["key"] == "StudyInstanceUID"
    r = httpx.get(f"{url}/studies", headers={"Accept": "application/dicom+xml"}, timeout=30)
    assert r.status_code == 406 and error_of(r.content)


def test_good_searches_still_answer(web: Any) -> None:
    _, url, ds = web
    for query in ({"PatientName": "err*"}, {"00100020": "ERRPAT"},
                  {"StudyDate": "20240101-20240201"}, {"StudyDate": "-20241231"},
                  {"StudyInstanceUID": f"1.2.3,{ds.StudyInstanceUID}"},
                  {"ModalitiesInStudy": "CT,MR"}, {"includefield": "all"},
                  {"PatientID": "ERRPAT", "limit": "1", "offset": "0",
                   "fuzzymatching": "false"}):
        r = httpx.get(f"{url}/studies", params=query, timeout=30)
        assert r.status_code == 200, (query, r.text)
        assert [s["0020000D"]["Value"][0] for s in r.json()] == [ds.StudyInstanceUID], query
    r = httpx.get(f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/"
                  "instances", params={"SOPInstanceUID": ds.SOPInstanceUID}, timeout=30)
    assert r.status_code == 200 and len(r.json()) == 1


def test_wado_errors(web: Any) -> None:
    _, url, ds = web
    inst = (f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
            f"{ds.SOPInstanceUID}")
    for path, status, key in ((f"{inst}/frames/0", 400, "frames"),
                              (f"{inst}/frames/1,x", 400, "frames"),
                              (f"{inst}/frames/{'1,' * 20000}1", 400, "frames"),
                              (f"{inst}/bulk/zz", 400, "tag"),
                              (f"{inst}/bulk/7FE0001", 400, "tag")):
        r = httpx.get(path, timeout=30)
        assert r.status_code == status and r.json()["key"] == key, path
    r = httpx.get(f"{inst}/frames/9", timeout=30)
    assert r.status_code == 404 and "frames 1..1" in error_of(r.content)
    assert httpx.get(f"{inst}/frames/1", timeout=30).status_code == 200
    assert httpx.get(f"{inst}/bulk/7FE00010", timeout=30).status_code == 200
    for path in (f"/studies/{generate_uid()}", f"/studies/{generate_uid()}/metadata",
                 "/nothing/here", "/studies/1.2/series/x.y"):
        r = httpx.get(url + path, timeout=30)
        assert r.status_code in (400, 404) and error_of(r.content), path
    r = httpx.put(f"{url}/studies", content=b"x", timeout=30)
    assert r.status_code == 405 and error_of(r.content)
    r = httpx.delete(f"{url}/studies/{ds.StudyInstanceUID}", timeout=30)
    assert r.status_code == 403  # anonymous callers do not delete
