"""Routing matrix through a real router subprocess to DCMTK storescp and Orthanc.

A corpus of synthetic CT/MR/CR/US instances with different stations, institutions,
body parts, private tags and calling AEs goes through one rule set; every
destination must receive exactly the instances the rules name, with the tag
morphing applied (checked in the files the destinations stored).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from conftest import need_binary
from test_router_support import (
    Orthanc,
    Router,
    StoreSCP,
    instance,
    port,
    send,
    wait_for,
    write_all,
)

pytestmark = [pytest.mark.integration]

RULES = [
    {"name": "drop-test-boxes", "match": {"tag": "StationName", "wildcard": "TEST*"},
     "drop": True},
    {"name": "ct-body-both",
     "match": {"all": [{"tag": "Modality", "equals": "CT"},
                       {"tag": "BodyPartExamined", "in": ["CHEST", "ABDOMEN"]}]},
     "edits": [{"op": "prefix", "tag": "AccessionNumber", "value": "SITEA-"}],
     "forward": ["scp", "orthanc"]},
    {"name": "mr-north",
     "match": {"all": [{"tag": "Modality", "equals": "MR"},
                       {"tag": "InstitutionName", "regex": "^North"},
                       {"tag": "(0041,1001)", "present": True}]},
     "edits": [{"op": "set", "tag": "InstitutionName", "value": "NORTH-ROUTED"},
               {"op": "remove", "tag": "(0041,1001)"}],
     "forward": ["orthanc"]},
    {"name": "cr-early-per-study",
     "match": {"all": [{"tag": "SOPClassUID", "equals": "1.2.840.10008.5.1.4.1.1.1"},
                       {"tag": "InstanceNumber", "range": [1, 3]}]},
     "forward": ["orthanc"], "per_study": True},
    {"name": "us1-station-copy",
     "match": {"all": [{"calling_ae": True, "equals": "US1"},
                       {"not": {"tag": "Modality", "equals": "CT"}}]},
     "edits": [{"op": "copy", "tag": "StudyDescription", "source": "StationName"}],
     "forward": ["scp"]},
    {"name": "us-any",
     "match": {"any": [{"tag": "Modality", "equals": "US"},
                       {"tag": "SOPClassUID", "equals": "1.2.840.10008.5.1.4.1.1.6.1"}]},
     "forward": ["orthanc"], "stop": True},
    {"name": "rest", "forward": ["scp"]},
]


def test_routing_matrix(tmp_path: Path) -> None:
    need_binary("Orthanc")
    scp = StoreSCP(tmp_path / "scp", "SCP")
    orth = Orthanc(tmp_path / "orthanc")
    scp.start()
    orth.start()
    router = Router(tmp_path / "router", {
        "destinations": {"scp": scp.dest(), "orthanc": orth.dest()},
        "rules": RULES, "stable_study_seconds": 3,
        "audit": {"file": str(tmp_path / "audit.jsonl")},
        "queue": {"keep_done_seconds": 600},
        "metrics_port": port(),
    })
    router.start()
    try:
        cases: dict[str, list] = {}  # name -> datasets
        cases["ct_chest"] = [instance(modality="CT", body_part="CHEST", number=i)
                             for i in range(1, 4)]
        cases["ct_abd"] = [instance(modality="CT", body_part="ABDOMEN", station="CT2")]
        cases["ct_head"] = [instance(modality="CT", body_part="HEAD")]
        cases["ct_testbox"] = [instance(modality="CT", station="TESTBOX7")]
        cases["mr_north"] = [instance(modality="MR", institution="North Clinic", private="p1")]
        cases["mr_north_noprivate"] = [instance(modality="MR", institution="North Clinic")]
        cases["mr_south"] = [instance(modality="MR", institution="South", private="p2")]
        cr_study = instance(modality="CR").StudyInstanceUID
        cases["cr_early"] = [instance(modality="CR", study=cr_study, number=i) for i in (1, 2)]
        cases["cr_late"] = [instance(modality="CR", study=cr_study, number=7)]
        cases["us_from_us1"] = [instance(modality="US", station="USROOM3")]
        cases["us_other"] = [instance(modality="US", station="USROOM4")]
        acked = {}
        for name, dss in cases.items():
            if name != "us_from_us1":
                acked.update(send(router.port, dss))
        acked.update(send(router.port, cases["us_from_us1"], calling="US1"))
        assert set(acked.values()) == {0}, acked
        # the per-study rule holds the CR rows until the study has been quiet for 3 s
        with router.db() as c:
            held = c.execute("SELECT COUNT(*) FROM items WHERE state = 'held'").fetchone()[0]
        assert held == 2

        def uids(*names: str) -> set[str]:
            return {str(ds.SOPInstanceUID) for n in names for ds in cases[n]}

        want_scp = uids("ct_chest", "ct_abd", "ct_head", "mr_north", "mr_north_noprivate",
                        "mr_south", "cr_early", "cr_late", "us_from_us1")
        want_orth = uids("ct_chest", "ct_abd", "mr_north", "cr_early", "us_from_us1",
                         "us_other")
        wait_for(lambda: scp.sop_uids() >= want_scp
                 and {str(d.SOPInstanceUID) for d in orth.datasets()} >= want_orth,
                 60, "deliveries")
        wait_for(router.drained, 20, "queue drained")
        time.sleep(0.5)  # anything extra would arrive now
        assert scp.sop_uids() == want_scp
        got_orth = {str(d.SOPInstanceUID): d for d in orth.datasets()}
        assert set(got_orth) == want_orth
        from pydicom import dcmread

        got_scp = {scp.uid_of(p): dcmread(p) for p in scp.files()}
        for uid in uids("ct_chest", "ct_abd"):
            assert got_scp[uid].AccessionNumber == "SITEA-ACC1"
            assert got_orth[uid].AccessionNumber == "SITEA-ACC1"
        for uid in uids("ct_head", "mr_south", "cr_late"):
            assert got_scp[uid].AccessionNumber == "ACC1"
        (mr,) = uids("mr_north")
        for ds in (got_scp[mr], got_orth[mr]):  # edits accumulate for later rules' forwards
            assert ds.InstitutionName == "NORTH-ROUTED"
            assert (0x0041, 0x1001) not in ds
        (south,) = uids("mr_south")
        assert got_scp[south].InstitutionName == "South"
        assert got_scp[south][0x0041, 0x1001].value == "p2"  # private tags forwarded as is
        (us1,) = uids("us_from_us1")
        assert got_scp[us1].StudyDescription == "USROOM3"
        assert got_orth[us1].StudyDescription == "USROOM3"
        (us2,) = uids("us_other")
        assert got_orth[us2].StudyDescription == "Synthetic study"
        with urllib.request.urlopen(  # noqa: S310 - loopback
                f"http://127.0.0.1:{router.cfg['metrics_port']}/metrics") as r:
            metrics = r.read().decode()
        assert f"pacsinfra_router_received_total {len(acked)}" in metrics
        assert "pacsinfra_router_dropped_total 1" in metrics
        assert (f'pacsinfra_router_queue_depth{{dest="scp",state="done"}} {len(want_scp)}'
                in metrics)
        assert f'pacsinfra_router_sent_total{{node="orthanc"}} {len(want_orth)}' in metrics
        assert 'pacsinfra_router_failed_total{node="scp"} 0' in metrics
        audit = (tmp_path / "audit.jsonl").read_text().splitlines()
        assert any('"110100"' in line and "drop-test-boxes" in line for line in audit)
        assert sum('"EventActionCode":"R"' in line for line in audit) == len(want_scp) + len(
            want_orth)

        # explain: which rules match and why, without a running router
        f = write_all(cases["ct_chest"][:1], tmp_path / "explain")[0]
        out = router.cli("explain", str(f))
        assert out.returncode == 0, out.stderr
        assert "rule 'ct-body-both': MATCH" in out.stdout
        assert "BodyPartExamined in ['CHEST', 'ABDOMEN'] (value: CHEST)" in out.stdout
        assert "rule 'drop-test-boxes': no match" in out.stdout
        assert "result: forward to scp" in out.stdout and "result: forward to orthanc" in out.stdout
        f2 = write_all(cases["ct_testbox"], tmp_path / "explain")[0]
        out = router.cli("explain", str(f2))
        assert "result: dropped by rule 'drop-test-boxes'" in out.stdout
    finally:
        router.stop()
        orth.stop()
        scp.stop()


def test_bad_config_is_exit_2(tmp_path: Path) -> None:
    router = Router(tmp_path / "r", {"destinations": {"a": {"ae_title": "A", "host": "127.0.0.1"}},
                                     "rules": [{"name": "x", "match": {"tag": "NoSuchKeyword",
                                                                        "equals": "1"},
                                                "forward": ["a"]}]})
    out = router.cli("queue", "list")
    assert out.returncode == 2
    assert "NoSuchKeyword" in out.stderr and "Traceback" not in out.stderr
    router.config.write_text("rules: [{name: x, forward: [nowhere]}]\n")
    out = router.cli("queue", "list")
    assert out.returncode == 2 and "unknown 'nowhere'" in out.stderr
