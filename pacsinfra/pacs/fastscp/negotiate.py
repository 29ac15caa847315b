"""Association negotiation for the streaming storage SCP.

:func:`negotiate` decides whether an A-ASSOCIATE-RQ is one this path serves (plain
storage, verification and, when offered, C-FIND; nothing that needs pynetdicom's
machinery) and, if so, which presentation contexts are accepted, each in the
*requestor's* first syntax we support, so nothing is ever transcoded. The policy
is the same as :func:`pacsinfra.pacs.dicom.accept_proposed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pacsinfra.pacs.compat import AssociateAccept, AssociateRequest, ContextResult

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# PS3.8 9.3.3.2 presentation context results
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4


@dataclass
class Negotiated:
    """The outcome of a negotiation this path serves."""

    calling: str
    called: str
    peer_max_pdu: int  # 0: no limit
    accepted: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (sop, ts)
    accept: AssociateAccept | None = None  # the A-ASSOCIATE-AC to send


def negotiate(
    rq: AssociateRequest,
    supported: Mapping[str, Sequence[str]],
    *,
    max_pdu: int,
    implementation_uid: str,
    implementation_version: str,
) -> Negotiated | None:
    """Accept ``rq`` on this path, or None to leave it to pynetdicom.

    Ours: the DICOM application context, every proposed abstract syntax in
    ``supported`` (storage classes and Verification), and no role selection or
    user identity items (those need pynetdicom's handling).
    """
    if rq.application_context != DICOM_APPLICATION_CONTEXT or not rq.contexts or rq.extended:
        return None
    result = Negotiated(rq.calling, rq.called, rq.max_pdu)
    results: list[ContextResult] = []
    for cx in rq.contexts:
        ours = supported.get(cx.abstract_syntax)
        if ours is None:
            return None
        offered = cx.transfer_syntaxes
        chosen = next((t for t in offered if t in ours), None)
        results.append(ContextResult(
            cx.context_id, ACCEPTANCE if chosen else TRANSFER_SYNTAXES_NOT_SUPPORTED,
            chosen or (offered[0] if offered else IMPLICIT_VR_LE)))
        if chosen:
            result.accepted[cx.context_id] = (cx.abstract_syntax, chosen)
    result.accept = AssociateAccept(
        calling=rq.calling, called=rq.called, application_context=DICOM_APPLICATION_CONTEXT,
        results=tuple(results), max_pdu=max_pdu, implementation_uid=implementation_uid,
        implementation_version=implementation_version)
    return result
