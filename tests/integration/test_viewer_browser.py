"""OHIF in Debian's Chromium, through ``pacsinfra viewer serve`` (nginx), against a real
DICOMweb server: the pacsinfra archive, and Orthanc + its DICOMweb plugin as a reference
(same viewer, same nginx config), so an OHIF or nginx problem shows on both and an
archive problem only on one.

Each backend holds a synthetic 20-slice CT, a 50-frame multi-frame image and a real JPEG
baseline file (sent with storescu proposing its syntax). A user logs in with basic auth,
finds each study by patient name in the study list, opens it and must see an image:
the viewport canvas must hold a non-uniform picture, not just a loaded page. Every
DICOMweb request is in the network log (service workers blocked); none may fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.record import recording
from test_viewer_support import (
    BACKENDS,
    NetLog,
    Study,
    Viewer,
    chromium,
    dismiss_overlays,
    image_stats,
    make_studies,
    need_viewer_tools,
    new_page,
    running_site,
    wait_for_image,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# The screenshot in docs/viewer.md; rewritten only on request so a test run leaves the
# work tree clean (PACSINFRA_RECORD=1, support.record).
DOC_SCREENSHOT = REPO / "docs" / "img" / "viewer-study.png"
@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Study]:
    return make_studies(tmp_path_factory.mktemp("studies"))


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def site(request: pytest.FixtureRequest, studies: dict[str, Study],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Viewer]]:
    """(backend, viewer): the studies on ``backend``, a viewer in front of it."""
    with running_site(request.param, studies,
                      tmp_path_factory.mktemp(f"site-{request.param}")) as viewer:
        yield request.param, viewer


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_viewer_tools()
    with chromium() as b:
        yield b


def _study_list_text(page: Any, url: str, patients: list[str]) -> str:
    """The study list's text once every patient appears (OHIF shows PN with ', ')."""
    page.goto(url + "/", wait_until="domcontentloaded")
    for patient in patients:
        shown = patient.replace("^", ", ", 1).replace("^", " ")
        page.get_by_text(shown, exact=False).first.wait_for(timeout=30_000)
    return str(page.inner_text("body"))


def test_study_list_shows_the_studies(site: tuple[str, Viewer], studies: dict[str, Study],
                                      browser: Any) -> None:
    _, viewer = site
    log = NetLog()
    page = new_page(browser, log=log)
    try:
        text = _study_list_text(page, viewer.url, [s.patient for s in studies.values()])
        assert "Test Radiology" in text  # the site name, in place of OHIF's logo
    finally:
        page.context.close()
    qido = [c for c in log.calls if c.path.startswith("/dicom-web/studies?")]
    assert qido and all(c.status == 200 for c in qido), log.summary()
    assert not log.errors(), log.summary()


@pytest.mark.parametrize("kind", ["ct", "multiframe", "jpeg"])
def test_opening_a_study_shows_its_image(site: tuple[str, Viewer], studies: dict[str, Study],
                                         browser: Any, kind: str, tmp_path: Path) -> None:
    backend, viewer = site
    study = studies[kind]
    log = NetLog()
    page = new_page(browser, log=log)
    try:
        page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study.study_uid}",
                  wait_until="domcontentloaded")
        seconds, _ = wait_for_image(page)
        dismiss_overlays(page)
        page.wait_for_timeout(500)  # let the last frames land before judging the log
        _, png = wait_for_image(page, timeout=10)
        share, spread, levels = image_stats(png)
        page.screenshot(path=str(tmp_path / f"{backend}-{kind}.png"))
        if backend == "archive" and kind == "ct" and recording():
            DOC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(DOC_SCREENSHOT))
    finally:
        page.context.close()
    print(f"{backend}/{kind}: image after {seconds:.2f}s; {share:.0%} of the viewport "
          f"non-background, spread {spread:.1f}, {levels} grey levels")
    assert share >= 0.05 and spread >= 2.0 and levels >= 8
    assert not log.errors(), f"DICOMweb calls failed:\n{log.summary()}"
    paths = [c.path for c in log.calls if c.status == 200]
    assert any(f"/series/{study.series_uid}/metadata" in p for p in paths), log.summary()
    frames = [c for c in log.calls if "/frames/" in c.path and c.status == 200]
    assert frames, log.summary()
    if backend == "archive" and kind == "jpeg":
        # OHIF asks for any transfer syntax; the archive sends the JPEG bitstream as
        # stored, labelled as what it is (the browser decodes it)
        assert all("transfer-syntax=*" in c.accept for c in frames), log.summary()
        assert all('type="image/jpeg"' in c.content_type for c in frames), log.summary()


def test_without_credentials_the_viewer_answers_401(site: tuple[str, Viewer],
                                                    studies: dict[str, Study],
                                                    browser: Any) -> None:
    _, viewer = site
    page = new_page(browser, credentials=False)
    try:
        # A navigation that gets a basic-auth challenge and has no credentials to give
        # ends in Chromium's own error page: nothing of ours renders.
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(viewer.url + "/")
        # The same context's HTTP client shows what the server answered.
        for path in ("/", f"/viewer?StudyInstanceUIDs={studies['ct'].study_uid}",
                     "/dicom-web/studies", f"/dicom-web/studies/{studies['ct'].study_uid}"
                     f"/series/{studies['ct'].series_uid}/metadata", "/app-config.js"):
            resp = page.request.get(viewer.url + path, max_redirects=0)
            assert resp.status == 401, path
            assert resp.headers.get("www-authenticate", "").startswith("Basic "), path
            body = resp.text()
            for study in studies.values():
                assert study.patient not in body and study.study_uid not in body, path
    finally:
        page.context.close()
