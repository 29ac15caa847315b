"""The router as a storage commitment SCU: rows end only when the destination commits.

Against the archive (report on the N-ACTION's association), Orthanc (report on a new
association to the router's listener) and a pynetdicom SCP whose reports can say "not
committed" or never come: such instances are sent again, and dead-lettered once the
retry policy runs out.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import need_binary
from test_router_support import Orthanc, Router, instance, port, send, wait_for

pytestmark = [pytest.mark.integration]

COMMITMENT = "1.2.840.10008.1.20.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"


class CommitSCP:
    """Storage SCP that answers commitment requests as told: ``fail`` lists SOP Instance
    UIDs to report as not committed once each; ``silent`` never reports."""

    def __init__(self, *, fail: set[str] | None = None, silent: bool = False) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.fail, self.silent, self.port = set(fail or ()), silent, port()
        self.stored: list[str] = []
        self.requests: list[list[str]] = []
        ae = AE(ae_title="COMMITTER")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(COMMITMENT)

        def on_store(event: Any) -> int:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
            return 0

        def on_action(event: Any) -> tuple[int, None]:
            info = event.action_information
            refs = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                    for i in info.ReferencedSOPSequence]
            self.requests.append([u for _, u in refs])
            if not self.silent:
                threading.Thread(target=self._report, args=(event.assoc, info.TransactionUID,
                                                            refs), daemon=True).start()
            return 0, None

        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, on_store), (evt.EVT_N_ACTION, on_action)])

    def _report(self, assoc: Any, txn: str, refs: list[tuple[str, str]]) -> None:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        time.sleep(0.2)  # after the N-ACTION response
        ok, bad = [], []
        for cls, uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
            if uid in self.fail:
                self.fail.discard(uid)
                item.FailureReason = 0x0112
                bad.append(item)
            else:
                ok.append(item)
        ds = Dataset()
        ds.TransactionUID = txn
        if ok:
            ds.ReferencedSOPSequence = Sequence(ok)
        if bad:
            ds.FailedSOPSequence = Sequence(bad)
        assoc.send_n_event_report(ds, 2 if bad else 1, COMMITMENT, WELL_KNOWN)

    def stop(self) -> None:
        self._server.shutdown()

    def dest(self) -> dict[str, Any]:
        return {"ae_title": "COMMITTER", "host": "127.0.0.1", "port": self.port}


def _rows(router: Router) -> list[dict[str, Any]]:
    return list(json.loads(router.cli("queue", "list", "--json").stdout)["rows"])


def test_archive_commits_what_the_router_sent(tmp_path: Path) -> None:
    from test_archive_support import Archive

    arch = Archive(tmp_path / "archive", config={})
    router = Router(tmp_path / "router", {
        "destinations": {"pacs": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": arch.port,
                                  "storage_commitment": True}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "queue": {"keep_done_seconds": 600}})
    # a report the router's association no longer waits for (a slow machine) goes to
    # the router's listener instead
    arch.config = {"peers": {"ROUTER": {"ae_title": "ROUTER", "host": "127.0.0.1",
                                        "port": router.port}}}
    arch.start()
    router.start()
    try:
        study = instance().StudyInstanceUID
        dss = [instance(study=study, number=n) for n in range(1, 6)]
        assert set(send(router.port, dss).values()) == {0}
        wait_for(lambda: router.states() == {"done": 5}, 60, "5 rows committed")
        log = router.log.read_text()
        committed = [int(n) for n in re.findall(r"(\d+) committed, 0 not", log)]
        assert sum(committed) == 5, log
        # each report delivered once, on the N-ACTION's association (when the router
        # still waits there, as it does on an idle machine) or on a new one
        wait_for(lambda: arch.logs().count("to ROUTER on ") == len(committed),
                 60, "the archive logged each report as delivered")
    finally:
        router.stop()
        assert arch.stop() == 0, arch.logs()


def test_orthanc_reports_on_a_new_association(tmp_path: Path) -> None:
    need_binary("Orthanc")
    orth = Orthanc(tmp_path / "orthanc")
    router = Router(tmp_path / "router", {
        "destinations": {"pacs": {**orth.dest(), "storage_commitment": True}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "queue": {"keep_done_seconds": 600}})
    cfg_path = orth.folder / "orthanc.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["DicomModalities"] = {"router": ["ROUTER", "127.0.0.1", router.port]}
    cfg_path.write_text(json.dumps(cfg))
    orth.start()
    router.start()
    try:
        dss = [instance(number=n) for n in range(1, 4)]
        assert set(send(router.port, dss).values()) == {0}
        wait_for(lambda: router.states() == {"done": 3}, 30, "3 rows committed by Orthanc")
        log = router.log.read_text()
        assert sum(int(n) for n in re.findall(r"(\d+) committed, 0 not", log)) == 3, log
        assert {str(d.SOPInstanceUID) for d in orth.datasets()} == {
            str(d.SOPInstanceUID) for d in dss}
    finally:
        router.stop()
        orth.stop()


def test_not_committed_is_sent_again(tmp_path: Path) -> None:
    dss = [instance(number=n) for n in range(1, 4)]
    bad = str(dss[1].SOPInstanceUID)
    scp = CommitSCP(fail={bad})
    router = Router(tmp_path / "router", {
        "destinations": {"pacs": {**scp.dest(), "storage_commitment": True}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "retry": {"max_attempts": 5, "initial_backoff": 0.2, "max_backoff": 1, "jitter": 0},
        "queue": {"keep_done_seconds": 600}})
    router.start()
    try:
        assert set(send(router.port, dss).values()) == {0}
        wait_for(lambda: router.states() == {"done": 3}, 30, "all committed in the end")
        assert scp.stored.count(bad) == 2, scp.stored  # sent again after the failed report
        rows = {r["sop_uid"]: r for r in _rows(router)}
        assert rows[bad]["attempts"] == 1
        assert any("failure reason 0x0112" in (a.get("error") or "")
                   for a in rows[bad]["attempt_log"]), rows[bad]
        assert all(rows[str(d.SOPInstanceUID)]["attempts"] == 0 for d in (dss[0], dss[2]))
    finally:
        router.stop()
        scp.stop()


def test_a_report_that_never_comes_fails_the_attempts(tmp_path: Path) -> None:
    scp = CommitSCP(silent=True)
    router = Router(tmp_path / "router", {
        "destinations": {"pacs": {**scp.dest(), "storage_commitment": True,
                                  "commitment_timeout": 1}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "retry": {"max_attempts": 2, "initial_backoff": 0.2, "max_backoff": 1, "jitter": 0},
        "queue": {"keep_done_seconds": 600}})
    router.start()
    try:
        ds = instance()
        assert set(send(router.port, [ds]).values()) == {0}
        wait_for(lambda: router.states() == {"dead": 1}, 40, "dead-lettered")
        (row,) = _rows(router)
        assert "no storage commitment report" in row["last_error"], row
        assert len(scp.requests) == 2 and scp.stored.count(str(ds.SOPInstanceUID)) == 2
    finally:
        router.stop()
        scp.stop()
