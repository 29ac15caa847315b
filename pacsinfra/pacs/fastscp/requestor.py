"""A requestor (SCU) association on a plain socket, for sending stored files.

The router forwards files it already holds in DICOM form; pynetdicom would read
each one, queue its PDUs through several threads and poll for the answer. Here
the association is a blocking socket owned by the calling thread: the
A-ASSOCIATE-RQ/AC go through :mod:`pacsinfra.pacs.compat`, everything else through
:mod:`.codec`; a C-STORE-RQ is a few bytes, the data set goes from the file to the
socket with ``sendfile`` (no copy through Python), fragmented to the peer's maximum
PDU, and the response is read on the same thread. Every PDU is checked against the
association's phase (:mod:`.state`). TLS is not served here (the caller uses
pynetdicom for TLS destinations).

Errors: :class:`AssociationFailed` when the association cannot be established
(refused, rejected, timed out); :class:`~.wire.PeerClosed` or
:class:`~.codec.ProtocolError` when it breaks while in use. Either way the
requestor is closed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from pacsinfra.pacs.compat import (
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    AssociateRequest,
    ProposedContext,
    decode_associate_ac,
    encode_associate_rq,
)
from pacsinfra.pacs.dicom import quick_ack, tune_socket
from pacsinfra.pacs.fastscp import codec, wire
from pacsinfra.pacs.fastscp.codec import Command, MessageAssembler, ProtocolError
from pacsinfra.pacs.fastscp.negotiate import DICOM_APPLICATION_CONTEXT
from pacsinfra.pacs.fastscp.part10 import Part10Meta, read_meta
from pacsinfra.pacs.fastscp.state import AssociationState, Role

_UNLIMITED_CHUNK = 4 << 20  # data set bytes per PDU when the peer sets no limit
_MAX_ACCEPT = 1 << 20  # an A-ASSOCIATE-AC for 128 contexts is far smaller

__all__ = ["AssociationFailed", "Part10Meta", "StreamingRequestor", "read_meta"]


class AssociationFailed(Exception):
    """The association could not be established; the message says why."""


class StreamingRequestor:
    """One established association to a storage SCP; used by one thread at a time."""

    def __init__(self, sock: socket.socket, accepted: dict[tuple[str, str], int],
                 peer_max_pdu: int, state: AssociationState, max_pdu: int = 0) -> None:
        self.sock = sock
        self.accepted = accepted  # (SOP class, transfer syntax) -> presentation context id
        self.peer_max_pdu = peer_max_pdu
        self.state = state
        # what we read of the peer: its responses are small, but respect what we announced
        self._limit = max(max_pdu, 1 << 16) + codec.HEADER_SIZE
        self._message_id = 0

    @property
    def is_established(self) -> bool:
        """Data may be sent."""
        return self.state.established

    @classmethod
    def open(cls, host: str, port: int, *, calling: str, called: str,
             contexts: Sequence[tuple[str, str]], max_pdu: int, timeout: float,
             network_timeout: float) -> StreamingRequestor:
        """Associate, proposing one presentation context per (SOP class, syntax)."""
        proposed = tuple(ProposedContext(2 * i + 1, sop, (ts,))
                         for i, (sop, ts) in enumerate(contexts))
        rq = encode_associate_rq(AssociateRequest(
            calling=calling, called=called, application_context=DICOM_APPLICATION_CONTEXT,
            contexts=proposed, max_pdu=max_pdu, implementation_uid=IMPLEMENTATION_UID,
            implementation_version=IMPLEMENTATION_VERSION))
        where = f"{called}@{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise AssociationFailed(f"cannot connect to {where}: {exc}") from exc
        tune_socket(sock)
        state = AssociationState(Role.REQUESTOR)
        try:
            state.sent(codec.A_ASSOCIATE_RQ)
            sock.sendall(rq)
            kind, body = wire.read_pdu(sock, _MAX_ACCEPT)
            state.received(kind)
        except (OSError, wire.PeerClosed, ProtocolError) as exc:
            sock.close()
            raise AssociationFailed(f"association with {where} failed: {exc}") from exc
        if kind == codec.A_ASSOCIATE_RJ:
            sock.close()
            try:
                result, source, reason = codec.parse_associate_rj(body)
                why = f" (result {result}, source {source}, reason {reason})"
            except codec.CodecError:  # a rejection we cannot read is still one
                why = ""
            raise AssociationFailed(f"association rejected by {where}{why}")
        if kind == codec.A_ABORT:
            sock.close()
            raise AssociationFailed(f"association aborted by {where}")
        ac = decode_associate_ac(codec.header(kind, len(body)) + body)
        if ac is None or ac.application_context != DICOM_APPLICATION_CONTEXT:
            sock.close()
            raise AssociationFailed(f"association with {where} failed: malformed "
                                    "A-ASSOCIATE-AC")
        by_id = {cx.context_id: cx.abstract_syntax for cx in proposed}
        accepted = {(by_id[r.context_id], r.transfer_syntax): r.context_id
                    for r in ac.results
                    if r.result == 0 and r.context_id in by_id and r.transfer_syntax}
        sock.settimeout(network_timeout)
        return cls(sock, accepted, ac.max_pdu, state, max_pdu)

    def syntaxes(self, sop: str) -> list[str]:
        """The transfer syntaxes the peer accepted for SOP class ``sop``."""
        return [ts for (s, ts) in self.accepted if s == sop]

    def store_file(self, path: Path, sop_class: str, sop_uid: str, ts: str,
                   offset: int | None = None) -> int:
        """C-STORE the data set of a Part 10 file as it is on disk (from ``offset``, the
        data set's start, read from the file when not given); the response status."""
        if offset is None:
            offset = read_meta(path).dataset_offset
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            ctx = self._request(sop_class, sop_uid, ts)
            step = self._chunk()
            pos = offset
            while pos < size:
                n = min(step, size - pos)
                last = pos + n >= size
                self._sendall(codec.p_data_header(ctx, codec.LAST if last else 0, n))
                try:
                    sent = self.sock.sendfile(f, pos, n)
                except OSError as exc:
                    self.close()
                    raise wire.PeerClosed(str(exc)) from exc
                if sent != n:
                    self.close()
                    raise wire.PeerClosed("connection closed while sending a data set")
                pos += n
            if pos == offset:  # an empty data set still needs its last fragment
                self._sendall(codec.p_data(ctx, codec.LAST, b""))
        return self._response()

    def store_bytes(self, data: bytes, sop_class: str, sop_uid: str, ts: str) -> int:
        """C-STORE a data set already encoded in ``ts``; the response status."""
        ctx = self._request(sop_class, sop_uid, ts)
        self._sendall(b"".join(codec.fragments(ctx, data, command=False, room=self._chunk())))
        return self._response()

    def release(self) -> None:
        """A-RELEASE (waits briefly for the RP), then close."""
        if self.state.may_send(codec.A_RELEASE_RQ):
            try:
                self.state.sent(codec.A_RELEASE_RQ)
                self._sendall(codec.release_rq())
                while not self.state.over:  # P-DATA may still be in flight (Sta7)
                    kind, _ = wire.read_pdu(self.sock, self._limit)
                    self.state.received(kind)
            except (OSError, wire.PeerClosed, ProtocolError):
                pass
        self.close()

    def close(self) -> None:
        """Close the socket (no release)."""
        self.state.closed()
        try:
            self.sock.close()
        except OSError:
            pass

    # -- helpers ------------------------------------------------------------------------------
    def _chunk(self) -> int:
        return max(codec.pdv_room(self.peer_max_pdu, _UNLIMITED_CHUNK), 1024)

    def _request(self, sop_class: str, sop_uid: str, ts: str) -> int:
        if not self.state.established:
            raise wire.PeerClosed("the association is not established")
        ctx = self.accepted.get((sop_class, ts))
        if ctx is None:
            raise ValueError(f"no accepted presentation context for {sop_class} in {ts}")
        self._message_id = self._message_id % 0xFFFF + 1
        self._sendall(codec.p_data(ctx, codec.COMMAND | codec.LAST,
                                   codec.store_rq(self._message_id, sop_class, sop_uid)))
        return ctx

    def _response(self) -> int:
        messages = MessageAssembler(contexts=set(self.accepted.values()))
        while True:
            try:
                quick_ack(self.sock)  # a peer without TCP_NODELAY waits for our ACK
                kind, body = wire.read_pdu(self.sock, self._limit)
                self.state.received(kind)
            except ProtocolError:
                self._abort()
                raise
            except wire.PeerClosed:
                self.close()
                raise
            if kind == codec.A_ABORT:
                self.close()
                raise wire.PeerClosed("association aborted by the peer")
            if kind != codec.P_DATA_TF:  # the acceptor released in the middle of a store
                self._abort()
                raise ProtocolError(f"{codec.pdu_name(kind)} instead of a C-STORE-RSP")
            try:
                for part in messages.feed(body):
                    if not isinstance(part, Command):
                        continue
                    rsp = codec.decode_command(part.raw)
                    if (rsp.get(codec.COMMAND_FIELD) != codec.C_STORE_RSP
                            or rsp.get(codec.MESSAGE_ID_RESPONDED) != self._message_id):
                        raise ProtocolError(f"unexpected response {rsp}")
                    return int(rsp.get(codec.STATUS, 0xC000))
            except ProtocolError:
                self._abort()
                raise

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise wire.PeerClosed(str(exc)) from exc

    def _abort(self) -> None:
        """A-ABORT (the peer broke the protocol), then close."""
        if self.state.may_send(codec.A_ABORT):
            self.state.sent(codec.A_ABORT)
            try:
                self.sock.sendall(codec.abort(codec.ABORT_USER, codec.REASON_NOT_SPECIFIED))
            except OSError:
                pass
        self.close()
