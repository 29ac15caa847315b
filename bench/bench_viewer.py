"""The web viewer's DICOMweb path, side by side: a 300-image 512x512 CT study through the
viewer's origin (``pacsinfra viewer serve``: nginx, basic auth, the archive's token
added by the proxy) in front of

- the pacsinfra archive (``pacsinfra archive serve``, DICOMweb), and
- Orthanc 1.10 + its DICOMweb plugin (the reference), behind the same nginx config,

measuring what OHIF does when a user opens the study:

- study list: the QIDO-RS study search OHIF's worklist sends;
- series metadata: QIDO-RS series of the study, then WADO-RS series /metadata (the
  first time after the store, and the median of the repeats);
- all frames: every instance's /frames/1 with 6 requests in flight (a browser's
  connections per origin over HTTP/1.1), as frames/s and MB/s;
- first image: Debian's Chromium (Playwright) on the study list, a click on the study and
  on "Basic Viewer": seconds from the click to the first animation frame whose viewport
  canvas holds an image, timed by the page's own clock (its pixels are looked at on every
  frame; a screenshot of the canvas confirms it after; target <= 2 s), and OHIF's own
  studyToFirstImage timer.

Each HTTP phase runs --repeat times (median shown); ratios are archive / Orthanc (time)
and archive / Orthanc (rate). Everything listens on 127.0.0.1 only and stops at the end.

    .venv/bin/python bench/bench_viewer.py [--instances 300] [--repeat 3] [--no-browser]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "tests"), str(REPO)]

import requests  # noqa: E402
from test_viewer_support import (  # noqa: E402
    PASSWORD,
    USER,
    ArchiveWeb,
    OrthancWeb,
    Study,
    Viewer,
    arm_paint_probe,
    chromium,
    dismiss_overlays,
    new_page,
    painted_after_click,
    shows_image,
    store,
    wait_for_image,
)

STUDY_LIST = ("/studies?limit=101&offset=0&fuzzymatching=false&includefield="
              "00081030%2C00080060%2C00080090%2C00100030")
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
PARALLEL = 6


def make_ct(folder: Path, instances: int) -> dict[str, Study]:
    """One CT series of ``instances`` 512x512 slices, as Part 10 files."""
    from pacsinfra.verify.study import make_study

    folder.mkdir(parents=True, exist_ok=True)
    datasets = make_study("ct", instances=instances)
    files = []
    for i, ds in enumerate(datasets):
        ds.PatientName = "BENCH^VIEWER"
        path = folder / f"ct-{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    first = datasets[0]
    return {"ct": Study("ct", "BENCH^VIEWER", str(first.StudyInstanceUID),
                        str(first.SeriesInstanceUID),
                        tuple(str(d.SOPInstanceUID) for d in datasets), tuple(files),
                        str(first.file_meta.TransferSyntaxUID))}


def session(login: bool) -> requests.Session:
    s = requests.Session()
    if login:
        s.auth = (USER, PASSWORD)
    return s


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def http_phases(viewer: Viewer, study: Study, login: bool) -> dict[str, float]:
    """One run of the three HTTP phases; seconds each, and the frame bytes."""
    base = f"{viewer.url}/dicom-web"
    s = session(login)
    json_accept = {"Accept": "application/dicom+json"}

    def study_list() -> None:
        r = s.get(base + STUDY_LIST, headers=json_accept, timeout=120)
        assert r.status_code == 200 and r.json(), r.status_code

    def metadata() -> None:
        r = s.get(f"{base}/studies/{study.study_uid}/series?includefield="
                  "00080021%2C00080031%2C0008103E%2C00200011", headers=json_accept, timeout=120)
        assert r.status_code == 200, r.status_code
        r = s.get(f"{base}/studies/{study.study_uid}/series/{study.series_uid}/metadata",
                  headers=json_accept, timeout=300)
        assert r.status_code == 200 and len(r.json()) == len(study.sop_uids), r.status_code

    sessions = [session(login) for _ in range(PARALLEL)]
    got: list[int] = []

    def frame(i_sop: tuple[int, str]) -> int:
        i, sop = i_sop
        r = sessions[i % PARALLEL].get(
            f"{base}/studies/{study.study_uid}/series/{study.series_uid}/instances/{sop}/frames/1",
            headers={"Accept": FRAME_ACCEPT}, timeout=120)
        assert r.status_code == 200, r.status_code
        return len(r.content)

    def frames() -> None:
        with ThreadPoolExecutor(PARALLEL) as pool:
            got.extend(pool.map(frame, enumerate(study.sop_uids)))

    out = {"list": timed(study_list), "metadata": timed(metadata), "frames": timed(frames)}
    out["bytes"] = float(sum(got))
    return out


def first_image(browser: Any, viewer: Viewer, study: Study, login: bool) -> tuple[float, float]:
    """(seconds to an image in the viewport, OHIF's studyToFirstImage ms) with OHIF loaded."""
    page = new_page(browser, credentials=login)
    ohif_ms: list[float] = []

    def on_console(msg: Any) -> None:
        text = msg.text
        if text.startswith("studyToFirstImage:"):
            ohif_ms.append(float(text.split(":")[1].split()[0]))

    page.on("console", on_console)
    try:
        # As a user does: the study list, select the study, click "Basic Viewer" (OHIF
        # routes in the page; no reload).
        page.goto(viewer.url + "/", wait_until="networkidle")
        row = page.get_by_text("BENCH, VIEWER").first
        row.wait_for(timeout=60_000)
        dismiss_overlays(page)
        row.click()
        button = page.get_by_role("button", name="Basic Viewer")
        button.wait_for(timeout=30_000)
        arm_paint_probe(page)
        button.click()
        seconds = painted_after_click(page, timeout=120)
        _, png = wait_for_image(page, timeout=30)  # the same, by a screenshot of the canvas
        assert shows_image(png)
    finally:
        page.context.close()
    return seconds, ohif_ms[0] if ohif_ms else float("nan")


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-browser", action="store_true", help="skip the first-image timing")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp:
        base = Path(tmp)
        print(f"making a {args.instances}-slice 512x512 CT study ...", flush=True)
        studies = make_ct(base / "study", args.instances)
        study = studies["ct"]
        results: dict[str, dict[str, Any]] = {}
        # "no login": the same server behind a loopback viewer without users, which shows
        # what basic auth costs (nginx checks the SHA-512 crypt hash on every request).
        backends = [("archive", ArchiveWeb(base / "archive"), True),
                    ("archive, no login", None, False),
                    ("orthanc", OrthancWeb(base / "orthanc"), True),
                    ("orthanc, no login", None, False)]
        started: list[Any] = []
        viewers: list[Viewer] = []
        try:
            by_name: dict[str, Any] = {}
            for name, backend, login in backends:
                if backend is None:  # the server of the row above, no users
                    backend = by_name[name.split(",")[0]]
                else:
                    backend.start()
                    started.append(backend)
                    t = timed(lambda b=backend: store(studies, b.dicom_port, b.aet))
                    print(f"{name}: stored {args.instances} instances in {t:.1f} s", flush=True)
                by_name[name] = backend
                viewer = Viewer(base / f"viewer-{len(viewers)}", backend.viewer_settings(),
                                users=login).start()
                viewers.append(viewer)
                runs = [http_phases(viewer, study, login) for _ in range(args.repeat)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                med["cold"] = runs[0]["metadata"]  # the first ask after the store
                results[name] = med
                print(f"{name}: list {med['list'] * 1000:.0f} ms, metadata "
                      f"{med['metadata'] * 1000:.0f} ms, frames {med['frames']:.2f} s", flush=True)
                if not args.no_browser:
                    with chromium() as browser:
                        shots = [first_image(browser, viewer, study, login) for _ in range(2)]
                    results[name]["first"] = statistics.median(s for s, _ in shots)
                    results[name]["ohif_ms"] = statistics.median(m for _, m in shots)
        finally:
            for v in viewers:
                v.stop()
            for b in started:
                b.stop()

    n = args.instances
    ref = results["orthanc"]
    rows = []
    for name, r in results.items():
        fps = n / r["frames"]
        mbs = r["bytes"] / r["frames"] / 1e6
        rows.append([
            name, f"{r['list'] * 1000:.0f}", f"{r['cold'] * 1000:.0f}",
            f"{r['metadata'] * 1000:.0f}",
            f"{r['frames']:.2f}", f"{fps:.0f}", f"{mbs:.1f}",
            f"{r['first']:.2f}" if "first" in r else "-",
            f"{r['ohif_ms']:.0f}" if "ohif_ms" in r else "-"])
    print()
    print(f"{n} x 512x512 CT through the viewer (nginx, {PARALLEL} frame requests in flight; "
          f"medians of {args.repeat}; first image: median of 2, OHIF loaded):")
    print(table(["backend", "list ms", "metadata 1st ms", "metadata ms", "frames s",
                 "frames/s", "MB/s",
                 "first image s", "OHIF studyToFirstImage ms"], rows))
    a = results["archive"]
    print()
    print("archive / orthanc:  list x{:.2f}  metadata 1st x{:.2f}  metadata x{:.2f}  "
          "frames time x{:.2f}  frames/s x{:.2f}{}".format(
              a["list"] / ref["list"], a["cold"] / ref["cold"], a["metadata"] / ref["metadata"],
              a["frames"] / ref["frames"], ref["frames"] / a["frames"],
              f"  first image x{a['first'] / ref['first']:.1f}" if "first" in a else ""))


if __name__ == "__main__":
    main()
