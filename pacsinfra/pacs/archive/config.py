"""The archive's configuration: what ``services.archive`` in a blueprint renders to.

``pacsinfra archive serve --config archive.yaml`` reads exactly this schema, and the
blueprint embeds the same model, so a site validates its archive settings before
any machine exists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pacsinfra.pacs.config_common import AETitle, DicomListener, Peer, Port, Strict, TlsConfig
from pacsinfra.secrets import SecretRef


class IndexConfig(Strict):
    """The index database: SQLite (WAL) on the archive itself, or a shared PostgreSQL.

    In a blueprint, ``service`` names the database service that hosts PostgreSQL;
    in a rendered config, ``host``/``port``/``database``/``user`` say where it is.
    """

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: str | None = None  # sqlite: defaults to <data_dir>/index.sqlite
    service: str | None = None  # blueprint: name of the database service
    host: str | None = None
    port: Port = 5432
    database: str = "pacs"
    user: str = "pacs"
    password: SecretRef | None = None

    @model_validator(mode="after")
    def _postgres_needs_a_place(self) -> IndexConfig:
        if self.backend == "postgresql" and not (self.service or self.host):
            raise ValueError("a postgresql index needs 'service' (in a blueprint) or 'host'")
        return self


class TierConfig(Strict):
    """A named storage area: a filesystem path, or an S3-compatible bucket."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    kind: Literal["filesystem", "s3"] = "filesystem"
    path: str | None = None  # filesystem; relative paths are under data_dir
    storage_class: str | None = None  # blueprint: the storage class whose disk holds it
    endpoint: str | None = None  # s3
    bucket: str | None = None  # s3
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None
    max_usage_percent: float = Field(95, gt=0, le=100)  # refuse stores above this
    # Evict a newly stored file's pages from the page cache once it is durable: keeps
    # write-once images from crowding out the index and makes ingest cheaper (see
    # pacsinfra.pacs.fastscp.incoming). False: keep them cached for immediate reads.
    drop_cache_after_store: bool = True

    @model_validator(mode="after")
    def _kind_fields(self) -> TierConfig:
        if self.kind == "s3" and not (self.endpoint and self.bucket):
            raise ValueError("an s3 tier needs 'endpoint' and 'bucket'")
        return self


class LifecycleRule(Strict):
    """Move studies from one tier to another by age or by last access."""

    from_tier: str
    to_tier: str
    older_than_days: int | None = Field(None, ge=0)
    not_accessed_days: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _has_a_condition(self) -> LifecycleRule:
        if self.older_than_days is None and self.not_accessed_days is None:
            raise ValueError("a lifecycle rule needs older_than_days or not_accessed_days")
        if self.from_tier == self.to_tier:
            raise ValueError("a lifecycle rule must move studies to a different tier")
        return self


class DicomWebConfig(Strict):
    """QIDO-RS / WADO-RS / STOW-RS over HTTP for viewers."""

    enabled: bool = True
    bind: str = "0.0.0.0"
    port: Port = 8042
    token: SecretRef | None = None  # bearer token required when set
    tls: TlsConfig = Field(default_factory=TlsConfig)


class ArchiveConfig(DicomListener):
    """Everything the archive needs to run; also ``services.archive`` in a blueprint."""

    ae_title: AETitle = "ARCHIVE"
    data_dir: str = "/var/lib/pacsinfra/archive"
    index: IndexConfig = Field(default_factory=IndexConfig)
    tiers: list[TierConfig] = Field(default_factory=lambda: [TierConfig(name="fast")])
    default_tier: str | None = None  # first tier when unset
    lifecycle: list[LifecycleRule] = Field(default_factory=list)
    retention_days: int | None = Field(None, ge=1)  # None: keep forever
    peers: dict[AETitle, Peer] = Field(default_factory=dict)  # C-MOVE destinations
    duplicates: Literal["reject", "keep_first", "overwrite", "keep_if_identical"] = (
        "keep_if_identical"
    )
    accept_unknown_sop_classes: bool = False
    # Processes accepting on one listening socket (the first idle one takes each
    # connection): one process's Python is bound by its GIL; association limits then
    # apply per worker.
    workers: int = Field(1, ge=1, le=64)
    dicomweb: DicomWebConfig = Field(default_factory=DicomWebConfig)

    @model_validator(mode="after")
    def _tiers_consistent(self) -> ArchiveConfig:
        names = [t.name for t in self.tiers]
        if not names:
            raise ValueError("the archive needs at least one storage tier")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate tier names: {', '.join(dupes)}")
        if self.default_tier is not None and self.default_tier not in names:
            raise ValueError(f"default_tier {self.default_tier!r} is not one of {names}")
        default = next(t for t in self.tiers if t.name == (self.default_tier or names[0]))
        if default.kind != "filesystem":
            # a C-STORE is acknowledged once its file and directory are fsynced: that
            # needs a filesystem; studies reach an s3 tier through the lifecycle
            raise ValueError(f"the default tier {default.name!r} must be a filesystem tier "
                             "(s3 tiers are filled by lifecycle rules)")
        for rule in self.lifecycle:
            for t in (rule.from_tier, rule.to_tier):
                if t not in names:
                    raise ValueError(f"lifecycle rule names unknown tier {t!r}; tiers are {names}")
        return self


__all__ = [
    "ArchiveConfig",
    "DicomWebConfig",
    "IndexConfig",
    "LifecycleRule",
    "TierConfig",
    "TlsConfig",
]
