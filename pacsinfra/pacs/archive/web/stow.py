"""STOW-RS (PS3.18 10.5): store instances from a streamed multipart/related body.

The body is parsed as it arrives (:mod:`.multipart`) and each part goes to disk
(:mod:`.spool`), so a body of any size costs about a megabyte of memory. Limits are
enforced before and while reading: a Content-Length above ``max_stow_bytes`` is 413
before a byte of the body is read; more bytes or parts than allowed are 413 at once;
silence longer than ``body_timeout_seconds`` or a body slower than
``stow_timeout_seconds`` is 408. Each part is answered on its own in the PS3.18
response: stored instances in ReferencedSOPSequence, refused ones in FailedSOPSequence
with their Failure Reason (A700 out of resources, A900 data set does not match the SOP
class, C000 cannot understand, 0122 SOP class not supported, 0111 duplicate, 0110
processing failure, C409 not in the study the request names); the HTTP status is 200
(all stored), 202 (some) or 409 (none). A body that is not multipart at all is 400.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import anyio
from pydicom.dataset import Dataset
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from pacsinfra.pacs.archive.web.context import DICOM_JSON, WebContext, blocking, path_uids, web
from pacsinfra.pacs.archive.web.errors import Refusal, client_address
from pacsinfra.pacs.archive.web.forwarded import public_base
from pacsinfra.pacs.archive.web.multipart import (
    MultipartError,
    MultipartReader,
    PartData,
    PartStart,
    TooManyParts,
    parse_content_type,
)
from pacsinfra.pacs.archive.web.spool import PartResult, SpooledPart
from pacsinfra.pacs.dicom import Status
from pacsinfra.pacs.web_config import HttpLimits

LOG = logging.getLogger("pacsinfra.archive.dicomweb")
_ACCEPTED_PART_TYPES = ("application/dicom", "application/octet-stream")


def _boundary(request: Request) -> str:
    """The boundary of a multipart/related body of DICOM instances; 415 / 400 otherwise."""
    header = request.headers.get("content-type", "")
    try:
        mime, params = parse_content_type(header)
    except ValueError as exc:
        raise Refusal(415, f"malformed Content-Type: {exc}") from None
    if mime != "multipart/related":
        raise Refusal(415, "STOW-RS takes multipart/related; type=\"application/dicom\"")
    kind = params.get("type", "application/dicom").lower()
    if kind != "application/dicom":
        raise Refusal(415, f"parts of type {kind[:60]!r} are not accepted: send "
                      "application/dicom (DICOM Part 10 instances)")
    boundary = params.get("boundary", "")
    if not boundary:
        raise Refusal(400, "the Content-Type has no boundary parameter")
    return boundary


def _announced(request: Request, limits: HttpLimits) -> None:
    """Refuse before reading a body whose Content-Length is already too large."""
    length = request.headers.get("content-length")
    if length is None:
        return
    if not length.isdigit():
        raise Refusal(400, "Content-Length is not a number")
    if int(length) > limits.max_stow_bytes:
        raise Refusal(413, f"the body is larger than {limits.max_stow_bytes} bytes "
                      "(dicomweb.limits.max_stow_bytes)")


async def _body(request: Request, limits: HttpLimits) -> AsyncIterator[bytes]:
    """The body's chunks, within the size and time limits."""
    deadline = time.monotonic() + limits.stow_timeout_seconds
    received = 0
    chunks = request.stream().__aiter__()
    while True:
        wait = min(limits.body_timeout_seconds, deadline - time.monotonic())
        if wait <= 0:
            raise Refusal(408, f"the body took longer than {limits.stow_timeout_seconds:g} s")
        try:
            with anyio.fail_after(wait):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise Refusal(408, f"the body took longer than "
                              f"{limits.stow_timeout_seconds:g} s") from None
            raise Refusal(408, "the client stopped sending the body") from None
        received += len(chunk)
        if received > limits.max_stow_bytes:
            raise Refusal(413, f"the body is larger than {limits.max_stow_bytes} bytes "
                          "(dicomweb.limits.max_stow_bytes)")
        if chunk:
            yield chunk


def _open_part(ctx: WebContext, headers: dict[str, str]) -> SpooledPart:
    tier = ctx.service.default_tier
    part = SpooledPart(tier.root / ".incoming")
    ctype = headers.get("content-type")
    if ctype is not None:
        try:
            mime = parse_content_type(ctype)[0]
        except ValueError:
            mime = "(malformed)"
        if mime not in _ACCEPTED_PART_TYPES:
            part.failure = PartResult(int(Status.CANNOT_UNDERSTAND),
                                      reason=f"a part of type {mime[:60]}, not application/dicom")
    if part.failure is None and not tier.has_room(0):
        part.failure = PartResult(int(Status.OUT_OF_RESOURCES), reason="storage full")
    return part


def _finish(ctx: WebContext, part: SpooledPart, study: str | None) -> PartResult:
    """Write the rest of a complete part and store it (blocking)."""
    part.finish(ctx.service.default_tier)
    result = part.store(ctx.service, study=study, calling="STOW-RS")
    if result.status != 0:
        ctx.service.counters.add("failed")
    return result


async def store_instances(request: Request) -> Response:
    """POST /studies[/{study}]: store the instances of a multipart/related body."""
    ctx = web(request)
    await ctx.auth.require(request, "write")
    limits = ctx.cfg.limits
    study = path_uids(request).get("StudyInstanceUID")
    boundary = _boundary(request)
    _announced(request, limits)
    try:
        reader = MultipartReader(boundary, max_parts=limits.max_stow_parts)
    except MultipartError as exc:
        raise Refusal(400, str(exc)) from None
    results: list[PartResult] = []
    part: SpooledPart | None = None
    unfinished: Refusal | None = None
    try:
        async for chunk in _body(request, limits):
            for event in reader.feed(chunk):
                if isinstance(event, PartStart):
                    part = await blocking(_open_part, ctx, event.headers)
                elif isinstance(event, PartData):
                    assert part is not None
                    if part.add(event.data):
                        await blocking(part.flush, ctx.service.default_tier)
                else:
                    assert part is not None
                    results.append(await blocking(_finish, ctx, part, study))
                    await blocking(part.discard)
                    part = None
        reader.close()
    except TooManyParts as exc:
        unfinished = Refusal(413, f"{exc} (dicomweb.limits.max_stow_parts)")
    except MultipartError as exc:
        unfinished = Refusal(400, f"malformed multipart body: {exc}")
    except Refusal as exc:
        unfinished = exc
    except ClientDisconnect:
        LOG.info("STOW-RS from %s: the client went away", client_address(request))
        unfinished = Refusal(400, "the client disconnected")
    finally:
        if part is not None:
            await blocking(part.discard)
    stored = [r for r in results if r.status == 0]
    if unfinished is not None and not stored:
        raise unfinished  # nothing changed: the plain refusal
    if not results:
        raise Refusal(400, "the multipart body holds no parts")
    return await _answer(request, ctx, results, unfinished)


async def _answer(request: Request, ctx: WebContext, results: list[PartResult],
                  unfinished: Refusal | None) -> Response:
    """The PS3.18 Store Instances Response (DICOM JSON) and its status."""
    base = public_base(request)
    doc, failed = Dataset(), []
    ok_items = []
    for r in results:
        item = Dataset()
        item.ReferencedSOPClassUID = r.sop_class
        item.ReferencedSOPInstanceUID = r.sop_uid
        if r.status == 0:
            inst = await blocking(ctx.service.index.get, r.sop_uid)
            if inst is not None:
                item.RetrieveURL = (f"{base}/studies/{inst.study_uid}/series/"
                                    f"{inst.series_uid}/instances/{inst.sop_uid}")
            ok_items.append(item)
        else:
            item.FailureReason = r.status
            failed.append(item)
    doc.ReferencedSOPSequence = ok_items
    if failed:
        doc.FailedSOPSequence = failed
    headers = {}
    if unfinished is not None:
        # failures that belong to no instance (PS3.18 Other Failures Sequence)
        other = Dataset()
        other.FailureReason = (int(Status.OUT_OF_RESOURCES) if unfinished.status == 413
                               else int(Status.CANNOT_UNDERSTAND))
        doc.OtherFailuresSequence = [other]
        headers = unfinished.headers
    status = 200 if not failed and unfinished is None else (202 if ok_items else 409)
    if status != 200:
        reasons = sorted({r.reason for r in results if r.status != 0}
                         | ({unfinished.reason} if unfinished else set()))
        refusals = request.app.state.refusals
        principal = getattr(request.state, "principal", None)
        refusals.record(address=client_address(request),
                        user=principal.name if principal else "unauthenticated",
                        method="POST", path=request.url.path, status=status,
                        reason=f"{len(results) - len(ok_items)} of {len(results)} instances "
                        f"refused: {'; '.join(reasons)[:300]}")
    return Response(json.dumps(doc.to_json_dict()), status_code=status, headers=headers,
                    media_type=DICOM_JSON)
