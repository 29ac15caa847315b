"""PDUs on a blocking socket: read them whole or peek at the first one, never more than
a limit.

Every read checks the PDU header's announced length against the caller's limit
*before* a byte of the body is read or a buffer is sized for it: a peer announcing
4 GiB costs six bytes of memory. Encoding and decoding are :mod:`.codec`'s.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass

from pacsinfra.pacs.fastscp.codec import (
    HEADER_SIZE,
    REASON_INVALID_PARAMETER,
    ProtocolError,
    parse_header,
    pdu_name,
)


class PeerClosed(Exception):
    """The connection ended (EOF, reset, or timeout) before a whole PDU arrived."""


class PduTooLarge(ProtocolError):
    """A PDU header announced more bytes than the reader accepts."""

    reason = REASON_INVALID_PARAMETER

    def __init__(self, kind: int, length: int, limit: int) -> None:
        super().__init__(f"{pdu_name(kind)} of {length} bytes announced (limit {limit})")
        self.kind, self.length, self.limit = kind, length, limit


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
    recv_exact(sock, memoryview(buf)[:HEADER_SIZE])
    return parse_header(buf)


def read_pdu(sock: socket.socket, limit: int) -> tuple[int, bytes]:
    """One whole PDU: (type, body); :class:`PduTooLarge` when its header announces more
    than ``limit`` body bytes (nothing of the body is read then)."""
    head = bytearray(HEADER_SIZE)
    kind, length = read_header(sock, head)
    if length > limit:
        raise PduTooLarge(kind, length, limit)
    body = bytearray(length)
    recv_exact(sock, memoryview(body))
    return kind, bytes(body)


@dataclass(frozen=True)
class Peeked:
    """What :func:`peek_pdu` saw: a whole PDU (``raw``, header included), or why not
    (``why``: ``"timeout"``, ``"closed"``, ``"too-large"``), with the header's fields
    when it arrived."""

    raw: bytes | None
    why: str = ""  # "timeout", "closed", "too-large", "stalled"
    kind: int | None = None
    length: int | None = None


STALL_BYTES = 64 << 10  # a partial PDU that fills the receive buffer (at least this)...
STALL_SECONDS = 0.2  # ...and stops growing for this long cannot be peeked whole


def peek_pdu(sock: socket.socket, deadline: float, limit: int) -> Peeked:
    """The first PDU on ``sock``, read without consuming it (``MSG_PEEK``), so whoever
    reads the socket next sees every byte.

    Gives up at ``deadline`` (``time.monotonic()``), when the peer closes, or as soon
    as the header announces more than ``limit`` body bytes (the body is never waited
    for, nor held: it stays in the kernel's receive buffer until the socket closes).
    ``"stalled"``: a PDU within the limit but larger than the socket's receive buffer
    cannot be peeked whole (it must be read to make room for the rest).
    """
    want = HEADER_SIZE
    seen, grew = 0, time.monotonic()
    try:  # the kernel reports twice what was set; about half of that holds data
        stall = max(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 4, STALL_BYTES)
    except OSError:
        stall = STALL_BYTES
    kind: int | None = None
    length: int | None = None
    poller = select.poll()
    # POLLRDHUP: the peer closed its side. MSG_PEEK alone cannot tell "closed after a
    # partial PDU" from "the rest is still coming" (the socket stays readable).
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Peeked(None, "timeout", kind, length)
        try:
            events = poller.poll(left * 1000)
            if not events:
                return Peeked(None, "timeout", kind, length)
            data = sock.recv(want, socket.MSG_PEEK)
        except (OSError, ValueError):
            return Peeked(None, "closed", kind, length)
        if not data:
            return Peeked(None, "closed", kind, length)
        if kind is None and len(data) >= HEADER_SIZE:
            kind, length = parse_header(data)
            if length > limit:
                return Peeked(None, "too-large", kind, length)
            want = HEADER_SIZE + length
        if len(data) >= want:
            return Peeked(bytes(data[:want]), "", kind, length)
        if any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in events):
            return Peeked(None, "closed", kind, length)  # nothing more will come
        now = time.monotonic()
        if len(data) > seen:
            seen, grew = len(data), now
        elif seen >= stall and now - grew >= STALL_SECONDS:
            return Peeked(None, "stalled", kind, length)
        # Part of the PDU is in flight: wait a moment rather than spin on MSG_PEEK
        # (the socket polls readable while any byte is buffered).
        time.sleep(0.0005)


def send_and_close(sock: socket.socket, data: bytes = b"", *, linger: float = 0.5,
                   drain: int = 1 << 16) -> None:
    """Send ``data`` (a refusal), then close so the peer can read it: our side shuts
    down writing, and up to ``drain`` bytes the peer still sends within ``linger``
    seconds are read and dropped (closing with unread bytes would reset the connection
    and could destroy the refusal before the peer reads it). Never raises."""
    try:
        if data:
            sock.settimeout(linger)
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + linger
        scratch = bytearray(min(drain, 1 << 14))
        left = drain
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            n = sock.recv_into(scratch, min(len(scratch), left))
            if n == 0:
                break
            left -= n
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass
