"""Storage Commitment Push Model against a running ``pacsinfra archive serve``.

A requester (pynetdicom) stores instances, asks for their commitment with N-ACTION and
gets the N-EVENT-REPORT: on its own association while it keeps it open, else on a new
association to its AE title from the archive's peers. Instances never stored fail with
0x0112, a file changed behind the archive's back with 0x0110 (and is flagged). A
request survives kill -9 between its N-ACTION and its report. Orthanc, as a real
third-party commitment SCU, gets its report and shows the transaction as a success.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need, need_module
from test_archive_support import Archive, wait_port

pytestmark = pytest.mark.integration
need_module("pynetdicom")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402
from test_archive_dicom import index_rows, send_files, stored_path  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

COMMITMENT = "1.2.840.10008.1.20.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def _request(uid: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = uid
    seq = []
    for cls, inst in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        seq.append(item)
    ds.ReferencedSOPSequence = Sequence(seq)
    return ds


class Requester:
    """A storage commitment SCU with its own listener for reports on new associations."""

    def __init__(self, aet: str = "MODALITY") -> None:
        self.aet, self.port = aet, free_port()
        self.reports: list[tuple[int, Dataset, str]] = []  # (event type, info, how)
        self.got = threading.Event()
        self.server: Any = None

    def _on_report(self, event: Any, how: str) -> tuple[int, None]:
        info = event.event_information
        self.reports.append((int(event.request.EventTypeID), info, how))
        self.got.set()
        return 0x0000, None

    def listen(self) -> None:
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(COMMITMENT, SYNTAXES, scu_role=True, scp_role=True)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, lambda e: self._on_report(e, "new"))])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def request(self, port: int, uid: str, refs: list[tuple[str, str]], *,
                keep_open: float = 0.0) -> int:
        """N-ACTION; with ``keep_open`` wait that long on the association for the report."""
        ae = AE(ae_title=self.aet)
        ae.add_requested_context(COMMITMENT, SYNTAXES)
        assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE", evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, lambda e: self._on_report(e, "same"))])
        assert assoc.is_established
        status, _ = assoc.send_n_action(_request(uid, refs), 1, COMMITMENT, WELL_KNOWN)
        code = int(status.Status)
        if keep_open:
            deadline = time.monotonic() + keep_open
            while not self.got.is_set() and time.monotonic() < deadline:
                time.sleep(0.02)
        assoc.release()
        return code


def _instances(root: Path, n: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    return [write(make_instance(study_uid=study, series_uid=series, instance_number=i + 1,
                                rows=32, cols=32, random_pixels=True), root / f"{i}-{study}.dcm")
            for i in range(n)]


def _sop_uids(files: list[Path]) -> list[str]:
    from pydicom import dcmread

    return [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


@pytest.fixture()
def requester() -> Any:
    r = Requester()
    yield r
    r.close()


def test_report_on_the_same_association_lists_committed_and_missing(
        tmp_path: Path, requester: Requester) -> None:
    arch = Archive(tmp_path / "data", config={}).start()
    try:
        files = _instances(tmp_path, 3)
        assert send_files(arch.port, files) == [0, 0, 0]
        uids = _sop_uids(files)
        missing = generate_uid()
        refs = [(CTImageStorage, u) for u in uids] + [(CTImageStorage, missing)]
        txn = generate_uid()
        assert requester.request(arch.port, txn, refs, keep_open=20) == 0
        assert requester.got.is_set(), arch.logs()
        event_type, info, how = requester.reports[0]
        assert (event_type, how) == (2, "same")
        assert info.TransactionUID == txn
        assert info.RetrieveAETitle == "ARCHIVE"
        assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(uids)
        assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [
            (missing, 0x0112)]
        # delivered, so no longer pending (the row goes once the requester's answer is in)
        deadline = time.monotonic() + 10
        while index_rows(tmp_path / "data", "SELECT COUNT(*) FROM commitment") != [(0,)]:
            assert time.monotonic() < deadline, "the delivered request stayed pending"
            time.sleep(0.05)
        # a wrong SOP class for a stored instance: class/instance conflict
        requester.got.clear()
        assert requester.request(arch.port, generate_uid(),
                                 [("1.2.840.10008.5.1.4.1.1.4", uids[0])], keep_open=20) == 0
        assert requester.reports[1][0] == 2
        assert requester.reports[1][1].FailedSOPSequence[0].FailureReason == 0x0119
    finally:
        assert arch.stop() == 0, arch.logs()


def test_report_on_a_new_association_and_a_changed_file_fails(
        tmp_path: Path, requester: Requester) -> None:
    requester.listen()
    arch = Archive(tmp_path / "data", config={"peers": {requester.aet: {
        "ae_title": requester.aet, "host": "127.0.0.1", "port": requester.port}}}).start()
    try:
        files = _instances(tmp_path, 2)
        assert send_files(arch.port, files) == [0, 0]
        uids = _sop_uids(files)
        path = stored_path(tmp_path / "data", uids[1])
        raw = bytearray(path.read_bytes())
        raw[-10] ^= 0xFF  # bit rot: same size
        path.write_bytes(bytes(raw))
        txn = generate_uid()
        assert requester.request(arch.port, txn, [(CTImageStorage, u) for u in uids]) == 0
        assert requester.got.wait(20), arch.logs()
        event_type, info, how = requester.reports[0]
        assert (event_type, how) == (2, "new")
        assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [uids[0]]
        assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [
            (uids[1], 0x0110)]
        flagged = index_rows(tmp_path / "data", "SELECT sop_uid FROM flagged")
        assert flagged == [(uids[1],)]
    finally:
        assert arch.stop() == 0, arch.logs()


def test_bad_requests_get_their_status(tmp_path: Path, requester: Requester) -> None:
    arch = Archive(tmp_path / "data", config={"commitment": {"retry_s": 30}}).start()
    try:
        ae = AE(ae_title=requester.aet)
        ae.add_requested_context(COMMITMENT, SYNTAXES)
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        assert assoc.is_established
        no_txn = Dataset()
        no_txn.ReferencedSOPSequence = _request("1.2.3", [(CTImageStorage, "1.2.3.4")]
                                                ).ReferencedSOPSequence
        status, _ = assoc.send_n_action(no_txn, 1, COMMITMENT, WELL_KNOWN)
        assert int(status.Status) == 0x0120
        status, _ = assoc.send_n_action(_request("1.2.3", []), 1, COMMITMENT, WELL_KNOWN)
        assert int(status.Status) == 0x0120
        status, _ = assoc.send_n_action(_request("1.2.3", [(CTImageStorage, "not a uid")]), 1,
                                        COMMITMENT, WELL_KNOWN)
        assert int(status.Status) == 0x0115
        status, _ = assoc.send_n_action(_request("1.2.3", [(CTImageStorage, "1.2.3.4")]), 7,
                                        COMMITMENT, WELL_KNOWN)
        assert int(status.Status) == 0x0123
        # the requester leaves and is not in peers: the report stays pending, so the same
        # Transaction UID again is a duplicate
        txn = generate_uid()
        status, _ = assoc.send_n_action(_request(txn, [(CTImageStorage, "1.2.3.4")]), 1,
                                        COMMITMENT, WELL_KNOWN)
        assert int(status.Status) == 0
        assoc.release()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not index_rows(
                tmp_path / "data", "SELECT last_error FROM commitment WHERE last_error IS NOT NULL"):
            time.sleep(0.1)
        (error,), = index_rows(tmp_path / "data", "SELECT last_error FROM commitment")
        assert "not in peers" in error
        assoc = ae.associate("127.0.0.1", arch.port, ae_title="ARCHIVE")
        status, _ = assoc.send_n_action(_request(txn, [(CTImageStorage, "1.2.3.4")]), 1,
                                        COMMITMENT, WELL_KNOWN)
        assert int(status.Status) == 0x0131
        assoc.release()
    finally:
        assert arch.stop() == 0, arch.logs()


def test_a_request_survives_kill_9_before_its_report(tmp_path: Path, requester: Requester) -> None:
    """kill -9 between the N-ACTION's Success and the N-EVENT-REPORT: the restarted archive
    still reports (the requester was unreachable until after the crash)."""
    rport = requester.port
    cfg = {"peers": {requester.aet: {"ae_title": requester.aet, "host": "127.0.0.1",
                                     "port": rport}},
           "commitment": {"retry_s": 60}}
    arch = Archive(tmp_path / "data", config=cfg).start()
    files = _instances(tmp_path, 2)
    assert send_files(arch.port, files) == [0, 0]
    uids = _sop_uids(files)
    txn = generate_uid()
    assert requester.request(arch.port, txn, [(CTImageStorage, u) for u in uids]) == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not index_rows(
            tmp_path / "data", "SELECT 1 FROM commitment WHERE last_error IS NOT NULL"):
        time.sleep(0.1)
    assert index_rows(tmp_path / "data", "SELECT transaction_uid FROM commitment") == [(txn,)]
    arch.kill9()
    requester.listen()
    restarted = Archive(tmp_path / "data", config=cfg)
    restarted.port = arch.port
    restarted.start()
    try:
        assert requester.got.wait(20), restarted.logs()
        event_type, info, how = requester.reports[0]
        assert (event_type, how, info.TransactionUID) == (1, "new", txn)
        assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(uids)
        deadline = time.monotonic() + 10
        while index_rows(tmp_path / "data", "SELECT COUNT(*) FROM commitment") != [(0,)]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        assert restarted.stop() == 0, restarted.logs()


def test_orthanc_as_commitment_requester(tmp_path: Path) -> None:
    """Orthanc asks the archive to commit what it sent and gets a Success report back."""
    need_module("requests")
    import requests

    orthanc_bin = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    need(Path(orthanc_bin).exists(), "Orthanc is not installed (apt-get install orthanc)")
    import subprocess

    o_dicom, o_http = free_port(), free_port()
    arch = Archive(tmp_path / "data", config={"peers": {"ORTHANC": {
        "ae_title": "ORTHANC", "host": "127.0.0.1", "port": o_dicom}}}).start()
    cfg = {"Name": "commitment", "StorageDirectory": str(tmp_path / "o-storage"),
           "IndexDirectory": str(tmp_path / "o-index"), "DicomAet": "ORTHANC",
           "DicomPort": o_dicom, "HttpPort": o_http, "HttpBindAddress": "127.0.0.1",
           "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
           "DicomCheckCalledAet": False, "Plugins": [],
           "DicomModalities": {"archive": ["ARCHIVE", "127.0.0.1", arch.port]}}
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    log = (tmp_path / "orthanc.log").open("wb")
    orthanc = subprocess.Popen([orthanc_bin, str(tmp_path / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_port(o_http, timeout=30)
        base = f"http://127.0.0.1:{o_http}"
        files = _instances(tmp_path, 2)
        ids = [requests.post(f"{base}/instances", data=f.read_bytes(), timeout=10).json()["ID"]
               for f in files]
        sent = requests.post(f"{base}/modalities/archive/store",
                             json={"Resources": ids, "StorageCommitment": True}, timeout=30)
        assert sent.status_code == 200, sent.text
        job = sent.json()
        commitment = job.get("StorageCommitmentTransactionUID")
        assert commitment, job
        status: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = requests.get(f"{base}/storage-commitment/{commitment}", timeout=10).json()
            if status.get("Status") != "Pending":
                break
            time.sleep(0.2)
        assert status.get("Status") == "Success", (status, arch.logs())
        assert sorted(s["SOPInstanceUID"] for s in status["Success"]) == sorted(_sop_uids(files))
    finally:
        orthanc.terminate()
        orthanc.wait(10)
        log.close()
        assert arch.stop() == 0, arch.logs()
