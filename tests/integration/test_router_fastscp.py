"""The router's receive path is the streaming SCP (fastscp): it survives hostile PDUs,
adopts the received file as the spool file, and morphs copies from it."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from test_router_support import Router, StatusSCP, StoreSCP, instance, send, wait_for

pytestmark = [pytest.mark.integration]


def test_streaming_receive_forwards_as_received_and_morphed(tmp_path: Path) -> None:
    plain, morphed = StoreSCP(tmp_path / "plain", "PLAIN"), StoreSCP(tmp_path / "morphed", "MORPHED")
    plain.start()
    morphed.start()
    router = Router(tmp_path / "router", {
        "destinations": {"plain": plain.dest(), "morphed": morphed.dest()},
        "rules": [
            {"name": "as-is", "forward": ["plain"]},
            {"name": "prefixed", "forward": ["morphed"],
             "edits": [{"op": "prefix", "tag": "AccessionNumber", "value": "SITEA-"}]},
        ],
    })
    router.start()
    try:
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage

        # a protocol violation on a storage association: only that one is aborted
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
        assert assoc.is_established
        garbage = b"\xff" * 33
        item = struct.pack(">LBB", len(garbage) + 2, 1, 0x03) + garbage
        assoc.dul.socket.socket.sendall(struct.pack(">BxL", 0x04, len(item)) + item)
        deadline = time.monotonic() + 10
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert assoc.is_aborted
        assert "aborting association from MODALITY: bad command set" in router.log.read_text()

        datasets = [instance(modality="CT", number=i) for i in range(1, 6)]
        for ds in datasets:
            ds.AccessionNumber = "A1"
        acked = send(router.port, datasets)
        assert set(acked.values()) == {0}, acked
        wait_for(lambda: len(plain.files()) == 5 and len(morphed.files()) == 5, 30,
                 "both deliveries")
        assert {dcmread(f).AccessionNumber for f in plain.files()} == {"A1"}
        assert {dcmread(f).AccessionNumber for f in morphed.files()} == {"SITEA-A1"}
        assert plain.sop_uids() == morphed.sop_uids() == {str(d.SOPInstanceUID) for d in datasets}
        wait_for(router.drained, 30, "queue drained")
        spool = Path(router.cfg["spool_dir"])
        assert not list((spool / ".incoming").iterdir()), "temp files left in .incoming"
    finally:
        router.stop()
        plain.stop()
        morphed.stop()


def test_spool_file_is_the_received_file(tmp_path: Path) -> None:
    """The unmodified delivery's spool file is byte-identical to what was sent (after the
    file meta), i.e. the streamed temp file itself, not a re-encoding."""
    dest = StatusSCP(0xA700, "BUSY")  # refuses for now: the item stays spooled
    router = Router(tmp_path / "router", {
        "destinations": {"down": dest.dest()},
        "rules": [{"name": "all", "forward": ["down"]}],
        "retry": {"max_attempts": 50, "initial_backoff": 30},
    })
    router.start()
    try:
        ds = instance(modality="MR")
        sent = tmp_path / "sent.dcm"
        ds.save_as(sent, enforce_file_format=True)
        assert send(router.port, [dcmread(sent)]) == {str(ds.SOPInstanceUID): 0}
        with router.db() as c:
            (rel,) = c.execute("SELECT spool FROM items").fetchone()
        spooled = dcmread(Path(router.cfg["spool_dir"]) / rel)
        assert spooled.SOPInstanceUID == ds.SOPInstanceUID
        assert spooled.PixelData == dcmread(sent).PixelData
    finally:
        router.stop()
        dest.stop()


def _store_command(sop_class: str, sop_uid: str) -> bytes:
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = 0x0001
    cmd.MessageID = 7
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_uid
    raw = encode(cmd, True, True)
    assert raw is not None
    return raw


def _pdv(ctx: int, control: int, payload: bytes) -> bytes:
    item = struct.pack(">LBB", len(payload) + 2, ctx, control) + payload
    return struct.pack(">BxL", 0x04, len(item)) + item


def test_refused_and_interrupted_instances_leave_no_spool_file(tmp_path: Path) -> None:
    """The streaming path writes straight into the spool: an instance answered with a
    failure, or cut off mid-transfer, must leave no file behind; only queued ones stay."""
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    dest = StatusSCP(0xA700, "BUSY")  # refuses for now: queued items stay spooled
    router = Router(tmp_path / "router", {
        "destinations": {"down": dest.dest()},
        "rules": [{"name": "all", "forward": ["down"]}],
        "retry": {"max_attempts": 50, "initial_backoff": 30},
    })
    router.start()
    spool = Path(router.cfg["spool_dir"])

    def spooled() -> set[str]:
        return {f"{p.parent.name}/{p.name}" for p in spool.glob("??/*")}

    try:
        ok = instance(modality="CT")
        assert send(router.port, [ok]) == {str(ok.SOPInstanceUID): 0}

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        # A data set whose first element claims 64 bytes and has 3: refused (0xC000).
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
        assert assoc.is_established
        ctx = next(iter(assoc.accepted_contexts)).context_id
        sock = assoc.dul.socket.socket
        sock.sendall(_pdv(ctx, 0x03, _store_command(CTImageStorage, generate_uid()))
                     + _pdv(ctx, 0x02, b"\x08\x00\x18\x00UI\x40\x001.2"))
        deadline = time.monotonic() + 10
        while "unreadable" not in router.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "unreadable" in router.log.read_text()
        assoc.abort()
        # A data set cut off by an A-RELEASE-RQ: the association is aborted.
        assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        sock.sendall(_pdv(ctx, 0x03, _store_command(CTImageStorage, generate_uid()))
                     + _pdv(ctx, 0x00, b"\x08\x00\x05\x00CS\x00\x00"))
        sock.sendall(struct.pack(">BxL", 0x05, 4) + b"\x00" * 4)
        deadline = time.monotonic() + 10
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert assoc.is_aborted

        with router.db() as c:
            queued = {r[0] for r in c.execute("SELECT spool FROM items")}
        assert len(queued) == 1
        wait_for(lambda: spooled() == queued, 10, "only the queued file in the spool")
    finally:
        router.stop()
        dest.stop()
