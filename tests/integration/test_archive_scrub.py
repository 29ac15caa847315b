"""The background scrub finds a changed file nobody retrieves, at the rate it was given.

Twenty instances are stored, the archive stopped, one file changed on disk (one byte,
same size). Restarted with a scrub at 0.5 MB/s from the first second, the archive
re-reads every file: the changed one is flagged (``archive check`` lists it), the
metrics count the pass, the bytes and the finding, and at no moment has the scrub read
more than the rate allows (plus one file). Its place survives a restart: a second
archive with the same data directory resumes the pass where the first stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from test_archive_support import REPO, Archive, wait_port

pytestmark = pytest.mark.integration
need_module("pynetdicom")
need_module("requests")

import requests  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from test_archive_dicom import index_rows, send_files, stored_path  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

TOKEN = "scrub-test-token-0123456789"
RATE_MB_S = 0.25


def _config(root: Path, http: int, rate: float) -> dict[str, Any]:
    return {"scrub": {"rate_mb_s": rate, "start_after_s": 0, "pause_hours": 24},
            "dicomweb": {"enabled": True, "bind": "127.0.0.1", "port": http,
                         "token": {"file": str(root / "token")}}}


def _metrics(http: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{http}/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}"}).text
    out = {}
    for line in text.splitlines():
        if line.startswith("pacs_archive_scrub_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_scrub_finds_a_changed_file_at_its_rate(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    data = tmp_path / "data"
    http = free_port()
    first = Archive(data, config=_config(tmp_path, http, 0)).start()  # no scrub: fill it
    study = generate_uid()
    files = [write(make_instance(study_uid=study, instance_number=i + 1, rows=128, cols=128,
                                 random_pixels=True), tmp_path / f"{i}.dcm") for i in range(20)]
    assert send_files(first.port, files) == [0] * 20
    assert first.stop() == 0
    uids = [r[0] for r in index_rows(data, "SELECT sop_uid FROM instance ORDER BY sop_uid")]
    sizes = {u: stored_path(data, u).stat().st_size for u in uids}
    bad = uids[len(uids) // 2]
    path = stored_path(data, bad)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01
    path.write_bytes(bytes(raw))

    started = time.monotonic()  # the scrub cannot start before its process
    arch = Archive(data, config=_config(tmp_path, http, RATE_MB_S)).start()
    try:
        wait_port(http, proc=arch.proc)
        total = sum(sizes.values())
        seen: dict[str, float] = {}
        while time.monotonic() - started < 120:
            seen = _metrics(http)
            elapsed = time.monotonic() - started
            # never ahead of the rate (a loaded machine is only slower): one file of slack
            # for the file being read when the rate is checked
            assert seen.get("pacs_archive_scrub_bytes_total", 0) <= (
                RATE_MB_S * 1e6 * (elapsed + 1) + max(sizes.values())), (seen, elapsed)
            if seen.get("pacs_archive_scrub_passes_total", 0) >= 1:
                break
            time.sleep(0.2)
        took = time.monotonic() - started
        assert seen.get("pacs_archive_scrub_passes_total") == 1, seen
        assert seen["pacs_archive_scrub_instances_total"] == 20
        assert seen["pacs_archive_scrub_bytes_total"] == total
        assert seen["pacs_archive_scrub_found_total"] == 1
        assert took >= total / (RATE_MB_S * 1e6) - 1.5, took  # it did not race through
        place = json.loads((data / "scrub.json").read_text())
        assert place["after"] == "" and "last_pass_ended" in place  # resting
    finally:
        assert arch.stop() == 0, arch.logs()
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "archive", "check", "--data",
                        str(data), "--json"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert [f["sop_uid"] for f in json.loads(r.stdout)["flagged"]] == [bad]


def test_scrub_resumes_where_it_stopped(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    data = tmp_path / "data"
    http = free_port()
    first = Archive(data, config=_config(tmp_path, http, 0)).start()
    study = generate_uid()
    files = [write(make_instance(study_uid=study, instance_number=i + 1, rows=128, cols=128,
                                 random_pixels=True), tmp_path / f"{i}.dcm") for i in range(20)]
    assert send_files(first.port, files) == [0] * 20
    assert first.stop() == 0
    arch = Archive(data, config=_config(tmp_path, http, 0.1)).start()  # ~3 files a second
    try:
        wait_port(http, proc=arch.proc)
        deadline = time.monotonic() + 60
        while _metrics(http).get("pacs_archive_scrub_instances_total", 0) < 3:
            assert time.monotonic() < deadline, "the scrub did not start"
            time.sleep(0.2)
    finally:
        assert arch.stop() == 0, arch.logs()
    place = json.loads((data / "scrub.json").read_text())
    assert place["after"], place  # mid-pass, saved at stop
    arch = Archive(data, config=_config(tmp_path, http, 100)).start()
    try:
        wait_port(http, proc=arch.proc)
        deadline = time.monotonic() + 60
        while (m := _metrics(http)).get("pacs_archive_scrub_passes_total", 0) < 1:
            assert time.monotonic() < deadline, m
            time.sleep(0.2)
        # the pass finished with only what the first archive had not read
        assert m["pacs_archive_scrub_instances_total"] < 20, m
        assert m["pacs_archive_scrub_found_total"] == 0
    finally:
        assert arch.stop() == 0, arch.logs()
