"""JWT access tokens from an OpenID Connect provider, verified with PyJWT.

The provider's signing keys (its JWKS) are fetched over HTTPS (or read from a file),
cached for ``jwks_cache_seconds``, and fetched again early only when a token names an
unknown key id, at most once per ``jwks_min_refresh_seconds`` (random key ids must not
turn each request into a fetch). The algorithms a token may use are fixed by the key
that verifies it and the configured list, never by the token's own header, and are
asymmetric only: "none" and an HMAC signed with the public key both fail.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK

from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.web_config import SCOPES, OidcConfig, fetchable

LOG = logging.getLogger("pacsinfra.archive.dicomweb")
FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024  # a discovery document or key set larger than this is refused
# the algorithms each key type can verify; a key's own "alg" narrows it to one
_FAMILIES = {
    "RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "EC": {"ES256", "ES384", "ES512"},
    "OKP": {"EdDSA"},
}


class JwksUnavailable(Exception):
    """The provider's keys could not be fetched or parsed."""


class _Key:
    """One usable signing key and the algorithms it may verify."""

    def __init__(self, jwk: dict[str, Any]) -> None:
        self.jwk = PyJWK(jwk)  # raises on keys PyJWT cannot use
        self.kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
        self.use = jwk.get("use")
        alg = jwk.get("alg")
        self.family = {alg} if isinstance(alg, str) else _FAMILIES.get(str(jwk.get("kty")), set())


class OidcVerifier:
    """Verifies JWTs against one provider's keys; thread-safe."""

    def __init__(self, cfg: OidcConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._keys: list[_Key] | None = None
        self._fetched = 0.0  # monotonic time of the last fetch (or failed attempt)
        self._ssl = ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else None
        self._audience = [cfg.audience] if isinstance(cfg.audience, str) else list(cfg.audience)

    # -- keys --------------------------------------------------------------------------------
    def _get(self, url: str) -> Any:
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT_S, context=self._ssl) as resp:
            body = resp.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise JwksUnavailable(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
        return json.loads(body)

    def _load(self) -> list[_Key]:
        cfg = self.cfg
        try:
            if cfg.jwks_file:
                data = json.loads(Path(cfg.jwks_file).read_text(encoding="utf-8"))
            else:
                url = cfg.jwks_url
                if url is None:
                    discovery = self._get(cfg.issuer.rstrip("/")
                                          + "/.well-known/openid-configuration")
                    url = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
                    if not isinstance(url, str) or not fetchable(url):
                        raise JwksUnavailable("the discovery document names no https jwks_uri")
                data = self._get(url)
            entries = data.get("keys") if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise JwksUnavailable("not a JWK set (no 'keys' list)")
        except JwksUnavailable:
            raise
        except (OSError, ValueError) as exc:
            raise JwksUnavailable(f"{type(exc).__name__}: {exc}") from None
        keys = []
        for entry in entries:
            try:
                keys.append(_Key(entry))
            except (jwt.PyJWTError, AttributeError, TypeError, ValueError):
                continue  # a key type PyJWT cannot use (or not a JWK at all): skipped
        if not keys:
            raise JwksUnavailable("the key set holds no usable key")
        return keys

    def _key(self, kid: str | None) -> _Key | None:
        """The key ``kid`` names (refetching the set when it is stale or, rate-limited,
        when the id is unknown); None when the provider has no such key."""
        cfg = self.cfg
        with self._lock:  # one fetch at a time; the others wait for its result
            now = time.monotonic()
            stale = self._keys is None or now - self._fetched > cfg.jwks_cache_seconds
            found = None if stale else self._find(kid)
            may_refresh = now - self._fetched >= cfg.jwks_min_refresh_seconds
            if found is None and (stale or may_refresh):
                self._fetched = now
                try:
                    self._keys = self._load()
                except JwksUnavailable as exc:
                    LOG.error("OIDC: cannot load the signing keys: %s", exc)
                    if self._keys is None:
                        raise Refusal(503, "the identity provider's signing keys are "
                                      "unavailable", headers={"Retry-After": "30"}) from None
                found = self._find(kid)
            return found

    def _find(self, kid: str | None) -> _Key | None:
        if self._keys is None:
            return None
        keys = [k for k in self._keys if k.use in (None, "sig")]
        if kid is None:
            return keys[0] if len(keys) == 1 else None  # ambiguous without a key id
        return next((k for k in keys if k.kid == kid), None)

    # -- tokens ------------------------------------------------------------------------------
    def verify(self, token: str) -> tuple[str, frozenset[str]] | None:
        """(caller name, scopes) of a valid token, or None (bad signature, claims, key)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        kid = header.get("kid")
        if header.get("alg") not in self.cfg.algorithms or not (kid is None
                                                                 or isinstance(kid, str)):
            return None  # "none", HS256 and friends end here, before any key lookup
        key = self._key(kid)
        if key is None:
            return None
        algorithms = [a for a in self.cfg.algorithms if a in key.family]
        if not algorithms:
            return None
        try:
            claims = jwt.decode(token, key.jwk.key, algorithms=algorithms, audience=self._audience,
                                issuer=self.cfg.issuer, leeway=self.cfg.leeway_seconds,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            LOG.info("OIDC token refused: %s", type(exc).__name__)
            return None
        name = next((str(claims[c]) for c in ("sub", "client_id", "azp") if claims.get(c)),
                    "oidc")
        return f"oidc:{name[:128]}", frozenset(self._scopes(claims))

    def _scopes(self, claims: dict[str, Any]) -> set[str]:
        cfg = self.cfg
        value: Any = claims
        for part in cfg.scope_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None and cfg.scope_claim == "scope":
            value = claims.get("scp")  # Azure AD and others
        values = value.split() if isinstance(value, str) else (
            [v for v in value if isinstance(v, str)] if isinstance(value, list) else [])
        if cfg.scope_map:
            return {s for v in values for s in cfg.scope_map.get(v, [])}
        return {v for v in values if v in SCOPES}
