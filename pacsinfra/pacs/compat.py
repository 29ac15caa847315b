"""The one place that touches pynetdicom's internals.

Everything the PACS services need from pynetdicom beyond its public API (``AE``,
``evt``, ``build_context``, presentation contexts) goes through here: private module
names and attributes, the PDU classes and primitives, process-wide ``_config``
switches, the threaded server base class, the storage SOP class table, dataset
encoding helpers. A pynetdicom upgrade that moves any of them breaks this module
alone (``pyproject.toml`` bounds pynetdicom to the minor version this was tested
with).

The association PDUs are exchanged as the plain dataclasses below
(:class:`AssociateRequest`, :class:`AssociateAccept`), so callers never see a
pynetdicom primitive.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynetdicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config as _pynetdicom_config
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import evt
from pynetdicom.dsutils import encode as _encode
from pynetdicom.dsutils import encode_file_meta as _encode_file_meta
from pynetdicom.pdu import A_ASSOCIATE_AC as _AssociateAcPdu
from pynetdicom.pdu import A_ASSOCIATE_RQ as _AssociateRqPdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE as _AssociatePrimitive,
)
from pynetdicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES
from pynetdicom.transport import ThreadedAssociationServer

IMPLEMENTATION_UID: str = str(pynetdicom.PYNETDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION: str = str(pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION)
#: Every storage SOP Class UID pynetdicom knows.
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(u) for u in _STORAGE_CLASSES.values())


def release_requested(assoc: Any) -> bool:
    """The peer asked to release ``assoc`` (an A-RELEASE-RQ waits in pynetdicom's DUL
    queue, not yet handled by the association's reactor)."""
    try:
        pdu = assoc.dul.peek_next_pdu()
    except Exception:  # noqa: BLE001 - pynetdicom internals changed: assume it did not
        return False
    return type(pdu).__name__ == "A_RELEASE" and getattr(pdu, "result", 0) is None


__all__ = [
    "release_requested",
    "IMPLEMENTATION_UID",
    "IMPLEMENTATION_VERSION",
    "STORAGE_SOP_CLASSES",
    "AssociateAccept",
    "AssociateRequest",
    "ContextResult",
    "ProposedContext",
    "ThreadedAssociationServer",
    "association_peer",
    "association_server",
    "decode_associate_ac",
    "decode_associate_rq",
    "encode_associate_ac",
    "encode_associate_rq",
    "encode_dataset",
    "encode_file_meta",
    "keep_responses",
    "receive_datasets_to",
    "received_dataset",
    "register_server",
    "reject_association",
    "rejection_of",
    "set_dul_loop_delay",
    "set_send_chunked_datasets",
    "set_unrestricted_storage",
    "tcp_socket_of",
]


# -- association PDUs as plain data ------------------------------------------------------------

@dataclass(frozen=True)
class ProposedContext:
    """A presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class ContextResult:
    """A presentation context result of an A-ASSOCIATE-AC (PS3.8 9.3.3.2: 0 acceptance,
    3 abstract syntax not supported, 4 transfer syntaxes not supported)."""

    context_id: int
    result: int
    transfer_syntax: str


@dataclass(frozen=True)
class AssociateRequest:
    """What an A-ASSOCIATE-RQ says (the parts this project negotiates on)."""

    calling: str
    called: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_pdu: int = 0  # the requestor's Maximum Length Received (0: no limit)
    implementation_uid: str = ""
    implementation_version: str = ""
    #: role selection or user identity items were proposed (pynetdicom handles those)
    extended: bool = False


@dataclass(frozen=True)
class AssociateAccept:
    """What an A-ASSOCIATE-AC says."""

    calling: str
    called: str
    application_context: str
    results: tuple[ContextResult, ...] = field(default=())
    max_pdu: int = 0
    implementation_uid: str = IMPLEMENTATION_UID
    implementation_version: str = IMPLEMENTATION_VERSION


def _user_information(max_pdu: int, uid: str, version: str) -> list[Any]:
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = uid
    items: list[Any] = [length, impl]
    if version:
        name = ImplementationVersionNameNotification()
        name.implementation_version_name = version
        items.append(name)
    return items


def _user_fields(items: Sequence[Any]) -> tuple[int, str, str, bool]:
    max_pdu, uid, version, extended = 0, "", "", False
    for item in items:
        if isinstance(item, MaximumLengthNotification):
            max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, ImplementationClassUIDNotification):
            uid = str(item.implementation_class_uid or "")
        elif isinstance(item, ImplementationVersionNameNotification):
            raw = item.implementation_version_name or ""
            version = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        elif isinstance(item, (SCP_SCU_RoleSelectionNegotiation, UserIdentityNegotiation)):
            extended = True
    return max_pdu, uid, version, extended


def decode_associate_rq(raw: bytes) -> AssociateRequest | None:
    """The A-ASSOCIATE-RQ in ``raw`` (a whole PDU, header included), or None when it is
    not a well-formed one."""
    if len(raw) < 6 or raw[0] != 0x01:
        return None
    pdu = _AssociateRqPdu()
    try:
        pdu.decode(raw)
        prim = pdu.to_primitive()
        contexts = tuple(
            ProposedContext(int(cx.context_id or 0), str(cx.abstract_syntax),
                            tuple(str(t) for t in cx.transfer_syntax))
            for cx in prim.presentation_context_definition_list)
        max_pdu, uid, version, extended = _user_fields(prim.user_information)
        return AssociateRequest(
            calling=str(prim.calling_ae_title).strip(), called=str(prim.called_ae_title).strip(),
            application_context=str(prim.application_context_name or ""), contexts=contexts,
            max_pdu=max_pdu, implementation_uid=uid, implementation_version=version,
            extended=extended)
    except Exception:  # noqa: BLE001 - malformed in any of pynetdicom's many ways
        return None


def encode_associate_rq(rq: AssociateRequest) -> bytes:
    """The A-ASSOCIATE-RQ PDU for ``rq``."""
    prim = _AssociatePrimitive()
    prim.application_context_name = rq.application_context
    prim.calling_ae_title = rq.calling
    prim.called_ae_title = rq.called
    proposed = []
    for cx in rq.contexts:
        pc = PresentationContext()
        pc.context_id = cx.context_id
        pc.abstract_syntax = cx.abstract_syntax
        pc.transfer_syntax = list(cx.transfer_syntaxes)
        proposed.append(pc)
    prim.presentation_context_definition_list = proposed
    prim.user_information = _user_information(rq.max_pdu, rq.implementation_uid,
                                              rq.implementation_version)
    pdu = _AssociateRqPdu()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def encode_associate_ac(ac: AssociateAccept) -> bytes:
    """The A-ASSOCIATE-AC PDU for ``ac``."""
    prim = _AssociatePrimitive()
    prim.application_context_name = ac.application_context
    prim.calling_ae_title = ac.calling
    prim.called_ae_title = ac.called  # echoed back, as PS3.8 asks
    prim.result = 0x00
    results = []
    for r in ac.results:
        pc = PresentationContext()
        pc.context_id = r.context_id
        pc.transfer_syntax = [r.transfer_syntax]
        pc.result = r.result
        results.append(pc)
    prim.presentation_context_definition_results_list = results
    prim.user_information = _user_information(ac.max_pdu, ac.implementation_uid,
                                              ac.implementation_version)
    pdu = _AssociateAcPdu()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def decode_associate_ac(raw: bytes) -> AssociateAccept | None:
    """The A-ASSOCIATE-AC in ``raw`` (a whole PDU), or None when it is not a well-formed
    one (pynetdicom decodes a truncated PDU into an empty one rather than failing: no
    DICOM application context means malformed)."""
    if len(raw) < 6 or raw[0] != 0x02:
        return None
    pdu = _AssociateAcPdu()
    try:
        pdu.decode(raw)
        prim = pdu.to_primitive()
        results = tuple(
            ContextResult(int(cx.context_id or 0), int(cx.result if cx.result is not None else 2),
                          str(cx.transfer_syntax[0]) if cx.transfer_syntax else "")
            for cx in prim.presentation_context_definition_results_list)
        max_pdu, uid, version, _ = _user_fields(prim.user_information)
        context = str(prim.application_context_name or "")
    except Exception:  # noqa: BLE001 - malformed
        return None
    if not context:
        return None
    return AssociateAccept(calling=str(prim.calling_ae_title).strip(),
                           called=str(prim.called_ae_title).strip(), application_context=context,
                           results=results, max_pdu=max_pdu, implementation_uid=uid,
                           implementation_version=version)


# -- datasets ---------------------------------------------------------------------------------

def encode_dataset(ds: Dataset, implicit_vr: bool, little_endian: bool = True) -> bytes:
    """``ds`` encoded without file meta (pynetdicom's ``dsutils.encode``); ValueError
    when pydicom cannot encode it."""
    raw = _encode(ds, implicit_vr, little_endian)
    if raw is None:
        raise ValueError("the dataset cannot be encoded")
    return bytes(raw)


def encode_file_meta(file_meta: Any) -> bytes:
    """The encoded File Meta Information group of a received C-STORE (``Event.file_meta``)."""
    return bytes(_encode_file_meta(file_meta))


# -- process-wide switches --------------------------------------------------------------------

def set_unrestricted_storage(enabled: bool) -> None:
    """Whether storage SOP classes pynetdicom does not know may be negotiated."""
    _pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = enabled


def set_send_chunked_datasets(enabled: bool) -> None:
    """Whether pynetdicom sends a file's dataset from disk in chunks (never decoded)."""
    _pynetdicom_config.STORE_SEND_CHUNKED_DATASET = enabled


def receive_datasets_to(directory: Path | None, prefix: str = "pn-") -> None:
    """Where pynetdicom puts the data sets of C-STOREs it receives: written to a
    temporary file in ``directory`` fragment by fragment as they arrive (never whole
    in memory), named ``<prefix>...dcm`` so start-up sweeps find leftovers; ``None``:
    in memory, pynetdicom's default. Process-wide, like every ``_config`` switch.

    pynetdicom removes such a file only after its C-STORE handler ran; one whose
    association ends first (aborted mid-transfer, or a request pynetdicom fails to
    decode after creating it) would stay. So each file is also handed to its
    connection's socket, if that socket has a ``track_file(handle)`` method, to be
    removed when the connection closes (see :mod:`pacsinfra.pacs.fastscp.guard`)."""
    _pynetdicom_config.STORE_RECV_CHUNKED_DATASET = directory is not None
    if directory is None:
        _dimse_messages.NamedTemporaryFile = tempfile.NamedTemporaryFile  # type: ignore[attr-defined]
        return

    def spooled(**kwargs: Any) -> Any:
        handle = tempfile.NamedTemporaryFile(dir=str(directory), prefix=prefix, **kwargs)  # noqa: SIM115
        # pynetdicom's DUL thread, which decodes the C-STORE, is running this
        assoc = getattr(threading.current_thread(), "assoc", None)
        track = getattr(tcp_socket_of(assoc), "track_file", None) if assoc is not None else None
        if track is not None:
            track(handle)
        return handle

    _dimse_messages.NamedTemporaryFile = spooled  # type: ignore[attr-defined,assignment]
    _dimse_messages.create_file_meta = _placeholder_file_meta  # type: ignore[attr-defined]


_create_file_meta = _dimse_messages.create_file_meta  # type: ignore[attr-defined]


def _placeholder_file_meta(*, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any,
                           **kwargs: Any) -> Any:
    """pynetdicom writes the temporary file's meta group with pydicom, which raises on an
    empty SOP Class or Instance UID; raised in pynetdicom's DUL thread, that kills the
    association without an A-ABORT or a response. The temporary file gets a placeholder
    instead; the C-STORE handler still sees the request's own (empty) UID and refuses it."""
    return _create_file_meta(sop_class_uid=sop_class_uid or UID("0"),
                             sop_instance_uid=sop_instance_uid or UID("0"),
                             transfer_syntax=transfer_syntax, **kwargs)


@contextmanager
def received_dataset(event: Any) -> Iterator[tuple[bytes, memoryview]]:
    """(encoded file meta group, data set bytes) of the C-STORE in an ``EVT_C_STORE``
    event, whether pynetdicom kept it in memory or wrote it to a file (see
    :func:`receive_datasets_to`; then a read-only map of the file, valid inside the
    ``with`` block)."""
    path = getattr(event.request, "_dataset_path", None)
    if path is None:
        yield encode_file_meta(event.file_meta), memoryview(event.request.DataSet.getvalue())
        return
    with open(path if isinstance(path, (str, Path)) else path[0], "rb") as f:
        head = f.read(144)
        if len(head) < 144 or head[128:132] != b"DICM":
            raise ValueError("pynetdicom's temporary file is not a Part 10 file")
        (meta_length,) = struct.unpack_from("<L", head, 140)
        offset = 144 + meta_length
        size = os.fstat(f.fileno()).st_size
        if size < offset:
            raise ValueError("pynetdicom's temporary file is truncated")
        if size == offset:
            f.seek(132)
            yield f.read(offset - 132), memoryview(b"")
            return
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            meta, data = bytes(view[132:offset]), view[offset:]
            try:
                yield meta, data
            finally:
                data.release()
                view.release()


# -- associations and servers -----------------------------------------------------------------

def association_server(assoc: Any) -> Any:
    """The server an acceptor association belongs to (None for a requestor)."""
    return getattr(assoc, "_server", None)


def association_peer(assoc: Any) -> str:
    """The remote host address of a pynetdicom association ("" when unknown)."""
    info = getattr(assoc.requestor, "address_info", None)
    if info is not None:
        return str(info.address)
    return str(getattr(assoc.requestor, "address", "") or "")


def reject_association(assoc: Any, result: int, source: int, reason: int) -> None:
    """Reject an association from an ``EVT_REQUESTED`` handler (A-ASSOCIATE-RJ), the way
    pynetdicom rejects its own: ``EVT_REJECTED`` is triggered (the listener audits it),
    and ``kill()`` lets the DUL flush the PDU before the socket closes."""
    assoc.acse.send_reject(result, source, reason)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
    assoc.is_rejected = True


def rejection_of(assoc: Any) -> tuple[int, int, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ pynetdicom sent on ``assoc``, read
    in an ``EVT_REJECTED`` handler; None if unknown."""
    prim = getattr(assoc.acceptor, "primitive", None)
    if prim is None or prim.result is None:
        return None
    return int(prim.result), int(prim.result_source or 0), int(prim.diagnostic or 0)


def tcp_socket_of(assoc: Any) -> Any:
    """The socket under a pynetdicom association (None before it has one)."""
    return getattr(getattr(assoc.dul, "socket", None), "socket", None)


def before_each_read(assoc: Any, hook: Callable[[], None]) -> None:
    """Call ``hook`` before every read pynetdicom makes from the association's socket."""
    sock = assoc.dul.socket
    recv = sock.recv

    def _recv(nr_bytes: int) -> Any:
        hook()
        return recv(nr_bytes)

    sock.recv = _recv


def set_dul_loop_delay(assoc: Any, seconds: float) -> None:
    """How long the association's DUL thread naps when idle (pynetdicom's default 1 ms
    adds up on every C-STORE, which crosses it several times)."""
    if hasattr(assoc.dul, "_run_loop_delay"):
        assoc.dul._run_loop_delay = seconds


def keep_responses(assoc: Any) -> None:
    """Work around a pynetdicom race that loses C-STORE responses on a requestor.

    ``send_c_store`` pauses the association's reactor thread with a check-then-act
    that can see a stale "paused" flag; the reactor then takes the response off the
    DIMSE queue, logs "Received unexpected C-STORE service message" and drops it, and
    the sender waits for the whole DIMSE timeout. A response is never something the
    reactor should serve, so we put it back for the waiting ``send_c_store``.
    """
    serve: Callable[[Any, int], None] = assoc._serve_request

    def _serve(msg: Any, context_id: int) -> None:
        if msg is not None and not msg.is_valid_request and msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = _serve


def register_server(ae: Any, server: Any) -> None:
    """Make ``ae`` own a server it did not start itself (``AE.shutdown`` stops it, and
    the server's own ``shutdown`` removes it)."""
    ae._servers.append(server)
