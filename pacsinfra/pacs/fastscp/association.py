"""One storage association served by the streaming SCP, on the thread that accepted it.

The loop reads a PDU header and checks it against the association's phase
(:mod:`.state`) and limits before reading anything more: a PDU the phase does not
allow, or a P-DATA-TF larger than the maximum PDU we announced, aborts the
association at once. A P-DATA-TF is then read whole into one reusable buffer and
its PDVs sorted by :class:`~.codec.MessageAssembler`: command sets are decoded when
their last fragment arrives; data set fragments go straight to the instance's
:class:`IncomingFile`. When a data set is complete the sink decides the status (it
renames, indexes, queues); only then is the C-STORE-RSP sent. Anything malformed
aborts the association (A-ABORT); an instance whose data set did not arrive whole
is discarded, never answered.
"""

from __future__ import annotations

import logging
import select
import socket
import threading

from pacsinfra.pacs.fastscp import codec, wire
from pacsinfra.pacs.fastscp.codec import Command, MessageAssembler, ProtocolError
from pacsinfra.pacs.fastscp.incoming import IncomingFile
from pacsinfra.pacs.fastscp.negotiate import Negotiated
from pacsinfra.pacs.fastscp.part10 import file_meta
from pacsinfra.pacs.fastscp.sinks import FindRequest, QuerySink, StoreRequest, StoreSink
from pacsinfra.pacs.fastscp.state import AssociationState, Phase, Role

LOG = logging.getLogger("pacsinfra.fastscp")
SLACK = 6  # bytes a sloppy sender's P-DATA-TF may exceed our maximum PDU by
MAX_IDENTIFIER = 1 << 20  # a C-FIND identifier is a handful of keys
_OUT_OF_RESOURCES = 0xA700
_UNABLE_TO_PROCESS = 0xC000
_CANCEL = 0xFE00
_PENDING = (0xFF00, 0xFF01)


class _Requestor:
    """What the servers' limit checks read of an association's requestor."""

    def __init__(self, ae_title: str, address: str) -> None:
        self.ae_title = ae_title
        self.address = address


class FastAssociation:
    """A running association; quacks enough like pynetdicom's for limits and shutdown.

    ``max_pdu``: the Maximum Length Received we announced (0: none, then
    ``pdu_limit`` bounds P-DATA-TF PDUs); ``pdu_limit``: the largest PDU read at all.
    """

    is_acceptor = True

    def __init__(self, sock: socket.socket, neg: Negotiated, sink: StoreSink, *,
                 max_pdu: int, pdu_limit: int, peer: str,
                 queries: QuerySink | None = None) -> None:
        self.sock = sock
        self.neg = neg
        self.sink = sink
        self.queries = queries
        self.max_pdu = max_pdu
        self.peer = peer
        self.requestor = _Requestor(neg.calling, peer)
        self.state = AssociationState(Role.ACCEPTOR)
        self.state.received(codec.A_ASSOCIATE_RQ)  # the server read and decided it
        self.abort_reason: str | None = None  # why this side aborted, for the audit
        self.abort_error: Exception | None = None
        self._cap = min(max_pdu + SLACK, pdu_limit) if max_pdu else pdu_limit
        self._send_lock = threading.Lock()
        self._messages = MessageAssembler(contexts=neg.accepted)
        self._request: StoreRequest | None = None
        self._context = 0
        self._target: IncomingFile | int | None = None
        self._find: FindRequest | None = None  # a C-FIND whose identifier is arriving
        self._identifier = bytearray()
        self._answering = False  # sending C-FIND responses: only C-CANCEL may come in
        self._cancelled = False

    @property
    def is_established(self) -> bool:
        """Accepted and not yet released or aborted."""
        return self.state.established

    @property
    def is_aborted(self) -> bool:
        """Aborted by either side (or the connection broke)."""
        return self.state.phase is Phase.ABORTED

    # -- the loop -----------------------------------------------------------------------------
    def run(self, accept_pdu: bytes) -> None:
        """Send the A-ASSOCIATE-AC, then serve until release, abort or error."""
        buf = bytearray(max(min(self._cap, 4 << 20), 64 << 10))
        try:
            self._send(accept_pdu, codec.A_ASSOCIATE_AC)
            while True:
                kind, length = wire.read_header(self.sock, buf)
                self.state.received(kind)  # IllegalTransition: A-ABORT
                codec.check_fixed_length(kind, length)
                if kind == codec.P_DATA_TF:
                    if length > self._cap:
                        raise wire.PduTooLarge(kind, length, self._cap)
                    if length > len(buf):
                        buf = bytearray(length)
                    view = memoryview(buf)[:length]
                    wire.recv_exact(self.sock, view)
                    self._p_data(view)
                elif kind == codec.A_RELEASE_RQ:
                    wire.recv_exact(self.sock, memoryview(bytearray(4)))
                    if self._receiving:
                        raise ProtocolError("A-RELEASE-RQ in the middle of a data set")
                    self._send(codec.release_rp(), codec.A_RELEASE_RP)
                    return
                else:  # A-ABORT: the state says ABORTED
                    LOG.info("association from %s aborted by the peer", self.neg.calling)
                    return
        except wire.PeerClosed as exc:
            self.state.closed()
            if self._target is not None:
                LOG.warning("association from %s ended in the middle of %s: %s",
                            self.neg.calling, self._request.sop_uid if self._request else "?",
                            exc)
        except ProtocolError as exc:
            # logged at INFO: the listener logs and audits the abort as a refusal
            LOG.info("aborting association from %s: %s", self.neg.calling, exc)
            self.abort_reason, self.abort_error = str(exc), exc
            self._abort(exc.reason)
        except Exception:  # noqa: BLE001 - a bug: abort this association, serve the others
            LOG.exception("aborting association from %s", self.neg.calling)
            self.abort_reason = "internal error"
            self._abort(codec.REASON_NOT_SPECIFIED)
        finally:
            self._drop_target()
            self.state.closed()
            try:
                self.sock.close()
            except OSError:
                pass

    def abort(self) -> None:
        """Abort from another thread (shutdown): the loop ends on its next read."""
        self._abort(codec.REASON_NOT_SPECIFIED)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- PDVs ---------------------------------------------------------------------------------
    def _p_data(self, body: memoryview) -> None:
        for part in self._messages.feed(body):
            if isinstance(part, Command):
                self._on_command(part.context_id, part.raw)
                continue
            if self._find is not None:
                if len(self._identifier) + len(part.data) > MAX_IDENTIFIER:
                    raise codec.CodecError(f"C-FIND identifier longer than {MAX_IDENTIFIER} "
                                           "bytes")
                self._identifier += part.data
                if part.last:
                    self._on_identifier_end()
                continue
            if isinstance(self._target, IncomingFile):
                self._target.write(part.data)
            if part.last:
                self._on_dataset_end()

    @property
    def _receiving(self) -> bool:
        """A data set (C-STORE) or identifier (C-FIND) is partly received."""
        return self._messages.receiving_data

    def _on_command(self, ctx: int, raw: bytes) -> None:
        try:
            cmd = codec.decode_command(raw)
        except codec.BadCommand as exc:
            raise codec.BadCommand(f"bad command set: {exc}") from exc
        field = cmd.get(codec.COMMAND_FIELD)
        msg_id = int(cmd.get(codec.MESSAGE_ID, 0))
        sop_class = str(cmd.get(codec.AFFECTED_SOP_CLASS, ""))
        has_data = cmd.get(codec.DATASET_TYPE) != codec.NO_DATASET
        if field == codec.C_CANCEL_RQ:
            self._cancelled = self._answering
            return
        if self._answering:
            raise ProtocolError(f"command 0x{field or 0:04X} while C-FIND responses are "
                                "being sent (no asynchronous operations were negotiated)")
        if field == codec.C_FIND_RQ and self.queries is not None:
            if not has_data:
                raise ProtocolError("C-FIND-RQ without an identifier")
            abstract, ts = self.neg.accepted[ctx]
            self._find = FindRequest(sop_class=sop_class or abstract, transfer_syntax=ts,
                                     calling=self.neg.calling, message_id=msg_id, peer=self.peer)
            self._context = ctx
            self._identifier = bytearray()
            self._messages.expect_data(ctx)
            return
        if field == codec.C_ECHO_RQ:
            if has_data:
                raise ProtocolError("C-ECHO-RQ with a data set")
            self._send(codec.p_data(ctx, codec.COMMAND | codec.LAST, codec.echo_rsp(
                msg_id, sop_class or self.neg.accepted[ctx][0])), codec.P_DATA_TF)
            return
        if field != codec.C_STORE_RQ:
            raise ProtocolError(f"command 0x{field or 0:04X} is not served on a storage "
                                "association")
        if not has_data:
            raise ProtocolError("C-STORE-RQ without a data set")
        abstract, ts = self.neg.accepted[ctx]
        req = StoreRequest(sop_class=sop_class or abstract,
                           sop_uid=str(cmd.get(codec.AFFECTED_SOP_INSTANCE, "")),
                           transfer_syntax=ts, calling=self.neg.calling, called=self.neg.called,
                           message_id=msg_id, peer=self.peer)
        self._request, self._context = req, ctx
        self._messages.expect_data(ctx)
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
        rsp = codec.store_rsp(req.message_id, req.sop_class, req.sop_uid, int(status))
        self._send(codec.p_data(self._context, codec.COMMAND | codec.LAST, rsp), codec.P_DATA_TF)

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
                self._send_message(ctx, codec.find_rsp(
                    req.message_id, req.sop_class, status, with_dataset=data is not None), data)
            close = getattr(answers, "close", None)
            if close is not None:
                close()  # a generator left early releases what it holds now
        except (ProtocolError, wire.PeerClosed):
            raise
        except Exception:  # noqa: BLE001 - a bug or index failure: a failure status, not Success
            LOG.exception("C-FIND from %s failed", req.calling)
            final = _UNABLE_TO_PROCESS
        finally:
            self._answering = False
        self._send_message(ctx, codec.find_rsp(req.message_id, req.sop_class, final,
                                               with_dataset=False), None)

    def _cancel_arrived(self) -> bool:
        """Read what the peer sent while responses go out (a C-CANCEL-RQ, normally)."""
        while not self._cancelled:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            header = bytearray(codec.HEADER_SIZE)
            kind, length = wire.read_header(self.sock, header)
            self.state.received(kind)
            if kind == codec.A_ABORT:
                raise wire.PeerClosed("aborted by the peer during C-FIND")
            if kind != codec.P_DATA_TF or length > 1 << 16:
                raise ProtocolError(f"{codec.pdu_name(kind)} ({length} bytes) during C-FIND")
            body = memoryview(bytearray(length))
            wire.recv_exact(self.sock, body)
            self._p_data(body)  # a C-CANCEL-RQ sets _cancelled; anything else is refused
        return True

    def _send_message(self, ctx: int, cmd: bytes, data: bytes | None) -> None:
        """A command set and its data set, fragmented to the peer's maximum PDU."""
        out = [codec.p_data(ctx, codec.COMMAND | codec.LAST, cmd)]
        if data:
            out.extend(codec.fragments(ctx, data, command=False,
                                       room=codec.pdv_room(self.neg.peer_max_pdu)))
        self._send(b"".join(out), codec.P_DATA_TF)

    # -- helpers ------------------------------------------------------------------------------
    def _drop_target(self) -> None:
        target, self._target = self._target, None
        if isinstance(target, IncomingFile):
            target.discard()

    def _send(self, data: bytes, kind: int) -> None:
        with self._send_lock:
            self.state.sent(kind)
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise wire.PeerClosed(str(exc)) from exc

    def _abort(self, reason: int) -> None:
        with self._send_lock:
            if not self.state.may_send(codec.A_ABORT):
                return
            self.state.sent(codec.A_ABORT)
            try:
                self.sock.sendall(codec.abort(codec.ABORT_PROVIDER, reason))
            except OSError:
                pass
