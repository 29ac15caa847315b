"""The DICOMweb requests OHIF makes (or would make), through the viewer's proxy, judged by
PS3.18 — against the pacsinfra archive and, as the reference, Orthanc + DICOMweb behind
the same nginx config.

Each request here has the shape the browser test's network log shows OHIF 3.13 sending.
Where a backend answers wrongly the test is ``xfail(strict=True)`` for that backend only,
naming the missing feature: when it learns it, the test XPASSes, fails, and the mark
comes off. The archive's own DICOMweb details (every transfer syntax, rendering
parameters, documents, refusals) are in test_dicomweb_viewer.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from test_viewer_support import (
    BACKENDS,
    PASSWORD,
    USER,
    Study,
    Viewer,
    make_studies,
    running_site,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = (USER, PASSWORD)
DICOM_JSON = "application/dicom+json"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def gap(reason: str) -> pytest.MarkDecorator:
    """The archive does not do this yet (strict: a fix must remove the mark)."""
    return pytest.mark.xfail(strict=True, reason=f"pacsinfra archive DICOMweb: {reason}")


def backends(*, archive_gap: str | None = None, orthanc_gap: str | None = None) -> list[object]:
    """Parameters for both backends, each marked as a known gap when one is given."""
    gaps = {"archive": gap(archive_gap) if archive_gap else None,
            "orthanc": pytest.mark.xfail(strict=True, reason=f"Orthanc 1.10 DICOMweb: "
                                         f"{orthanc_gap}") if orthanc_gap else None}
    return [pytest.param(name, marks=[m] if (m := gaps[name]) else [], id=name)
            for name in sorted(BACKENDS)]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Study]:
    return make_studies(tmp_path_factory.mktemp("studies"), ct_slices=4, ct_size=128)


@pytest.fixture(scope="module")
def sites(studies: dict[str, Study],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Viewer]]:
    """Both backends with the studies, each behind its own viewer."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield {name: stack.enter_context(running_site(
            name, studies, tmp_path_factory.mktemp(f"site-{name}"))) for name in sorted(BACKENDS)}


def get(viewer: Viewer, path: str, accept: str = DICOM_JSON) -> requests.Response:
    """GET through the viewer's origin, logged in, as OHIF's XHRs do."""
    url = path if path.startswith("http") else f"{viewer.url}/dicom-web{path}"
    return requests.get(url, auth=AUTH, headers={"Accept": accept}, timeout=60)


def parts(resp: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """(headers, body) of each part of a multipart/related answer."""
    ctype = resp.headers.get("content-type", "")
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in ctype.split(";")
                     if p.strip().lower().startswith("boundary=")), "")
    assert boundary, f"not multipart: {ctype}"
    out = []
    for chunk in resp.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        out.append((headers, body[:-2] if body.endswith(b"\r\n") else body))
    return out


@pytest.mark.parametrize("backend", backends(orthanc_gap=(
    "a comma-separated includefield (OHIF's form, PS3.18 8.3.4.3) is ignored: no "
    "StudyDescription in the study list")))
def test_qido_answers_what_ohif_asks(sites: dict[str, Viewer], studies: dict[str, Study],
                                     backend: str) -> None:
    """The study list and the viewer's first queries, with OHIF's includefield."""
    viewer, ct = sites[backend], studies["ct"]
    r = get(viewer, "/studies?limit=101&offset=0&fuzzymatching=false&includefield="
            f"00081030%2C00080060%2C00080090%2C00100030&StudyInstanceUID={ct.study_uid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(DICOM_JSON)
    (study,) = r.json()
    assert study["00100010"]["Value"] == [{"Alphabetic": ct.patient}]
    assert study["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert study["00201208"]["Value"] == [len(ct.sop_uids)]  # NumberOfStudyRelatedInstances
    assert study["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries
    assert "Value" in study["00081030"]  # StudyDescription, asked by includefield
    r = get(viewer, f"/studies/{ct.study_uid}/series?includefield="
            "00080021%2C00080031%2C0008103E%2C00200011")
    (series,) = r.json()
    assert series["0020000E"]["Value"] == [ct.series_uid]
    assert series["00201209"]["Value"] == [len(ct.sop_uids)]  # NumberOfSeriesRelatedInstances
    assert series["00080060"]["Value"] == ["CT"]
    assert series["00200011"]["Value"] == [1]


@pytest.mark.parametrize("backend", backends())
def test_metadata_bulkdata_uris_resolve_through_the_viewer(
        sites: dict[str, Viewer], studies: dict[str, Study], backend: str) -> None:
    """PS3.18 8.3.5.1: a BulkDataURI must retrieve the bulk data — from the client's side
    of the proxy, i.e. under the viewer's /dicom-web/."""
    viewer, mf = sites[backend], studies["multiframe"]
    r = get(viewer, f"/studies/{mf.study_uid}/series/{mf.series_uid}/metadata")
    assert r.status_code == 200
    (meta,) = r.json()
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{viewer.url}/dicom-web/"), uri
    bulk = get(viewer, uri, accept="multipart/related; type=application/octet-stream")
    assert bulk.status_code == 200
    ((_, body),) = parts(bulk)
    assert len(body) == 491 * 378 * 2 * 50  # the 50 frames of 16-bit pixels


@pytest.mark.parametrize("backend", backends())
def test_frames_in_the_transfer_syntax_asked_for(sites: dict[str, Viewer],
                                                 studies: dict[str, Study],
                                                 backend: str) -> None:
    """PS3.18 8.7.3.5.2: the answer is in a transfer syntax the Accept header allows, or
    406 Not Acceptable."""
    viewer, jpeg = sites[backend], studies["jpeg"]
    r = get(viewer, f"/studies/{jpeg.study_uid}/series/{jpeg.series_uid}/instances/"
            f"{jpeg.sop_uids[0]}/frames/1",
            accept=f"multipart/related; type=application/octet-stream; transfer-syntax={EXPLICIT_LE}")
    if r.status_code == 406:
        return
    assert r.status_code == 200
    ((headers, body),) = parts(r)
    assert f"transfer-syntax={EXPLICIT_LE}" in headers.get("content-type", ""), headers
    assert len(body) == 100 * 100 * 3 and not body.startswith(b"\xff\xd8")  # RGB pixels


@pytest.mark.parametrize("backend", backends())
def test_compressed_frame_in_its_media_type(sites: dict[str, Viewer], studies: dict[str, Study],
                                            backend: str) -> None:
    viewer, jpeg = sites[backend], studies["jpeg"]
    r = get(viewer, f"/studies/{jpeg.study_uid}/series/{jpeg.series_uid}/instances/"
            f"{jpeg.sop_uids[0]}/frames/1",
            accept=f"multipart/related; type=\"image/jpeg\"; transfer-syntax={JPEG_BASELINE}")
    assert r.status_code == 200
    ((headers, body),) = parts(r)
    assert headers.get("content-type", "").startswith("image/jpeg"), headers
    assert body.startswith(b"\xff\xd8")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("level", ["study", "instance", "frame"])
def test_rendered(sites: dict[str, Viewer], studies: dict[str, Study], backend: str,
                  level: str) -> None:
    """PS3.18 9.4: rendered images (OHIF uses them for thumbnails with
    thumbnailRendering 'rendered', and for video)."""
    viewer, ct = sites[backend], studies["ct"]
    inst = f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uids[0]}"
    path = {"study": f"/studies/{ct.study_uid}", "instance": inst,
            "frame": f"{inst}/frames/1"}[level]
    r = get(viewer, f"{path}/rendered", accept="image/jpeg")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("image/jpeg")
    assert r.content.startswith(b"\xff\xd8")


@pytest.mark.parametrize("backend", backends())
def test_qido_instance_defaults(sites: dict[str, Viewer], studies: dict[str, Study],
                                backend: str) -> None:
    viewer, mf = sites[backend], studies["multiframe"]
    r = get(viewer, f"/studies/{mf.study_uid}/series/{mf.series_uid}/instances")
    (inst,) = r.json()
    assert inst["00280010"]["Value"] == [491] and inst["00280011"]["Value"] == [378]
    assert inst["00280100"]["Value"] == [16]
    assert inst["00280008"]["Value"] in ([50], ["50"])
    assert inst["00081190"]["Value"][0].startswith(f"{viewer.url}/dicom-web/studies/")


@pytest.mark.parametrize("level", ["study", "series", "instance", "frame"])
def test_thumbnails(sites: dict[str, Viewer], studies: dict[str, Study], level: str) -> None:
    """PS3.18 9.6: the archive serves /thumbnail at every level, a small image; Orthanc
    1.10's plugin does not (404), which is why the viewer renders thumbnails from frames
    (thumbnailRendering: 'wadors') and works with both."""
    ct = studies["ct"]
    inst = f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uids[0]}"
    path = {"study": f"/studies/{ct.study_uid}", "series": f"/studies/{ct.study_uid}/series/"
            f"{ct.series_uid}", "instance": inst, "frame": f"{inst}/frames/1"}[level]
    r = get(sites["archive"], f"{path}/thumbnail", accept="image/jpeg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(r.content))
    assert image.format == "JPEG" and max(image.size) <= 256
    assert get(sites["orthanc"], f"{path}/thumbnail", accept="image/jpeg").status_code == 404


def test_the_proxy_is_read_only(sites: dict[str, Viewer], studies: dict[str, Study]) -> None:
    """STOW-RS and DELETE never reach the archive through the viewer (405)."""
    ct = studies["ct"]
    for viewer in sites.values():
        for method in ("POST", "DELETE", "PUT"):
            r = requests.request(method, f"{viewer.url}/dicom-web/studies/{ct.study_uid}",
                                 auth=AUTH, timeout=30)
            assert r.status_code == 405, (method, r.status_code)
        assert get(viewer, f"/studies?StudyInstanceUID={ct.study_uid}").json()

