"""verify/smoke.py against real third-party archives: Orthanc and DCMTK dcmqrscp."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, need_binary, need_module

pytestmark = pytest.mark.integration

need_module("pynetdicom")

from pacsinfra.pacs.config_common import Peer  # noqa: E402
from pacsinfra.verify.smoke import FAIL, PASS, SKIP, OrthancDeleter, run_smoke  # noqa: E402
from pacsinfra.verify.study import PATIENT_NAME, is_test_uid  # noqa: E402

RCV_AE = "PXSMOKERCV"


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {log.read_text(errors='replace')[-800:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not open after {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_orthanc(d: Path, dicom_port: int, http_port: int, modalities: dict[str, list[object]],
                   **extra: object) -> subprocess.Popen[bytes]:
    cfg = {
        "Name": "pacsinfra-smoke", "StorageDirectory": str(d / "storage"),
        "IndexDirectory": str(d / "index"), "Plugins": [],
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomServerEnabled": True, "DicomAet": "ORTHANC",
        "DicomPort": dicom_port, "DicomCheckCalledAet": True, "DicomModalities": modalities,
        "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
        "StorageCompression": False, "ConcurrentJobs": 1, "HttpThreadsCount": 4, **extra,
    }
    (d / "orthanc.json").write_text(json.dumps(cfg))
    log = d / "orthanc.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["Orthanc", str(d / "orthanc.json")], stdout=fh, stderr=fh,
                                stdin=subprocess.DEVNULL)
    try:
        _wait_port(dicom_port, proc, log)
        _wait_port(http_port, proc, log)
    except BaseException:
        _stop(proc)
        raise
    return proc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    need_binary("Orthanc")
    d = tmp_path_factory.mktemp("orthanc")
    dicom_port, http_port, rcv_port = free_port(), free_port(), free_port()
    proc = _start_orthanc(d, dicom_port, http_port, {"rcv": [RCV_AE, "127.0.0.1", rcv_port]})
    try:
        yield {"peer": Peer(ae_title="ORTHANC", host="127.0.0.1", port=dicom_port),
               "http": f"http://127.0.0.1:{http_port}", "rcv_port": rcv_port}
    finally:
        _stop(proc)


DCMQRSCP_CFG = """\
NetworkTCPPort  = {port}
MaxPDUSize      = 65536
MaxAssociations = 8
HostTable BEGIN
pxrcv   = ({rcv_ae}, 127.0.0.1, {rcv_port})
pxsmoke = (PXSMOKE, 127.0.0.1, {rcv_port})
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
DCMQR   {db}   RW   (200, 1024mb)   ANY
AETable END
"""


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    need_binary("dcmqrscp")
    d = tmp_path_factory.mktemp("dcmqrscp")
    (d / "db").mkdir()
    port, rcv_port = free_port(), free_port()
    (d / "dcmqrscp.cfg").write_text(DCMQRSCP_CFG.format(port=port, rcv_ae=RCV_AE,
                                                        rcv_port=rcv_port, db=d / "db"))
    log = d / "dcmqrscp.log"
    with open(log, "wb") as fh:
        # Forking mode: with --single-process dcmqrscp 3.6.7 exits after the first association.
        proc = subprocess.Popen(["dcmqrscp", "-c", str(d / "dcmqrscp.cfg")],
                                stdout=fh, stderr=fh, stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, log)
        yield {"peer": Peer(ae_title="DCMQR", host="127.0.0.1", port=port),
               "rcv_port": rcv_port, "db": d / "db"}
    finally:
        _stop(proc)


def _steps(report, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.result for s in report.steps if s.name == name]


def test_smoke_against_orthanc_with_delete(orthanc: dict[str, object]) -> None:
    peer = orthanc["peer"]
    assert isinstance(peer, Peer)
    report = run_smoke(peer, receiver_port=int(orthanc["rcv_port"]),  # type: ignore[call-overload]
                       deleters={"ORTHANC": OrthancDeleter(str(orthanc["http"]))})
    print(report.table())
    assert report.ok, report.table()
    assert [s.name for s in report.steps] == [
        "c-echo", "generate", "c-store", "arrival", "c-find study", "c-find series",
        "c-find image", "c-move+compare", "delete"]
    assert all(s.result == PASS for s in report.steps)
    assert report.instances == 12 and is_test_uid(report.study_uid)
    # Orthanc really holds nothing of it any more.
    with urllib.request.urlopen(f"{orthanc['http']}/studies", timeout=10) as resp:
        assert json.loads(resp.read()) == []


def test_smoke_against_dcmqrscp_reports_it_cannot_delete(dcmqrscp: dict[str, object]) -> None:
    peer = dcmqrscp["peer"]
    assert isinstance(peer, Peer)
    report = run_smoke(peer, receiver_port=int(dcmqrscp["rcv_port"]),  # type: ignore[call-overload]
                       series=2, instances=3)
    print(report.table())
    assert report.ok, report.table()
    assert _steps(report, "c-move+compare") == [PASS]
    assert _steps(report, "delete") == [SKIP]
    assert "cannot delete" in report.steps[-1].detail
    stored = list(Path(str(dcmqrscp["db"])).glob("*"))
    assert len([p for p in stored if p.name != "index.dat"]) == 6


FORWARD_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'dcmqr')
end
"""


def test_smoke_through_a_forwarding_entry_waits_at_both_archives(
    dcmqrscp: dict[str, object], tmp_path: Path,
) -> None:
    # Orthanc as the entry point, forwarding every stored instance to dcmqrscp (a Lua
    # rule): the study must arrive at both, and C-MOVE from both must return it intact.
    need_binary("Orthanc")
    qr = dcmqrscp["peer"]
    assert isinstance(qr, Peer)
    rcv_port = int(str(dcmqrscp["rcv_port"]))
    (tmp_path / "forward.lua").write_text(FORWARD_LUA)
    dicom_port, http_port = free_port(), free_port()
    proc = _start_orthanc(tmp_path, dicom_port, http_port, {
        "rcv": [RCV_AE, "127.0.0.1", rcv_port], "dcmqr": [qr.ae_title, qr.host, qr.port]},
        LuaScripts=[str(tmp_path / "forward.lua")])
    try:
        entry = Peer(ae_title="ORTHANC", host="127.0.0.1", port=dicom_port)
        report = run_smoke(entry, [entry, qr], receiver_port=rcv_port, series=2, instances=2,
                           deleters={"ORTHANC": OrthancDeleter(f"http://127.0.0.1:{http_port}")})
    finally:
        _stop(proc)
    print(report.table())
    assert report.ok, report.table()
    assert _steps(report, "arrival") == [PASS, PASS]
    assert _steps(report, "c-move+compare") == [PASS, PASS]
    assert _steps(report, "delete") == [PASS, SKIP]


def test_smoke_fails_clearly_when_the_destination_is_unknown(orthanc: dict[str, object]) -> None:
    # A receiver AE the archive does not know: the C-MOVE step must FAIL, with the status.
    peer = orthanc["peer"]
    assert isinstance(peer, Peer)
    report = run_smoke(peer, receiver_ae="PXUNKNOWN", series=1, instances=2,
                       deleters={"ORTHANC": OrthancDeleter(str(orthanc["http"]))})
    assert not report.ok
    move = [s for s in report.steps if s.name == "c-move+compare"][0]
    # Orthanc answers 0xC000 (pynetdicom-based archives 0xA801): either way, a FAIL with it.
    assert move.result == FAIL and "C-MOVE final status 0x" in move.detail
    assert "FAILED" in report.table()


def test_smoke_reports_an_unreachable_archive(tmp_path: Path) -> None:
    dead = Peer(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    report = run_smoke(dead, dimse_timeout=2)
    assert not report.ok
    assert report.steps[0].name == "c-echo" and report.steps[0].result == FAIL
    assert report.steps[-1].name == "c-store" and report.steps[-1].result == FAIL


def test_synthetic_study_is_marked_as_test_data() -> None:
    from pacsinfra.verify.study import make_study

    study = make_study("ct", series=2, instances=2, scale=0.1)
    assert {str(d.PatientName) for d in study} == {PATIENT_NAME}
    assert all(str(d.PatientID).startswith("PXTEST-") and is_test_uid(d.SOPInstanceUID)
               for d in study)
    assert len({d.SeriesInstanceUID for d in study}) == 2


def test_digests_catch_a_changed_element_but_not_an_added_one() -> None:
    import copy

    from pydicom.uid import ImplicitVRLittleEndian

    from pacsinfra.verify.study import dataset_digest, make_study, pixel_digest

    sent = make_study("mr", series=1, instances=1, scale=0.1)[0]
    tags = set(sent.keys())
    same = copy.deepcopy(sent)
    same.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # stored another way: fine
    same.InstitutionAddress = "added by the archive"  # an extra element: fine
    assert dataset_digest(same, tags) == dataset_digest(sent)
    changed = copy.deepcopy(sent)
    changed.PatientID = "SOMEONE-ELSE"
    assert dataset_digest(changed, tags) != dataset_digest(sent)
    flipped = copy.deepcopy(sent)
    pixels = bytearray(flipped.PixelData)
    pixels[100] ^= 1
    flipped.PixelData = bytes(pixels)
    assert pixel_digest(flipped) != pixel_digest(sent)


def test_command_line_smoke(dcmqrscp: dict[str, object],
                            capsys: pytest.CaptureFixture[str]) -> None:
    from pacsinfra.verify.__main__ import main

    peer = dcmqrscp["peer"]
    assert isinstance(peer, Peer)
    rc = main(["smoke", "--entry", f"{peer.ae_title}@{peer.host}:{peer.port}",
               "--receiver", f"{RCV_AE}@127.0.0.1:{dcmqrscp['rcv_port']}",
               "--series", "1", "--instances", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "smoke test PASSED" in out and "SKIP" in out
