"""One storage association served by the streaming SCP, on the thread that accepted it.

The loop reads a PDU header, then the whole PDU into one reusable buffer, and walks
its PDVs: command fragments are collected and decoded when the last arrives;
data set fragments go straight to the instance's :class:`IncomingFile`. When a data
set is complete the sink decides the status (it renames, indexes, queues); only
then is the C-STORE-RSP sent. Anything malformed aborts the association (A-ABORT);
an instance whose data set did not arrive whole is discarded, never answered.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from pacsinfra.pacs.fastscp import command, pdu
from pacsinfra.pacs.fastscp.incoming import IncomingFile
from pacsinfra.pacs.fastscp.negotiate import Negotiated

LOG = logging.getLogger("pacsinfra.fastscp")
_PDV = struct.Struct(">LBB")
_UNLIMITED_CAP = 256 << 20  # a peer's PDU when we advertise "no limit"
_OUT_OF_RESOURCES = 0xA700
_UNABLE_TO_PROCESS = 0xC000
_CANCEL = 0xFE00
_PENDING = (0xFF00, 0xFF01)


class ProtocolError(Exception):
    """The peer broke PS3.8: the association is aborted."""


@dataclass(frozen=True)
class StoreRequest:
    """What a C-STORE-RQ says, plus the association it came on."""

    sop_class: str
    sop_uid: str
    transfer_syntax: str
    calling: str
    called: str
    message_id: int
    peer: str  # host address of the requestor


class StoreSink(Protocol):
    """Where instances go (the archive's tiers, the router's spool)."""

    def open(self, req: StoreRequest, meta: bytes) -> IncomingFile | int:
        """A file to stream the data set into, or a failure status to answer once the
        data set has been read (and dropped)."""

    def finish(self, req: StoreRequest, incoming: IncomingFile) -> int:
        """The whole data set is in ``incoming``: make it durable and return the status.
        The sink owns the file from here (keeps it or discards it)."""


@dataclass(frozen=True)
class FindRequest:
    """What a C-FIND-RQ says, plus the association it came on."""

    sop_class: str  # the information model (Patient Root, Study Root)
    transfer_syntax: str  # of the identifier, and of the identifiers answered
    calling: str
    message_id: int
    peer: str


class QuerySink(Protocol):
    """Who answers C-FIND on a streaming association (the archive's index)."""

    def find(self, req: FindRequest, identifier: bytes) -> Iterator[tuple[int, bytes | None]]:
        """(status, identifier in ``req.transfer_syntax``) per pending match; a status
        that is not Pending ends the operation; when the iterator just ends, the
        association answers Success."""


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR little endian, short form (every group 0002 VR used here but OB)
    if vr == b"OB":
        return struct.pack("<HH2sHL", 0x0002, group_elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, group_elem, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


_IMPLEMENTATION = (
    _element(0x0012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID))
    + _element(0x0013, b"SH", (lambda v: v + b" " if len(v) % 2 else v)(
        PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")))
)


def file_meta(sop_class: str, sop_uid: str, transfer_syntax: str) -> bytes:
    """The encoded File Meta Information group (PS3.10 7.1), byte for byte what
    pydicom's ``encode_file_meta`` makes of pynetdicom's ``Event.file_meta``; built
    directly because that costs ~0.25 ms an instance."""
    body = (_element(0x0001, b"OB", b"\x00\x01")
            + _element(0x0002, b"UI", _ui(sop_class))
            + _element(0x0003, b"UI", _ui(sop_uid))
            + _element(0x0010, b"UI", _ui(transfer_syntax))
            + _IMPLEMENTATION)
    return _element(0x0000, b"UL", struct.pack("<L", len(body))) + body


class _Requestor:
    """What the servers' limit checks read of an association's requestor."""

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title


class FastAssociation:
    """A running association; quacks enough like pynetdicom's for limits and shutdown."""

    is_acceptor = True

    def __init__(self, sock: socket.socket, neg: Negotiated, sink: StoreSink, *,
                 max_pdu: int, peer: str, queries: QuerySink | None = None) -> None:
        self.sock = sock
        self.neg = neg
        self.sink = sink
        self.queries = queries
        self.max_pdu = max_pdu
        self.peer = peer
        self.requestor = _Requestor(neg.calling)
        self.is_established = False
        self.is_aborted = False
        self._send_lock = threading.Lock()
        self._command: list[bytes] = []
        self._request: StoreRequest | None = None
        self._context = 0
        self._target: IncomingFile | int | None = None
        self._find: FindRequest | None = None  # a C-FIND whose identifier is arriving
        self._identifier = bytearray()
        self._answering = False  # sending C-FIND responses: only C-CANCEL may come in
        self._cancelled = False

    # -- the loop -----------------------------------------------------------------------------
    def run(self, accept_pdu: bytes) -> None:
        """Send the A-ASSOCIATE-AC, then serve until release, abort or error."""
        cap = self.max_pdu or _UNLIMITED_CAP
        buf = bytearray(max(min(cap, 4 << 20), 64 << 10) + 6)
        try:
            self._send(accept_pdu)
            self.is_established = True
            while True:
                kind, length = pdu.read_header(self.sock, buf)
                if kind == pdu.P_DATA_TF:
                    if length > cap + 6:  # a few bytes of slack for sloppy senders
                        raise ProtocolError(f"P-DATA-TF of {length} bytes exceeds our "
                                            f"maximum PDU {cap}")
                    if length > len(buf):
                        buf = bytearray(length)
                    view = memoryview(buf)[:length]
                    pdu.recv_exact(self.sock, view)
                    self._p_data(view)
                elif kind == pdu.A_RELEASE_RQ:
                    pdu.recv_exact(self.sock, memoryview(bytearray(length)))
                    if self._receiving:
                        raise ProtocolError("A-RELEASE-RQ in the middle of a data set")
                    self._send(pdu.release_rp())
                    return
                elif kind == pdu.A_ABORT:
                    LOG.info("association from %s aborted by the peer", self.neg.calling)
                    self.is_aborted = True
                    return
                else:
                    raise ProtocolError(f"unexpected PDU type 0x{kind:02X}")
        except pdu.PeerClosed as exc:
            if self._target is not None:
                LOG.warning("association from %s ended in the middle of %s: %s",
                            self.neg.calling, self._request.sop_uid if self._request else "?",
                            exc)
        except ProtocolError as exc:
            LOG.warning("aborting association from %s: %s", self.neg.calling, exc)
            self._abort()
        except Exception:  # noqa: BLE001 - a bug: abort this association, serve the others
            LOG.exception("aborting association from %s", self.neg.calling)
            self._abort()
        finally:
            self._drop_target()
            self.is_established = False
            try:
                self.sock.close()
            except OSError:
                pass

    def abort(self) -> None:
        """Abort from another thread (shutdown): the loop ends on its next read."""
        self._abort()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- PDVs ---------------------------------------------------------------------------------
    def _p_data(self, body: memoryview) -> None:
        pos, end = 0, len(body)
        while pos < end:
            if end - pos < 6:
                raise ProtocolError("truncated PDV item")
            length, ctx, control = _PDV.unpack_from(body, pos)
            stop = pos + 4 + length
            if length < 2 or stop > end:
                raise ProtocolError(f"PDV length {length} does not fit its PDU")
            data = body[pos + 6:stop]
            pos = stop
            if ctx not in self.neg.accepted:
                raise ProtocolError(f"PDV on presentation context {ctx}, which is not accepted")
            if control & 0x01:
                if self._receiving:
                    raise ProtocolError("command fragment in the middle of a data set")
                self._command.append(bytes(data))
                if control & 0x02:
                    raw, self._command = b"".join(self._command), []
                    self._on_command(ctx, raw)
            else:
                if not self._receiving or ctx != self._context:
                    raise ProtocolError("data set fragment without a C-STORE-RQ or C-FIND-RQ")
                if self._find is not None:
                    self._identifier += data
                    if control & 0x02:
                        self._on_identifier_end()
                    continue
                if isinstance(self._target, IncomingFile):
                    self._target.write(data)
                if control & 0x02:
                    self._on_dataset_end()

    @property
    def _receiving(self) -> bool:
        """A data set (C-STORE) or identifier (C-FIND) is partly received."""
        return self._target is not None or self._find is not None

    def _on_command(self, ctx: int, raw: bytes) -> None:
        try:
            cmd = command.decode(raw)
        except command.BadCommand as exc:
            raise ProtocolError(f"bad command set: {exc}") from exc
        field = cmd.get(command.COMMAND_FIELD)
        msg_id = int(cmd.get(command.MESSAGE_ID, 0))
        sop_class = str(cmd.get(command.AFFECTED_SOP_CLASS, ""))
        if field == command.C_CANCEL_RQ:
            self._cancelled = self._answering
            return
        if self._answering:
            raise ProtocolError(f"command 0x{field or 0:04X} while C-FIND responses are "
                                "being sent (no asynchronous operations were negotiated)")
        if field == command.C_FIND_RQ and self.queries is not None:
            if cmd.get(command.DATASET_TYPE) == command.NO_DATASET:
                raise ProtocolError("C-FIND-RQ without an identifier")
            abstract, ts = self.neg.accepted[ctx]
            self._find = FindRequest(sop_class=sop_class or abstract, transfer_syntax=ts,
                                     calling=self.neg.calling, message_id=msg_id, peer=self.peer)
            self._context = ctx
            self._identifier = bytearray()
            return
        if field == command.C_ECHO_RQ:
            self._send(pdu.p_data(ctx, 0x03, command.echo_rsp(msg_id, sop_class or
                                                               self.neg.accepted[ctx][0])))
            return
        if field != command.C_STORE_RQ:
            raise ProtocolError(f"command 0x{field or 0:04X} is not served on a storage "
                                "association")
        if cmd.get(command.DATASET_TYPE) == command.NO_DATASET:
            raise ProtocolError("C-STORE-RQ without a data set")
        abstract, ts = self.neg.accepted[ctx]
        req = StoreRequest(sop_class=sop_class or abstract,
                           sop_uid=str(cmd.get(command.AFFECTED_SOP_INSTANCE, "")),
                           transfer_syntax=ts, calling=self.neg.calling, called=self.neg.called,
                           message_id=msg_id, peer=self.peer)
        self._request, self._context = req, ctx
        try:
            self._target = self.sink.open(req, file_meta(req.sop_class, req.sop_uid, ts))
        except Exception:  # noqa: BLE001 - cannot even open: refuse this instance
            LOG.exception("C-STORE %s: cannot open an incoming file", req.sop_uid)
            self._target = _OUT_OF_RESOURCES

    def _on_dataset_end(self) -> None:
        req, target = self._request, self._target
        assert req is not None and target is not None
        self._target = None
        if isinstance(target, IncomingFile):
            try:
                status = self.sink.finish(req, target)
            except Exception:  # noqa: BLE001 - never Success on a bug
                LOG.exception("C-STORE %s failed unexpectedly", req.sop_uid)
                target.discard()
                status = _OUT_OF_RESOURCES
        else:
            status = target
        rsp = command.store_rsp(req.message_id, req.sop_class, req.sop_uid, int(status))
        self._send(pdu.p_data(self._context, 0x03, rsp))

    def _on_identifier_end(self) -> None:
        req, identifier = self._find, bytes(self._identifier)
        assert req is not None and self.queries is not None
        self._find, self._identifier = None, bytearray()
        ctx, final = self._context, 0x0000
        self._answering, self._cancelled = True, False
        try:
            answers = self.queries.find(req, identifier)
            for status, data in answers:
                if self._cancel_arrived():
                    final = _CANCEL
                    break
                if status not in _PENDING:
                    final = status
                    break
                self._send_message(ctx, command.find_rsp(
                    req.message_id, req.sop_class, status, with_dataset=data is not None), data)
            close = getattr(answers, "close", None)
            if close is not None:
                close()  # a generator left early releases what it holds now
        except (ProtocolError, pdu.PeerClosed):
            raise
        except Exception:  # noqa: BLE001 - a bug or index failure: a failure status, not Success
            LOG.exception("C-FIND from %s failed", req.calling)
            final = _UNABLE_TO_PROCESS
        finally:
            self._answering = False
        self._send_message(ctx, command.find_rsp(req.message_id, req.sop_class, final,
                                                 with_dataset=False), None)

    def _cancel_arrived(self) -> bool:
        """Read what the peer sent while responses go out (a C-CANCEL-RQ, normally)."""
        while not self._cancelled:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            header = bytearray(6)
            kind, length = pdu.read_header(self.sock, header)
            if kind == pdu.A_ABORT:
                self.is_aborted = True
                raise pdu.PeerClosed("aborted by the peer during C-FIND")
            if kind != pdu.P_DATA_TF or length > 1 << 16:
                raise ProtocolError(f"PDU type 0x{kind:02X} ({length} bytes) during C-FIND")
            body = memoryview(bytearray(length))
            pdu.recv_exact(self.sock, body)
            self._p_data(body)  # a C-CANCEL-RQ sets _cancelled; anything else is refused
        return True

    def _send_message(self, ctx: int, cmd: bytes, data: bytes | None) -> None:
        """A command set and its data set, fragmented to the peer's maximum PDU."""
        out = [pdu.p_data(ctx, 0x03, cmd)]
        if data:
            step = max((self.neg.peer_max_pdu or _UNLIMITED_CAP) - 6, 1)
            for pos in range(0, len(data), step):
                last = pos + step >= len(data)
                out.append(pdu.p_data(ctx, 0x02 if last else 0x00, data[pos:pos + step]))
        self._send(b"".join(out))

    # -- helpers ------------------------------------------------------------------------------
    def _drop_target(self) -> None:
        target, self._target = self._target, None
        if isinstance(target, IncomingFile):
            target.discard()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise pdu.PeerClosed(str(exc)) from exc

    def _abort(self) -> None:
        if self.is_aborted:
            return
        self.is_aborted = True
        try:
            with self._send_lock:
                self.sock.sendall(pdu.abort(2, 0))
        except OSError:
            pass
