"""WADO-RS rendered resources and thumbnails (PS3.18 9.5, 9.6): one image, single part.

``/rendered`` and ``/thumbnail`` answer at study, series, instance and frame level.
A study or series is shown by a representative image: the middle instance (by
Instance Number) of its first series (by Series Number) that has pixel data; an
instance by its first frame; ``frames/{n}`` by that frame (one frame only). An
instance that holds a document (Encapsulated PDF, CDA ...) or a video is answered
with the document or the video stream itself, when its media type is acceptable.

Query parameters (PS3.18 8.3.5): ``accept`` (wins over the header), ``quality``
(1-100, JPEG), ``viewport`` (``vw,vh`` or ``vw,vh,sx,sy,sw,sh``), ``window``
(``center,width,function``), ``annotation`` (accepted; nothing is burned in) and
``iccprofile`` (``no`` only); anything else is a 400 naming it. A thumbnail is
rendered into a 256x256 box unless a viewport says otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pacsinfra.pacs.archive.index import StoredInstance
from pacsinfra.pacs.archive.pixels import DecodeError, can_decode, media_type
from pacsinfra.pacs.archive.rendering import (
    FORMATS,
    FUNCTIONS,
    MAX_SIDE,
    THUMBNAIL_SIDE,
    RenderRequest,
    Viewport,
    Window,
    render,
)
from pacsinfra.pacs.archive.web.bulk import document_of, stream_video, video_syntax
from pacsinfra.pacs.archive.web.context import WebContext, blocking, path_uids, web
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.archive.web.negotiate import wanted_of
from pacsinfra.pacs.archive.web.wado import read_frames

_PARAMS = {"accept", "quality", "viewport", "window", "annotation", "iccprofile", "charset"}
_INT = re.compile(r"^-?\d{1,6}$")
_NUMBER = re.compile(r"^[+-]?(?:\d{1,12}(?:\.\d{0,12})?|\.\d{1,12})(?:[eE][+-]?\d{1,3})?$")


def _one(request: Request, key: str) -> str | None:
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise Refusal(400, f"{key} is given more than once", key=key)
    return values[0] if values else None


def _viewport(text: str) -> Viewport:
    parts = text.split(",")
    if len(parts) not in (2, 6) or not all(_INT.match(p) for p in parts):
        raise Refusal(400, "viewport is vw,vh or vw,vh,sx,sy,sw,sh (integers)", key="viewport")
    vw, vh, *rest = (int(p) for p in parts)
    if not (0 < vw <= MAX_SIDE and 0 < vh <= MAX_SIDE):
        raise Refusal(400, f"viewport width and height are 1..{MAX_SIDE}", key="viewport")
    region = None
    if rest:
        sx, sy, sw, sh = rest
        if sx < 0 or sy < 0 or sw == 0 or sh == 0:
            raise Refusal(400, "viewport sx, sy are >= 0 and sw, sh non-zero", key="viewport")
        region = (sx, sy, sw, sh)
    return Viewport(vw, vh, region)


def _window(text: str) -> Window:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(_NUMBER.match(p) for p in parts[:2]):
        raise Refusal(400, "window is center,width,function", key="window")
    center, width, function = float(parts[0]), float(parts[1]), parts[2].lower()
    if function not in FUNCTIONS:
        raise Refusal(400, f"window function is one of {', '.join(FUNCTIONS)}", key="window")
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0 or (
            function == "linear" and width < 1):
        raise Refusal(400, "window width is positive (at least 1 for linear)", key="window")
    return Window(center, width, function)


def render_request(request: Request, *, thumbnail: bool) -> tuple[RenderRequest, list[str]]:
    """The rendering asked for, and the acceptable media types in order of preference
    (400 for a parameter that is unknown, repeated or malformed)."""
    for key in request.query_params:
        if key not in _PARAMS:
            raise Refusal(400, f"{key[:64]!r} is not a parameter of rendered resources",
                          key=key[:64])
    quality = _one(request, "quality")
    if quality is not None and not (quality.isdigit() and 1 <= int(quality) <= 100):
        raise Refusal(400, "quality is an integer from 1 to 100", key="quality")
    icc = _one(request, "iccprofile")
    if icc is not None and icc != "no":
        raise Refusal(400, "iccprofile: only 'no' is supported", key="iccprofile")
    annotation = _one(request, "annotation")
    if annotation is not None and not set(annotation.split(",")) <= {"patient", "technique"}:
        raise Refusal(400, "annotation is patient, technique or both", key="annotation")
    viewport = _one(request, "viewport")
    window = _one(request, "window")
    wanted = wanted_of(_one(request, "accept"), request.headers.get("accept"), "image/jpeg")
    media = [w.media for w in wanted if not w.multipart]  # single images here
    spec = RenderRequest(
        quality=int(quality) if quality else (75 if thumbnail else 90),
        window=_window(window) if window is not None else None,
        viewport=_viewport(viewport) if viewport is not None else (
            Viewport(THUMBNAIL_SIDE, THUMBNAIL_SIDE) if thumbnail else None))
    return spec, media


def representative(ctx: WebContext, uids: dict[str, str]) -> StoredInstance:
    """The instance shown for a study or series (blocking; 404 when none)."""
    where, params = "i.study_uid = ?", [uids["StudyInstanceUID"]]
    if "SeriesInstanceUID" in uids:
        where += " AND i.series_uid = ?"
        params.append(uids["SeriesInstanceUID"])
    rows = ctx.service.index.db.query(
        "SELECT i.sop_uid, se.series_number, i.instance_number, i.img_rows FROM instance i "
        f"JOIN series se ON se.series_uid = i.series_uid WHERE {where}", params)
    if not rows:
        raise Refusal(404, "no such study or series")
    images = [r for r in rows if r[3] is not None] or rows

    def number(text: Any) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.inf

    first = min(number(r[1]) for r in images)
    series = sorted((r for r in images if number(r[1]) == first), key=lambda r: number(r[2]))
    inst = ctx.service.index.get(series[len(series) // 2][0])
    if inst is None:
        raise Refusal(404, "the instance went away")
    return inst


def _rendered(ctx: WebContext, inst: StoredInstance, frame: int, spec: RenderRequest,
              media: list[str]) -> Response:
    """The frame rendered in the first acceptable image type, or the instance's document
    or video when that is acceptable (blocking)."""
    doc = document_of(ctx, inst)
    if doc is not None:
        kind, body = doc
        if any(m in (kind, "*/*", "application/*") for m in media):
            return Response(body, media_type=kind)
        raise Refusal(406, f"the instance is a document: it is available as {kind}")
    video = video_syntax(inst)
    if video is not None:
        kind = media_type(video)
        if any(m in (kind, "*/*", "video/*") for m in media):
            return StreamingResponse(stream_video(ctx, inst), media_type=kind)
        raise Refusal(406, f"the instance is a video: it is available as {kind}")
    image_types = [m for m in media if m in FORMATS]
    if any(m in ("*/*", "image/*") for m in media):
        image_types.append("image/jpeg")
    if not image_types:
        raise Refusal(406, f"rendered images are available as {', '.join(FORMATS)}")
    if not can_decode(inst.transfer_syntax):
        raise Refusal(406, f"frames in transfer syntax {inst.transfer_syntax} cannot be "
                      "decoded here to render them")
    module, (stored,) = read_frames(ctx, inst, [frame])
    out = RenderRequest(image_types[0], spec.quality, spec.window, spec.viewport)
    try:
        body = render(module, stored, out)
    except DecodeError as exc:
        raise Refusal(422, str(exc)) from None
    except ValueError as exc:
        raise Refusal(400, str(exc), key="viewport") from None
    return Response(body, media_type=out.media)


def _endpoint(thumbnail: bool) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        ctx = web(request)
        await ctx.auth.require(request, "read")
        uids = path_uids(request)
        spec, media = render_request(request, thumbnail=thumbnail)
        frame = 1
        if "frames" in request.path_params:
            text = request.path_params["frames"]
            if not (text.isdigit() and 0 < len(text) <= 9 and int(text) > 0):
                raise Refusal(400, "rendered frames are one frame number from 1", key="frames")
            frame = int(text)
        if "SOPInstanceUID" in uids:
            inst = await blocking(ctx.service.index.get, uids["SOPInstanceUID"])
            if inst is None or inst.study_uid != uids["StudyInstanceUID"] or \
                    inst.series_uid != uids["SeriesInstanceUID"]:
                raise Refusal(404, "no such study, series or instance")
        else:
            inst = await blocking(representative, ctx, uids)
        return await blocking(_rendered, ctx, inst, frame, spec, media)

    endpoint.__doc__ = (f"GET .../{'thumbnail' if thumbnail else 'rendered'}: one image "
                        "of the study, series, instance or frame")
    return endpoint


rendered = _endpoint(thumbnail=False)
thumbnail = _endpoint(thumbnail=True)

#: (path, endpoint) of the rendered routes below /studies/{study}
ROUTES: list[tuple[str, Callable[[Request], Any]]] = [
    (f"{level}/{kind}", endpoint)
    for level in ("", "/series/{series}", "/series/{series}/instances/{sop}",
                  "/series/{series}/instances/{sop}/frames/{frames}")
    for kind, endpoint in (("rendered", rendered), ("thumbnail", thumbnail))
]
