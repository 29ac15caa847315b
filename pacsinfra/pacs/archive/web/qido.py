"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Every query key is checked before the index is asked: it must name an attribute the
index matches on (a keyword or an 8-digit tag), at or above the level searched, not a
sequence, given once, with a value of the attribute's form (UIDs, dates, times and
integers as DICOM writes them; text within its VR's length, without control
characters). ``limit`` and ``offset`` are integers within the configured bounds;
``includefield`` names attributes of the DICOM dictionary. Anything else is a 400
naming the key. Matching itself is the C-FIND matching of :mod:`..query`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import Response

from pacsinfra.pacs.archive.query import CATALOG, LEVELS, compile_query, response
from pacsinfra.pacs.archive.web.context import DICOM_JSON, blocking, path_uids, web
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.archive.web.forwarded import public_base
from pacsinfra.pacs.dicom import valid_uid
from pacsinfra.pacs.web_config import HttpLimits

# PS3.18 Table 6.7.1-2: attributes QIDO-RS returns by default at each level.
DEFAULTS = {
    "STUDY": ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"],
    "SERIES": ["StudyInstanceUID", "Modality", "SeriesInstanceUID", "SeriesNumber",
               "SeriesDescription", "NumberOfSeriesRelatedInstances"],
    "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
              "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"],
}
# Where each level's Retrieve URL (0008,1190) points, from the UIDs of a match
_RETRIEVE_PATH = {
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
_SEGMENTS = {"StudyInstanceUID": "studies", "SeriesInstanceUID": "series",
             "SOPInstanceUID": "instances"}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
MAX_UIDS = 500  # in one UID list key
MAX_INCLUDE = 200
_DATE = r"\d{8}"
_TIME = r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?"
_FORMS = {
    "date": re.compile(rf"^(?:{_DATE}|{_DATE}-(?:{_DATE})?|-{_DATE})$"),
    "time": re.compile(rf"^(?:{_TIME}|{_TIME}-(?:{_TIME})?|-{_TIME})$"),
    "int": re.compile(r"^[+-]?\d{1,12}$"),
    "cs": re.compile(r"^[A-Z0-9_ *?]{1,16}$"),
}
_MAX_LEN = {"LO": 64, "SH": 16, "CS": 16, "PN": 324, "IS": 12}
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _keyword(key: str) -> str | None:
    """A key as a keyword: 'PatientID' or its tag '00100020'; None when it is neither."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or None
    return key if tag_for_keyword(key) is not None else None


def _check_value(keyword: str, value: str) -> str:
    """``value`` in the form the index matches (UID lists joined by backslash)."""
    attr = CATALOG[keyword]
    if value in ("", "*"):
        return ""  # universal matching
    if attr.kind == "count":
        raise ValueError("is a return key: it cannot be matched")
    if attr.kind == "modalities":
        value = value.replace(",", "\\")
    if attr.kind == "uid":
        uids = [u for u in re.split(r"[\\,]", value) if u]
        if not uids or len(uids) > MAX_UIDS or not all(valid_uid(u) for u in uids):
            raise ValueError(f"takes UIDs (a list of at most {MAX_UIDS}, comma-separated)")
        return "\\".join(uids)
    if attr.kind in ("date", "time"):
        if not _FORMS[attr.kind].match(value):
            raise ValueError("takes YYYYMMDD or a range A-B" if attr.kind == "date"
                             else "takes HHMMSS[.ffffff] or a range A-B")
        return value
    vr = dictionary_VR(keyword)
    for one in value.split("\\"):
        if _CONTROL_CHARS.search(one) or len(one) > _MAX_LEN.get(vr, 64):
            raise ValueError(f"takes {vr} values of at most {_MAX_LEN.get(vr, 64)} characters")
        if vr == "IS" and not _FORMS["int"].match(one):
            raise ValueError("takes an integer")
        if vr == "CS" and one and not _FORMS["cs"].match(one):
            raise ValueError("takes code strings (A-Z, 0-9, _, space)")
    return value


def _number(params: Iterable[str], key: str, default: int, low: int, high: int) -> int:
    values = list(params)
    if not values:
        return default
    if len(values) > 1:
        raise Refusal(400, f"{key} is given more than once", key=key)
    text = values[0]
    if not re.fullmatch(r"\d{1,12}", text) or not low <= int(text) <= high:
        raise Refusal(400, f"{key} must be an integer from {low} to {high}", key=key)
    return int(text)


def _includes(values: list[str], level: str) -> list[str]:
    out: list[str] = []
    for item in (f.strip() for v in values for f in v.split(",")):
        if not item:
            continue
        if item == "all":
            out += [k for k, a in CATALOG.items()
                    if LEVELS.index(a.level) <= LEVELS.index(level)]
            continue
        kw = _keyword(item)
        if kw is None:
            raise Refusal(400, f"includefield {item[:64]!r} is not a DICOM attribute",
                          key="includefield")
        out.append(kw)
    if len(out) > MAX_INCLUDE:
        raise Refusal(400, f"includefield names more than {MAX_INCLUDE} attributes",
                      key="includefield")
    return out


def build_identifier(request: Request, level: str, limits: HttpLimits
                     ) -> tuple[Dataset, int, int]:
    """The C-FIND identifier a QIDO-RS request means, with its limit and offset (and
    ``fuzzymatching`` noted on the request's state)."""
    params = request.query_params
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    fixed = path_uids(request)
    seen: set[str] = set()
    for key, value in params.multi_items():
        if key in _CONTROL:
            continue
        if "." in key:
            raise Refusal(400, f"{key[:64]!r}: sequence attributes are not query keys", key=key)
        kw = _keyword(key)
        if kw is None:
            raise Refusal(400, f"{key[:64]!r} is not a DICOM attribute", key=key[:64])
        if kw not in CATALOG:
            what = ("a sequence" if dictionary_VR(kw) == "SQ"
                    else "not an attribute this archive matches on")
            raise Refusal(400, f"{kw} is {what}", key=kw)
        if kw in seen or kw in fixed:
            raise Refusal(400, f"{kw} is given more than once", key=kw)
        seen.add(kw)
        if LEVELS.index(CATALOG[kw].level) > LEVELS.index(level):
            raise Refusal(400, f"{kw} is a {CATALOG[kw].level.lower()} attribute: not a key "
                          f"of a {level.lower()} search", key=kw)
        try:
            setattr(ident, kw, _check_value(kw, value))
        except ValueError as exc:
            raise Refusal(400, f"{kw} {exc}", key=kw) from None
    for kw, uid in fixed.items():
        setattr(ident, kw, uid)
    fuzzy = params.getlist("fuzzymatching")
    if any(v not in ("true", "false") for v in fuzzy) or len(fuzzy) > 1:
        raise Refusal(400, "fuzzymatching is true or false", key="fuzzymatching")
    request.state.fuzzy = fuzzy == ["true"]
    for kw in [*DEFAULTS[level], *_includes(params.getlist("includefield"), level)]:
        tag = tag_for_keyword(kw)
        if kw not in ident and tag is not None:
            ident.add_new(tag, dictionary_VR(tag), None)
    limit = _number(params.getlist("limit"), "limit", min(1000, limits.max_qido_results), 1,
                    limits.max_qido_results)
    offset = _number(params.getlist("offset"), "offset", 0, 0, limits.max_qido_offset)
    return ident, limit, offset


def _search(request: Request, level: str, ident: Dataset, limit: int, offset: int) -> bytes:
    """Run the query (blocking) and encode the matches as DICOM JSON, each with its
    Retrieve URL (0008,1190) on the client's side of any trusted proxy."""
    service = web(request).service
    q = compile_query(ident, level, fuzzy=getattr(request.state, "fuzzy", False))
    q.sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"  # both validated integers
    base = public_base(request)
    out = []
    for row in service.index.db.query(q.sql, q.params):
        ds = response(q, row)
        del ds.QueryRetrieveLevel
        doc = ds.to_json_dict()
        path = "".join(f"/{_SEGMENTS[kw]}/{ds.get(kw, '')}" for kw in _RETRIEVE_PATH[level])
        doc["00081190"] = {"vr": "UR", "Value": [base + path]}
        out.append(doc)
    return json.dumps(out).encode()


def _acceptable(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept:
        return
    for item in accept.split(","):
        mime = item.split(";")[0].strip().lower()
        if mime in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
    raise Refusal(406, "QIDO-RS answers application/dicom+json only")


async def _qido(request: Request, level: str) -> Response:
    ctx = web(request)
    await ctx.auth.require(request, "read")
    _acceptable(request)
    ident, limit, offset = build_identifier(request, level, ctx.cfg.limits)
    body = await blocking(_search, request, level, ident, limit, offset)
    return Response(body, media_type=DICOM_JSON)


async def search_studies(request: Request) -> Response:
    """GET /studies: QIDO-RS study search."""
    return await _qido(request, "STUDY")


async def search_series(request: Request) -> Response:
    """GET /series, /studies/{study}/series: QIDO-RS series search."""
    return await _qido(request, "SERIES")


async def search_instances(request: Request) -> Response:
    """GET /instances and below a study or series: QIDO-RS instance search."""
    return await _qido(request, "IMAGE")
