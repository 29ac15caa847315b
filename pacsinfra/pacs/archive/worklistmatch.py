"""Modality Worklist matching (PS3.4 K.6.1.2, C.2.2.2): one stored item against one
C-FIND identifier, and the answer holding only the keys that were asked for.

Pure functions over pydicom data sets; no index, no network. Matching kinds:
universal (empty key), single value, wildcard (``*`` and ``?`` in text values; person
names compared without regard to case), UID lists (backslash-separated), date and time
ranges (``A-B``, ``A-``, ``-B``), and sequence matching of the Scheduled Procedure Step
Sequence: an item matches when one of its steps matches every non-empty key of the
query's step, and only matching steps are returned.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

SPS = "ScheduledProcedureStepSequence"
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "AS", "DS", "IS"}
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_UID = re.compile(r"^[0-9.]{1,64}$")
# Attributes whose presence makes no sense in a worklist query (Q/R level, etc.)
_NOT_MWL = {0x00080052}


class IdentifierError(ValueError):
    """The identifier is not a valid Modality Worklist query (answered 0xA900)."""


def check_identifier(ident: Dataset) -> None:
    """Raise :class:`IdentifierError` for a key no worklist can be matched with."""
    for elem in ident:
        if elem.tag in _NOT_MWL:
            raise IdentifierError(f"{elem.keyword} is not a worklist key")
        _check_element(elem)


def _check_element(elem: DataElement) -> None:
    if elem.VR == "SQ":
        if elem.value is None:
            return
        if len(elem.value) > 1:
            raise IdentifierError(f"{elem.keyword}: a sequence key holds at most one item")
        for item in elem.value:
            for sub in item:
                _check_element(sub)
        return
    value = _text(elem)
    if not value:
        return
    if elem.VR in ("DA", "TM"):
        form = _DATE if elem.VR == "DA" else _TIME
        low, dash, high = value.partition("-")
        parts = [p for p in (low, high) if p] if dash else [value]
        if not parts or not all(form.match(p) for p in parts):
            raise IdentifierError(f"{elem.keyword}: {value!r} is not a {elem.VR} "
                                  "value or range")
    elif elem.VR == "UI" and not all(_UID.match(u) for u in value.split("\\")):
        raise IdentifierError(f"{elem.keyword}: {value!r} is not a UID list")


def _text(elem: DataElement | None) -> str:
    """An element's value as DICOM writes it (multi-values joined by backslash)."""
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _wildcard(pattern: str, *, fold: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if fold else re.DOTALL)


def _in_range(key: str, value: str, vr: str) -> bool:
    """Date/time single-value or range matching; times compared as HHMMSS (a range's
    upper bound is padded to the end of its hour or minute)."""
    if not value:
        return False
    low, dash, high = key.partition("-")
    if vr == "TM":
        value = value.split(".")[0].ljust(6, "0")
        low = low.split(".")[0].ljust(6, "0") if low else ""
        high = high.split(".")[0].ljust(6, "9") if high else ""
    if not dash:
        return value == low
    return (not low or value >= low) and (not high or value <= high)


def element_matches(key: DataElement, stored: DataElement | None) -> bool:
    """Whether one non-sequence key matches the stored element (universal when empty)."""
    want = _text(key)
    if not want:
        return True
    have = _text(stored)
    vr = key.VR
    if vr in ("DA", "TM"):
        return _in_range(want, have, vr)
    if vr == "UI":
        return have in want.split("\\")
    if vr in _TEXT_VRS and ("*" in want or "?" in want):
        regex = _wildcard(want, fold=vr == "PN")
        return any(regex.match(v) for v in (have.split("\\") if have else [""]))
    if vr == "PN":
        return want.lower() == have.lower()
    return want in (have.split("\\") if vr == "CS" else [have])


def dataset_matches(query: Dataset, item: Dataset) -> bool:
    """Whether ``item`` matches every key of ``query`` (sequence keys included)."""
    for key in query:
        if key.VR == "SQ":
            if key.value and not _matching_items(key.value[0], item.get(key.tag)):
                return False
            continue
        if not element_matches(key, item.get(key.tag)):
            return False
    return True


def _matching_items(query_item: Dataset, stored: DataElement | None) -> list[Dataset]:
    """The stored sequence items that match ``query_item`` (all when it has no keys)."""
    items: list[Dataset] = list(stored.value) if stored is not None and stored.value else []
    if not any(_text(k) for k in query_item if k.VR != "SQ") and not any(
            k.VR == "SQ" and k.value for k in query_item):
        return items
    return [it for it in items if dataset_matches(query_item, it)]


def project(query: Dataset, item: Dataset) -> Dataset:
    """The answer for a matching ``item``: every key of ``query`` with the item's value
    (empty when the item has none), sequences projected item by item; plus Specific
    Character Set when the item has one."""
    out = Dataset()
    if "SpecificCharacterSet" in item:
        out.SpecificCharacterSet = item.SpecificCharacterSet
    for key in query:
        stored = item.get(key.tag)
        if key.VR == "SQ":
            sub: Any = key.value[0] if key.value else Dataset()
            chosen = _matching_items(sub, stored)
            out.add(DataElement(key.tag, "SQ", Sequence([project(sub, it) for it in chosen])))
        elif stored is not None and stored.VR != "SQ":
            out.add(DataElement(key.tag, stored.VR, stored.value))
        else:
            out.add(DataElement(key.tag, key.VR, None))
    return out
