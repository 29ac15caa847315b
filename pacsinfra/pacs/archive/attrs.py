"""Read the few attributes the index needs from a dataset's raw bytes.

The pixel data is never decoded (nor even read): pydicom stops before (7FE0,0010)
and only the tags listed in :data:`INDEXED` are kept.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

# What the readers here accept: anything indexable that struct.unpack_from reads.
Buffer = bytes | bytearray | memoryview | mmap.mmap

# keyword -> InstanceRecord field
INDEXED: dict[str, str] = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyInstanceUID": "study_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician",
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part",
    "SeriesDate": "series_date",
    "SeriesTime": "series_time",
    "SOPInstanceUID": "sop_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
    # what a viewer needs before it reads an image (QIDO-RS instance level)
    "Rows": "rows",
    "Columns": "columns",
    "BitsAllocated": "bits_allocated",
    "NumberOfFrames": "number_of_frames",
}
_TAGS: list[BaseTag | int] = [*(Tag(k) for k in INDEXED), Tag("SpecificCharacterSet")]


class DatasetUnreadable(ValueError):
    """The received bytes are not a parseable dataset in the negotiated syntax."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):  # multi-valued (e.g. a 2-valued IS): keep DICOM form
        return "\\".join(str(v) for v in value)
    return str(value).strip()


# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF


def check_structure(data: Buffer, implicit: bool, little: bool,
                    collect: dict[int, bytes] | None = None, *,
                    wanted: frozenset[int] | None = None,
                    vrs: dict[int, bytes] | None = None) -> int:
    """Walk every element header; raise :class:`DatasetUnreadable` if any length overruns.

    Catches truncated datasets and lying lengths that a stop-before-pixels parse would
    not see (e.g. Pixel Data declared longer than what arrived). Returns the offset of
    the first top-level element at or after (7FE0,0010) Pixel Data (``len(data)`` if
    none): everything the index needs lies before it. Only element headers are read,
    so ``data`` may be an mmap of a large file (the pixel data is never touched).
    ``collect``: the raw values of the top-level elements in ``wanted`` (default
    :data:`_PLAIN_TAGS`) are stored into it (a tag seen twice is stored as ``None``:
    let pydicom judge); ``vrs`` gets their explicit VRs (``b""`` in implicit VR).
    """
    wanted_tags = _PLAIN_TAGS if wanted is None else wanted
    first_pixel = [len(data)]
    e = "<" if little else ">"
    u16 = struct.Struct(e + "H")
    u32 = struct.Struct(e + "I")
    end = len(data)

    def need(pos: int, n: int) -> None:
        if pos + n > end:
            raise DatasetUnreadable(f"dataset truncated at byte {pos} (needs {n} more)")

    def dataset(pos: int, limit: int, in_item: bool) -> int:
        # Elements until ``limit`` or, in an undefined-length item, the item delimiter.
        while pos < limit:
            need(pos, 8)
            group = u16.unpack_from(data, pos)[0]
            elem = u16.unpack_from(data, pos + 2)[0]
            if not in_item and (group, elem) >= (0x7FE0, 0x0010) and pos < first_pixel[0]:
                first_pixel[0] = pos
            if group == 0xFFFE:
                if in_item and elem == 0xE00D:
                    return pos + 8
                raise DatasetUnreadable(f"unexpected delimiter (FFFE,{elem:04X}) at {pos}")
            if implicit:
                vr = b""
                length = u32.unpack_from(data, pos + 4)[0]
                pos += 8
            else:
                vr = bytes(data[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    need(pos, 12)
                    length = u32.unpack_from(data, pos + 8)[0]
                    pos += 12
                else:
                    length = u16.unpack_from(data, pos + 6)[0]
                    pos += 8
            if length == _UNDEFINED:
                pos = items(pos)
            else:
                need(pos, length)
                tag = (group << 16) | elem
                if collect is not None and not in_item and tag in wanted_tags:
                    collect[tag] = (bytes(data[pos:pos + length]) if tag not in collect
                                    else None)  # type: ignore[assignment]
                    if vrs is not None:
                        vrs[tag] = vr
                pos += length
        if in_item:
            raise DatasetUnreadable("item without delimiter")
        return pos

    def items(pos: int) -> int:
        # Items of an undefined-length sequence or encapsulated pixel data, to (FFFE,E0DD).
        while True:
            need(pos, 8)
            group = u16.unpack_from(data, pos)[0]
            elem = u16.unpack_from(data, pos + 2)[0]
            length = u32.unpack_from(data, pos + 4)[0]
            pos += 8
            if group != 0xFFFE:
                raise DatasetUnreadable(f"expected an item tag at {pos - 8}")
            if elem == 0xE0DD:
                return pos
            if elem != 0xE000:
                raise DatasetUnreadable(f"unexpected (FFFE,{elem:04X}) in a sequence")
            if length == _UNDEFINED:
                pos = dataset(pos, end, in_item=True)
            else:
                need(pos, length)
                pos += length

    dataset(0, end, in_item=False)
    return first_pixel[0]


_KEYWORD_TAGS = {kw: int(Tag(kw)) for kw in INDEXED}
_PLAIN_TAGS = frozenset((*_KEYWORD_TAGS.values(), 0x00080005))  # + SpecificCharacterSet
# printable ASCII without the value separator: bytes that decode alike in every charset
_PLAIN_BYTES = bytes(b for b in range(0x20, 0x7F) if b != 0x5C)
_UI_TAGS = frozenset(int(Tag(kw)) for kw in ("StudyInstanceUID", "SeriesInstanceUID",
                                             "SOPInstanceUID", "SOPClassUID"))
_US_TAGS = frozenset(int(Tag(kw)) for kw in ("Rows", "Columns", "BitsAllocated"))


def _plain_text(values: dict[int, bytes], little: bool = True) -> dict[str, str] | None:
    """The indexed attributes straight from their bytes, when that is certain to equal
    what pydicom would give (single-valued printable ASCII, no escapes, no NULs except
    UID padding; one unsigned short for the US ones); None otherwise. pydicom's element
    conversion costs ~15 us each, most of an instance's parse, for values that are
    almost always like this."""
    out: dict[str, str] = {}
    for kw, field in INDEXED.items():
        tag = _KEYWORD_TAGS[kw]
        value = values.get(tag, b"")
        if value is None:
            return None
        if tag in _US_TAGS:
            if len(value) not in (0, 2):
                return None
            out[field] = str(struct.unpack("<H" if little else ">H", value)[0]) if value else ""
            continue
        if tag in _UI_TAGS:
            value = value.rstrip(b"\x00")
        if value.translate(None, _PLAIN_BYTES):
            return None
        out[field] = value.decode("ascii").strip()
    charset = values.get(0x00080005)
    if charset is not None and charset.translate(None, _PLAIN_BYTES):
        return None  # a malformed Specific Character Set: pydicom's path reports it
    return out


def _inflated(raw: Buffer, ts: UID) -> tuple[Buffer, bool, bool]:
    """(dataset bytes, implicit VR, little endian) of ``raw`` in transfer syntax ``ts``."""
    data: Buffer = raw
    if ts == "1.2.840.10008.1.2.1.99":  # deflated: the whole dataset is a raw deflate stream
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw)
        except zlib.error as exc:
            raise DatasetUnreadable(f"deflated dataset does not inflate: {exc}") from exc
    return data, ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"


def read_header(raw: Buffer, transfer_syntax: str) -> Dataset:
    """Every top-level attribute before Pixel Data, as a pydicom Dataset (the router's
    rules may look at any of them). Checks the whole structure first, like
    :func:`read_indexed`; raises :class:`DatasetUnreadable`."""
    data, implicit, little = _inflated(raw, UID(transfer_syntax))
    cut = check_structure(data, implicit, little)
    try:
        return read_dataset(BytesIO(bytes(data[:cut])), implicit, little)
    except Exception as exc:  # pydicom raises many types on garbage; all mean "unreadable"
        raise DatasetUnreadable(f"{type(exc).__name__}: {exc}") from exc


# VRs whose values are backslash-separated text that pydicom only strips: their
# values can be taken from the bytes when those are plain (see header_values).
_SPLIT_TEXT_VRS = frozenset((b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"PN",
                             b"SH", b"TM", b"UI"))
# Specific Character Sets that map 0x20-0x7E to ASCII (ISO 2022 ones use escapes,
# which are not plain bytes anyway)
_ASCII_CHARSETS = frozenset(("", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109",
                             "ISO_IR 110", "ISO_IR 126", "ISO_IR 127", "ISO_IR 138",
                             "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192",
                             "GB18030", "GBK"))
_PRINTABLE = bytes(range(0x20, 0x7F))


def _plain_values(raw: bytes | None, vr: bytes) -> list[str] | None:
    """The values of a text element as pydicom would give them (``str`` of each, in
    order), when its bytes leave no doubt; None when they do (let pydicom decode)."""
    if raw is None or vr not in _SPLIT_TEXT_VRS:
        return None
    value = raw.rstrip(b"\x00 ") if vr == b"UI" else raw.rstrip(b" ")
    if not value:
        return []
    if value.translate(None, _PRINTABLE) or value[:1] == b" ":
        return None
    parts = value.split(b"\\")
    if any(not p or p != p.strip(b" ") for p in parts):
        return None
    return [p.decode("ascii") for p in parts]


def header_values(raw: Buffer, transfer_syntax: str,
                  tags: frozenset[int]) -> dict[int, list[str] | None] | None:
    """The values of top-level elements ``tags`` straight from the bytes (None for an
    absent one), as the router's rules read them from a pydicom Dataset; None when one
    of them needs pydicom (another character set, a binary or free-text VR, odd
    spacing, a private tag in implicit VR): then :func:`read_header`. Checks the
    whole structure first; raises :class:`DatasetUnreadable`."""
    from pydicom.datadict import dictionary_VR

    data, implicit, little = _inflated(raw, UID(transfer_syntax))
    found: dict[int, bytes] = {}
    vrs: dict[int, bytes] = {}
    check_structure(data, implicit, little, found,
                    wanted=tags | {0x00080005}, vrs=vrs)
    if not little:
        return None
    charset = found.get(0x00080005)
    if charset is not None and (
            charset.translate(None, _PRINTABLE)
            or charset.decode("ascii").strip() not in _ASCII_CHARSETS):
        return None
    out: dict[int, list[str] | None] = {}
    for tag in tags:
        if tag not in found:
            out[tag] = None
            continue
        vr = vrs.get(tag, b"")
        if not vr:
            try:
                vr = dictionary_VR(tag).encode("ascii")
            except KeyError:
                return None
        values = _plain_values(found[tag], vr)
        if values is None:
            return None
        out[tag] = values
    return out


def read_indexed(raw: Buffer, transfer_syntax: str) -> dict[str, str]:
    """The indexed attributes of ``raw`` (dataset bytes without file meta) as strings.

    ``raw`` is any buffer (bytes, memoryview, mmap); only the bytes before Pixel Data
    are copied. Raises :class:`DatasetUnreadable` on truncated or malformed input.
    """
    data, implicit, little = _inflated(raw, UID(transfer_syntax))
    values: dict[int, bytes] = {}
    cut = check_structure(data, implicit, little, values)
    fast = _plain_text(values, little)
    return fast if fast is not None else _pydicom_text(data[:cut], implicit, little)


def _stop_at_pixels(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) >= 0x7FE00010


def _pydicom_text(data: Buffer, implicit: bool, little: bool) -> dict[str, str]:
    """The indexed attributes as pydicom decodes them (character sets, multiple values)."""
    try:
        ds: Dataset = read_dataset(
            BytesIO(bytes(data)), implicit, little, stop_when=_stop_at_pixels,
            specific_tags=_TAGS
        )
        out = {field: _text(ds.get(kw)) for kw, field in INDEXED.items()}
    except Exception as exc:  # pydicom raises many types on garbage; all mean "unreadable"
        raise DatasetUnreadable(f"{type(exc).__name__}: {exc}") from exc
    return out
