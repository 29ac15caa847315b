"""Limits below and around the application, so slow or greedy clients cannot lock out
the others: per-client and total connection caps, a deadline for the request head, a
bounded drain of bodies nobody reads, and a cap on each client's requests in progress.

uvicorn has a keep-alive timeout but no deadline for a request's line and headers (a
client that trickles them holds its connection forever), and its concurrency limit
counts idle connections too (so trickling clients would lock everyone out). Hence
:func:`guarded_protocol`, uvicorn's h11 protocol with those limits added, and
:class:`ClientLimiter`, an ASGI middleware counting requests in progress per client.
Refusals are JSON, logged and audited like every other.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pacsinfra.pacs.archive.web.errors import RefusalLog, json_error
from pacsinfra.pacs.archive.web.forwarded import is_trusted, trusted_networks
from pacsinfra.pacs.web_config import HttpLimits

LINGER_S = 5.0  # how long an unread request body is drained after the answer
_PHRASES = {400: "Bad Request", 408: "Request Timeout", 429: "Too Many Requests",
            503: "Service Unavailable"}


def raw_refusal(status: int, reason: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 JSON refusal that closes the connection (for answers given
    outside a request/response cycle: before or instead of a parsed request)."""
    body = json.dumps({"error": reason, "status": status}).encode()
    head = (f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n")
    if retry_after is not None:
        head += f"retry-after: {retry_after}\r\n"
    return head.encode() + b"\r\n" + body


class ConnectionGuard:
    """Open connections per client address and in total (event-loop thread only)."""

    def __init__(self, limits: HttpLimits, refusals: RefusalLog) -> None:
        self.limits = limits
        self.refusals = refusals
        self.trusted = trusted_networks(limits.trusted_proxies)
        self.open: Counter[str] = Counter()
        self.total = 0

    def admit(self, peer: str) -> tuple[int, str] | None:
        """Count a new connection; (status, reason) when it must be refused."""
        self.total += 1
        self.open[peer] += 1
        if self.total > self.limits.max_connections:
            return 503, "too many open connections"
        # a trusted proxy carries many clients: they are limited per request instead
        if self.open[peer] > self.limits.max_connections_per_client and \
                not is_trusted(peer, self.trusted):
            return 429, (f"more than {self.limits.max_connections_per_client} open "
                         "connections from this address")
        return None

    def release(self, peer: str) -> None:
        """A counted connection closed."""
        self.total -= 1
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]

    def refused(self, peer: str, status: int, reason: str) -> None:
        """Log and audit a refusal made below the application."""
        self.refusals.record(address=peer, user="unauthenticated", method="-",
                             path="(connection)", status=status, reason=reason)


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``guard``'s limits (pass it as ``http=``)."""
    head_timeout = guard.limits.header_timeout_seconds
    linger = min(LINGER_S, guard.limits.body_timeout_seconds)

    class GuardedH11Protocol(H11Protocol):
        _peer = "unknown"
        _counted = False
        _refused = False
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else "unknown"
            self._counted = True
            refused = guard.admit(self._peer)
            if refused is not None:
                self._refuse(*refused)
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                self._counted = False
                guard.release(self._peer)
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered already; the connection is closing
            if self._in_head() and self._head_timer is None:
                self._arm()  # the next request on a kept-alive connection begins
            super().data_received(data)
            if not self._in_head():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # A body the application did not read (a refusal, a GET with a body) is
            # read and dropped by uvicorn, so the client gets to read the answer; for
            # at most ``linger`` seconds, then the connection is closed.
            if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
                self.loop.call_later(linger, self._stop_lingering, self.cycle)

        def _stop_lingering(self, cycle: Any) -> None:
            if (self.cycle is cycle and not self.transport.is_closing()
                    and self.conn.their_state is h11.SEND_BODY):
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            guard.refused(self._peer, 400, f"malformed HTTP: {msg}")
            self._write_and_close(400, "malformed HTTP request")

        # -- helpers -----------------------------------------------------------------
        def _in_head(self) -> bool:
            """Waiting for (or reading) a request line and headers."""
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if self._in_head() and not self.transport.is_closing():
                self._refuse(408, f"no complete request head within {head_timeout:g} s")

        def _refuse(self, status: int, reason: str) -> None:
            guard.refused(self._peer, status, reason)
            self._write_and_close(status, reason, 1 if status in (429, 503) else None)

        def _write_and_close(self, status: int, reason: str,
                             retry_after: int | None = None) -> None:
            self._refused = True
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(raw_refusal(status, reason, retry_after))
                self.transport.close()

    return GuardedH11Protocol


class ClientLimiter:
    """ASGI middleware: at most ``max_requests`` requests in progress per client address
    (the forwarded one behind a trusted proxy), more are 429 at once; and a request
    line plus headers larger than ``max_header_bytes`` is 431 (uvicorn bounds only a
    head that arrives in pieces)."""

    def __init__(self, app: Any, max_requests: int, max_header_bytes: int,
                 refusals: RefusalLog) -> None:
        self.app = app
        self.max_requests = max_requests
        self.max_header_bytes = max_header_bytes
        self.refusals = refusals
        self.active: Counter[str] = Counter()

    async def _refuse(self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any],
                      key: str, status: int, reason: str) -> None:
        self.refusals.record(address=key, user="unauthenticated",
                             method=str(scope.get("method", "-")),
                             path=str(scope.get("path", "-")), status=status, reason=reason)
        headers = {"Retry-After": "1"} if status == 429 else None
        await json_error(status, reason, headers)(scope, receive, send)

    async def __call__(self, scope: Any, receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = str(client[0]) if client else "unknown"
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
            len(k) + len(v) + 4 for k, v in scope.get("headers") or ())
        if head > self.max_header_bytes:
            await self._refuse(scope, receive, send, key, 431,
                               f"request line and headers larger than {self.max_header_bytes} "
                               "bytes")
            return
        if self.active[key] >= self.max_requests:
            await self._refuse(scope, receive, send, key, 429, f"more than {self.max_requests} "
                               "requests in progress from this address")
            return
        self.active[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[key] -= 1
            if self.active[key] <= 0:
                del self.active[key]
