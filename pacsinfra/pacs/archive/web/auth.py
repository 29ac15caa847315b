"""Who is calling and what they may do: bearer tokens with scopes, JWTs, anonymous.

Static tokens are read from their secret references once, at start, and kept only as
SHA-256 digests; a presented token is hashed and compared with every digest in
constant time (no early exit, no length leak). A token that is not one of them and
looks like a JWT is verified by :mod:`~pacsinfra.pacs.archive.web.oidc` when OIDC is
configured. Missing or invalid credentials are 401 with ``WWW-Authenticate: Bearer``;
a valid caller without the scope a route needs is 403 (RFC 6750 section 3.1).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

import anyio.to_thread
from starlette.requests import Request

from pacsinfra.errors import PacsinfraError, SecretError
from pacsinfra.pacs.archive.config import DicomWebConfig
from pacsinfra.pacs.archive.web.errors import Refusal
from pacsinfra.pacs.web_config import SCOPES

LOG = logging.getLogger("pacsinfra.archive.dicomweb")
MIN_TOKEN_CHARS = 16  # shorter static tokens work, with a warning at start
_REALM = 'Bearer realm="dicomweb"'


@dataclass(frozen=True)
class Principal:
    """An authenticated (or anonymous) caller: a name for logs, and its scopes."""

    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        """Whether this caller holds ``scope`` (admin holds every scope)."""
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class _Token:
    digest: bytes
    principal: Principal


class CredentialsError(PacsinfraError):
    """The configured credentials cannot be used (unreadable or empty secret)."""


class Authenticator:
    """Checks the ``Authorization`` header of each request against the configuration."""

    def __init__(self, cfg: DicomWebConfig) -> None:
        self._tokens: list[_Token] = []
        entries = [("token", cfg.token, list(SCOPES))] if cfg.token is not None else []
        entries += [(t.name or f"tokens[{i}]", t.token, list(t.scopes))
                    for i, t in enumerate(cfg.tokens)]
        for name, ref, scopes in entries:
            try:
                value = ref.resolve()
            except SecretError as exc:
                raise CredentialsError(f"dicomweb {name}: {exc}") from None
            if not value.strip():
                raise CredentialsError(f"dicomweb {name}: {ref.describe()} is empty")
            if len(value) < MIN_TOKEN_CHARS:
                LOG.warning("dicomweb %s (%s) is shorter than %d characters: easy to guess",
                            name, ref.describe(), MIN_TOKEN_CHARS)
            self._tokens.append(_Token(hashlib.sha256(value.encode()).digest(),
                                       Principal(name, frozenset(scopes))))
        self._oidc = None
        if cfg.oidc is not None:
            from pacsinfra.pacs.archive.web.oidc import OidcVerifier

            self._oidc = OidcVerifier(cfg.oidc)
        self._anonymous = (Principal("anonymous", frozenset(cfg.anonymous_scopes))
                           if cfg.anonymous else None)

    def _static(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for token in self._tokens:  # every digest compared: timing says nothing about which
            if hmac.compare_digest(digest, token.digest):
                found = token.principal
        return found

    async def authenticate(self, request: Request) -> Principal:
        """The caller of ``request``, or a 401 :class:`Refusal`."""
        header = request.headers.get("authorization")
        if header is None:
            if self._anonymous is not None:
                return self._anonymous
            raise Refusal(401, "authentication required: send Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": _REALM})
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise Refusal(401, "only Bearer authentication is accepted",
                          headers={"WWW-Authenticate": _REALM})
        found = self._static(presented)
        if found is None and self._oidc is not None and presented.count(".") == 2:
            # key fetches and signature checks block: off the event loop
            verified = await anyio.to_thread.run_sync(self._oidc.verify, presented)
            if verified is not None:
                found = Principal(*verified)
        if found is None:
            raise Refusal(401, "invalid or expired token", headers={
                "WWW-Authenticate": f'{_REALM}, error="invalid_token"'})
        return found

    async def require(self, request: Request, scope: str) -> Principal:
        """The caller of ``request`` if it holds ``scope``; else a 401/403 :class:`Refusal`.
        The caller is remembered on the request for the log and the audit trail."""
        principal = await self.authenticate(request)
        request.state.principal = principal
        if not principal.may(scope):
            raise Refusal(403, f"the {scope!r} scope is required", headers={
                "WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{scope}"'})
        return principal
