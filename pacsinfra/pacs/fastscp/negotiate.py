"""Association negotiation for the streaming storage SCP.

:func:`negotiate` decides whether an A-ASSOCIATE-RQ is one this path serves (plain
storage and verification, nothing that needs pynetdicom's machinery) and, if so,
which presentation contexts are accepted, each in the *requestor's* first syntax
we support, so nothing is ever transcoded. Decoding and encoding use pynetdicom's
PDU classes; the policy is the same as :func:`pacsinfra.pacs.dicom.accept_proposed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
# PS3.8 9.3.3.2 presentation context results
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4


@dataclass
class Negotiated:
    """The outcome of a negotiation this path serves."""

    calling: str
    called: str
    peer_max_pdu: int  # 0: no limit
    accepted: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (sop, ts)
    primitive: A_ASSOCIATE | None = None  # the A-ASSOCIATE-AC to send, once built


def parse_request(raw: bytes) -> A_ASSOCIATE | None:
    """The A-ASSOCIATE-RQ primitive in ``raw`` (a whole PDU), or None if it is not one."""
    if not raw or raw[0] != 0x01:
        return None
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(raw)
        return pdu.to_primitive()
    except Exception:  # noqa: BLE001 - malformed: pynetdicom will answer it properly
        return None


def negotiate(
    rq: A_ASSOCIATE,
    supported: Mapping[str, Sequence[str]],
    *,
    ae_title: str,
    max_pdu: int,
    implementation_uid: str,
    implementation_version: str,
) -> Negotiated | None:
    """Accept ``rq`` on this path, or None to leave it to pynetdicom.

    Ours: the DICOM application context, every proposed abstract syntax in
    ``supported`` (storage classes and Verification), and no role selection or
    user identity items (those need pynetdicom's handling).
    """
    if str(rq.application_context_name) != DICOM_APPLICATION_CONTEXT:
        return None
    proposals = rq.presentation_context_definition_list
    if not proposals:
        return None
    peer_max = 0
    for item in rq.user_information:
        if isinstance(item, (SCP_SCU_RoleSelectionNegotiation, UserIdentityNegotiation)):
            return None
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
    result = Negotiated(str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip(),
                        peer_max)
    results: list[PresentationContext] = []
    for cx in proposals:
        abstract = str(cx.abstract_syntax)
        ours = supported.get(abstract)
        if ours is None:
            return None
        offered = [str(t) for t in cx.transfer_syntax]
        chosen = next((t for t in offered if t in ours), None)
        out = PresentationContext()
        out.context_id = cx.context_id
        out.abstract_syntax = abstract
        out.transfer_syntax = [chosen or (offered[0] if offered else "1.2.840.10008.1.2")]
        out.result = ACCEPTANCE if chosen else TRANSFER_SYNTAXES_NOT_SUPPORTED
        results.append(out)
        if chosen and cx.context_id is not None:
            result.accepted[int(cx.context_id)] = (abstract, chosen)
    ac = A_ASSOCIATE()
    ac.application_context_name = DICOM_APPLICATION_CONTEXT
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title  # echoed back, as PS3.8 asks
    ac.result = 0x00
    ac.presentation_context_definition_results_list = results
    ac.user_information = user_information(max_pdu, implementation_uid, implementation_version)
    result.primitive = ac
    return result


def user_information(max_pdu: int, implementation_uid: str,
                     implementation_version: str) -> list[Any]:
    """The user information items this side sends in an A-ASSOCIATE-RQ or -AC."""
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = implementation_uid
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = implementation_version
    return [length, impl, version]


def encode_accept(primitive: A_ASSOCIATE) -> bytes:
    """The A-ASSOCIATE-AC PDU for ``primitive``."""
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def encode_reject(result: int, source: int, diagnostic: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    rj = A_ASSOCIATE()
    rj.result = result
    rj.result_source = source
    rj.diagnostic = diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(rj)
    return bytes(pdu.encode())
