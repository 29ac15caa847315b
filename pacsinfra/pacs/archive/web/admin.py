"""DELETE of studies, series and instances, and the Prometheus metrics page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pacsinfra.pacs.archive.web.context import blocking, path_uids, web
from pacsinfra.pacs.archive.web.errors import Refusal, client_address


async def delete(request: Request) -> Response:
    """DELETE a study / series / instance: 204, 404 when nothing matched (scope delete)."""
    ctx = web(request)
    principal = await ctx.auth.require(request, "delete")
    uids = path_uids(request)
    report = await blocking(
        ctx.service.delete, study_uid=uids["StudyInstanceUID"],
        series_uid=uids.get("SeriesInstanceUID"), sop_uid=uids.get("SOPInstanceUID"),
        actor=f"DICOMweb:{principal.name}@{client_address(request)}")
    if report is None:
        raise Refusal(404, "no such study, series or instance")
    return Response(status_code=204)


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text exposition of the archive's counters (scope metrics)."""
    ctx = web(request)
    await ctx.auth.require(request, "metrics")
    from pacsinfra.pacs.archive.metrics import render

    body, ctype = await blocking(render, ctx.service, ctx.metadata)
    return Response(body, media_type=ctype)
