"""Where a restore or a rebuild takes its backup from, and a local copy of it.

A source is a backup directory, a directory of backups, or an S3 location (one backup
or a prefix of them). ``dr rebuild`` takes it from ``--from`` or, without it, from the
blueprint's ``dr.backups``. S3 settings, most specific first:

- endpoint: ``--s3-endpoint`` on the command line, then the blueprint's
  ``dr.s3.endpoint``, then ``AWS_ENDPOINT_URL``;
- credentials: the blueprint's ``dr.s3.access_key``/``secret_key`` secret references
  (resolved here, when the store is contacted; never stored or printed), else the AWS
  environment.

An S3 backup is downloaded into a temp directory (removed afterwards) and used from
there like any backup on disk: every restore verifies every checksum again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsinfra.errors import UsageError


@dataclass(frozen=True)
class BackupSource:
    """A backup location and how to reach it (secret *references*, never values)."""

    location: str  # a path, or s3://bucket/prefix
    origin: str  # "--from" or "dr.backups": named in messages
    endpoint: str | None = None
    access_key: Any = None  # SecretRef | None
    secret_key: Any = None  # SecretRef | None

    @property
    def is_s3(self) -> bool:
        from pacsinfra.dr import s3

        return s3.parse(self.location) is not None

    def client(self) -> Any:
        """A boto3 client for an S3 source (credentials resolved now)."""
        from pacsinfra.dr import s3

        access = self.access_key.resolve() if self.access_key is not None else None
        secret = self.secret_key.resolve() if self.secret_key is not None else None
        return s3.client(self.endpoint, access_key=access, secret_key=secret)


def choose(cli_from: str | None, cli_endpoint: str | None, env_endpoint: str | None,
           dr: Any) -> BackupSource:
    """The source of a rebuild: ``--from`` (``cli_from``), else the blueprint's ``dr``
    section (``dr``: the model's ``DisasterRecovery`` or None)."""
    s3cfg = dr.s3 if dr is not None else None
    endpoint = cli_endpoint or (s3cfg.endpoint if s3cfg is not None else None) or env_endpoint
    keys: dict[str, Any] = {}
    if s3cfg is not None:
        keys = {"access_key": s3cfg.access_key, "secret_key": s3cfg.secret_key}
    if cli_from:
        return BackupSource(cli_from, "--from", endpoint, **keys)
    if dr is None:
        raise UsageError("no backup to rebuild from: give --from DIR|s3://BUCKET/PREFIX, or "
                         "name the site's backups in the blueprint (dr: {backups: ...})")
    location = str(dr.backups)
    if location.startswith("~/"):
        location = os.path.expanduser(location)
    return BackupSource(location, "dr.backups", endpoint, **keys)


@contextmanager
def local_copy(source: BackupSource, *, near: Path, newest: bool) -> Iterator[Path]:
    """A complete backup on this machine's disk for the ``with`` block: ``source``
    itself (``newest``: the newest complete backup in it), or a downloaded copy of an
    S3 one, placed in a temp directory under ``near`` and removed afterwards."""
    from pacsinfra.dr import s3
    from pacsinfra.dr.rebuild import latest_backup

    remote = s3.parse(source.location)
    if remote is None:
        path = Path(source.location)
        yield latest_backup(path, source.origin) if newest else path
        return
    client = source.client()
    if newest:
        remote = s3.latest(remote, client)
    with s3.Staged(remote, client, near) as local:
        yield local
