"""The streaming requestor (router forwarding) against real and hostile storage SCPs.

Real: a pynetdicom SCP receives a file byte for byte (as stored, after the file meta).
Hostile: an SCP that rejects, one that answers garbage, one that aborts in the middle
of a C-STORE, one that closes without answering. Each is a clear error, never a hang.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module

pytestmark = pytest.mark.integration

need_module("pynetdicom")

from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402
from pacsinfra.pacs.fastscp.codec import ProtocolError  # noqa: E402
from pacsinfra.pacs.fastscp.part10 import read_meta  # noqa: E402
from pacsinfra.pacs.fastscp.requestor import AssociationFailed, StreamingRequestor  # noqa: E402
from pacsinfra.pacs.fastscp.wire import PeerClosed  # noqa: E402


def _open(port: int) -> StreamingRequestor:
    return StreamingRequestor.open("127.0.0.1", port, calling="ROUTER", called="DEST",
                                   contexts=[(CTImageStorage, ExplicitVRLittleEndian)],
                                   max_pdu=16384, timeout=5, network_timeout=5)


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return write(make_instance(rows=128, cols=128, patient_id="REQ"), tmp_path / "i.dcm")


def _scp(handler: Callable[[Any], int]) -> Iterator[int]:
    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, handler)])
    try:
        yield port
    finally:
        server.shutdown()


def test_file_sent_byte_for_byte_in_small_pdus(instance: Path) -> None:
    got: list[bytes] = []

    def on_store(event: Any) -> int:
        got.append(event.request.DataSet.getvalue())
        return 0

    for port in _scp(on_store):
        link = _open(port)
        assert link.syntaxes(CTImageStorage) == [ExplicitVRLittleEndian]
        from pydicom import dcmread

        ds = dcmread(instance)
        for _ in range(3):  # one association, several stores
            assert link.store_file(instance, CTImageStorage, ds.SOPInstanceUID,
                                   ExplicitVRLittleEndian) == 0
        link.release()
    raw = instance.read_bytes()
    offset = read_meta(instance).dataset_offset
    assert got == [raw[offset:]] * 3  # 32 KiB over 16 KiB PDUs, as stored


def test_failure_status_is_returned(instance: Path) -> None:
    for port in _scp(lambda event: 0xA700):
        link = _open(port)
        assert link.store_file(instance, CTImageStorage, "1.2.3", ExplicitVRLittleEndian) == 0xA700
        link.release()


def test_abort_in_the_middle_is_peer_closed(instance: Path) -> None:
    def on_store(event: Any) -> int:
        event.assoc.abort()
        return 0

    for port in _scp(on_store):
        link = _open(port)
        with pytest.raises((PeerClosed, ProtocolError)):
            link.store_file(instance, CTImageStorage, "1.2.3", ExplicitVRLittleEndian)
        assert not link.is_established


def _raw_server(reply: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server that reads one PDU and then does ``reply`` (hostile SCPs)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            kind, length = struct.unpack(">BxL", conn.recv(6, socket.MSG_WAITALL))
            conn.recv(length, socket.MSG_WAITALL)
            reply(conn)
            time.sleep(0.5)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield port
    finally:
        srv.close()
        t.join(5)


@pytest.mark.parametrize("name,reply,words", [
    ("reject", lambda c: c.sendall(b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"), "rejected"),
    ("abort", lambda c: c.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"), "aborted"),
    ("garbage", lambda c: c.sendall(b"\x02\x00\x00\x00\x00\x03abc"), "failed"),
    ("close", lambda c: None, "failed"),
    ("huge", lambda c: c.sendall(b"\x02\x00\x7f\xff\xff\xff"), "failed"),
])
def test_hostile_acceptor_is_a_clear_failure(name: str, reply: Callable[[socket.socket], None],
                                             words: str) -> None:
    for port in _raw_server(reply):
        t0 = time.monotonic()
        with pytest.raises(AssociationFailed, match=words):
            _open(port)
        assert time.monotonic() - t0 < 5
