"""An S3-compatible bucket as an archive tier (``kind: s3``): the object tier.

Studies arrive on a filesystem tier (the default tier must be one: a C-STORE is
acknowledged only once its file and directory are fsynced) and the lifecycle moves
them here. An object is written with its SHA-256 as the S3 checksum, so the store
refuses a corrupted upload; the lifecycle then reads it back and compares the
dataset checksum with the index before it repoints the row and deletes the source
(:mod:`pacsinfra.pacs.archive.lifecycle`). Retrieval (C-MOVE, C-GET, WADO-RS)
reads objects through :meth:`ObjectTier.read` / :meth:`ObjectTier.source`.

Keys are ``<prefix>/<rel_path>``, the same relative paths as on a filesystem tier.
Credentials: the tier's ``access_key`` / ``secret_key`` secret references, else the
usual AWS environment; they are resolved here and never logged. boto3 is an optional
extra (``pip install 'pacsinfra[s3]'``).
"""

from __future__ import annotations

import base64
import hashlib
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pacsinfra import s3util
from pacsinfra.pacs.archive.config import ArchiveConfig, TierConfig
from pacsinfra.pacs.archive.storage import Tier


class ObjectTier(Tier):
    """A tier whose files are objects in a bucket (no local paths)."""

    def __init__(self, cfg: TierConfig, client: Any) -> None:
        # root: never a directory; path() refuses, so a caller that still assumes a
        # filesystem fails loudly instead of writing next to the data directory
        super().__init__(cfg.name, Path(f"/nonexistent/s3-tier-{cfg.name}"),
                         cfg.max_usage_percent, drop_cache=False)
        self.bucket = str(cfg.bucket)
        self.prefix = (cfg.path or "").strip("/")
        self.client = client

    @classmethod
    def connect(cls, cfg: TierConfig) -> ObjectTier:
        """The tier, with a boto3 client for its endpoint and credentials."""
        keys: dict[str, str | None] = {}
        if cfg.access_key is not None and cfg.secret_key is not None:
            keys = {"access_key": cfg.access_key.resolve(), "secret_key": cfg.secret_key.resolve()}
        client = s3util.client(cfg.endpoint, what=f"tier {cfg.name} (kind s3)", **keys)
        return cls(cfg, client)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def has_room(self, nbytes: int) -> bool:
        """An object store has no usage threshold here."""
        return True

    def path(self, rel: str) -> Path:
        raise TypeError(f"tier {self.name} is an s3 tier: it has no local paths")

    def read(self, rel: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read())
        except Exception as exc:  # noqa: BLE001 - NoSuchKey is a missing file, like ENOENT
            if s3util.error_code(exc) in s3util.MISSING:
                raise FileNotFoundError(f"s3://{self.bucket}/{self.key(rel)}") from exc
            raise OSError(f"tier {self.name}: reading {self.key(rel)} failed: "
                          f"{type(exc).__name__}") from exc

    def source(self, rel: str) -> str | BinaryIO:
        return BytesIO(self.read(rel))

    def store(self, rel: str, data: bytes) -> None:
        """Upload ``data``; the store verifies its SHA-256 before it keeps the object."""
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data,
                                   ChecksumSHA256=checksum)
        except Exception as exc:  # noqa: BLE001 - botocore errors become OSError (not stored)
            raise OSError(f"tier {self.name}: upload of {self.key(rel)} failed: "
                          f"{type(exc).__name__}: {exc}") from exc

    def remove(self, rel: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))
        except Exception as exc:  # noqa: BLE001
            raise OSError(f"tier {self.name}: deleting {self.key(rel)} failed: "
                          f"{type(exc).__name__}") from exc


def archive_tiers(cfg: ArchiveConfig, data_dir: Path) -> dict[str, Tier]:
    """The tiers of an archive as it names them in its index: as :func:`open_tiers`,
    except that a cluster node's receive cache (the default tier, with
    ``cluster.upload_to``) is named ``<tier>@<node>``: its files are on this node only."""
    tiers = open_tiers(cfg.tiers, data_dir)
    cache = receive_cache(cfg)
    if cache is not None:
        base = cfg.default_tier or cfg.tiers[0].name
        tier = tiers.pop(base)
        tier.name = cache
        tiers[cache] = tier
    return tiers


def receive_cache(cfg: ArchiveConfig) -> str | None:
    """The index's name of this node's receive cache, or None (not an uploading node)."""
    if not (cfg.cluster.enabled and cfg.cluster.upload_to):
        return None
    from pacsinfra.pacs.archive.cluster import node_name

    return f"{cfg.default_tier or cfg.tiers[0].name}@{node_name(cfg)}"


def open_tiers(configs: list[TierConfig], data_dir: Path) -> dict[str, Tier]:
    """Every configured tier by name: filesystem tiers under ``data_dir``, s3 tiers
    connected (the one place that knows both kinds)."""
    return {t.name: ObjectTier.connect(t) if t.kind == "s3" else Tier.from_config(t, data_dir)
            for t in configs}
