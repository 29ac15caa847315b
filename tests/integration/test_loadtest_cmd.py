"""``pacsinfra loadtest`` against an applied local site (archive + router, real processes).

The site is applied like tests/integration/test_local_site.py (free ports,
PACSINFRA_LOCAL_ROOT in a temp dir) and destroyed at the end. The load goes through
the router; every instance the report counts must arrive in the archive (C-FIND).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_module
from test_local_site import MACHINE, SITE, Site

pytestmark = pytest.mark.integration

SCALE = "0.05"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    need_module("pynetdicom")
    s = Site(tmp_path)
    try:
        yield s
    finally:
        if s.run_dir.exists():  # a failed test must not leave processes behind
            s.cli("destroy", str(s.bp), "--auto-approve")
            from pacsinfra.services import supervisor

            for lock in s.run_dir.glob("*.lock") if s.run_dir.exists() else []:
                supervisor.stop(s.run_dir, lock.name[: -len(".lock")])


def archive_instances(port: int) -> int:
    """Total instances the archive holds (study-level C-FIND, summed)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ident.NumberOfStudyRelatedInstances = ""
    total = 0
    try:
        for status, found in assoc.send_c_find(ident, FIND):
            if status and status.Status in (0xFF00, 0xFF01):
                total += int(found.NumberOfStudyRelatedInstances)
    finally:
        assoc.release()
    return total


def test_loadtest_through_router(site: Site) -> None:
    from pacsinfra.verify.study import make_study

    bp = str(site.bp)
    r = site.cli("loadtest", bp, "--studies", "1")
    assert r.returncode == 2 and "run pacsinfra apply first" in r.stderr, r.stderr
    bad = site.cli("loadtest", bp, "--profile", "xray")
    assert bad.returncode == 2, bad.stderr

    out = site.ok("apply", bp, "--auto-approve")
    assert "Apply complete" in out, out

    report = json.loads(site.ok("loadtest", bp, "--studies", "6", "--concurrency", "3",
                                "--profile", "mix", "--scale", SCALE, "--json"))
    mix = ["ct", "mr", "cr", "tomo", "ct", "mr"]
    expected = sum(len(make_study(p, scale=float(SCALE))) for p in mix)
    assert report["entry"] == "service.router[0]"
    assert report["target"].startswith("ROUTER@127.0.0.1:")
    assert report["profiles"] == ["ct", "mr", "cr", "tomo"]
    assert report["errors"] == 0, report["error_samples"]
    assert report["studies"] == 6 and report["instances"] == expected
    assert report["instances_per_s"] > 0 and report["mb_per_s"] > 0
    assert 0 < report["p50"] <= report["p95"] <= report["p99"]

    # The router forwarded every counted instance to the archive.
    archive_port = site.ports[0]
    deadline = time.monotonic() + 60
    held = archive_instances(archive_port)
    while held < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        held = archive_instances(archive_port)
    assert held == expected

    table = site.ok("loadtest", bp, "--studies", "2", "--concurrency", "2", "--profile", "cr",
                    "--scale", SCALE)
    assert "inst/s" in table and "p99 ms" in table and "service.router[0]" in table, table

    out = site.ok("destroy", bp, "--auto-approve")
    assert site.processes() == []
    assert not (site.root / SITE / "machines" / MACHINE).exists()
