"""verify/load.py against a real Orthanc: every instance counted is one Orthanc stored."""

from __future__ import annotations

import json
import urllib.request

import pytest
from conftest import free_port
from test_verify_smoke import orthanc  # noqa: F401 - fixture

from pacsinfra.pacs.config_common import Peer
from pacsinfra.verify.load import run_load
from pacsinfra.verify.study import PROFILES, make_study

pytestmark = pytest.mark.integration


def _count(http: str) -> int:
    with urllib.request.urlopen(f"{http}/statistics", timeout=10) as resp:
        return int(json.loads(resp.read())["CountInstances"])


def test_mixed_profiles_at_concurrency(orthanc: dict[str, object]) -> None:  # noqa: F811
    http = str(orthanc["http"])
    before = _count(http)
    peer = orthanc["peer"]
    assert isinstance(peer, Peer)
    # Small scale keeps it quick; the shapes (slices, frames) stay representative.
    report = run_load(peer, profiles=["ct", "mr", "cr", "tomo"], concurrency=3, studies=6,
                      scale=0.1)
    print("\n" + report.table())
    expected = sum(PROFILES[p].instances for p in ["ct", "mr", "cr", "tomo", "ct", "mr"])
    assert report.errors == 0, report.error_samples
    assert report.studies == 6 and report.instances == expected
    assert _count(http) - before == expected  # the archive really has them all
    assert 0 < report.percentile(50) <= report.percentile(95) <= report.percentile(99)
    assert report.instances_per_s > 0 and report.mb_per_s > 0
    assert "inst/s" in report.table()


def test_errors_are_counted_not_raised() -> None:
    dead = Peer(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    report = run_load(dead, profiles=["cr"], concurrency=2, studies=3, scale=0.05, timeout=2)
    assert report.errors == 3 and report.instances == 0 and report.error_samples


def test_profiles_have_representative_shapes() -> None:
    assert (PROFILES["ct"].rows, PROFILES["ct"].cols, PROFILES["ct"].instances) == (512, 512, 16)
    assert (PROFILES["mr"].rows, PROFILES["mr"].cols) == (256, 256)
    assert PROFILES["cr"].rows * PROFILES["cr"].cols >= 2000 * 2500
    tomo = make_study("tomo", scale=0.02)
    assert len(tomo) == 1 and int(tomo[0].NumberOfFrames) == 50
    assert len(tomo[0].PixelData) == tomo[0].Rows * tomo[0].Columns * 2 * 50
    with pytest.raises(ValueError, match="unknown profiles"):
        run_load(Peer(ae_title="X", host="127.0.0.1", port=1), profiles=["pet"], studies=1)


def test_command_line_load_and_bad_input(orthanc: dict[str, object],  # noqa: F811
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from pacsinfra.verify.__main__ import main

    peer = orthanc["peer"]
    assert isinstance(peer, Peer)
    target = f"{peer.ae_title}@{peer.host}:{peer.port}"
    assert main(["load", "--target", target, "--profiles", "cr", "--studies", "2",
                 "--scale", "0.05", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["instances"] == 2 and out["errors"] == 0
    for bad in (["load", "--target", "nohost", "--studies", "1"],
                ["load", "--target", target],
                ["load", "--target", target, "--studies", "1", "--profiles", "pet"],
                ["smoke", "--entry", target, "--orthanc-delete", "X=ftp://x"]):
        assert main(bad) == 2, bad
        assert capsys.readouterr().err.startswith("error: ")
