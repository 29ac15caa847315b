"""C-FIND / C-MOVE / C-GET identifier -> SQL, and matches -> response identifiers.

Matching follows PS3.4 C.2.2.2: universal (empty value), single value, wildcard
(``*`` ``?``; case-insensitive for PN), list of UIDs (backslash-separated), date
and time ranges (``A-B``, ``-B``, ``A-``), and sequence matching (an empty
sequence or an item of empty keys is universal; keys inside items that the index
does not hold cannot match a value and are answered empty). Only the requested
attributes come back. Study and patient levels are aggregated rows of their own
tables, so a study matches once, with its related-series/instance counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from pacsinfra.pacs.archive.db import like_escape

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


@dataclass(frozen=True)
class Attr:
    """Where an attribute lives and how it matches."""

    level: str  # owning level
    column: str  # column in that level's table (study denormalises the patient columns)
    kind: str  # uid | date | time | pn | text | count | modalities


CATALOG: dict[str, Attr] = {
    "PatientID": Attr("PATIENT", "patient_id", "text"),
    "PatientName": Attr("PATIENT", "patient_name", "pn"),
    "PatientBirthDate": Attr("PATIENT", "patient_birth_date", "date"),
    "PatientSex": Attr("PATIENT", "patient_sex", "text"),
    "NumberOfPatientRelatedStudies": Attr("PATIENT", "num_studies", "count"),
    "NumberOfPatientRelatedInstances": Attr("PATIENT", "num_instances", "count"),
    "StudyInstanceUID": Attr("STUDY", "study_uid", "uid"),
    "StudyDate": Attr("STUDY", "study_date", "date"),
    "StudyTime": Attr("STUDY", "study_time", "time"),
    "AccessionNumber": Attr("STUDY", "accession_number", "text"),
    "StudyID": Attr("STUDY", "study_id", "text"),
    "StudyDescription": Attr("STUDY", "study_description", "text"),
    "ReferringPhysicianName": Attr("STUDY", "referring_physician", "pn"),
    "ModalitiesInStudy": Attr("STUDY", "modalities", "modalities"),
    "NumberOfStudyRelatedSeries": Attr("STUDY", "num_series", "count"),
    "NumberOfStudyRelatedInstances": Attr("STUDY", "num_instances", "count"),
    "SeriesInstanceUID": Attr("SERIES", "series_uid", "uid"),
    "Modality": Attr("SERIES", "modality", "text"),
    "SeriesNumber": Attr("SERIES", "series_number", "text"),
    "SeriesDescription": Attr("SERIES", "series_description", "text"),
    "BodyPartExamined": Attr("SERIES", "body_part", "text"),
    "SeriesDate": Attr("SERIES", "series_date", "date"),
    "SeriesTime": Attr("SERIES", "series_time", "time"),
    "NumberOfSeriesRelatedInstances": Attr("SERIES", "num_instances", "count"),
    "SOPInstanceUID": Attr("IMAGE", "sop_uid", "uid"),
    "SOPClassUID": Attr("IMAGE", "sop_class_uid", "uid"),
    "InstanceNumber": Attr("IMAGE", "instance_number", "text"),
    "AvailableTransferSyntaxUID": Attr("IMAGE", "transfer_syntax", "uid"),
    "Rows": Attr("IMAGE", "img_rows", "count"),
    "Columns": Attr("IMAGE", "img_columns", "count"),
    "BitsAllocated": Attr("IMAGE", "bits_allocated", "count"),
    "NumberOfFrames": Attr("IMAGE", "num_frames", "count"),
}

_FROM = {
    "PATIENT": "patient p",
    "STUDY": "study s",
    "SERIES": "series se JOIN study s ON s.study_uid = se.study_uid",
    "IMAGE": "instance i JOIN series se ON se.series_uid = i.series_uid "
    "JOIN study s ON s.study_uid = i.study_uid",
}
_ALIAS = {"PATIENT": "p", "STUDY": "s", "SERIES": "se", "IMAGE": "i"}


class QueryError(ValueError):
    """The identifier cannot be matched (bad level, key above/below the level)."""


def _expr(attr: Attr, level: str, joins: set[str]) -> str | None:
    """SQL expression of ``attr`` at query ``level``; None if it is below the level."""
    if LEVELS.index(attr.level) > LEVELS.index(level):
        return None
    if attr.level == "PATIENT" and level != "PATIENT":
        if attr.kind == "count":
            joins.add("LEFT JOIN patient p ON p.patient_id = s.patient_id")
            return f"p.{attr.column}"
        return f"s.{attr.column}"  # denormalised onto the study row
    return f"{_ALIAS[attr.level]}.{attr.column}"


def _like(value: str) -> str:
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(like_escape(ch))
    return "".join(out)


def _range(col: str, value: str, kind: str, params: list[Any]) -> str:
    lo, _, hi = value.partition("-")
    lo, hi = lo.strip(), hi.strip()
    if kind == "time" and hi:
        hi += "~"  # "1300" includes 13:00:59.999: pad past every digit and '.'
    parts = []
    if lo:
        parts.append(f"{col} >= ?")
        params.append(lo)
    if hi:
        parts.append(f"{col} <= ?")
        params.append(hi)
    parts.append(f"{col} <> ''")
    return "(" + " AND ".join(parts) + ")"


def _fuzzy(col: str, value: str, params: list[Any]) -> str:
    """Fuzzy person name matching (PS3.18 8.3.4.2, as this archive does it): the value,
    case-insensitive, is the beginning of any name component ("smi" finds
    "Smith^John" and "Jones^Smiley"; wildcards still work)."""
    ors = []
    stem = _like(value.rstrip("*")).lower()
    for lead in ("", "%^", "% ", "%="):
        params.append(f"{lead}{stem}%")
        ors.append(f"lower({col}) LIKE ? ESCAPE '!'")
    return "(" + " OR ".join(ors) + ")"


def _condition(col: str, attr: Attr, value: str, params: list[Any],
               fuzzy: bool = False) -> str | None:
    """One matching condition (None = universal match)."""
    if value == "" or value == "*":
        return None
    if fuzzy and attr.kind == "pn":
        return _fuzzy(col, value, params)
    if attr.kind == "count":
        return None  # return keys only
    if attr.kind == "uid":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        if len(uids) == 1:
            params.append(uids[0])
            return f"{col} = ?"
        params.extend(uids)
        return f"{col} IN ({', '.join('?' * len(uids))})"
    if attr.kind == "modalities":
        ors = []
        for v in value.split("\\"):
            params.append(f"%\\{_like(v.strip())}\\%")
            ors.append(f"{col} LIKE ? ESCAPE '!'")
        return "(" + " OR ".join(ors) + ")"
    if attr.kind in ("date", "time") and "-" in value:
        return _range(col, value, attr.kind, params)
    values = value.split("\\") if attr.kind in ("text", "date", "time") else [value]
    ors = []
    for v in values:
        if attr.kind == "pn":
            params.append(_like(v).lower())
            ors.append(f"lower({col}) LIKE ? ESCAPE '!'")
        elif "*" in v or "?" in v:
            params.append(_like(v))
            ors.append(f"{col} LIKE ? ESCAPE '!'")
        else:
            params.append(v)
            ors.append(f"{col} = ?")
    return ors[0] if len(ors) == 1 else "(" + " OR ".join(ors) + ")"


@dataclass
class Query:
    """A compiled identifier: SQL, its params, and which keywords the columns fill."""

    sql: str
    params: list[Any]
    returned: list[str]  # keywords in column order
    requested: list[Dataset | Any]  # the identifier's elements, to answer in order
    level: str
    plan: list[tuple[Any, str, int | None, str]] | None = None  # built on first response


def _value_str(elem: Any) -> str:
    v = elem.value
    if v is None:
        return ""
    if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def compile_query(identifier: Dataset, level: str, *, select: str | None = None,
                  fuzzy: bool = False) -> Query:
    """Turn an identifier into SQL at ``level`` (``select`` overrides the column list;
    ``fuzzy``: person names match fuzzily, as QIDO-RS ``fuzzymatching=true`` asks)."""
    if level not in LEVELS:
        raise QueryError(f"unknown QueryRetrieveLevel {level!r}")
    joins: set[str] = set()
    where: list[str] = []
    params: list[Any] = []
    returned: list[str] = []
    cols: list[str] = []
    requested: list[Any] = []
    for elem in identifier:
        if elem.tag in (0x00080052, 0x00080005):  # level, character set
            continue
        requested.append(elem)
        kw = elem.keyword
        attr = CATALOG.get(kw)
        if elem.VR == "SQ":
            # Sequence matching: universal unless an item carries values; we hold no
            # sequence content in the index, so a valued key inside an item cannot match.
            for item in elem.value or []:
                for sub in item:
                    if sub.VR != "SQ" and _value_str(sub).strip() not in ("", "*"):
                        where.append("1 = 0")
            continue
        if attr is None:
            continue
        col = _expr(attr, level, joins)
        if col is None:
            continue  # a key below the query level: not matched, answered empty
        cols.append(col)
        returned.append(kw)
        cond = _condition(col, attr, _value_str(elem).strip(), params, fuzzy)
        if cond:
            where.append(cond)
    sql = f"SELECT {select or (', '.join(cols) or '1')} FROM {_FROM[level]}"
    if joins:
        sql += " " + " ".join(sorted(joins))
    if where:
        sql += " WHERE " + " AND ".join(where)
    return Query(sql, params, returned, requested, level)


def _plan(query: Query) -> list[tuple[Any, str, int | None, str]]:
    """Per requested element: (tag, VR, column index or None, kind) — computed once."""
    index = {kw: i for i, kw in enumerate(query.returned)}
    plan = []
    for elem in query.requested:
        vr = elem.VR
        if vr != "SQ":
            try:
                vr = dictionary_VR(elem.tag)
            except KeyError:
                pass
        kw = elem.keyword
        kind = "modalities" if kw == "ModalitiesInStudy" else (
            "int" if vr in ("IS", "US", "UL") else "text")
        plan.append((elem.tag, vr, index.get(kw) if kw else None, kind))
    return plan


def response(query: Query, row: tuple[Any, ...]) -> Dataset:
    """One C-FIND match: the requested attributes only, valued where the index knows them."""
    if query.plan is None:
        query.plan = _plan(query)
    plan = query.plan
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level
    for tag, vr, col, kind in plan:
        if vr == "SQ":
            ds.add_new(tag, "SQ", [])
            continue
        v = row[col] if col is not None and col < len(row) else None
        if v is None or v == "":
            ds.add_new(tag, vr, None)
            continue
        if kind == "modalities":
            v = str(v).strip("\\")
        elif kind == "int" and not isinstance(v, str):
            v = int(v)
        ds.add_new(tag, vr, v)
    return ds


def keyword(tag: int) -> str:
    """Keyword of a tag ('' for private/unknown)."""
    return keyword_for_tag(tag) or ""
