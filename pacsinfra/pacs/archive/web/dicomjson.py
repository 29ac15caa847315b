"""DICOM JSON (PS3.18 Annex F) of top-level elements straight from their stored bytes.

pydicom's ``DataElement.to_json_dict`` first turns each raw element into a Python value
(the element's class, VM, number objects), which is most of the cost of a series'
metadata. The common elements of an image header — plain ASCII text, numbers, person
names with one component group, short binary values — are encoded here from the bytes
to exactly what pydicom would give (tests compare the two on every file pydicom ships);
anything else (sequences, AT, other character sets, escapes, odd spacing, ambiguous
VRs) returns None and is left to pydicom.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

#: text VRs with backslash-separated values, which pydicom strips of trailing spaces
_SPLIT_TEXT = frozenset(("AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC"))
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q",
            "FL": "f", "FD": "d"}
_BINARY = frozenset(("OB", "OD", "OF", "OL", "OV", "OW"))
#: character sets in which printable ASCII bytes mean printable ASCII
PLAIN_CHARSETS = frozenset(("", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6"))
_PRINTABLE = bytes(range(0x20, 0x7F))
_INT = re.compile(r"^[+-]?\d{1,10}$")
_DECIMAL = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def _vr(raw: RawDataElement) -> str | None:
    if raw.VR:
        return str(raw.VR)
    try:
        vr = str(dictionary_VR(raw.tag))
    except KeyError:
        return None
    return None if " or " in vr else vr


def _texts(value: bytes) -> list[str] | None:
    """Backslash-separated printable ASCII values as pydicom reads them (the trailing
    spaces of the whole value gone); None when any byte or value needs more care."""
    if value.translate(None, _PRINTABLE):
        return None
    out = value.decode("ascii").rstrip(" ").split("\\")
    if any(not p or p != p.strip(" ") for p in out):
        return None  # empty values, spaces around values: pydicom's rules differ per VR
    return out


def element_json(raw: RawDataElement, bulk_uri: str, threshold: int,
                 charset_plain: bool) -> dict[str, Any] | None:
    """The DICOM JSON of a raw top-level element, or None to let pydicom encode it.

    ``bulk_uri``: the BulkDataURI for a binary value longer than pydicom's inline limit
    for ``threshold``; ``charset_plain``: the instance's character set reads printable
    ASCII as ASCII."""
    vr = _vr(raw)
    value = raw.value
    if vr is None or vr == "UN" or not isinstance(value, bytes):
        return None  # UN: pydicom looks the tag up and may read it as another VR
    if not value:
        return {"vr": vr} if vr not in ("SQ", "AT") else None
    if vr in _BINARY:
        if len(value) > (threshold // 4) * 3:
            return {"vr": vr, "BulkDataURI": bulk_uri}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode()}
    code = _NUMBERS.get(vr)
    if code is not None:
        size = struct.calcsize("<" + code)  # standard sizes (native "L" is 8 bytes)
        if len(value) % size:
            return None
        order = "<" if raw.is_little_endian else ">"
        numbers = struct.unpack(f"{order}{len(value) // size}{code}", value)
        cast = float if code in "fd" else int
        return {"vr": vr, "Value": [cast(n) for n in numbers]}
    if not charset_plain:
        return None
    if vr == "UI":
        texts = _texts(value.rstrip(b"\0"))
        return {"vr": vr, "Value": texts} if texts is not None else None
    if vr in _SPLIT_TEXT:
        texts = _texts(value)
        return {"vr": vr, "Value": texts} if texts is not None else None
    if vr in ("IS", "DS"):
        texts = _texts(value)
        if texts is None or not all((_INT if vr == "IS" else _DECIMAL).match(t.strip())
                                    for t in texts):
            return None
        if vr == "IS":
            return {"vr": vr, "Value": [int(t) for t in texts]}
        return {"vr": vr, "Value": [float(t) for t in texts]}
    if vr == "PN":
        texts = _texts(value)
        if texts is None or len(texts) != 1 or "=" in texts[0]:
            return None
        return {"vr": vr, "Value": [{"Alphabetic": texts[0]}]}
    return None


__all__ = ["PLAIN_CHARSETS", "element_json"]
