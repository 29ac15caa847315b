"""DIMSE command sets (PS3.7 E): group 0000, always Implicit VR Little Endian.

Only what the streaming SCP and SCU need: decode a command's elements into a dict,
encode a C-STORE-RQ, C-STORE-RSP, C-FIND-RSP or C-ECHO-RSP. A command set is a handful of short elements, so a
struct walk is both simpler and much cheaper than building a pydicom Dataset.
"""

from __future__ import annotations

import struct

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
HAS_DATASET = 0x0000  # any other value than NO_DATASET; 0x0000 is what toolkits send

AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_RESPONDED = 0x0120
PRIORITY = 0x0700
DATASET_TYPE = 0x0800
STATUS = 0x0900
AFFECTED_SOP_INSTANCE = 0x1000
MOVE_ORIGINATOR_AET = 0x1030
MOVE_ORIGINATOR_ID = 0x1031

_ELEMENT = struct.Struct("<HHL")
_US = (COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED, DATASET_TYPE, STATUS,
       MOVE_ORIGINATOR_ID, PRIORITY)


class BadCommand(ValueError):
    """A command set that is not well-formed group 0000 Implicit VR LE."""


def decode(data: bytes) -> dict[int, int | str]:
    """Element number (of group 0000) -> value: US as int, UI/AE as stripped str."""
    out: dict[int, int | str] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise BadCommand("truncated element header")
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or length > end - pos:
            raise BadCommand(f"element ({group:04X},{elem:04X}) length {length} is invalid")
        value = data[pos:pos + length]
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
