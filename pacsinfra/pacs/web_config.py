"""Configuration of the HTTP endpoints the archive and the router serve.

Who may call (bearer tokens with scopes, OpenID Connect), what a request may cost
(sizes, counts, timeouts, per-client concurrency) and where an endpoint may listen.
The rule every endpoint with patient data follows: it listens on loopback unless
configured otherwise, and off loopback only with authentication (or an explicit,
loudly logged ``allow_anonymous`` for labs).
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pacsinfra.pacs.config_common import Strict
from pacsinfra.secrets import SecretRef

#: What a caller may do: read (QIDO-RS, WADO-RS), write (STOW-RS), delete (DELETE),
#: metrics (GET /metrics); admin implies every other scope.
Scope = Literal["read", "write", "delete", "metrics", "admin"]
SCOPES: tuple[str, ...] = ("read", "write", "delete", "metrics", "admin")
#: JWT signature algorithms OIDC may use: asymmetric only, so a public key can never be
#: mistaken for an HMAC secret (the "alg confusion" attack) and "none" never passes.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address or name (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def fetchable(url: str) -> bool:
    """Whether signing keys may be fetched from ``url``: https, or http on loopback
    (where nobody can sit in between)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http"
                                       and is_loopback(parts.hostname or ""))


class BearerToken(Strict):
    """One accepted bearer token: where its value is read from and what it may do."""

    token: SecretRef
    scopes: list[Scope] = Field(min_length=1)
    # shown in logs and audit messages instead of the token ("viewer", "verify", ...)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]{1,64}$")


class OidcConfig(Strict):
    """Accept JWT access tokens signed by an OpenID Connect provider.

    The signing keys come from ``jwks_url``, else ``jwks_file``, else the ``jwks_uri``
    of the issuer's discovery document (``<issuer>/.well-known/openid-configuration``).
    A token must carry ``exp``, ``iss`` equal to ``issuer`` and an ``aud`` naming
    ``audience``; its scopes are the values of ``scope_claim`` (a space-separated
    string or a list; a dotted path reaches nested claims such as
    ``realm_access.roles``), translated by ``scope_map`` when it is given, else taken
    when they are scope names themselves.
    """

    issuer: str = Field(min_length=1)
    audience: str | list[str]
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    scope_claim: str = "scope"  # "scp" is read too when this is left at "scope"
    scope_map: dict[str, list[Scope]] = Field(default_factory=dict)
    leeway_seconds: float = Field(30, ge=0, le=300)
    jwks_cache_seconds: float = Field(3600, gt=0)
    # an unknown key id refetches the key set at most this often (key rotation without
    # letting random key ids turn every request into a fetch from the provider)
    jwks_min_refresh_seconds: float = Field(30, ge=0)
    ca_file: str | None = None  # CA bundle for the provider's TLS certificate

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed: use asymmetric ones "
                             f"({', '.join(ASYMMETRIC_ALGORITHMS)}); 'none' and HS* never are")
        return value

    @model_validator(mode="after")
    def _key_source(self) -> OidcConfig:
        if self.jwks_url and self.jwks_file:
            raise ValueError("oidc: give jwks_url or jwks_file, not both")
        for what, url in (("issuer", self.issuer), ("jwks_url", self.jwks_url)):
            if url is None or (what == "issuer" and (self.jwks_url or self.jwks_file)):
                continue  # the issuer is only compared, not fetched, when keys are given
            if fetchable(url):
                continue
            raise ValueError(f"oidc.{what} {url!r}: signing keys are fetched over https "
                             "(plain http only from loopback)")
        return self


class HttpLimits(Strict):
    """What one request and one client may cost the server."""

    max_stow_bytes: int = Field(2 * 1024**3, ge=1024)  # one STOW-RS body
    max_stow_parts: int = Field(10_000, ge=1)  # instances in one STOW-RS body
    stow_timeout_seconds: float = Field(900, gt=0)  # whole STOW-RS body
    header_timeout_seconds: float = Field(10, gt=0, le=300)  # request line + headers
    body_timeout_seconds: float = Field(30, gt=0, le=3600)  # silence within a body
    keep_alive_seconds: int = Field(5, ge=1, le=300)  # idle connection between requests
    max_header_bytes: int = Field(65_536, ge=4096, le=1_048_576)  # request line + headers
    max_connections: int = Field(1000, ge=1)  # open connections, all clients
    max_connections_per_client: int = Field(64, ge=1)
    max_requests_per_client: int = Field(16, ge=1)  # requests in progress at once
    max_qido_results: int = Field(10_000, ge=1)  # the largest 'limit' a search may ask
    max_qido_offset: int = Field(1_000_000, ge=0)
    # Addresses whose X-Forwarded-For names the client (a reverse proxy in front, e.g.
    # the viewer's): per-client limits and audit messages then use the forwarded
    # address, and the proxy's own connections are not capped per client.
    trusted_proxies: list[str] = Field(default_factory=list)


def auth_error(section: str, bind: str) -> str:
    """The message for a non-loopback endpoint without authentication."""
    return (f"{section}.bind is {bind!r}, which is reachable from the network, but no "
            f"authentication is configured: set {section}.tokens (bearer tokens with "
            f"scopes) or {section}.oidc, or bind 127.0.0.1 (and put an authenticating "
            f"proxy in front), or set {section}.allow_anonymous: true (labs only)")


__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "SCOPES",
    "BearerToken",
    "HttpLimits",
    "OidcConfig",
    "Scope",
    "auth_error",
    "fetchable",
    "is_loopback",
]
