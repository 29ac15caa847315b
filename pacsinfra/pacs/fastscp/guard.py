"""Sockets that check every PDU header before pynetdicom reads the body, and clean up
after it.

pynetdicom reads a PDU by asking for its 6-byte header and then for as many bytes as
the header announces, buffering them all: a peer announcing 4 GiB gets 4 GiB of our
memory if it sends that much. The connections this listener hands to pynetdicom are
:class:`GuardedSocket` (plain TCP) or :class:`GuardedSSLSocket` (TLS) instances,
whose ``recv`` follows the PDU stream as it passes (:class:`PduStream`) and, the
moment a header announces more than the limits allow, sends an A-ABORT and reports
end of stream instead of the body; pynetdicom then ends the association as if the
peer had closed it. The same guard gives the A-ASSOCIATE-RQ a deadline: until it has
arrived whole, reads time out at the connection's deadline.

Only ``recv`` without flags is guarded (pynetdicom's way of reading); the streaming
path reads with ``recv_into`` and ``MSG_PEEK`` and checks PDUs itself.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacsinfra.pacs.fastscp import codec


@dataclass(frozen=True)
class PduLimits:
    """What a peer may send: ``p_data`` bytes per P-DATA-TF body (the Maximum Length we
    announced, plus slack), ``other`` bytes per body of any other PDU."""

    p_data: int
    other: int

    def check(self, kind: int, length: int) -> tuple[str, str] | None:
        """(kind of refusal, why) when a PDU with this header must not be read, or None."""
        if kind in (codec.A_RELEASE_RQ, codec.A_RELEASE_RP, codec.A_ABORT, codec.A_ASSOCIATE_RJ):
            return None if length == 4 else ("protocol",
                                             f"{codec.pdu_name(kind)} of {length} bytes")
        limit = self.p_data if kind == codec.P_DATA_TF else self.other
        if length > limit:
            return "too-large", f"{codec.pdu_name(kind)} of {length} bytes announced (limit {limit})"
        return None


class PduStream:
    """Follows a PDU byte stream chunk by chunk: where each header is, whether it is
    allowed, when the first PDU (the A-ASSOCIATE-RQ) is complete."""

    def __init__(self, limits: PduLimits) -> None:
        self.limits = limits
        self._header = bytearray()
        self._body_left = 0
        self.pdus = 0  # PDUs complete so far
        self.valid = 0

    def feed(self, data: bytes) -> tuple[str, str] | None:
        """Account for ``data``; (kind, why) to stop reading, or None. When stopping,
        :attr:`valid` is how many bytes of ``data`` came before the offending header."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._body_left:
                n = min(self._body_left, len(view) - pos)
                self._body_left -= n
                pos += n
                if not self._body_left:
                    self.pdus += 1
                continue
            start = pos - len(self._header)
            n = min(codec.HEADER_SIZE - len(self._header), len(view) - pos)
            self._header += view[pos:pos + n]
            pos += n
            if len(self._header) < codec.HEADER_SIZE:
                return None
            kind, length = codec.parse_header(self._header)
            self._header.clear()
            why = self.limits.check(kind, length)
            if why is not None:
                self.valid = max(start, 0)
                return why
            self._body_left = length
            if not length:
                self.pdus += 1
        return None


class _Guard:
    """The guarding ``recv``, mixed into a socket class; and the temporary files of data
    sets received on the connection, removed when it closes (see
    :func:`pacsinfra.pacs.compat.receive_datasets_to`)."""

    _stream: PduStream | None = None
    _files: list[Any] | None = None
    _violation: Callable[[str, str], None] | None = None
    _deadline: float | None = None
    _stopped: str | None = None

    def guard(self, limits: PduLimits, *, deadline: float | None,
              violation: Callable[[str, str], None]) -> None:
        """Start checking: ``deadline`` (``time.monotonic()``) for the first PDU to be
        whole; ``violation(kind, why)`` is called once if the peer oversteps."""
        self._stream = PduStream(limits)
        self._violation = violation
        self._deadline = deadline
        if deadline is not None:
            self.settimeout(max(deadline - time.monotonic(), 0.001))  # type: ignore[attr-defined]

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if flags or self._stream is None:
            return super().recv(buflen, flags)  # type: ignore[misc, no-any-return]
        if self._stopped is not None:
            return b""
        try:
            data: bytes = super().recv(buflen)  # type: ignore[misc]
        except TimeoutError:
            if self._deadline is not None and self._stream.pdus == 0:
                self._stop(("timeout", "no whole A-ASSOCIATE-RQ before the request deadline"),
                           abort=False)
                return b""
            raise
        why = self._stream.feed(data)
        if why is not None:
            self._stop(why, abort=True)
            return data[:self._stream.valid]  # what came before the offending header
        if self._deadline is not None and self._stream.pdus:
            self._deadline = None
            self.settimeout(None)  # type: ignore[attr-defined]
        return data

    def track_file(self, handle: Any) -> None:
        """Remove ``handle``'s file (if it is still there) when this connection closes."""
        if self._files is None:
            self._files = []
        self._files.append(handle)

    def close(self) -> None:
        files, self._files = self._files, None
        for handle in files or ():
            try:
                handle.close()
                os.unlink(handle.name)
            except OSError:  # already removed by its C-STORE handler
                pass
        super().close()  # type: ignore[misc]

    def _stop(self, why: tuple[str, str], *, abort: bool) -> None:
        self._stopped = why[1]
        if abort:
            try:
                self.settimeout(1.0)  # type: ignore[attr-defined]
                self.sendall(codec.abort(codec.ABORT_PROVIDER,  # type: ignore[attr-defined]
                                         codec.REASON_INVALID_PARAMETER))
            except OSError:
                pass
        try:
            self.shutdown(socket.SHUT_RD)  # type: ignore[attr-defined]
        except OSError:
            pass
        if self._violation is not None:
            self._violation(*why)


class GuardedSocket(_Guard, socket.socket):
    """A plain TCP connection whose ``recv`` is guarded once :meth:`guard` is called."""

    pending: Any = None  # the listener's bookkeeping for a connection not yet associated

    @classmethod
    def adopt(cls, sock: socket.socket) -> GuardedSocket:
        """The same connection as a guarded socket (``sock`` is detached)."""
        timeout = sock.gettimeout()
        guarded = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.settimeout(timeout)
        return guarded


class GuardedSSLSocket(_Guard, ssl.SSLSocket):
    """The same for a TLS connection (set as the server context's ``sslsocket_class``)."""
