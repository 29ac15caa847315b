"""How the DICOMweb server refuses a request: a status, a JSON reason, a log line and an
audit message (PS3.15 A.5 shaped) naming the source address and the reason.

Handlers raise :class:`Refusal`; the exception handlers installed by
:func:`exception_handlers` turn it (and Starlette's own 404/405) into the answer.
Anything else that escapes a handler is a bug: it is answered 500 with a generic JSON
reason, and the traceback goes to the log only, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

LOG = logging.getLogger("pacsinfra.archive.dicomweb")

#: refusals that are about who is asking or how much, not about the resource asked for
_SECURITY_STATUSES = {403, 408, 413, 429, 431, 503}
_SEARCH_TAILS = ("/studies", "/series", "/instances")


class Refusal(Exception):
    """A request refused with ``status`` and a reason the client may read.

    ``reason`` never holds a secret or a value from the request beyond what names the
    problem (a query key, a UID); ``fields`` are extra JSON members (e.g. ``key``).
    A body left unread is drained for a few seconds by the connection guard.
    """

    def __init__(self, status: int, reason: str, *, headers: Mapping[str, str] | None = None,
                 **fields: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})
        self.fields = fields


def json_error(status: int, reason: str, headers: Mapping[str, str] | None = None,
               **fields: Any) -> JSONResponse:
    """The JSON body every refusal has: ``{"error": reason, "status": status, ...}``."""
    return JSONResponse({"error": reason, "status": status, **fields}, status_code=status,
                        headers=dict(headers or {}))


def event_kind(method: str, path: str, status: int) -> str:
    """Which audit event a refused request belongs to."""
    if status == 401:
        return "authentication"
    if status in _SECURITY_STATUSES:
        return "security"
    if method == "POST":
        return "stored"
    if method == "DELETE":
        return "deleted"
    return "query" if path.rstrip("/").endswith(_SEARCH_TAILS) else "accessed"


class RefusalLog:
    """Writes every refused request to the log and, when configured, the audit trail."""

    def __init__(self, audit: Any) -> None:
        self.audit = audit  # an AuditLog, or None when no audit is configured
        self.count = 0

    def record(self, *, address: str, user: str, method: str, path: str, status: int,
               reason: str) -> None:
        """One refusal (the path without its query string: it may hold patient names)."""
        self.count += 1
        LOG.warning("refused %s %s from %s (%s): %d %s", method, path[:200], address, user,
                    status, reason)
        if self.audit is None:
            return
        try:
            self.audit.request_refused(kind=event_kind(method, path, status), user=user,
                                       address=address, method=method, path=path[:1024],
                                       status=status, reason=reason)
        except OSError as exc:  # a full disk must not turn a refusal into a 500
            LOG.error("cannot write the audit message: %s", exc)


def client_address(conn: HTTPConnection) -> str:
    """The client's address (the forwarded one behind a trusted proxy)."""
    return conn.client.host if conn.client else "unknown"


def _user(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return str(principal.name) if principal is not None else "unauthenticated"


def refuse(request: Request, status: int, reason: str, *,
           headers: Mapping[str, str] | None = None, **fields: Any) -> JSONResponse:
    """Record a refusal of ``request`` and build its answer."""
    refusals: RefusalLog | None = getattr(request.app.state, "refusals", None)
    if refusals is not None:
        refusals.record(address=client_address(request), user=_user(request),
                        method=request.method, path=request.url.path, status=status,
                        reason=reason)
    return json_error(status, reason, headers, **fields)


async def _on_refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return refuse(request, exc.status, exc.reason, headers=exc.headers, **exc.fields)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reasons = {404: "no such resource", 405: f"method {request.method} is not allowed here"}
    return refuse(request, exc.status_code, reasons.get(exc.status_code, str(exc.detail)),
                  headers=exc.headers)


async def _on_bug(request: Request, exc: Exception) -> Response:
    LOG.error("DICOMweb %s %s failed", request.method, request.url.path,
              exc_info=(type(exc), exc, exc.__traceback__))
    return json_error(500, "internal error (logged on the server)")


def exception_handlers() -> dict[Any, Any]:
    """Starlette's ``exception_handlers``: refusals, 404/405, and bugs as JSON."""
    return {Refusal: _on_refusal, HTTPException: _on_http, Exception: _on_bug}
