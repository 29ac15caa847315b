"""Backups in an S3-compatible object store (``s3://bucket/prefix``).

A backup is made as usual in a local temp directory (hard links where it can),
then uploaded with the same rule as on disk: **the completeness marker comes
last**. Every object but ``backup.json`` is uploaded (with its SHA-256 as the S3
checksum, so the store refuses a corrupted transfer), then ``backup.json``. A
prefix without ``backup.json`` is an interrupted upload and is never restored.
``--to`` must name an empty prefix; a restore downloads into a temp directory and
goes through the normal restore (every file's checksum verified again).

Credentials and the region come from the environment, as for every AWS tool
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles); never
from the command line. The endpoint (MinIO, Ceph RGW, ...) is ``--s3-endpoint`` or
``AWS_ENDPOINT_URL``. boto3 is an optional extra: ``pip install 'pacsinfra[s3]'``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsinfra import s3util
from pacsinfra.dr.backup import SUMMARY_NAME, BackupError
from pacsinfra.errors import UsageError

SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name))


def parse(url: str) -> S3Location | None:
    """``s3://bucket/some/prefix`` → location; None for anything that is not s3://."""
    if not url.startswith(SCHEME):
        return None
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    if not bucket:
        raise UsageError(f"{url}: an S3 location is s3://BUCKET/PREFIX")
    return S3Location(bucket, prefix.strip("/"))


def client(endpoint: str | None, *, access_key: str | None = None,
           secret_key: str | None = None) -> Any:
    """A boto3 S3 client (``endpoint``: an S3-compatible store's URL, else AWS or
    ``AWS_ENDPOINT_URL``; credentials: the resolved pair when given, else the AWS
    environment)."""
    return s3util.client(endpoint, access_key=access_key, secret_key=secret_key,
                         what="S3 backups")


def _keys(s3: Any, loc: S3Location, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
    kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": loc.key("") if loc.prefix else ""}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    yield from s3.get_paginator("list_objects_v2").paginate(**kwargs)


def _error(what: str, exc: Exception) -> BackupError:
    # botocore's messages name the operation and the code, never the credentials
    return BackupError(f"{what}: {type(exc).__name__}: {exc}")


def upload(local: Path, loc: S3Location, s3: Any) -> int:
    """Upload the complete backup directory ``local`` to the empty prefix ``loc``,
    ``backup.json`` last; returns the number of objects."""
    try:
        for page in _keys(s3, loc):
            if page.get("KeyCount", 0):
                raise UsageError(f"{loc} is not empty; give a new prefix for each backup")
        files = sorted(p for p in local.rglob("*") if p.is_file())
        summary = local / SUMMARY_NAME
        if summary not in files:
            raise BackupError(f"{local} is not a complete backup (no {SUMMARY_NAME})")
        for path in [*(f for f in files if f != summary), summary]:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256")
            with path.open("rb") as f:
                s3.put_object(Bucket=loc.bucket, Key=loc.key(path.relative_to(local).as_posix()),
                              Body=f, ChecksumSHA256=base64.b64encode(digest.digest()).decode())
    except (UsageError, BackupError):
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/network errors: one line, no traceback
        raise _error(f"upload to {loc} failed (the prefix has no {SUMMARY_NAME}: it will "
                     "never be restored; delete it or use another prefix)", exc) from exc
    return len(files)


def is_backup(loc: S3Location, s3: Any) -> dict[str, Any] | None:
    """The parsed ``backup.json`` at ``loc``, or None when there is none."""
    try:
        body = s3.get_object(Bucket=loc.bucket, Key=loc.key(SUMMARY_NAME))["Body"].read()
    except Exception as exc:  # noqa: BLE001 - NoSuchKey and friends
        if s3util.error_code(exc) in s3util.MISSING:
            return None
        raise _error(f"cannot read {loc}/{SUMMARY_NAME}", exc) from exc
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def latest(loc: S3Location, s3: Any) -> S3Location:
    """``loc`` if it holds a complete backup, else the newest complete backup directly
    under it (by ``finished_at``)."""
    if is_backup(loc, s3) is not None:
        return loc
    found: list[tuple[float, str]] = []
    try:
        for page in _keys(s3, loc, delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                child = S3Location(loc.bucket, str(cp["Prefix"]).strip("/"))
                summary = is_backup(child, s3)
                if summary is not None and "finished_at" in summary:
                    found.append((float(summary["finished_at"]), child.prefix))
    except BackupError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _error(f"cannot list {loc}", exc) from exc
    if not found:
        raise UsageError(f"{loc}: no complete backup (a prefix with {SUMMARY_NAME}) in it")
    return S3Location(loc.bucket, max(found)[1])


def download(loc: S3Location, s3: Any, into: Path) -> Path:
    """Download the complete backup at ``loc`` into the new directory ``into``."""
    if is_backup(loc, s3) is None:
        raise UsageError(f"{loc} is not a complete pacsinfra backup (no {SUMMARY_NAME})")
    base = loc.key("")
    try:
        for page in _keys(s3, loc):
            for obj in page.get("Contents", []):
                rel = str(obj["Key"])[len(base):]
                if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                    raise BackupError(f"{loc}: unsafe object name {obj['Key']!r}")
                target = into / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(loc.bucket, str(obj["Key"]), str(target))
    except (UsageError, BackupError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise _error(f"download of {loc} failed", exc) from exc
    return into


class Staged:
    """A local copy of an S3 backup for the duration of a ``with`` block."""

    def __init__(self, loc: S3Location, s3: Any, near: Path) -> None:
        self.loc, self.s3 = loc, s3
        near.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".s3-backup-", dir=near))

    def __enter__(self) -> Path:
        try:
            return download(self.loc, self.s3, self.dir / "backup")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
