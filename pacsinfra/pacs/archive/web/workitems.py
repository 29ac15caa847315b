"""UPS-RS (PS3.18 11): worklist items as DICOMweb workitems.

``POST /workitems[?{uid}]`` creates a SCHEDULED workitem, ``GET /workitems/{uid}``
reads one, ``PUT /workitems/{uid}/state`` claims (IN PROGRESS with a Transaction UID),
completes or cancels it, ``POST /workitems/{uid}/cancelrequest`` cancels a SCHEDULED
one, and ``GET /workitems?...`` searches with the Modality Worklist's matching
(sequence keys as ``ScheduledProcedureStepSequence.Modality=CT``). Reads need the
``read`` scope, the rest ``write``. Refusals carry a reason and, for state conflicts,
a ``Warning`` header as PS3.18 11.6/11.7 describe.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from starlette.requests import Request
from starlette.responses import Response

from pacsinfra.pacs.archive.web.context import DICOM_JSON, blocking, web
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.archive.web.forwarded import public_base
from pacsinfra.pacs.archive.worklist import Item, WorklistError
from pacsinfra.pacs.archive.worklistmatch import IdentifierError
from pacsinfra.pacs.dicom import valid_uid

MAX_BODY = 1 << 20  # one workitem data set
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# VRs the worklist matching compares (text, dates, times, UIDs) and sequences
_MATCHABLE_VRS = {"AE", "AS", "CS", "DA", "DS", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                  "UC", "UI", "UT", "SQ"}


def _warning(text: str) -> dict[str, str]:
    return {"Warning": f'299 pacsinfra: "{text}"'}


def _refuse(exc: WorklistError) -> Refusal:
    headers = _warning(exc.reason) if exc.status == 409 else {}
    return Refusal(exc.status, exc.reason, headers=headers)


def _uid_param(request: Request) -> str:
    uid = str(request.path_params["uid"])
    if not valid_uid(uid):
        raise Refusal(400, "the workitem UID in the path is not a valid UID")
    return uid


async def _dataset(request: Request) -> Dataset:
    """The request's DICOM JSON data set (an object, or an array of one); 415/413/400."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in (DICOM_JSON, "application/json"):
        raise Refusal(415, f"the body must be {DICOM_JSON}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refusal(413, f"a workitem body is at most {MAX_BODY} bytes")
    try:
        doc = json.loads(bytes(body))
        if isinstance(doc, list) and len(doc) == 1:
            doc = doc[0]
        if not isinstance(doc, dict):
            raise ValueError("not a data set")
        return Dataset.from_json(doc)
    except Exception:  # noqa: BLE001 - any malformed JSON or DICOM JSON is the client's
        raise Refusal(400, f"the body is not one {DICOM_JSON} data set") from None


def _answer(item: Item) -> dict[str, Any]:
    ds = item.dataset
    ds.ProcedureStepState = item.state
    doc: dict[str, Any] = ds.to_json_dict()
    doc.pop("00081195", None)  # the Transaction UID is the performer's secret (PS3.4 CC.1.1)
    return doc


def _json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None,
                   ) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type=DICOM_JSON,
                    headers=headers)


async def create(request: Request) -> Response:
    """POST /workitems[?{uid}]: 201 with the workitem's Location."""
    ctx = web(request)
    await ctx.auth.require(request, "write")
    uid = next(iter(request.query_params.keys()), None)
    if uid is not None and not valid_uid(uid):
        raise Refusal(400, "the query of POST /workitems must be the workitem UID")
    ds = await _dataset(request)
    try:
        uid = await blocking(ctx.service.worklist.add, ds, uid)
    except WorklistError as exc:
        raise _refuse(exc) from None
    where = f"{public_base(request)}/workitems/{uid}"
    return Response(status_code=201, headers={"Location": where, "Content-Location": where})


async def retrieve(request: Request) -> Response:
    """GET /workitems/{uid}: the workitem, 404 when there is none."""
    ctx = web(request)
    await ctx.auth.require(request, "read")
    item = await blocking(ctx.service.worklist.get, _uid_param(request))
    if item is None:
        raise Refusal(404, "no such workitem")
    return _json_response([_answer(item)])


async def change_state(request: Request) -> Response:
    """PUT /workitems/{uid}/state: ProcedureStepState and TransactionUID in the body."""
    ctx = web(request)
    await ctx.auth.require(request, "write")
    uid = _uid_param(request)
    ds = await _dataset(request)
    state = str(ds.get("ProcedureStepState", "")).strip()
    txn = str(ds.get("TransactionUID", "")).strip() or None
    if not state:
        raise Refusal(400, "ProcedureStepState (0074,1000) is required")
    try:
        warning = await blocking(ctx.service.worklist.change_state, uid, state, txn)
    except WorklistError as exc:
        raise _refuse(exc) from None
    return Response(status_code=200, headers=_warning(warning) if warning else None)


async def cancel_request(request: Request) -> Response:
    """POST /workitems/{uid}/cancelrequest: 202 when a SCHEDULED workitem is cancelled."""
    ctx = web(request)
    await ctx.auth.require(request, "write")
    uid = _uid_param(request)
    try:
        warning = await blocking(ctx.service.worklist.cancel, uid)
    except WorklistError as exc:
        raise _refuse(exc) from None
    return Response(status_code=202, headers=_warning(warning) if warning else None)


def _tag(name: str) -> int:
    tag = int(name, 16) if _HEX_TAG.match(name) else tag_for_keyword(name)
    if tag is None or (_HEX_TAG.match(name) and not keyword_for_tag(tag)):
        raise Refusal(400, f"unknown attribute {name!r} in the query", key=name)
    return int(tag)


def _put(ds: Dataset, path: list[str], value: str) -> None:
    """Set ``path`` (keywords or tags, sequences first) to ``value`` in ``ds``."""
    tag = _tag(path[0])
    vr = dictionary_VR(tag)
    if vr not in _MATCHABLE_VRS:
        raise Refusal(400, f"{path[0]} ({vr}) cannot be matched on", key=path[0])
    if len(path) == 1:
        if vr == "SQ":
            if value:
                raise Refusal(400, f"{path[0]} is a sequence: match on its attributes",
                              key=path[0])
            ds.add(DataElement(tag, "SQ", Sequence([])))
        else:
            ds.add(DataElement(tag, vr, value or None))
        return
    if vr != "SQ":
        raise Refusal(400, f"{path[0]} is not a sequence", key=path[0])
    if tag not in ds or not ds[tag].value:
        ds.add(DataElement(tag, "SQ", Sequence([Dataset()])))
    _put(ds[tag].value[0], path[1:], value)


def query_dataset(params: list[tuple[str, str]]) -> Dataset:
    """A C-FIND-like query from QIDO parameters (dotted paths for sequence keys); 400
    for an unknown attribute or a key given twice."""
    query = Dataset()
    seen: set[str] = set()
    for key, value in params:
        if key in _CONTROL:
            continue
        if key in seen:
            raise Refusal(400, f"{key} is given more than once", key=key)
        seen.add(key)
        if len(value) > 1024 or any(ord(c) < 32 for c in value):
            raise Refusal(400, f"{key}: value too long or with control characters", key=key)
        _put(query, key.split("."), value)
    return query


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise Refusal(400, f"{name} must be a non-negative integer", key=name)
    return int(raw)


async def search(request: Request) -> Response:
    """GET /workitems?...: matching workitems (200), or 204 when none match."""
    ctx = web(request)
    await ctx.auth.require(request, "read")
    query = query_dataset(list(request.query_params.multi_items()))
    limit, offset = _int(request, "limit", 1000), _int(request, "offset", 0)

    def run() -> list[Item]:
        return [item for item, _ in ctx.service.worklist.search(query)]

    try:
        found = await blocking(run)
    except IdentifierError as exc:
        raise Refusal(400, str(exc)) from None
    found = found[offset:offset + limit]
    if not found:
        return Response(status_code=204)
    return _json_response([_answer(item) for item in found])


ROUTES = (
    ("/workitems", search, "GET"),
    ("/workitems", create, "POST"),
    ("/workitems/{uid}", retrieve, "GET"),
    ("/workitems/{uid}/state", change_state, "PUT"),
    ("/workitems/{uid}/cancelrequest", cancel_request, "POST"),
)
