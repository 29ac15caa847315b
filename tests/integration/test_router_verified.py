"""The router never forwards a spool file that changed on disk after it was received.

Two instances wait in the spool while their destination (DCMTK storescp) is down; one
file then has a byte flipped behind the router's back. When the destination comes up,
the sound instance is delivered and the changed one is dead-lettered with the reason,
never sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import need_binary
from test_router_support import Router, StoreSCP, instance, send, wait_for

pytestmark = [pytest.mark.integration]


def test_a_spool_file_changed_on_disk_is_never_sent(tmp_path: Path) -> None:
    need_binary("storescp")
    dest = StoreSCP(tmp_path / "dest")  # not started yet: rows wait in the spool
    router = Router(tmp_path / "router", {
        "destinations": {"pacs": {**dest.dest(), "max_associations": 1}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "retry": {"max_attempts": 100, "initial_backoff": 0.2, "max_backoff": 0.5,
                  "jitter": 0},
        "queue": {"keep_done_seconds": 600}})
    router.start()
    try:
        good, bad = instance(number=1), instance(number=2)  # two studies
        assert set(send(router.port, [good, bad]).values()) == {0}
        with router.db() as c:
            (spool,), = c.execute("SELECT spool FROM items WHERE sop_uid = ?",
                                  (str(bad.SOPInstanceUID),)).fetchall()
        path = Path(router.cfg["spool_dir"]) / spool
        raw = bytearray(path.read_bytes())
        raw[-3] ^= 0xFF  # a pixel byte: same size, still a valid DICOM file
        path.write_bytes(bytes(raw))
        dest.start()
        wait_for(lambda: router.states() == {"done": 1, "dead": 1}, 30, "one sent, one dead")
        assert dest.sop_uids() == {str(good.SOPInstanceUID)}
        with router.db() as c:
            (error,), = c.execute("SELECT last_error FROM items WHERE state = 'dead'").fetchall()
        assert "changed since it was received" in error
        assert "CRC-32 mismatch" in router.log.read_text()
    finally:
        router.stop()
        dest.stop()
