"""Upper-layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 E) as bytes.

The one codec the streaming SCP and the streaming requestor share. Pure functions
over bytes (no sockets):

- PDU headers: :func:`header`, :func:`parse_header`.
- P-DATA-TF and its PDV items: :func:`p_data`, :func:`p_data_tf`, :func:`p_data_header`,
  :func:`fragments`, :func:`iter_pdvs`, and :class:`MessageAssembler`, which
  collects a message's command fragments and passes its data set fragments through.
- A-RELEASE-RQ/RP, A-ABORT, A-ASSOCIATE-RJ: encoders and parsers.
- DIMSE command sets (group 0000, always Implicit VR Little Endian): :func:`decode_command`
  and encoders for the few messages this side sends.

A-ASSOCIATE-RQ/AC are encoded and decoded by pynetdicom's PDU classes, through
:mod:`pacsinfra.pacs.compat`. Anything malformed raises :class:`CodecError`, a
:class:`ProtocolError`: the association that carried it is aborted.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterable, Iterator
from typing import Final, NamedTuple

# -- PDU types (PS3.8 9.3.1) ------------------------------------------------------------------
A_ASSOCIATE_RQ: Final = 0x01
A_ASSOCIATE_AC: Final = 0x02
A_ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
A_RELEASE_RQ: Final = 0x05
A_RELEASE_RP: Final = 0x06
A_ABORT: Final = 0x07
PDU_NAMES: Final = {A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ", A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
                    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ", P_DATA_TF: "P-DATA-TF",
                    A_RELEASE_RQ: "A-RELEASE-RQ", A_RELEASE_RP: "A-RELEASE-RP",
                    A_ABORT: "A-ABORT"}

HEADER: Final = struct.Struct(">BxL")  # type, reserved, length of what follows
HEADER_SIZE: Final = 6
PDV_HEADER: Final = struct.Struct(">LBB")  # item length, context id, message control header
PDV_HEADER_SIZE: Final = 6
#: P-DATA-TF bytes around a PDV's data: item length (4), context id and control (2)
PDV_OVERHEAD: Final = 6

# message control header bits (PS3.8 E.2)
COMMAND: Final = 0x01
LAST: Final = 0x02

# A-ABORT (PS3.8 9.3.8): source 0 service user, 2 service provider; provider reasons
ABORT_USER: Final = 0
ABORT_PROVIDER: Final = 2
REASON_NOT_SPECIFIED: Final = 0
REASON_UNRECOGNIZED_PDU: Final = 1
REASON_UNEXPECTED_PDU: Final = 2
REASON_UNRECOGNIZED_PARAMETER: Final = 4
REASON_UNEXPECTED_PARAMETER: Final = 5
REASON_INVALID_PARAMETER: Final = 6

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECT_PERMANENT: Final = 1
REJECT_TRANSIENT: Final = 2
SOURCE_USER: Final = 1
SOURCE_ACSE: Final = 2
SOURCE_PRESENTATION: Final = 3
#: (result, source, reason) of the rejections this project sends
RJ_CALLING_AE: Final = (REJECT_PERMANENT, SOURCE_USER, 3)  # calling AE title not recognized
RJ_CALLED_AE: Final = (REJECT_PERMANENT, SOURCE_USER, 7)  # called AE title not recognized
RJ_NO_REASON: Final = (REJECT_PERMANENT, SOURCE_USER, 1)
RJ_LIMIT: Final = (REJECT_TRANSIENT, SOURCE_PRESENTATION, 2)  # local limit exceeded
RJ_CONGESTION: Final = (REJECT_TRANSIENT, SOURCE_PRESENTATION, 1)  # temporary congestion
RJ_TOO_LARGE: Final = (REJECT_PERMANENT, SOURCE_PRESENTATION, 2)  # the request itself exceeds it


class ProtocolError(Exception):
    """The peer broke PS3.8 or PS3.7: the association is aborted (``reason``: the
    A-ABORT reason to send)."""

    reason: int = REASON_NOT_SPECIFIED


class CodecError(ProtocolError, ValueError):
    """Bytes that are not what PS3.8 / PS3.7 says they must be."""

    reason = REASON_INVALID_PARAMETER


class UnrecognizedPdu(ProtocolError):
    """A PDU type PS3.8 does not define."""

    reason = REASON_UNRECOGNIZED_PDU


class BadCommand(CodecError):
    """A command set that is not well-formed group 0000 Implicit VR LE."""


# -- headers ------------------------------------------------------------------------------------

def header(kind: int, length: int) -> bytes:
    """A PDU header: ``kind`` and the length of the body that follows."""
    return HEADER.pack(kind, length)


def parse_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(type, body length) of the PDU header at the start of ``data`` (6 bytes or more)."""
    if len(data) < HEADER_SIZE:
        raise CodecError(f"a PDU header is {HEADER_SIZE} bytes, got {len(data)}")
    kind, length = HEADER.unpack_from(data, 0)
    return int(kind), int(length)


def pdu_name(kind: int) -> str:
    """The PS3.8 name of PDU type ``kind``."""
    return PDU_NAMES.get(kind, f"PDU type 0x{kind:02X}")


# -- P-DATA-TF ----------------------------------------------------------------------------------

def p_data(context_id: int, control: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A P-DATA-TF PDU with one PDV (``control``: :data:`COMMAND`, :data:`LAST` bits)."""
    return p_data_header(context_id, control, len(payload)) + bytes(payload)


def p_data_tf(pdvs: Iterable[tuple[int, int, bytes | bytearray | memoryview]]) -> bytes:
    """A P-DATA-TF PDU with several PDVs, each (context id, control, data)."""
    items = b"".join(PDV_HEADER.pack(len(data) + 2, ctx, control) + bytes(data)
                     for ctx, control, data in pdvs)
    return HEADER.pack(P_DATA_TF, len(items)) + items


def p_data_header(context_id: int, control: int, length: int) -> bytes:
    """The bytes before a one-PDV P-DATA-TF's ``length`` data bytes (PDU header and PDV
    header), for a sender that writes the data itself (``sendfile``)."""
    return (HEADER.pack(P_DATA_TF, length + PDV_OVERHEAD)
            + PDV_HEADER.pack(length + 2, context_id, control))


def pdv_room(peer_max_pdu: int, unlimited: int = 4 << 20) -> int:
    """Data bytes per PDV so a one-PDV P-DATA-TF respects the peer's Maximum Length
    Received (``0``: no limit, then ``unlimited``)."""
    return max((peer_max_pdu or unlimited) - PDV_OVERHEAD, 1)


def fragments(context_id: int, data: bytes | bytearray | memoryview, *, command: bool,
              room: int) -> Iterator[bytes]:
    """The P-DATA-TF PDUs carrying ``data`` (a command set or a data set) in PDVs of at
    most ``room`` bytes, the last one flagged last; an empty ``data`` is one empty PDV."""
    base = COMMAND if command else 0
    view = memoryview(data)
    if not view:
        yield p_data(context_id, base | LAST, b"")
        return
    for pos in range(0, len(view), room):
        last = pos + room >= len(view)
        yield p_data(context_id, base | (LAST if last else 0), view[pos:pos + room])


def iter_pdvs(body: memoryview | bytes) -> Iterator[tuple[int, int, memoryview]]:
    """(context id, control, data) of each PDV in a P-DATA-TF body; CodecError when an
    item does not fit the PDU (PS3.8 9.3.5: at least one PDV, each at least 2 bytes)."""
    view = memoryview(body)
    pos, end = 0, len(view)
    if end == 0:
        raise CodecError("P-DATA-TF without a PDV item")
    while pos < end:
        if end - pos < PDV_HEADER_SIZE:
            raise CodecError("truncated PDV item")
        length, ctx, control = PDV_HEADER.unpack_from(view, pos)
        stop = pos + 4 + length
        if length < 2 or stop > end:
            raise CodecError(f"PDV length {length} does not fit its PDU")
        yield ctx, control, view[pos + PDV_HEADER_SIZE:stop]
        pos = stop


class Command(NamedTuple):
    """A whole command set, received on presentation context ``context_id``."""

    context_id: int
    raw: bytes


class Fragment(NamedTuple):
    """A data set fragment (a view into the PDU: only valid until the next read)."""

    context_id: int
    data: memoryview
    last: bool


class MessageAssembler:
    """Sorts the PDVs of one association into DIMSE message parts (PS3.7 E, PS3.8 E.2).

    :meth:`feed` yields a :class:`Command` once a command set's last fragment
    arrives, and a :class:`Fragment` for each data set fragment as it arrives (not
    collected: the caller streams it). The caller says when a command announced a
    data set (:meth:`expect_data`); the assembler then enforces the order PS3.7
    requires: no command fragment in the middle of a data set, no data set fragment
    that no command announced, a message stays on its presentation context, and
    only accepted presentation contexts (``contexts``) are used.
    """

    def __init__(self, contexts: Container[int] | None = None,
                 max_command: int = 1 << 16) -> None:
        self.contexts = contexts
        self.max_command = max_command
        self._command: list[bytes] = []
        self._command_size = 0
        self._command_context: int | None = None  # of the command being collected
        self._data_context: int | None = None  # of the data set announced

    @property
    def receiving_data(self) -> bool:
        """A data set was announced and its last fragment has not arrived."""
        return self._data_context is not None

    def expect_data(self, context_id: int) -> None:
        """The command just received announced a data set on ``context_id``."""
        self._data_context = context_id

    def feed(self, body: memoryview | bytes) -> Iterator[Command | Fragment]:
        """The message parts of one P-DATA-TF body (see the class docstring)."""
        for ctx, control, data in iter_pdvs(body):
            if self.contexts is not None and ctx not in self.contexts:
                raise CodecError(f"PDV on presentation context {ctx}, which is not accepted")
            if control & COMMAND:
                if self._data_context is not None:
                    raise CodecError("command fragment in the middle of a data set")
                if self._command_context is not None and ctx != self._command_context:
                    raise CodecError("command fragments on two presentation contexts")
                self._command_context = ctx
                self._command_size += len(data)
                if self._command_size > self.max_command:
                    raise CodecError(f"command set longer than {self.max_command} bytes")
                self._command.append(bytes(data))
                if control & LAST:
                    raw = b"".join(self._command)
                    self._command, self._command_size, self._command_context = [], 0, None
                    yield Command(ctx, raw)
            else:
                if self._command_context is not None:
                    raise CodecError("data set fragment in the middle of a command set")
                if self._data_context is None or ctx != self._data_context:
                    raise CodecError("data set fragment that no command announced")
                last = bool(control & LAST)
                if last:
                    self._data_context = None
                yield Fragment(ctx, data, last)


# -- A-RELEASE, A-ABORT, A-ASSOCIATE-RJ (fixed 4-byte bodies) ----------------------------------

_FOUR = struct.Struct(">xxBB")  # two reserved bytes, then two fields


def release_rq() -> bytes:
    """An A-RELEASE-RQ PDU."""
    return HEADER.pack(A_RELEASE_RQ, 4) + b"\x00" * 4


def release_rp() -> bytes:
    """An A-RELEASE-RP PDU."""
    return HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4


def abort(source: int = ABORT_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    """An A-ABORT PDU (``source`` :data:`ABORT_PROVIDER` or :data:`ABORT_USER`; reason
    only meaningful from the provider: see the ``REASON_*`` constants)."""
    return HEADER.pack(A_ABORT, 4) + _FOUR.pack(source, reason)


def parse_abort(body: bytes | memoryview) -> tuple[int, int]:
    """(source, reason) of an A-ABORT body."""
    if len(body) != 4:
        raise CodecError(f"A-ABORT body of {len(body)} bytes (4 expected)")
    source, reason = _FOUR.unpack(body)
    return int(source), int(reason)


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return HEADER.pack(A_ASSOCIATE_RJ, 4) + struct.pack(">xBBB", result, source, reason)


def parse_associate_rj(body: bytes | memoryview) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ body."""
    if len(body) != 4:
        raise CodecError(f"A-ASSOCIATE-RJ body of {len(body)} bytes (4 expected)")
    result, source, reason = struct.unpack(">xBBB", body)
    return int(result), int(source), int(reason)


def check_fixed_length(kind: int, length: int) -> None:
    """A-RELEASE-RQ/RP, A-ABORT and A-ASSOCIATE-RJ are always 4 bytes long: any other
    length is an invalid PDU (and must not be read into memory)."""
    if kind in (A_RELEASE_RQ, A_RELEASE_RP, A_ABORT, A_ASSOCIATE_RJ) and length != 4:
        raise CodecError(f"{pdu_name(kind)} of {length} bytes (4 expected)")


# -- DIMSE command sets (PS3.7 E) ---------------------------------------------------------------
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
C_CANCEL_RQ: Final = 0x0FFF
NO_DATASET: Final = 0x0101
HAS_DATASET: Final = 0x0000  # any other value than NO_DATASET; 0x0000 is what toolkits send

AFFECTED_SOP_CLASS: Final = 0x0002
COMMAND_FIELD: Final = 0x0100
MESSAGE_ID: Final = 0x0110
MESSAGE_ID_RESPONDED: Final = 0x0120
PRIORITY: Final = 0x0700
DATASET_TYPE: Final = 0x0800
STATUS: Final = 0x0900
AFFECTED_SOP_INSTANCE: Final = 0x1000
MOVE_ORIGINATOR_AET: Final = 0x1030
MOVE_ORIGINATOR_ID: Final = 0x1031

_ELEMENT = struct.Struct("<HHL")
_US = frozenset((COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED, DATASET_TYPE, STATUS,
                 MOVE_ORIGINATOR_ID, PRIORITY))


def decode_command(data: bytes | memoryview) -> dict[int, int | str]:
    """Element number (of group 0000) -> value: US as int, UI/AE/other as stripped str.

    A command set is a handful of short elements: a struct walk is both simpler and
    much cheaper than a pydicom Dataset."""
    out: dict[int, int | str] = {}
    raw = bytes(data)
    pos, end = 0, len(raw)
    while pos < end:
        if end - pos < 8:
            raise BadCommand("truncated element header")
        group, elem, length = _ELEMENT.unpack_from(raw, pos)
        pos += 8
        if group != 0x0000 or length > end - pos:
            raise BadCommand(f"element ({group:04X},{elem:04X}) length {length} is invalid")
        value = raw[pos:pos + length]
        pos += length
        if elem in _US:
            if length != 2:
                raise BadCommand(f"(0000,{elem:04X}) is US but {length} bytes long")
            out[elem] = int.from_bytes(value, "little")
        elif elem != 0x0000:
            out[elem] = value.decode("ascii", "replace").rstrip("\x00 ")
    return out


def _ui(elem: int, uid: str) -> bytes:
    raw = uid.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"  # UI values pad with NUL to an even length
    return _ELEMENT.pack(0, elem, len(raw)) + raw


def _us(elem: int, value: int) -> bytes:
    return _ELEMENT.pack(0, elem, 2) + struct.pack("<H", value)


def _with_group_length(body: bytes) -> bytes:
    return _ELEMENT.pack(0, 0x0000, 4) + struct.pack("<L", len(body)) + body


def store_rq(message_id: int, sop_class: str, sop_uid: str, priority: int = 0) -> bytes:
    """A C-STORE-RQ command set (a data set follows)."""
    return _with_group_length(
        _ui(AFFECTED_SOP_CLASS, sop_class) + _us(COMMAND_FIELD, C_STORE_RQ)
        + _us(MESSAGE_ID, message_id) + _us(PRIORITY, priority)
        + _us(DATASET_TYPE, HAS_DATASET) + _ui(AFFECTED_SOP_INSTANCE, sop_uid))


def store_rsp(message_id: int, sop_class: str, sop_uid: str, status: int) -> bytes:
    """A C-STORE-RSP command set."""
    return _with_group_length(
        _ui(AFFECTED_SOP_CLASS, sop_class) + _us(COMMAND_FIELD, C_STORE_RSP)
        + _us(MESSAGE_ID_RESPONDED, message_id) + _us(DATASET_TYPE, NO_DATASET)
        + _us(STATUS, status) + _ui(AFFECTED_SOP_INSTANCE, sop_uid))


def echo_rq(message_id: int, sop_class: str = "1.2.840.10008.1.1") -> bytes:
    """A C-ECHO-RQ command set."""
    return _with_group_length(
        _ui(AFFECTED_SOP_CLASS, sop_class) + _us(COMMAND_FIELD, C_ECHO_RQ)
        + _us(MESSAGE_ID, message_id) + _us(DATASET_TYPE, NO_DATASET))


def echo_rsp(message_id: int, sop_class: str, status: int = 0) -> bytes:
    """A C-ECHO-RSP command set."""
    return _with_group_length(
        _ui(AFFECTED_SOP_CLASS, sop_class) + _us(COMMAND_FIELD, C_ECHO_RSP)
        + _us(MESSAGE_ID_RESPONDED, message_id) + _us(DATASET_TYPE, NO_DATASET)
        + _us(STATUS, status))


def find_rsp(message_id: int, sop_class: str, status: int, *, with_dataset: bool) -> bytes:
    """A C-FIND-RSP command set (pending ones carry an identifier)."""
    return _with_group_length(
        _ui(AFFECTED_SOP_CLASS, sop_class) + _us(COMMAND_FIELD, C_FIND_RSP)
        + _us(MESSAGE_ID_RESPONDED, message_id)
        + _us(DATASET_TYPE, HAS_DATASET if with_dataset else NO_DATASET)
        + _us(STATUS, status))
