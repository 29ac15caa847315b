"""The archive's configuration: what ``services.archive`` in a blueprint renders to.

``pacsinfra archive serve --config archive.yaml`` reads exactly this schema, and the
blueprint embeds the same model, so a site validates its archive settings before
any machine exists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pacsinfra.pacs.config_common import AETitle, DicomListener, Peer, Port, Strict, TlsConfig
from pacsinfra.pacs.web_config import (
    BearerToken,
    HttpLimits,
    OidcConfig,
    Scope,
    auth_error,
    is_loopback,
)
from pacsinfra.secrets import SecretRef


class IndexConfig(Strict):
    """The index database: SQLite (WAL) on the archive itself, or a shared PostgreSQL.

    In a blueprint, ``service`` names the database service that hosts PostgreSQL;
    in a rendered config, ``host``/``port``/``database``/``user`` say where it is.

    Attributes:
        backend: ``sqlite`` (WAL, a file in ``data_dir`` by default) or ``postgresql`` (also
            shared by several archive nodes).
        path: SQLite file (default ``<data_dir>/index.sqlite``).
        service: Blueprint: the database service that holds the index.
        host: PostgreSQL server (in a blueprint, ``service`` fills it in).
        port: PostgreSQL port.
        database: PostgreSQL database.
        user: PostgreSQL role.
        password: Password of ``user``.
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
    """A named storage area: a filesystem path, or an S3-compatible bucket.

    Attributes:
        name: The tier's name, used by ``default_tier`` and lifecycle rules.
        kind: ``filesystem`` (a directory) or ``s3`` (a bucket; filled by lifecycle rules
            only).
        path: Filesystem tier: its directory (default: the tier's name); a relative path is
            under ``data_dir``. S3 tier: the key prefix.
        storage_class: Blueprint: the storage class whose disk holds the tier.
        endpoint: S3 tier: the store's URL.
        bucket: S3 tier: the bucket.
        access_key: S3 access key (default: the usual AWS environment).
        secret_key: S3 secret key (default: the usual AWS environment).
        max_usage_percent: Stores are refused (0xA700) when they would fill the tier's file
            system above this.
        drop_cache_after_store: Drop a newly stored file from the page cache once it is
            durable, so write-once images do not crowd out the index. ``false`` keeps new files
            cached for immediate reads.
    """

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
    """Move studies from one tier to another by age or by last access.

    Attributes:
        from_tier: Tier the studies leave.
        to_tier: Tier the studies go to.
        older_than_days: Studies first received more than this many days ago.
        not_accessed_days: Studies not retrieved (C-MOVE, C-GET, WADO-RS) for this many days.
            With both conditions, a study must meet both.
    """

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


#: what requests without credentials may do when the server takes them (loopback with no
#: authentication configured, or allow_anonymous): no deletion
ANONYMOUS_SCOPES: tuple[Scope, ...] = ("read", "write", "metrics")


class DicomWebConfig(Strict):
    """QIDO-RS / WADO-RS / STOW-RS / DELETE (and /metrics) over HTTP for viewers.

    Loopback by default (the viewer's proxy reaches it there). Callers authenticate
    with a bearer token: one of ``tokens`` (each with its scopes), the single legacy
    ``token`` (every scope), or a JWT from ``oidc``. Without any of them, requests
    from loopback get ``anonymous_scopes``; off loopback, authentication is required
    unless ``allow_anonymous`` (labs only; logged loudly at start).

    Attributes:
        enabled: Serve DICOMweb.
        bind: Listen address of the HTTP server (127.0.0.1: only this machine).
        port: HTTP port.
        token: One bearer token with every scope (kept from older configs; prefer tokens).
        tokens: Bearer tokens, each with the scopes it grants (read, write, delete,
            metrics, admin).
        oidc: Accept JWT access tokens signed by an OpenID Connect provider.
        allow_anonymous: Serve requests without credentials off loopback (labs only).
        anonymous_scopes: What requests without credentials may do when they are served.
        tls: HTTPS settings.
        limits: Request size, time and connection limits.
        metadata_cache_mb: Memory for WADO-RS metadata already encoded (per instance,
            dropped least recently used first; 0: encode every time).
        warm_metadata: Encode each instance's WADO-RS metadata in the background right
            after it is stored, so the first viewer to open a new study is answered from
            memory (with workers > 1: instances received by the first worker); off: on the
            first ask.
    """

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: Port = 8042
    token: SecretRef | None = None  # one token with every scope (kept from older configs)
    tokens: list[BearerToken] = Field(default_factory=list)
    oidc: OidcConfig | None = None
    allow_anonymous: bool = False  # requests without a token get anonymous_scopes
    anonymous_scopes: list[Scope] = Field(default_factory=lambda: list(ANONYMOUS_SCOPES))
    tls: TlsConfig = Field(default_factory=TlsConfig)
    limits: HttpLimits = Field(default_factory=HttpLimits)
    metadata_cache_mb: int = Field(64, ge=0, le=65536)
    warm_metadata: bool = True

    @property
    def authenticated(self) -> bool:
        """Whether any way to authenticate is configured."""
        return bool(self.token is not None or self.tokens or self.oidc is not None)

    @property
    def anonymous(self) -> bool:
        """Whether requests without credentials are served (with anonymous_scopes)."""
        return self.allow_anonymous or (not self.authenticated and is_loopback(self.bind))

    @model_validator(mode="after")
    def _secure_bind(self) -> DicomWebConfig:
        if self.enabled and not is_loopback(self.bind) and not self.authenticated \
                and not self.allow_anonymous:
            raise ValueError(auth_error("dicomweb", self.bind))
        if self.tls.enabled and not (self.tls.cert_file and self.tls.key_file):
            raise ValueError("dicomweb.tls needs cert_file and key_file")
        return self


class StagingConfig(Strict):
    """Memory for instances in flight on the streaming path (per worker process).

    An instance up to ``buffer_bytes`` is collected in a buffer of its association and
    written to disk in one ``O_DIRECT`` write once complete; a larger one spills to its
    file as it arrives. At most ``total_bytes`` of such buffers exist at once: an
    association that finds none free streams its instance to disk instead. 0 turns
    staging off (every instance streams to disk).
    """

    buffer_bytes: int = Field(32 << 20, ge=0, le=1 << 30)
    total_bytes: int = Field(256 << 20, ge=0, le=64 << 30)

    @model_validator(mode="after")
    def _room_for_one(self) -> StagingConfig:
        if self.buffer_bytes and self.total_bytes < self.buffer_bytes:
            raise ValueError(
                f"staging.total_bytes ({self.total_bytes}) is smaller than one buffer "
                f"(staging.buffer_bytes {self.buffer_bytes}): no instance could be staged; "
                "set total_bytes to at least buffer_bytes, or 0 to turn staging off")
        return self


class ScrubConfig(Strict):
    """Background re-verification of every stored file against its indexed checksum.

    A pass reads the instances in SOP Instance UID order at ``rate_mb_s``, flags any whose
    file no longer matches (as a retrieve would: ``archive check`` lists them, the audit
    trail and the metrics record them), then rests ``pause_hours`` before the next. Its
    place is kept in ``<data_dir>/scrub.json``, so a restart goes on where it stopped.
    Only the first worker process scrubs.

    Attributes:
        rate_mb_s: Megabytes (10^6 bytes) read per second; 0 turns scrubbing off.
        pause_hours: Rest between the end of a pass and the start of the next.
        start_after_s: Seconds after start-up before the first file is read.
    """

    rate_mb_s: float = Field(10.0, ge=0, le=100_000)
    pause_hours: float = Field(24.0, ge=0, le=24 * 365)
    start_after_s: float = Field(600.0, ge=0, le=86_400)


class CommitmentConfig(Strict):
    """Storage Commitment Push Model as an SCP (PS3.4 J).

    A request is recorded durably before its N-ACTION is answered; each referenced
    instance is then checked (indexed, and its file re-read and hashed against the
    index) and the result sent as an N-EVENT-REPORT on the requester's association if it
    is still open, otherwise on a new association to the requester's AE title in
    ``peers``. A report the requester does not take is sent again, waiting ``retry_s``
    and doubling up to ten minutes, until ``expire_hours`` after the request.

    Attributes:
        enabled: Accept Storage Commitment requests at all.
        retry_s: First wait before a report that could not be delivered is sent again.
        expire_hours: A report still undelivered this long after its request is dropped
            (logged as an error).
    """

    enabled: bool = True
    retry_s: float = Field(10.0, gt=0, le=3600)
    expire_hours: float = Field(24.0, gt=0, le=24 * 30)


class WorklistConfig(Strict):
    """Modality Worklist (C-FIND) and UPS-RS workitems kept in the archive index.

    An open item (SCHEDULED or IN PROGRESS) becomes COMPLETED once its study, found by
    the item's Study Instance UID or else its Accession Number, has instances and has
    received none for ``complete_after_s``. Only the first worker process checks.

    Attributes:
        enabled: Offer the Modality Worklist SOP class at association and complete items
            automatically; UPS-RS serves workitems either way.
        complete_after_s: Quiet seconds after the study's last instance before its item
            is completed; 0 turns automatic completion off.
    """

    enabled: bool = True
    complete_after_s: float = Field(600.0, ge=0, le=7 * 86_400)


class ClusterConfig(Strict):
    """Several archive nodes as one archive, on one PostgreSQL index and one store.

    Every node of a cluster has the same ``index`` (PostgreSQL) and the same tiers (a
    filesystem tier on a path every node mounts); each keeps its own ``data_dir``. Each
    node accepts stores and answers queries and retrieves for every instance of the
    cluster. Jobs that must run once (lifecycle, retention, scrub, worklist completion)
    run on the node that holds the leader lease; when it stops renewing it, another
    takes over.

    Attributes:
        enabled: This archive is a node of a cluster.
        node: This node's name, unique in the cluster (default: host name and DICOM port).
        heartbeat_seconds: How often a node records that it is alive and renews its lease.
        lease_seconds: How long the leader lease lasts unrenewed: a dead leader's jobs
            move to another node after at most this long.
        upload_to: An ``s3`` tier: the default tier is then each node's own receive cache
            (any local path); an instance is acknowledged once it is durable there and
            indexed, and uploaded to this tier in the background, after which every node
            reads it from there.
    """

    enabled: bool = False
    node: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    heartbeat_seconds: float = Field(5.0, gt=0, le=300)
    lease_seconds: float = Field(30.0, gt=0, le=3600)
    upload_to: str | None = None

    @model_validator(mode="after")
    def _lease_outlives_heartbeat(self) -> ClusterConfig:
        if self.enabled and self.lease_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(f"cluster.lease_seconds ({self.lease_seconds:g}) must be at least "
                             f"twice heartbeat_seconds ({self.heartbeat_seconds:g}), or the "
                             "leader loses its lease between two renewals")
        return self


class ArchiveConfig(DicomListener):
    """Everything the archive needs to run; also ``services.archive`` in a blueprint.

    Attributes:
        data_dir: The archive's directory: the SQLite index, and the filesystem tiers with
            relative paths.
        index: Where the index of patients, studies, series and instances lives.
        tiers: Storage areas; new instances go to ``default_tier``.
        default_tier: The tier new instances are stored in (a filesystem tier); unset: the
            first tier.
        lifecycle: Rules moving studies between tiers.
        retention_days: Delete studies whose newest instance was received more than this many
            days ago; unset: keep forever.
        peers: C-MOVE destinations, by AE title.
        duplicates: What a store of an already stored SOP Instance UID does: ``reject``
            (0x0111), ``keep_first`` (Success, nothing written), ``overwrite`` (the new object
            replaces the old), ``keep_if_identical`` (Success when the bytes are the same, else
            0x0111).
        accept_unknown_sop_classes: Accept SOP classes that are not known storage classes
            (otherwise 0x0122).
        workers: Archive processes sharing the DICOM port; each connection goes to the first
            idle one. Association limits apply per process.
        dicomweb: QIDO-RS / WADO-RS / STOW-RS for viewers.
        scrub: Background re-verification of every stored file.
        commitment: Storage Commitment (push model) as an SCP.
        cluster: This archive as one node of several on one index and one store.
        worklist: Modality Worklist and UPS-RS workitems, and their automatic completion.
    """

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
    staging: StagingConfig = Field(default_factory=lambda: StagingConfig())
    dicomweb: DicomWebConfig = Field(default_factory=DicomWebConfig)
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)
    commitment: CommitmentConfig = Field(default_factory=CommitmentConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    worklist: WorklistConfig = Field(default_factory=WorklistConfig)

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
        if self.cluster.enabled:
            if self.index.backend != "postgresql":
                raise ValueError("a cluster's nodes share one index: cluster.enabled needs "
                                 "index.backend: postgresql")
            cache = default.name if self.cluster.upload_to else None
            if self.cluster.upload_to is not None:
                target = next((t for t in self.tiers if t.name == self.cluster.upload_to), None)
                if target is None or target.kind != "s3":
                    raise ValueError(f"cluster.upload_to {self.cluster.upload_to!r} must name an "
                                     f"s3 tier; tiers are {names}")
            for tier in self.tiers:
                if tier.name == cache:
                    continue  # each node's own receive cache
                if tier.kind == "filesystem" and not (tier.path and tier.path.startswith("/")):
                    raise ValueError(
                        f"tier {tier.name!r}: a cluster's nodes share their files: give it an "
                        "absolute path on a file system every node mounts (tiers[].path)")
        return self


__all__ = [
    "ArchiveConfig",
    "ClusterConfig",
    "CommitmentConfig",
    "DicomWebConfig",
    "IndexConfig",
    "LifecycleRule",
    "ScrubConfig",
    "StagingConfig",
    "TierConfig",
    "TlsConfig",
]
