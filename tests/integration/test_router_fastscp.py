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
