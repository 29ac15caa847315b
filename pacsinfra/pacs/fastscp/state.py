"""The phases of one association and the PDUs each phase allows (PS3.8 9.2).

A reduced form of the upper-layer state machine (PS3.8 Table 9-10) for the two
roles this package plays, the acceptor (the streaming SCP) and the requestor (the
streaming SCU). Both loops report every PDU they receive or send; a PDU the
current phase does not allow raises :class:`IllegalTransition`, which the loop
answers with an A-ABORT (PS3.8: "unexpected PDU", action AA-1), after which the
association is :attr:`Phase.ABORTED`.

=================  =======================================================================
Phase              PS3.8 states it stands for
=================  =======================================================================
AWAITING_REQUEST   Sta2: transport open, waiting for the A-ASSOCIATE-RQ (acceptor)
NEGOTIATING        Sta3 / Sta5: the request is being decided (acceptor) or answered (requestor)
ESTABLISHED        Sta6: data transfer
RELEASING          Sta7 / Sta8: an A-RELEASE-RQ was sent (requestor) or received (acceptor)
CLOSED             Sta1 after a release or a rejection
ABORTED            Sta1 after an A-ABORT (sent or received) or a transport failure
=================  =======================================================================
"""

from __future__ import annotations

import threading
from enum import Enum

from pacsinfra.pacs.fastscp.codec import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PDU_NAMES,
    REASON_UNEXPECTED_PDU,
    ProtocolError,
    UnrecognizedPdu,
    pdu_name,
)


class Phase(Enum):
    """Where an association is in its life."""

    AWAITING_REQUEST = "awaiting request"
    NEGOTIATING = "negotiating"
    ESTABLISHED = "established"
    RELEASING = "releasing"
    CLOSED = "closed"
    ABORTED = "aborted"


class Role(Enum):
    """Which side of the association this is."""

    ACCEPTOR = "acceptor"
    REQUESTOR = "requestor"


class IllegalTransition(ProtocolError):
    """A PDU the association's phase does not allow: answer with an A-ABORT."""

    reason = REASON_UNEXPECTED_PDU


_A, _R = Role.ACCEPTOR, Role.REQUESTOR
_P = Phase
# (role, phase, PDU received) -> next phase. A-ABORT is allowed everywhere (-> ABORTED);
# anything missing here is illegal.
_RECEIVED: dict[tuple[Role, Phase, int], Phase] = {
    (_A, _P.AWAITING_REQUEST, A_ASSOCIATE_RQ): _P.NEGOTIATING,
    (_A, _P.ESTABLISHED, P_DATA_TF): _P.ESTABLISHED,
    (_A, _P.ESTABLISHED, A_RELEASE_RQ): _P.RELEASING,
    (_R, _P.NEGOTIATING, A_ASSOCIATE_AC): _P.ESTABLISHED,
    (_R, _P.NEGOTIATING, A_ASSOCIATE_RJ): _P.CLOSED,
    (_R, _P.ESTABLISHED, P_DATA_TF): _P.ESTABLISHED,
    (_R, _P.ESTABLISHED, A_RELEASE_RQ): _P.RELEASING,  # the acceptor may release too
    (_R, _P.RELEASING, P_DATA_TF): _P.RELEASING,  # still in flight when we asked
    (_R, _P.RELEASING, A_RELEASE_RP): _P.CLOSED,
}
# (role, phase, PDU sent) -> next phase
_SENT: dict[tuple[Role, Phase, int], Phase] = {
    (_A, _P.NEGOTIATING, A_ASSOCIATE_AC): _P.ESTABLISHED,
    (_A, _P.NEGOTIATING, A_ASSOCIATE_RJ): _P.CLOSED,
    (_A, _P.AWAITING_REQUEST, A_ASSOCIATE_RJ): _P.CLOSED,  # refused before reading it
    (_A, _P.ESTABLISHED, P_DATA_TF): _P.ESTABLISHED,
    (_A, _P.RELEASING, A_RELEASE_RP): _P.CLOSED,
    (_R, _P.AWAITING_REQUEST, A_ASSOCIATE_RQ): _P.NEGOTIATING,
    (_R, _P.ESTABLISHED, P_DATA_TF): _P.ESTABLISHED,
    (_R, _P.ESTABLISHED, A_RELEASE_RQ): _P.RELEASING,
    (_R, _P.RELEASING, A_RELEASE_RP): _P.CLOSED,
}
_OVER = (Phase.CLOSED, Phase.ABORTED)


class AssociationState:
    """The phase of one association; thread-safe (a shutdown may abort from another
    thread while the loop reads)."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self._phase = Phase.AWAITING_REQUEST
        self._lock = threading.Lock()

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self._phase

    @property
    def established(self) -> bool:
        """Data may be exchanged (or a release is being completed)."""
        return self._phase in (Phase.ESTABLISHED, Phase.RELEASING)

    @property
    def over(self) -> bool:
        """Released, rejected or aborted: nothing more may be sent or received."""
        return self._phase in _OVER

    def received(self, kind: int) -> Phase:
        """Account for a received PDU of type ``kind``; the new phase, or
        :class:`IllegalTransition` (the caller sends an A-ABORT)."""
        if kind not in PDU_NAMES:
            raise UnrecognizedPdu(f"{pdu_name(kind)} received while {self._phase.value}")
        with self._lock:
            if kind == A_ABORT:
                self._phase = Phase.ABORTED
                return self._phase
            nxt = _RECEIVED.get((self.role, self._phase, kind))
            if nxt is None:
                raise IllegalTransition(
                    f"{pdu_name(kind)} received while {self._phase.value} (as {self.role.value})")
            self._phase = nxt
            return nxt

    def sent(self, kind: int) -> Phase:
        """Account for a PDU of type ``kind`` about to be sent; the new phase. Sending
        what the phase does not allow is a bug on this side: ``RuntimeError``."""
        with self._lock:
            if kind == A_ABORT:
                self._phase = Phase.ABORTED
                return self._phase
            nxt = _SENT.get((self.role, self._phase, kind))
            if nxt is None:
                raise RuntimeError(
                    f"sending {pdu_name(kind)} while {self._phase.value} (as {self.role.value})")
            self._phase = nxt
            return nxt

    def may_send(self, kind: int) -> bool:
        """Whether sending a PDU of type ``kind`` is allowed now."""
        return kind == A_ABORT and not self.over or (self.role, self._phase, kind) in _SENT

    def closed(self) -> Phase:
        """The transport closed: a release or rejection stays CLOSED, anything else is
        an abort (PS3.8 Evt17: A-P-ABORT)."""
        with self._lock:
            if self._phase not in _OVER:
                self._phase = Phase.ABORTED
            return self._phase
