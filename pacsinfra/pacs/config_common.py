"""Configuration pieces the archive and the router share: AE titles, peers, TLS, limits.

These models are part of the blueprint language (``services.archive`` and
``services.router`` render to them) and of the services' own config files, so one
schema serves both.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pacsinfra.secrets import SecretRef

# PS3.5 6.2: AE is up to 16 characters of the default repertoire, no backslash or
# control characters; leading/trailing spaces are not significant, so we forbid them.
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or value != value.strip():
        raise ValueError(
            f"{value!r} is not a valid AE title: 1-16 printable ASCII characters, "
            "no backslash, no leading or trailing spaces"
        )
    return value


AETitle = Annotated[str, AfterValidator(_check_ae)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    """Base for config models: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class TlsConfig(Strict):
    """DICOM TLS (PS3.15 BCP 195): TLS 1.2+, optional mutual authentication."""

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False
    min_version: str = Field("1.2", pattern=r"^1\.[23]$")


class Peer(Strict):
    """A remote DICOM application entity (a C-MOVE destination, a forwarding target)."""

    ae_title: AETitle
    host: str
    port: Port = 104
    tls: TlsConfig = Field(default_factory=TlsConfig)


class Limits(Strict):
    """Association limits and timeouts of a DICOM listener."""

    max_associations: int = Field(32, ge=1, le=10_000)
    max_associations_per_ae: int = Field(16, ge=1, le=10_000)
    max_pdu: int = Field(262_144, ge=0, le=2**32 - 1)  # 0 means unlimited in DICOM
    acse_timeout: float = Field(30, gt=0, le=3600)
    dimse_timeout: float = Field(60, gt=0, le=3600)
    network_timeout: float = Field(60, gt=0, le=3600)


class AuditConfig(Strict):
    """Where audit messages (PS3.15 A.5 shaped) go."""

    file: str | None = None
    syslog: bool = False


class DicomListener(Strict):
    """What every DICOM service listening for associations shares."""

    ae_title: AETitle
    bind: str = "0.0.0.0"
    port: Port = 11112
    allowed_calling_aes: list[AETitle] | None = None  # None: any calling AE accepted
    limits: Limits = Field(default_factory=Limits)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)


__all__ = [
    "AETitle",
    "AuditConfig",
    "DicomListener",
    "Limits",
    "Peer",
    "Port",
    "SecretRef",
    "Strict",
    "TlsConfig",
]
