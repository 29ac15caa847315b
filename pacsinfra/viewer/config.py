"""The viewer's configuration: what ``pacsinfra viewer serve --config viewer.yaml`` reads.

A blueprint's ``services.<name>.config`` for ``kind: viewer`` embeds the same model, so a
site validates its viewer before any machine exists. Secrets (user passwords, the
archive's token, an htpasswd file) are :class:`~pacsinfra.secrets.SecretRef` references,
resolved only when the viewer starts.

Secure by default: the viewer binds to loopback; listening on any other address needs
user authentication (``auth``) and TLS, or an explicit, loudly logged opt-out
(``allow_anonymous`` for labs, ``allow_plain_http`` behind a TLS-terminating proxy).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pacsinfra.pacs.config_common import Port, Strict, TlsConfig
from pacsinfra.secrets import SecretRef

#: the OHIF release deployed unless a config pins another (the newest on the registry
#: when this was written, and the one the browser tests run against)
OHIF_VERSION = "3.13.2"

# nginx sizes: a number with an optional k/m/g suffix ("1m", "512k").
NginxSize = Annotated[str, Field(pattern=r"^[0-9]{1,9}[kKmMgG]?$")]
# User names go into an htpasswd file: no colon, nothing a log parser would trip on.
UserName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
# Paths end up inside nginx.conf between double quotes, where nginx expands $variables:
# characters that could end the string, start a variable or a new directive are refused.
_UNSAFE_PATH = re.compile(r'["\\$;{}\x00-\x1f\x7f]')
_SRI = re.compile(r"^sha512-[A-Za-z0-9+/]{86}==$")
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$")


def safe_path(value: str | None, what: str) -> str | None:
    """``value`` unchanged, or a ValueError naming ``what`` if nginx.conf cannot hold it."""
    if value is not None and _UNSAFE_PATH.search(value):
        raise ValueError(f"{what} {value!r}: quotes, backslashes, '$', ';', braces and "
                         "control characters are not allowed in paths nginx reads")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only reaches this machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class UserEntry(Strict):
    """One user who may log in: the password is a reference, never a value."""

    password: SecretRef


class AuthConfig(Strict):
    """Who may use the viewer: HTTP basic auth over ``users`` and/or an htpasswd file.

    ``htpasswd`` is a secret reference to an existing htpasswd file's *contents* (hashes
    nginx understands: ``{SHA}``, ``{SSHA}``, ``$1$``, ``$5$``, ``$6$``, ``{PLAIN}`` is
    refused); ``users`` are hashed (SHA-512 crypt) when the viewer starts.
    """

    users: dict[UserName, UserEntry] = Field(default_factory=dict)
    htpasswd: SecretRef | None = None
    realm: str = Field("PACS viewer", min_length=1, max_length=64, pattern=r'^[^"\\$\x00-\x1f]+$')

    @property
    def enabled(self) -> bool:
        """Whether any user can log in (and so everyone must)."""
        return bool(self.users) or self.htpasswd is not None


class OhifPackage(Strict):
    """Where the OHIF build comes from: ``@ohif/app`` on the npm registry, or a staged tarball.

    ``integrity`` is the registry's ``dist.integrity`` (``sha512-<base64>``); the pinned
    release's is built in. A staged tarball (``tarball``, or the environment variable
    ``PACSINFRA_OHIF_TARBALL``) is for air-gapped sites and is checked against it too.
    """

    version: str = OHIF_VERSION
    integrity: str | None = None
    tarball: str | None = None
    registry: str = "https://registry.npmjs.org"
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/pacsinfra/ohif

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError(f"{value!r} is not an npm version (like {OHIF_VERSION})")
        return value

    @field_validator("integrity")
    @classmethod
    def _integrity(cls, value: str | None) -> str | None:
        if value is not None and not _SRI.match(value):
            raise ValueError("integrity must be the registry's dist.integrity: "
                             "'sha512-' and 88 base64 characters")
        return value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("tarball", "cache_dir")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return safe_path(value, "path")


class ViewerLimits(Strict):
    """Request limits nginx enforces (the viewer only reads; uploads stay small)."""

    client_max_body_size: NginxSize = "1m"
    client_body_timeout: float = Field(30, gt=0, le=3600)  # seconds between body reads
    client_header_timeout: float = Field(30, gt=0, le=3600)
    send_timeout: float = Field(60, gt=0, le=3600)  # seconds between writes to a client
    proxy_connect_timeout: float = Field(10, gt=0, le=600)
    proxy_read_timeout: float = Field(300, gt=0, le=3600)  # a whole study's metadata is slow
    keepalive_timeout: float = Field(65, ge=0, le=3600)
    worker_connections: int = Field(1024, ge=16, le=65536)


class ViewerConfig(Strict):
    """Everything a viewer needs to run; also ``services.<name>.config`` of ``kind: viewer``.

    Field names the blueprint already used (``product``, ``archive``, ``bind``, ``port``,
    ``tls``, ``gpu_required``) keep their meaning; ``upstream`` is the archive's DICOMweb
    URL the proxy forwards to (a blueprint derives it from ``archive``).
    """

    product: Literal["ohif"] = "ohif"
    archive: str | None = None  # blueprint: the archive service it reads from
    site_name: str = Field("PACS", min_length=1, max_length=64)
    bind: str = "127.0.0.1"
    port: Port = 3000
    tls: TlsConfig = Field(default_factory=TlsConfig)
    gpu_required: bool = False  # a viewer doing 3D/MPR rendering server-side
    upstream: str | None = None  # e.g. http://127.0.0.1:8042/dicom-web
    upstream_token: SecretRef | None = None  # bearer token for the archive (read scope)
    upstream_ca_file: str | None = None  # verify an https upstream against this CA
    auth: AuthConfig = Field(default_factory=AuthConfig)
    allow_anonymous: bool = False  # labs only: no login on a non-loopback address
    allow_plain_http: bool = False  # passwords without TLS on a non-loopback address
    data_dir: str = "/var/lib/pacsinfra/viewer"  # nginx's prefix: conf, secrets, logs, temp
    worker_user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    worker_processes: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    ohif: OhifPackage = Field(default_factory=OhifPackage)
    limits: ViewerLimits = Field(default_factory=ViewerLimits)

    @field_validator("site_name")
    @classmethod
    def _site_name(cls, value: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("site_name may not contain control characters")
        return value

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9.:\[\]-]{1,253}$", value):
            raise ValueError(f"{value!r} is not an address or host name to listen on")
        return value

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL of the archive's DICOMweb")
        if parts.username or parts.password:
            raise ValueError("no credentials in the upstream URL: give upstream_token "
                             "(a secret reference)")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r}: the DICOMweb base URL has no query or fragment")
        if _UNSAFE_PATH.search(value) or " " in value:
            raise ValueError(f"{value!r}: characters nginx cannot proxy to")
        return value.rstrip("/")

    @field_validator("data_dir", "upstream_ca_file")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return safe_path(value, "path")

    @model_validator(mode="after")
    def _secure(self) -> ViewerConfig:
        for what in ("cert_file", "key_file", "ca_file"):
            safe_path(getattr(self.tls, what), f"tls.{what}")
        if self.tls.enabled and not (self.tls.cert_file and self.tls.key_file):
            raise ValueError("tls.enabled needs tls.cert_file and tls.key_file")
        if self.tls.require_client_cert and not self.tls.ca_file:
            raise ValueError("tls.require_client_cert needs tls.ca_file (the clients' CA)")
        if self.allow_anonymous and self.auth.enabled:
            raise ValueError("allow_anonymous: true contradicts auth users/htpasswd: "
                             "choose one")
        if not is_loopback(self.bind):
            if not self.auth.enabled and not self.allow_anonymous:
                raise ValueError(
                    f"bind {self.bind} is not loopback: without auth.users (or auth.htpasswd) "
                    "anyone on the network could read patient images; add users, or set "
                    "allow_anonymous: true for a lab")
            if self.auth.enabled and not self.tls.enabled and not self.allow_plain_http:
                raise ValueError(
                    f"bind {self.bind} is not loopback: basic-auth passwords would cross the "
                    "network in clear text; enable tls, or set allow_plain_http: true when a "
                    "TLS-terminating proxy sits in front")
        return self

    @property
    def scheme(self) -> str:
        """``https`` with TLS on, else ``http``."""
        return "https" if self.tls.enabled else "http"

    def warnings(self) -> list[str]:
        """Risks this config accepts on purpose, to be logged loudly when it starts."""
        out = []
        if self.allow_anonymous and not is_loopback(self.bind):
            out.append(f"ANONYMOUS ACCESS: anyone who can reach {self.bind}:{self.port} reads "
                       "patient images without logging in (allow_anonymous: true)")
        if self.allow_plain_http and self.auth.enabled and not self.tls.enabled \
                and not is_loopback(self.bind):
            out.append(f"PLAIN HTTP: passwords sent to {self.bind}:{self.port} are not "
                       "encrypted unless a TLS proxy sits in front (allow_plain_http: true)")
        if self.upstream and urlsplit(self.upstream).scheme == "http" \
                and not is_loopback(urlsplit(self.upstream).hostname or ""):
            out.append(f"the archive's DICOMweb is reached over plain HTTP ({self.upstream}): "
                       "the token and images cross the network unencrypted")
        return out


__all__ = [
    "OHIF_VERSION",
    "AuthConfig",
    "OhifPackage",
    "UserEntry",
    "ViewerConfig",
    "ViewerLimits",
    "is_loopback",
    "safe_path",
]
