"""``make quickstart``'s site, as a user gets it: examples/quickstart.yaml on this machine.

validate --strict -> apply -> verify (stored, found, moved back, opened in the viewer with
its pixels compared, deleted) -> a browser (Debian's Chromium) opens the viewer at the URL
the README names, sees the study in the study list and its image in the viewport, with no
failed DICOMweb call -> every listener is on loopback -> destroy leaves no process.

The example's fixed ports are swapped for free ones (tests run in parallel); everything
else is the file as shipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, need_module
from support.procs import processes_under
from test_viewer_support import (  # noqa: I001 - shared helpers of the viewer tests
    NetLog,
    chromium,
    dismiss_overlays,
    image_stats,
    need_viewer_tools,
    new_page,
    wait_for_image,
)

from pacsinfra.verify.study import PATIENT_NAME

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quickstart.yaml"
#: the example's ports: archive, router, DICOMweb, viewer, verify's receiver
PORTS = (11112, 11104, 18042, 3000, 11199)


class Quickstart:
    """The example with free ports, its state and data under a temp root."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.ports = {p: free_port() for p in PORTS}
        text = EXAMPLE.read_text()
        for old, new in self.ports.items():
            text = re.sub(rf"\b{old}\b", str(new), text)
        self.bp = tmp / "quickstart.yaml"
        self.bp.write_text(text)
        self.state = tmp / "state.json"
        self.env = {**os.environ, "PACSINFRA_LOCAL_ROOT": str(self.root)}
        self.env.pop("PACSINFRA_DEBUG", None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[3000]}"

    def run(self, *args: str, timeout: float = 300) -> str:
        r = subprocess.run([sys.executable, "-m", "pacsinfra", *args, str(self.bp),
                            "--state", str(self.state)], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, f"pacsinfra {args[0]} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[Quickstart]:
    need_module("pynetdicom")
    need_viewer_tools()
    q = Quickstart(tmp_path)
    try:
        yield q
    finally:
        if q.state.exists():
            subprocess.run([sys.executable, "-m", "pacsinfra", "destroy", str(q.bp), "--state",
                            str(q.state), "--auto-approve"], env=q.env, capture_output=True,
                           timeout=120)


def _listening(pids: list[int]) -> list[str]:
    """The TCP addresses the given processes listen on."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[3])
    return sorted(found)


def test_quickstart_site_is_seen_in_the_viewer(quickstart: Quickstart) -> None:
    q = quickstart
    validate = subprocess.run([sys.executable, "-m", "pacsinfra", "validate", "--strict",
                               str(q.bp)], env=q.env, capture_output=True, text=True)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    t0 = time.monotonic()
    out = q.run("apply", "--auto-approve")
    apply_s = time.monotonic() - t0
    assert "Apply complete: 5 done (5 create)" in out, out

    t0 = time.monotonic()
    report = json.loads(q.run("verify", "--keep", "--json"))
    verify_s = time.monotonic() - t0
    steps = {s["name"]: s for s in report["steps"]}
    assert all(s["result"] == "PASS" for s in report["steps"] if s["name"] != "delete"), report
    assert "pixels identical to those sent" in steps["viewer"]["detail"], steps["viewer"]

    # what the README says to do: open the URL in a browser on this machine
    log = NetLog()
    with chromium() as browser:
        page = new_page(browser, credentials=False, log=log)
        try:
            page.goto(q.url + "/", wait_until="domcontentloaded")
            family, given = PATIENT_NAME.split("^")[:2]
            try:  # OHIF shows a person name as "Family, Given ..." (cut to its column)
                page.get_by_text(f"{family}, {given}", exact=False).first.wait_for(
                    timeout=30_000)
            finally:
                page.screenshot(path=str(q.root.parent / "study-list.png"))
            assert "local-demo" in page.inner_text("body")  # the site's name, from metadata
            page.goto(f"{q.url}/viewer?StudyInstanceUIDs={report['study_uid']}",
                      wait_until="domcontentloaded")
            seconds, _ = wait_for_image(page)
            dismiss_overlays(page)
            _, png = wait_for_image(page, timeout=10)
        finally:
            page.context.close()
    share, spread, levels = image_stats(png)
    assert share >= 0.05 and spread >= 2.0 and levels >= 8, (share, spread, levels)
    assert not log.errors(), log.summary()
    assert any("/frames/" in c.path and c.status == 200 for c in log.calls), log.summary()

    # nothing listens beyond loopback
    pids = processes_under(q.root)
    addresses = _listening(pids)
    assert {f"127.0.0.1:{q.ports[p]}" for p in (11112, 11104, 18042, 3000)} <= set(addresses)
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses

    q.run("destroy", "--auto-approve")
    deadline = time.monotonic() + 10
    while processes_under(q.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_under(q.root) == []
    print(f"\napply {apply_s:.1f}s, verify {verify_s:.1f}s, first image {seconds:.2f}s")
