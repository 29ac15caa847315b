"""Services of a site (``services:``): archive, router, database, viewer.

The archive and router embed their own config models as they are
(:class:`~pacsinfra.pacs.archive.config.ArchiveConfig`,
:class:`~pacsinfra.pacs.router.config.RouterConfig`), so a blueprint validates exactly
what the service will read. The database and viewer models live here.

``Site.services`` is a union discriminated by ``kind``; every member is a
:class:`Service`, so ``isinstance(svc, Service)`` and ``svc.kind`` / ``svc.config``
hold for all of them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pacsinfra.blueprint.types import Size
from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.config_common import Port, TlsConfig
from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.secrets import SecretRef


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Strict):
    """A PostgreSQL server for the archive index (and optionally the router queue)."""

    engine: Literal["postgresql"] = "postgresql"
    version: int = Field(15, ge=12, le=18)
    bind: str = "0.0.0.0"
    port: Port = 5432
    data_dir: str = "/var/lib/postgresql"
    databases: list[str] = Field(default_factory=lambda: ["pacs"])
    user: str = "pacs"
    password: SecretRef | None = None
    max_connections: int = Field(200, ge=10, le=10_000)
    shared_buffers: Size | None = None
    tls: TlsConfig = Field(default_factory=TlsConfig)
    replica_of: str | None = None  # name of another database service to stream from

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        # "15" and 15.0 are what people write; the major version is what matters
        if isinstance(value, str) and value.strip().split(".")[0].isdigit():
            return int(value.strip().split(".")[0])
        return value


class ViewerConfig(_Strict):
    """A diagnostic viewer reading the archive over DICOMweb."""

    product: Literal["ohif", "weasis", "builtin"] = "ohif"
    archive: str | None = None  # the archive service it reads from (default: the only one)
    bind: str = "0.0.0.0"
    port: Port = 3000
    tls: TlsConfig = Field(default_factory=TlsConfig)
    gpu_required: bool = False  # a viewer doing 3D/MPR rendering server-side


class Service(_Strict):
    """One service of the site: its ``kind`` and the config the service will run with."""

    kind: str
    config: Any = None
    description: str | None = None


class ArchiveService(Service):
    """``kind: archive`` — the DICOM archive (ArchiveConfig)."""

    kind: Literal["archive"]
    config: ArchiveConfig = Field(default_factory=ArchiveConfig)


class RouterService(Service):
    """``kind: router`` — the DICOM router (RouterConfig)."""

    kind: Literal["router"]
    config: RouterConfig = Field(default_factory=RouterConfig)


class DatabaseService(Service):
    """``kind: database`` — PostgreSQL for the archive index."""

    kind: Literal["database"]
    config: DatabaseConfig = Field(default_factory=DatabaseConfig)


class ViewerService(Service):
    """``kind: viewer`` — a DICOMweb viewer."""

    kind: Literal["viewer"]
    config: ViewerConfig = Field(default_factory=ViewerConfig)


AnyService = Annotated[
    ArchiveService | RouterService | DatabaseService | ViewerService,
    Field(discriminator="kind"),
]

SERVICE_KINDS = ("archive", "router", "database", "viewer")
#: services that receive DICOM over the network (C-STORE / C-FIND / C-MOVE)
DICOM_KINDS = frozenset({"archive", "router"})
#: services whose disks hold patient data
DATA_KINDS = frozenset({"archive", "database"})

__all__ = [
    "AnyService",
    "ArchiveService",
    "DatabaseConfig",
    "DatabaseService",
    "RouterService",
    "Service",
    "ViewerConfig",
    "ViewerService",
]
