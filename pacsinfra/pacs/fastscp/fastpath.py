"""What happens to a new connection between ``accept`` and its association.

:meth:`FastPath.serve` runs on the connection's own thread while it holds a pending
slot (:mod:`.admission`). It *peeks* at the first PDU (``MSG_PEEK``, nothing
consumed) until the connection's request deadline, never past the PDU size limit:

- no whole PDU in time: the connection is closed (audited); an A-ASSOCIATE-RQ
  announcing more than ``pdu_size_limit`` bytes gets an A-ASSOCIATE-RJ at once,
  before a byte of its body is read; any other first PDU is answered as PS3.8 says
  for an acceptor awaiting a request (A-ABORT);
- a request this path serves (plain TCP; only storage, verification and, with a
  query sink, C-FIND): consumed, checked against the association limits, accepted or
  rejected here, and run as a :class:`~.association.FastAssociation`;
- anything else (C-MOVE, C-GET, TLS, role selection, user identity, a malformed
  request): handed to pynetdicom untouched, on a guarded socket (:mod:`.guard`) that
  aborts any PDU above the limits before pynetdicom buffers it.

Every refusal goes to ``refused`` (:class:`~pacsinfra.pacs.refusals.Refusal`).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacsinfra.pacs.compat import association_peer, decode_associate_rq, encode_associate_ac
from pacsinfra.pacs.config_common import Limits
from pacsinfra.pacs.dicom import association_limit, tune_socket
from pacsinfra.pacs.fastscp import codec, wire
from pacsinfra.pacs.fastscp.admission import ConnectionGate, GateLimits, Pending
from pacsinfra.pacs.fastscp.association import SLACK, FastAssociation
from pacsinfra.pacs.fastscp.guard import GuardedSocket, GuardedSSLSocket, PduLimits
from pacsinfra.pacs.fastscp.negotiate import negotiate
from pacsinfra.pacs.fastscp.sinks import QuerySink, StoreSink
from pacsinfra.pacs.fastscp.state import AssociationState, Role
from pacsinfra.pacs.refusals import Refusal

LOG = logging.getLogger("pacsinfra.fastscp")


@dataclass(frozen=True)
class ListenerLimits:
    """What one listener enforces (see :class:`~pacsinfra.pacs.config_common.Limits`)."""

    max_associations: int = 32
    max_per_ae: int = 16
    max_pdu: int = 262_144  # the Maximum Length Received we announce (0: none)
    pdu_size_limit: int = 4 << 20  # the largest PDU read at all
    request_timeout: float = 10.0
    max_pending: int = 64
    max_per_address: int = 16
    listen_backlog: int = 128
    network_timeout: float = 60.0

    @classmethod
    def from_config(cls, limits: Limits) -> ListenerLimits:
        """The limits a service's configuration sets."""
        return cls(max_associations=limits.max_associations,
                   max_per_ae=limits.max_associations_per_ae, max_pdu=limits.max_pdu,
                   pdu_size_limit=limits.pdu_size_limit, request_timeout=limits.request_timeout,
                   max_pending=limits.max_pending,
                   max_per_address=limits.max_connections_per_address,
                   listen_backlog=limits.listen_backlog, network_timeout=limits.network_timeout)

    @property
    def pdus(self) -> PduLimits:
        """Per-PDU limits: P-DATA-TF up to what we announced (the whole size limit when we
        announce none), anything else up to the size limit."""
        p_data = (min(self.max_pdu + SLACK, self.pdu_size_limit) if self.max_pdu
                  else self.pdu_size_limit)
        return PduLimits(p_data=p_data, other=self.pdu_size_limit)

    @property
    def gate(self) -> GateLimits:
        """The pending pool's limits."""
        return GateLimits(self.max_pending, self.max_per_address, self.request_timeout)


class FastPath:
    """The policy and bookkeeping of new connections for one listening AE.

    ``allowed``: calling AE titles accepted (None: any); ``refused``: where refusals are
    reported; ``server``: the listener (its ``active_associations`` count against the
    limits), set by :func:`~.server.start_server`.
    """

    def __init__(self, sink: StoreSink, supported: Mapping[str, Sequence[str]], *,
                 limits: ListenerLimits, implementation: tuple[str, str],
                 allowed: Sequence[str] | None = None,
                 draining: Callable[[], bool] = lambda: False,
                 queries: QuerySink | None = None,
                 refused: Callable[[Refusal], None] = lambda r: None) -> None:
        self.sink = sink
        self.queries = queries  # answers C-FIND when ``supported`` lists query models
        self.supported = supported
        self.limits = limits
        self.implementation = implementation
        self.allowed = [a.strip() for a in allowed] if allowed else None
        self.draining = draining
        self.refused = refused
        self.gate = ConnectionGate(limits.gate, self.associated_from, refused)
        self.active: set[FastAssociation] = set()
        self.server: Any = None
        self._lock = threading.Lock()

    # -- limits ---------------------------------------------------------------------------------
    def associated_from(self, address: str) -> int:
        """Associations (either path) the host ``address`` holds."""
        if self.server is None:
            return 0
        return sum(1 for a in self.server.active_associations
                   if association_peer(a) == address)

    def _reject_reason(self, calling: str) -> tuple[tuple[int, int, int], str, str] | None:
        if self.allowed is not None and calling not in self.allowed:
            return codec.RJ_CALLING_AE, "calling-ae", f"calling AE {calling!r} is not allowed"
        if self.draining():
            return codec.RJ_LIMIT, "draining", "shutting down"
        if self.server is None:
            return None
        why = association_limit(self.server, calling, max_associations=self.limits.max_associations,
                                per_ae=self.limits.max_per_ae)
        return (codec.RJ_LIMIT, "limit", why) if why else None

    # -- one connection -------------------------------------------------------------------------
    def serve(self, sock: socket.socket, address: Any, pending: Pending) -> bool:
        """Decide ``sock``'s fate while it holds its pending slot: True when it was served
        (or refused) here, False when pynetdicom is to take it (nothing consumed, the
        socket guarded). The slot is freed once the request is decided."""
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        if isinstance(sock, ssl.SSLSocket):
            return self._tls(sock, peer, pending)
        peeked = wire.peek_pdu(sock, pending.deadline, self.limits.pdu_size_limit)
        if peeked.raw is None and peeked.why == "stalled":
            return self._hand_over(sock, peer, pending)  # too big to peek: pynetdicom reads it
        if peeked.raw is None:
            self._unserved(sock, peer, pending, peeked)
            return True
        if peeked.kind != codec.A_ASSOCIATE_RQ:
            self._not_a_request(sock, peer, peeked.raw[0])
            return True
        rq = decode_associate_rq(peeked.raw)
        neg = negotiate(rq, self.supported, max_pdu=self.limits.max_pdu,
                        implementation_uid=self.implementation[0],
                        implementation_version=self.implementation[1]) if rq else None
        if neg is None or neg.accept is None:
            return self._hand_over(sock, peer, pending)
        self.gate.done(pending)
        wire.recv_exact(sock, memoryview(bytearray(len(peeked.raw))))  # consume what was peeked
        tune_socket(sock)
        sock.settimeout(self.limits.network_timeout)
        assoc = FastAssociation(sock, neg, self.sink, max_pdu=self.limits.max_pdu,
                                pdu_limit=self.limits.pdus.p_data, peer=peer,
                                queries=self.queries)
        with self._lock:
            refusal = self._reject_reason(neg.calling)
            if refusal is None:
                self.active.add(assoc)
        if refusal is not None:
            rsd, kind, why = refusal
            wire.send_and_close(sock, codec.associate_rj(*rsd))
            self.refused(Refusal(peer, kind, why, neg.calling, neg.called))
            return True
        try:
            assoc.run(encode_associate_ac(neg.accept))
        finally:
            with self._lock:
                self.active.discard(assoc)
        if assoc.abort_reason:
            kind = "too-large" if isinstance(assoc.abort_error, wire.PduTooLarge) else "protocol"
            self.refused(Refusal(peer, kind, assoc.abort_reason, neg.calling, neg.called,
                                 aborted=True))
        return True

    def _hand_over(self, sock: socket.socket, peer: str, pending: Pending) -> bool:
        """To pynetdicom, on a guarded socket: the request must still be whole by the
        deadline, and no PDU above the limits is read."""
        self.gate.done(pending)
        if isinstance(sock, (GuardedSocket, GuardedSSLSocket)):
            def violation(kind: str, why: str) -> None:
                self.refused(Refusal(peer, kind, why, aborted=kind != "timeout"))

            sock.guard(self.limits.pdus, deadline=pending.deadline, violation=violation)
        return False

    def _tls(self, sock: ssl.SSLSocket, peer: str, pending: Pending) -> bool:
        """A TLS connection (handshake done): TLS cannot be peeked, so wait for the first
        bytes of the request within the deadline, then hand it to pynetdicom, guarded."""
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLRDHUP)
        left = pending.deadline - time.monotonic()
        if sock.pending() or (left > 0 and poller.poll(left * 1000)):
            return self._hand_over(sock, peer, pending)
        if not pending.evicted:
            self.refused(Refusal(peer, "timeout", "no A-ASSOCIATE-RQ within "
                                 f"{self.limits.request_timeout:g} s"))
        _close(sock)
        return True

    def _unserved(self, sock: socket.socket, peer: str, pending: Pending,
                  peeked: wire.Peeked) -> None:
        """No whole first PDU: timed out, too large, evicted or closed by the peer."""
        if pending.evicted or peeked.why == "closed":  # already reported / nothing to say
            _close(sock)
            return
        if peeked.why == "too-large":
            name = codec.pdu_name(peeked.kind or 0)
            why = (f"{name} of {peeked.length} bytes announced (limit "
                   f"{self.limits.pdu_size_limit})")
            reply = (codec.associate_rj(*codec.RJ_TOO_LARGE) if peeked.kind == codec.A_ASSOCIATE_RQ
                     else codec.abort(codec.ABORT_PROVIDER, codec.REASON_INVALID_PARAMETER))
            wire.send_and_close(sock, reply)
            self.refused(Refusal(peer, "too-large", why))
            return
        _close(sock)
        self.refused(Refusal(peer, "timeout", "no A-ASSOCIATE-RQ within "
                             f"{self.limits.request_timeout:g} s"))

    def _not_a_request(self, sock: socket.socket, peer: str, kind: int) -> None:
        """The first PDU is not an A-ASSOCIATE-RQ: PS3.8 Sta2 (AA-1: A-ABORT; an A-ABORT
        itself just closes)."""
        state = AssociationState(Role.ACCEPTOR)
        try:
            state.received(kind)
        except codec.ProtocolError as exc:
            wire.send_and_close(sock, codec.abort(codec.ABORT_PROVIDER, exc.reason))
            self.refused(Refusal(peer, "protocol", f"{exc} (instead of an A-ASSOCIATE-RQ)"))
            return
        _close(sock)

    def abort_all(self) -> None:
        """Abort every association of this path (shutdown)."""
        with self._lock:
            active = list(self.active)
        for assoc in active:
            assoc.abort()


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
