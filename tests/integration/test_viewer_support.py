"""Helpers shared by the viewer integration tests and bench/bench_viewer.py (no tests here).

Everything is real: the pacsinfra archive (``python -m pacsinfra archive serve``) or
Orthanc with its DICOMweb plugin as the DICOMweb server, ``pacsinfra viewer serve`` (nginx
with OHIF's build from the npm registry, cached), and Debian's Chromium driven by
Playwright with service workers blocked, so every request shows in the network log.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from conftest import free_port, need, need_module
from test_archive_support import Archive, dcmtk, wait_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "viewer-test-token-0123456789"
USER, PASSWORD = "alice", "correct-horse-battery"


def need_viewer_tools() -> None:
    """nginx, Debian's Chromium and Playwright: skip on a laptop, fail in CI."""
    from pacsinfra.viewer.errors import ViewerError
    from pacsinfra.viewer.serve import find_nginx

    try:
        find_nginx()
        has_nginx = True
    except ViewerError:
        has_nginx = False
    need(has_nginx, "nginx not installed (run scripts/install-system-deps.sh)")
    need(Path(CHROMIUM).exists(), f"{CHROMIUM} not installed (run scripts/install-system-deps.sh)")
    need_module("playwright")


def need_orthanc_dicomweb() -> str:
    """Path of Orthanc's DICOMweb plugin (skip on a laptop, fail in CI when missing)."""
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    need(shutil.which("Orthanc") is not None or Path("/usr/sbin/Orthanc").exists(),
         "Orthanc not installed (run scripts/install-system-deps.sh)")
    need(plugin.exists(), "orthanc-dicomweb not installed (run scripts/install-system-deps.sh)")
    return str(plugin)


# -- DICOMweb servers ------------------------------------------------------------------------

class ArchiveWeb:
    """A pacsinfra archive with DICOMweb on loopback, requiring a bearer token, trusting
    the viewer's proxy on this machine."""

    name = "archive"

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        token_file = base / "archive-token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        self.http = free_port()
        self.archive = Archive(base / "data", config={"dicomweb": {
            "enabled": True, "bind": "127.0.0.1", "port": self.http,
            "token": {"file": str(token_file)},
            # the viewer's nginx, as the services layer configures it
            "limits": {"trusted_proxies": ["127.0.0.1"]}}})
        self.aet = "ARCHIVE"
        self.token_file = token_file

    @property
    def dicom_port(self) -> int:
        return self.archive.port

    @property
    def upstream(self) -> str:
        """The DICOMweb base URL (this archive serves DICOMweb at its root)."""
        return f"http://127.0.0.1:{self.http}"

    def start(self) -> ArchiveWeb:
        self.archive.start()
        wait_port(self.http, proc=self.archive.proc)
        return self

    def stop(self) -> None:
        self.archive.stop()

    def viewer_settings(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "upstream_token": {"file": str(self.token_file)}}


class OrthancWeb:
    """Orthanc with the DICOMweb plugin, on loopback, no authentication (reference)."""

    name = "orthanc"

    def __init__(self, base: Path) -> None:
        plugin = need_orthanc_dicomweb()
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.aet = "ORTHANC"
        self.dicom_port, self.http = free_port(), free_port()
        cfg = {
            "Name": "viewer-reference", "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "index"), "DicomAet": self.aet,
            "DicomPort": self.dicom_port, "HttpPort": self.http,
            "HttpBindAddress": "127.0.0.1", "DicomBindAddress": "127.0.0.1",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "StorageCompression": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        (base / "orthanc.json").write_text(json.dumps(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.http}/dicom-web"

    def start(self) -> OrthancWeb:
        orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        with (self.base / "orthanc.log").open("ab") as log:
            self.proc = subprocess.Popen([orthanc, str(self.base / "orthanc.json")], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, TCP_NODELAY="1"))
        wait_port(self.http, proc=self.proc, timeout=30)
        wait_port(self.dicom_port, proc=self.proc, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def viewer_settings(self) -> dict[str, Any]:
        return {"upstream": self.upstream}


# -- test studies ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Study:
    """One study of the test set: what it is, its UIDs, who it belongs to, its files."""

    kind: str  # "ct", "multiframe", "jpeg"
    patient: str  # DICOM PN, e.g. VIEWER^CT
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    files: tuple[Path, ...]
    syntax: str  # transfer syntax stored


def make_studies(folder: Path, ct_slices: int = 20, ct_size: int = 512) -> dict[str, Study]:
    """A synthetic CT series, a 50-frame multi-frame image and pydicom's real JPEG baseline
    file, written as Part 10 files under ``folder``."""
    import pydicom
    from pydicom.data import get_testdata_file

    from pacsinfra.verify.study import make_study

    out: dict[str, Study] = {}
    folder.mkdir(parents=True, exist_ok=True)
    ct = make_study("ct", instances=ct_slices, scale=ct_size / 512)
    mf = make_study("tomo", scale=0.2)  # 50 frames of 491x378 in one instance
    for kind, name, datasets in (("ct", "VIEWER^CT", ct), ("multiframe", "VIEWER^MULTIFRAME", mf)):
        files = []
        for i, ds in enumerate(datasets):
            ds.PatientName = name
            path = folder / f"{kind}-{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        out[kind] = Study(kind, name, str(datasets[0].StudyInstanceUID),
                          str(datasets[0].SeriesInstanceUID),
                          tuple(str(d.SOPInstanceUID) for d in datasets), tuple(files),
                          str(datasets[0].file_meta.TransferSyntaxUID))
    src = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    assert src is not None
    jpeg = pydicom.dcmread(src)
    path = folder / "jpeg-0000.dcm"
    shutil.copyfile(src, path)
    out["jpeg"] = Study("jpeg", str(jpeg.PatientName), str(jpeg.StudyInstanceUID),
                        str(jpeg.SeriesInstanceUID), (str(jpeg.SOPInstanceUID),), (path,),
                        str(jpeg.file_meta.TransferSyntaxUID))
    return out


def store(studies: dict[str, Study], port: int, aet: str) -> None:
    """Send every study: uncompressed ones over one pynetdicom association, the JPEG one
    with DCMTK storescu proposing its own transfer syntax (-xy, JPEG baseline)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    plain = [s for s in studies.values() if s.syntax == ExplicitVRLittleEndian]
    ae = AE(ae_title="VIEWERTEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in {str(pydicom.dcmread(s.files[0], stop_before_pixels=True).SOPClassUID)
                      for s in plain}:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established, f"cannot associate with {aet} on {port}"
    try:
        for study in plain:
            for path in study.files:
                status = assoc.send_c_store(pydicom.dcmread(path))
                assert status and status.Status == 0, f"C-STORE of {path.name}: {status}"
    finally:
        assoc.release()
    for study in studies.values():
        if study.syntax == ExplicitVRLittleEndian:
            continue
        assert study.syntax == "1.2.840.10008.1.2.4.50", study.syntax
        done = subprocess.run([dcmtk("storescu"), "-xy", "-aec", aet, "127.0.0.1", str(port),
                               *map(str, study.files)], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, TCP_NODELAY="1"))
        assert done.returncode == 0, f"storescu -xy failed: {done.stderr}"


# -- the viewer ------------------------------------------------------------------------------

class Viewer:
    """``python -m pacsinfra viewer serve --config`` as a subprocess."""

    def __init__(self, base: Path, settings: dict[str, Any], *, users: bool = True,
                 site_name: str = "Test Radiology") -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.port = free_port()
        password_file = base / "alice.password"
        password_file.write_text(PASSWORD)
        password_file.chmod(0o600)
        self.config: dict[str, Any] = {
            "site_name": site_name, "bind": "127.0.0.1", "port": self.port,
            "data_dir": str(base / "run"), **settings,
        }
        if users:
            self.config["auth"] = {"users": {USER: {"password": {"file": str(password_file)}}}}
        self.config_path = base / "viewer.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log = base / "viewer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Viewer:
        """Start and wait until its nginx listens (the first start may fetch OHIF from npm).

        Ready means the serve process has become nginx's master *and* the port accepts:
        on a shared machine another process can take a free port first, so a start that
        lost its port to someone else is retried on a new one.
        """
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for _attempt in range(3):
            self.config_path.write_text(yaml.safe_dump(self.config))
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pacsinfra", "viewer", "serve", "--config",
                     str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                    cwd=REPO)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._is_nginx() and _accepts(self.port):
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                break
            if "Address already in use" not in self.logs():
                break
            self.port = self.config["port"] = free_port()
        raise AssertionError(f"viewer did not start:\n{self.logs()}")

    def _is_nginx(self) -> bool:
        """Whether the serve process has exec'd nginx (its master's title)."""
        assert self.proc is not None
        try:
            cmd = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return cmd.startswith(b"nginx: master")

    def stop(self) -> int:
        """SIGTERM (nginx's fast shutdown) and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# -- the browser -----------------------------------------------------------------------------

@dataclass
class Call:
    """One DICOMweb request the page made, as the network log saw it."""

    method: str
    path: str  # from /dicom-web on, with the query
    status: int | None  # None: failed before a response
    content_type: str = ""
    accept: str = ""
    failure: str = ""
    body: bytes | None = None  # kept for JSON answers (metadata), when asked


@dataclass
class NetLog:
    """DICOMweb calls seen by a page (service workers are blocked, so all of them)."""

    calls: list[Call] = field(default_factory=list)
    keep_json: bool = True

    def attach(self, page: Any) -> None:
        def on_response(resp: Any) -> None:
            url = resp.url
            if "/dicom-web/" not in url:
                return
            path = url[url.index("/dicom-web/"):]
            ctype = resp.headers.get("content-type", "")
            call = Call(resp.request.method, path, resp.status, ctype,
                        resp.request.headers.get("accept", ""))
            if self.keep_json and "json" in ctype and resp.status == 200:
                try:
                    call.body = resp.body()
                except Exception:  # noqa: BLE001 - the page may have gone
                    call.body = None
            self.calls.append(call)

        def on_failed(req: Any) -> None:
            url = req.url
            if "/dicom-web/" in url:
                self.calls.append(Call(req.method, url[url.index("/dicom-web/"):], None,
                                       failure=str(req.failure)))

        page.on("response", on_response)
        page.on("requestfailed", on_failed)

    def errors(self) -> list[Call]:
        """Answers of 400 and above."""
        return [c for c in self.calls if c.status is not None and c.status >= 400]

    def aborted(self) -> list[Call]:
        """Requests that failed without an HTTP error (the page cancelled or lost them)."""
        return [c for c in self.calls if c.status is None]

    def summary(self) -> str:
        return "\n".join(f"{c.status} {c.method} {c.path[:160]} [{c.content_type[:60]}]"
                         f"{' ' + c.failure if c.failure else ''}" for c in self.calls)


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, *, credentials: bool = True, log: NetLog | None = None) -> Any:
    """A fresh context (no cache, no service workers) and page, logging DICOMweb calls."""
    ctx = browser.new_context(
        http_credentials={"username": USER, "password": PASSWORD} if credentials else None,
        service_workers="block", viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    if log is not None:
        log.attach(page)
    return page


def dismiss_overlays(page: Any) -> None:
    """Close OHIF's first-visit tour and its 'investigational use' banner if they show
    (they sit over the viewport; a user would click them away too)."""
    for selector in ('[data-cy="confirm-and-hide-button"]', "text=Skip all"):
        loc = page.locator(selector)
        try:
            if loc.count():
                loc.first.click(timeout=2000)
        except Exception:  # noqa: BLE001 - gone already, or never there
            pass


VIEWPORT = "canvas.cornerstone-canvas"


def image_stats(png: bytes) -> tuple[float, float, int]:
    """(share of non-background pixels, their standard deviation, distinct grey levels).

    Background is the most common value (a viewport is black around the image).
    """
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)
    values, counts = np.unique(grey, return_counts=True)
    background = int(values[counts.argmax()])
    fg = grey[np.abs(grey - background) > 8]
    share = fg.size / grey.size
    return share, float(fg.std()) if fg.size else 0.0, int(np.unique(fg).size)


# Runs in the page: from the next click anywhere, looks at the viewport canvas on every
# animation frame (a grid of ~4000 pixels) and records, in page time, the click and the
# first frame whose canvas holds an image by the rule of shows_image().
_PAINT_PROBE = """
(selector) => {
  const probe = window.__pacsinfraPaint = {clicked: null, painted: null};
  document.addEventListener('click', () => {
    if (probe.clicked !== null) return;
    probe.clicked = performance.now();
    const look = () => {
      const canvas = document.querySelector(selector);
      const ctx = canvas && canvas.width && canvas.height && canvas.getContext('2d');
      if (ctx) {
        const {width: w, height: h} = canvas;
        const data = ctx.getImageData(0, 0, w, h).data;
        const step = Math.max(1, Math.floor(Math.sqrt(w * h / 4000)));
        const grey = [];
        for (let y = 0; y < h; y += step)
          for (let x = 0; x < w; x += step) {
            const i = (y * w + x) * 4;
            grey.push(Math.round((data[i] * 299 + data[i + 1] * 587 + data[i + 2] * 114) / 1000));
          }
        const counts = new Map();
        for (const g of grey) counts.set(g, (counts.get(g) || 0) + 1);
        let background = 0, most = -1;
        for (const [g, n] of counts) if (n > most) { most = n; background = g; }
        const fg = grey.filter((g) => Math.abs(g - background) > 8);
        const mean = fg.reduce((a, b) => a + b, 0) / (fg.length || 1);
        const spread = Math.sqrt(fg.reduce((a, b) => a + (b - mean) ** 2, 0) / (fg.length || 1));
        if (fg.length / grey.length >= 0.05 && spread >= 2 && new Set(fg).size >= 8) {
          probe.painted = performance.now();
          return;
        }
      }
      requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
  }, {capture: true});
}
"""


def arm_paint_probe(page: Any) -> None:
    """Get ready to time, inside the page, the next click to the first animation frame
    whose viewport canvas shows an image (:func:`painted_after_click`)."""
    page.evaluate(_PAINT_PROBE, VIEWPORT)


def painted_after_click(page: Any, timeout: float = 60.0) -> float:
    """Seconds from the click after :func:`arm_paint_probe` to the first frame whose
    viewport canvas held an image, measured by the page's own clock (no screenshot
    latency in it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = page.evaluate("() => window.__pacsinfraPaint")
        if got and got.get("painted") is not None:
            return float(got["painted"] - got["clicked"]) / 1000.0
        time.sleep(0.1)
    raise AssertionError(f"the viewport showed no image within {timeout:.0f}s of the click")


def shows_image(png: bytes) -> bool:
    """Whether a viewport screenshot holds a real, non-uniform image."""
    share, spread, levels = image_stats(png)
    return share >= 0.05 and spread >= 2.0 and levels >= 8


def wait_for_image(page: Any, timeout: float = 30.0) -> tuple[float, bytes]:
    """Seconds until the viewport canvas shows an image (polled screenshots), and the last
    screenshot. Raises AssertionError with the stats when it never does."""
    start = time.monotonic()
    last = b""
    while time.monotonic() - start < timeout:
        canvas = page.locator(VIEWPORT).first
        try:
            if canvas.count() and canvas.is_visible():
                last = canvas.screenshot(timeout=5000)
                if shows_image(last):
                    return time.monotonic() - start, last
        except Exception:  # noqa: BLE001 - the canvas is being (re)created
            pass
        time.sleep(0.05)
    stats = image_stats(last) if last else None
    raise AssertionError(f"no image in the viewport after {timeout:.0f}s (stats {stats})")


# -- a whole site for a test module -------------------------------------------------------------

BACKENDS: dict[str, Any] = {"archive": ArchiveWeb, "orthanc": OrthancWeb}


@contextmanager
def running_site(name: str, studies: dict[str, Study], base: Path) -> Iterator[Viewer]:
    """Backend ``name`` holding ``studies`` and a viewer in front of it, stopped after."""
    need_viewer_tools()
    backend = BACKENDS[name](base / name).start()
    viewer: Viewer | None = None
    try:
        store(studies, backend.dicom_port, backend.aet)
        viewer = Viewer(base / "viewer", backend.viewer_settings()).start()
        yield viewer
    finally:
        try:
            if viewer is not None:
                assert viewer.stop() == 0, viewer.logs()
        finally:
            backend.stop()
