"""Upper-layer PDUs (PS3.8 9.3) on a blocking socket: read them, encode the ones we send.

Association PDUs are decoded and encoded with pynetdicom's own PDU classes; only
P-DATA-TF, A-RELEASE-RP and A-ABORT, which are a few fixed bytes, are built here.
"""

from __future__ import annotations

import select
import socket
import struct
import time

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

_HEADER = struct.Struct(">BxL")
# An A-ASSOCIATE-RQ larger than this is left to pynetdicom (128 contexts x a few
# syntaxes stays far below it).
MAX_RQ_BYTES = 1 << 20


class PeerClosed(Exception):
    """The connection ended (EOF, reset, or timeout) before a whole PDU arrived."""


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` (blocking, the socket's own timeout applies)."""
    got, want = 0, len(view)
    while got < want:
        try:
            n = sock.recv_into(view[got:], want - got)
        except (OSError, TimeoutError) as exc:
            raise PeerClosed(str(exc)) from exc
        if n == 0:
            raise PeerClosed("connection closed by peer")
        got += n


def read_header(sock: socket.socket, buf: bytearray) -> tuple[int, int]:
    """Read a PDU header into ``buf[:6]``; return (type, length)."""
    view = memoryview(buf)[:6]
    recv_exact(sock, view)
    pdu_type, length = _HEADER.unpack_from(buf, 0)
    return pdu_type, length


def peek_pdu(sock: socket.socket, timeout: float) -> bytes | None:
    """The first PDU on ``sock``, read without consuming it (MSG_PEEK), or None.

    None when the peer sends nothing whole within ``timeout`` seconds, closes, or
    announces a PDU larger than :data:`MAX_RQ_BYTES`; whoever reads the socket next
    sees every byte, so pynetdicom can then handle the connection as usual.
    """
    deadline = time.monotonic() + timeout
    want = 6
    poller = select.poll()
    # POLLRDHUP: the peer closed its side. MSG_PEEK alone cannot tell "closed after a
    # partial PDU" from "the rest is still coming" (the socket stays readable).
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            events = poller.poll(left * 1000)
            if not events:
                return None
            data = sock.recv(want, socket.MSG_PEEK)
        except (OSError, ValueError):
            return None
        if not data:
            return None
        if len(data) >= 6 and want == 6:
            _, length = _HEADER.unpack_from(data, 0)
            if length > MAX_RQ_BYTES:
                return None
            want = 6 + length
        if len(data) >= want:
            return data[:want]
        if any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in events):
            return None  # closed with a partial PDU: nothing more will come
        # Part of the PDU is in flight: wait a moment rather than spin on MSG_PEEK
        # (the socket polls readable while any byte is buffered).
        time.sleep(0.0005)


def p_data(context_id: int, control: int, payload: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV (``control``: bit 0 command, bit 1 last fragment)."""
    item = struct.pack(">LBB", len(payload) + 2, context_id, control)
    return _HEADER.pack(P_DATA_TF, len(item) + len(payload)) + item + payload


def release_rp() -> bytes:
    """An A-RELEASE-RP PDU."""
    return _HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4


def abort(source: int = 2, reason: int = 0) -> bytes:
    """An A-ABORT PDU (source 2: service provider; reason 0 unspecified, 1 unrecognised
    PDU, 2 unexpected PDU, 6 invalid PDU parameter)."""
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))
