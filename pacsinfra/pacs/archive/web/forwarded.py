"""Who the client is and which URL it used, when a trusted reverse proxy says so.

Behind the viewer's nginx the archive sees the proxy's address and its own path; the
URLs it hands out (BulkDataURIs, Retrieve URLs) must be the ones the browser can use:
the viewer's scheme, host and path prefix (``/dicom-web``). :class:`ForwardedHeaders`
reads RFC 7239 ``Forwarded`` (``for``, ``proto``, ``host``) and the de-facto
``X-Forwarded-For`` / ``-Proto`` / ``-Host`` / ``-Port`` / ``-Prefix`` — but only on
connections from an address in ``limits.trusted_proxies``. From anyone else these
headers are ignored, so a client cannot make the archive log a forged address or
hand out URLs pointing elsewhere. A trusted proxy that sends a malformed value gets
a 400 with the reason (it is misconfigured; guessing would put wrong URLs in answers).

``Forwarded`` wins over the ``X-Forwarded-*`` header saying the same thing; of a list
(several proxies), the last element is the one our proxy added.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from pacsinfra.pacs.archive.web.errors import RefusalLog, json_error

LOG = logging.getLogger("pacsinfra.archive.dicomweb")
SCOPE_KEY = "pacsinfra.public_base"  # where the public base URL is kept in the ASGI scope
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                   r"(?::\d{1,5})?$")
_PREFIX = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 7230 token
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')


class ForwardedError(ValueError):
    """A forwarding header from a trusted proxy cannot be used."""


@dataclass(frozen=True)
class Forwarded:
    """What a trusted proxy said about the original request (None: not said)."""

    client: str | None = None
    proto: str | None = None
    host: str | None = None
    prefix: str = ""


def trusted_networks(entries: Iterable[str]) -> list[IpNetwork]:
    """``trusted_proxies`` as networks: addresses, CIDR blocks, or host names (resolved
    once, now; a name that does not resolve is logged and trusts nobody)."""
    out: list[IpNetwork] = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(entry, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            LOG.warning("trusted_proxies: %r does not resolve (%s): not trusted", entry, exc)
            continue
        for info in infos:
            out.append(ipaddress.ip_network(str(info[4][0]).split("%")[0]))
    return out


def is_trusted(peer: str, networks: list[IpNetwork]) -> bool:
    """Whether the connection's own address ``peer`` is one of ``networks``."""
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _forwarded_element(header: str) -> dict[str, str]:
    """The last element of a ``Forwarded`` header (RFC 7239 section 4) as a dict."""
    elements = _split_outside_quotes(header, ",")
    last = elements[-1] if elements else ""
    out: dict[str, str] = {}
    for pair in _split_outside_quotes(last, ";"):
        if not pair.strip():
            continue
        m = _PAIR.fullmatch(pair)
        if m is None:
            raise ForwardedError("Forwarded: a parameter is not name=value")
        name = m.group(1).lower()
        if name in out:
            raise ForwardedError(f"Forwarded: {name} is given twice")
        out[name] = _unquote(m.group(2))
    return out


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if quoted:
        raise ForwardedError("Forwarded: unbalanced quotes")
    parts.append("".join(cur))
    return parts


def _client(value: str) -> str | None:
    """The address of a ``for=`` / X-Forwarded-For entry (None: obfuscated/unknown)."""
    value = value.strip()
    if value.lower() == "unknown" or value.startswith("_"):
        return None
    host = value
    if value.startswith("["):
        host = value[1:value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        host = value.split(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ForwardedError(f"the forwarded client {value[:64]!r} is not an address") from None


def parse(headers: Callable[[str], str | None]) -> Forwarded:
    """What the forwarding headers say; raises :class:`ForwardedError`."""
    fwd = headers("forwarded")
    element = _forwarded_element(fwd) if fwd is not None else {}
    client = element.get("for")
    if client is None and (xff := headers("x-forwarded-for")) is not None:
        client = xff.split(",")[-1]
    proto = element.get("proto") or headers("x-forwarded-proto")
    host = element.get("host") or headers("x-forwarded-host")
    port = headers("x-forwarded-port")
    prefix = headers("x-forwarded-prefix") or ""
    if proto is not None:
        proto = proto.split(",")[-1].strip().lower()
        if proto not in ("http", "https"):
            raise ForwardedError("the forwarded proto is not http or https")
    if host is not None:
        host = host.split(",")[-1].strip()
        if not _HOST.match(host):
            raise ForwardedError("the forwarded host is not host[:port]")
        if port is not None and not host.endswith("]") and ":" not in host:
            port = port.split(",")[-1].strip()
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ForwardedError("X-Forwarded-Port is not a port number")
            host = f"{host}:{port}"
    prefix = prefix.split(",")[-1].strip()
    if prefix and (not _PREFIX.match(prefix) or "/../" in prefix + "/" or len(prefix) > 256):
        raise ForwardedError("X-Forwarded-Prefix is not a path")
    return Forwarded(client=_client(client) if client is not None else None,
                     proto=proto, host=host, prefix=prefix.rstrip("/"))


def public_base(conn: HTTPConnection) -> str:
    """The base URL clients reach this server at (no trailing slash): the forwarded
    one behind a trusted proxy, else the request's own."""
    base = conn.scope.get(SCOPE_KEY)
    if isinstance(base, str):
        return base
    return str(conn.base_url).rstrip("/")


class ForwardedHeaders:
    """ASGI middleware: behind a trusted proxy, the client address, scheme and public
    base URL become the forwarded ones (see the module docstring)."""

    def __init__(self, app: Any, trusted: list[str], refusals: RefusalLog) -> None:
        self.app = app
        self.networks = trusted_networks(trusted)
        self.refusals = refusals

    async def __call__(self, scope: Any, receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or not self.networks:
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        if not peer or not is_trusted(str(peer[0]), self.networks):
            await self.app(scope, receive, send)
            return
        raw = scope.get("headers") or ()

        def header(name: str) -> str | None:
            values = [v.decode("latin-1") for k, v in raw if k.decode("latin-1").lower() == name]
            return ",".join(values) if values else None

        try:
            fwd = parse(header)
        except ForwardedError as exc:
            self.refusals.record(address=str(peer[0]), user="unauthenticated",
                                 method=str(scope.get("method", "-")),
                                 path=str(scope.get("path", "-")), status=400,
                                 reason=str(exc))
            await json_error(400, str(exc))(scope, receive, send)
            return
        scope = dict(scope)
        if fwd.client is not None:
            scope["client"] = (fwd.client, 0)
        if fwd.proto is not None:
            scope["scheme"] = fwd.proto
        if fwd.host is not None or fwd.prefix or fwd.proto is not None:
            conn = HTTPConnection(scope)
            host = fwd.host or conn.url.netloc
            scope[SCOPE_KEY] = f"{scope['scheme']}://{host}{fwd.prefix}"
        await self.app(scope, receive, send)


__all__ = ["Forwarded", "ForwardedError", "ForwardedHeaders", "is_trusted", "parse",
           "public_base", "trusted_networks"]
