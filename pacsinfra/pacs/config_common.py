"""Configuration pieces the archive and the router share: AE titles, peers, TLS, limits.

These models are part of the blueprint language (``services.archive`` and
``services.router`` render to them) and of the services' own config files, so one
schema serves both.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

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
    """DICOM TLS (PS3.15 BCP 195): TLS 1.2+, optional mutual authentication.

    Attributes:
        enabled: Use TLS.
        cert_file: This side's certificate (PEM).
        key_file: The private key of ``cert_file`` (PEM).
        ca_file: CA certificates (PEM) the other side's certificate is verified against.
        require_client_cert: A listener requires and verifies client certificates (mutual TLS).
        min_version: Lowest TLS version used: ``1.2`` or ``1.3``.
    """

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False
    min_version: str = Field("1.2", pattern=r"^1\.[23]$")


class Peer(Strict):
    """A remote DICOM application entity (a C-MOVE destination, a forwarding target).

    Attributes:
        ae_title: The peer's AE title.
        host: Its host name or address.
        port: Its DICOM port.
        tls: TLS towards it.
    """

    ae_title: AETitle
    host: str
    port: Port = 104
    tls: TlsConfig = Field(default_factory=TlsConfig)


MIB = 1 << 20


class Limits(Strict):
    """Association limits, timeouts and the resource limits of a DICOM listener.

    The defaults, and why (docs/archive.md, "Limits"):

    - ``pdu_size_limit`` 4 MiB: the largest PDU of any kind read from a peer, checked
      against the PDU header before a byte of the body is read. 16x the default
      ``max_pdu`` and 4x the largest ``max_pdu`` worth configuring (1 MiB); the largest
      real A-ASSOCIATE-RQ (128 presentation contexts proposing every transfer syntax,
      plus a 64 KiB user identity token) is about 0.3 MB. One connection can make the
      process hold at most one such PDU.
    - ``request_timeout`` 10 s: a modality sends its A-ASSOCIATE-RQ within milliseconds
      of connecting (a TLS handshake included, well under a second on a WAN); a
      connection that has not done so in 10 s is not a modality at work.
    - ``max_pending`` 64 connections may be waiting for their request at once; they
      never take an association slot.
    - ``max_connections_per_address`` 16: one host holds at most half the default
      association slots, so one misbehaving machine cannot take them all.
    - ``listen_backlog`` 128: connections the kernel queues before they are accepted.

    Attributes:
        max_associations: Associations open at once; more are rejected (transient).
        max_associations_per_ae: Associations open at once from one calling AE title.
        max_pdu: Largest PDU accepted, in bytes; 0 means no limit.
        acse_timeout: Seconds to wait for association negotiation and release.
        dimse_timeout: Seconds to wait for a DIMSE message.
        network_timeout: Seconds without network activity before an association is dropped.
    """

    max_associations: int = Field(32, ge=1, le=10_000)
    max_associations_per_ae: int = Field(16, ge=1, le=10_000)
    max_pdu: int = Field(262_144, ge=0, le=2**32 - 1)  # 0 means unlimited in DICOM
    acse_timeout: float = Field(30, gt=0, le=3600)
    dimse_timeout: float = Field(60, gt=0, le=3600)
    network_timeout: float = Field(60, gt=0, le=3600)
    pdu_size_limit: int = Field(4 * MIB, ge=64 << 10, le=256 * MIB)
    request_timeout: float = Field(10, gt=0, le=300)
    max_pending: int = Field(64, ge=1, le=10_000)
    max_connections_per_address: int = Field(16, ge=1, le=10_000)
    listen_backlog: int = Field(128, ge=1, le=65_535)

    @model_validator(mode="after")
    def _pdu_fits_the_limit(self) -> Limits:
        if self.max_pdu > self.pdu_size_limit:
            raise ValueError(
                f"max_pdu ({self.max_pdu}) is larger than pdu_size_limit "
                f"({self.pdu_size_limit}): peers are told they may send P-DATA PDUs of "
                "max_pdu bytes, which the listener would then refuse; lower max_pdu or "
                "raise pdu_size_limit")
        return self


class AuditConfig(Strict):
    """Where audit messages (PS3.15 A.5 shaped) go.

    Attributes:
        file: File that audit messages are appended to, one JSON object per line.
        syslog: Also send audit messages to the local syslog (``/dev/log``).
    """

    file: str | None = None
    syslog: bool = False


class DicomListener(Strict):
    """What every DICOM service listening for associations shares.

    Attributes:
        ae_title: The service's own (called) AE title.
        bind: Listen address.
        port: DICOM port.
        allowed_calling_aes: Calling AE titles accepted; others are rejected. Unset: any.
        limits: Association limits and timeouts.
        tls: DICOM TLS on the listener.
        audit: Where audit messages go.
    """

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
