"""Services of a site (``services:``): archive, router, database, viewer.

The archive, router and viewer embed their own config models as they are
(:class:`~pacsinfra.pacs.archive.config.ArchiveConfig`,
:class:`~pacsinfra.pacs.router.config.RouterConfig`,
:class:`~pacsinfra.viewer.config.ViewerConfig`), so a blueprint validates exactly what
the service will read. The database model lives here.

``Site.services`` is a union discriminated by ``kind``; every member is a
:class:`Service`, so ``isinstance(svc, Service)`` and ``svc.kind`` / ``svc.config``
hold for all of them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.config_common import Port, TlsConfig
from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.secrets import SecretRef
from pacsinfra.types import Size
from pacsinfra.viewer.config import ViewerConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: a PostgreSQL role or database name pacsinfra creates: lower case, so it needs no quoting
PG_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
PgName = Annotated[str, Field(pattern=PG_NAME)]
#: names PostgreSQL itself owns: creating them would be a no-op owned by someone else
RESERVED_PG_NAMES = frozenset({"postgres", "template0", "template1"})


class DatabaseConfig(_Strict):
    """A PostgreSQL server for the archive index (and optionally the router queue).

    On every provider pacsinfra runs it from the machine's own
    PostgreSQL packages (``/usr/lib/postgresql/<version>/bin``): ``initdb`` of
    ``data_dir`` when empty, ``postgresql.conf`` / ``pg_hba.conf`` written from this
    model (SCRAM-SHA-256 on TCP), role ``user`` with ``password`` and the
    ``databases`` it owns created idempotently. See docs/deploy.md.

    Attributes:
        engine: The database engine; PostgreSQL is the only one.
        version: PostgreSQL major version: the binaries in
            ``/usr/lib/postgresql/<version>/bin``, or ``postgres`` on the PATH of that version.
        bind: ``listen_addresses``; ``0.0.0.0`` or ``::`` listen everywhere. On ``local`` the
            default becomes 127.0.0.1, on ``static`` hosts the host's address.
        port: TCP port.
        data_dir: The cluster's directory: initialised when empty, kept when the service is
            deleted. Left at its default, it moves to the machine's data directory on ``local``
            and ``static``.
        databases: Databases created for, and owned by, ``user``; not ``postgres``,
            ``template0`` or ``template1``.
        user: The services' login role (not a superuser; not ``postgres``).
        password: Password of ``user`` (SCRAM-SHA-256 over TCP); required to deploy.
        max_connections: PostgreSQL's ``max_connections``.
        shared_buffers: PostgreSQL's ``shared_buffers`` (default: PostgreSQL's own).
        tls: TLS of the server; not supported yet: refused at plan time.
        replica_of: Name of another database service to stream from; not supported yet:
            refused at plan time.
    """

    engine: Literal["postgresql"] = "postgresql"
    version: int = Field(15, ge=12, le=18)
    bind: str = "0.0.0.0"
    port: Port = 5432
    data_dir: str = "/var/lib/postgresql"
    # The server's Unix socket (administration as the cluster's superuser, peer auth);
    # default: the machine's run directory.
    socket_dir: str | None = None
    databases: list[PgName] = Field(default_factory=lambda: ["pacs"])
    user: PgName = "pacs"
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

    @field_validator("databases")
    @classmethod
    def _databases(cls, value: list[str]) -> list[str]:
        reserved = sorted(set(value) & RESERVED_PG_NAMES)
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: reserved by PostgreSQL; "
                             "name the site's own databases")
        dupes = sorted({d for d in value if value.count(d) > 1})
        if dupes:
            raise ValueError(f"duplicate databases: {', '.join(dupes)}")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if value in RESERVED_PG_NAMES:
            raise ValueError(f"{value!r} is the cluster's superuser; the services' role "
                             "must be another one (e.g. pacs)")
        return value


class Service(_Strict):
    """One service of the site: its ``kind`` and the config the service will run with.

    Attributes:
        kind: Which service: ``archive``, ``router``, ``database`` or ``viewer``.
        config: The service's own configuration, by ``kind``.
        description: Free text.
    """

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
    """``kind: viewer`` — OHIF behind nginx, reading an archive over DICOMweb."""

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
