"""Study-level routing through a running router: a study goes out whole, once complete.

The rule expects an axial and a coronal series. The axial series arrives and goes quiet:
nothing is forwarded, and ``router explain --study`` says the coronal one is missing.
When it arrives and goes quiet, both series reach the destination together.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from test_router_support import Router, StatusSCP, instance, send, wait_for

pytestmark = [pytest.mark.integration]


def _series(study: str, desc: str, n: int) -> list:  # type: ignore[type-arg]
    series = generate_uid()
    out = []
    for k in range(n):
        ds = instance(study=study, series=series, number=k + 1)
        ds.SeriesDescription = desc
        out.append(ds)
    return out


def test_a_study_waits_for_its_expected_series_then_goes_whole(tmp_path: Path) -> None:
    dest = StatusSCP(0)
    router = Router(tmp_path / "router", {
        "destinations": {"pacs": dest.dest()},
        "rules": [{"name": "whole", "forward": ["pacs"],
                   "complete": {"quiet_seconds": 1, "expect_series": ["AX*", "COR*"],
                                "timeout_seconds": 120, "when_incomplete": "send"}}]})
    router.start()
    try:
        study = str(generate_uid())
        axial = _series(study, "AX T1", 3)
        assert set(send(router.port, axial).values()) == {0}
        time.sleep(2.5)  # quiet for longer than quiet_seconds
        assert dest.received == []
        explained = router.cli("explain", "--study", study)
        assert explained.returncode == 0, explained.stderr
        assert "expected series missing: COR*" in explained.stdout
        assert "3 held row(s) waits" in explained.stdout
        coronal = _series(study, "COR T2", 2)
        assert set(send(router.port, coronal).values()) == {0}
        wait_for(lambda: len(dest.received) == 5, 20, "the whole study forwarded")
        assert set(dest.received) == {str(d.SOPInstanceUID) for d in axial + coronal}
        assert "no rows of study" in router.cli("explain", "--study", study).stdout
        bad = router.cli("explain")
        assert bad.returncode == 2 and "give a FILE to route, or --study UID" in bad.stderr
    finally:
        router.stop()
        dest.stop()
