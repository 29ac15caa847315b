"""A consistent backup of a running pacsinfra archive (SQLite or PostgreSQL index,
filesystem tiers).

Order (see docs/dr.md for the consistency argument):

1. the index is snapshotted into the backup's own SQLite file: a SQLite index with
   sqlite3's online backup API in one read transaction (WAL-safe: the archive keeps
   writing; the snapshot is one committed state), a PostgreSQL index by reading its
   tables inside one serializable read-only deferrable transaction;
2. every instance row of the *snapshot* is copied (hard-linked when possible: the
   archive never rewrites a stored file in place, a new object gets a new file name)
   into ``tiers/<tier>/<rel_path>`` and verified against the row's size and sha256;
3. ``manifest.jsonl`` and ``backup.json`` are written and fsynced;
4. the temp directory is renamed to its final name, so a half-written backup never
   looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsinfra.errors import PacsinfraError, UsageError
from pacsinfra.fsutil import PRIVATE_DIR, PRIVATE_FILE, fsync_dir, private_file
from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.archive.storage import Tier, dataset_sha256

FORMAT_VERSION = 1
INDEX_NAME = "index.sqlite"
MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "backup.json"


class BackupError(PacsinfraError):
    """A backup could not be completed (nothing was left looking complete)."""


@dataclass
class BackupSummary:
    """What ``backup.json`` records."""

    path: str
    started_at: float
    finished_at: float
    source_ae: str
    source_data_dir: str
    studies: int
    instances: int
    bytes: int
    linked: int
    copied: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **self.__dict__}


def fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (deepest first), so every new entry is durable."""
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        fsync_dir(Path(dirpath))


def copy_fsync(src: Path, dst: Path) -> None:
    """Copy bytes and fsync the copy (the rename of the whole backup comes later)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def write_fsync(path: Path, text: str) -> None:
    """Write a small text file and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def sqlite_index_path(cfg: ArchiveConfig) -> Path:
    """Where the archive keeps its SQLite index."""
    data = Path(cfg.data_dir)
    path = Path(cfg.index.path) if cfg.index.path else data / INDEX_NAME
    return path if path.is_absolute() else data / path


#: index tables copied from PostgreSQL into the backup's SQLite snapshot (schema_version
#: is created by the migrations themselves and compared, not copied)
PG_TABLES = ("patient", "study", "series", "instance", "migration_failure", "pending_unlink")


def snapshot_pg_index(cfg: ArchiveConfig, dst: Path) -> None:
    """Copy a PostgreSQL index into a new SQLite file ``dst`` from one snapshot.

    The backup format stays one self-contained SQLite index whatever the source: the
    rows are read inside a single ``SERIALIZABLE READ ONLY DEFERRABLE`` transaction
    (a snapshot that waits for no writer and cannot see a half-committed state), and
    the SQLite file gets the same schema from the same migrations, so ``restore`` and
    ``dr rebuild`` need not know where the index came from.
    """
    from pacsinfra.pacs.archive.config import IndexConfig
    from pacsinfra.pacs.archive.db import MIGRATIONS, open_database

    source = open_database(cfg.index, Path(cfg.data_dir))  # migrated: same schema version
    target = open_database(IndexConfig(backend="sqlite", path=str(dst)), dst.parent)  # 0640
    try:
        _copy_pg_tables(source, target, MIGRATIONS[-1][0])
    except PacsinfraError:
        raise
    except Exception as exc:  # noqa: BLE001 - psycopg/sqlite errors: say what, no traceback
        raise BackupError(f"cannot snapshot the PostgreSQL index at {cfg.index.host}:"
                          f"{cfg.index.port}/{cfg.index.database}: {type(exc).__name__}: "
                          f"{exc}") from exc
    finally:
        source.close()
        target.close()
    with dst.open("rb") as f:
        os.fsync(f.fileno())


def _copy_pg_tables(source: Any, target: Any, want_version: int) -> None:
    import psycopg

    with source.connection() as pg, target.connection() as lite:
        # The snapshot: psycopg opens the transaction on the first statement with these.
        pg.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        pg.read_only = True
        pg.deferrable = True
        cur = pg.cursor()
        try:
            cur.execute("SELECT MAX(version) FROM schema_version")
            (version,) = cur.fetchone()
            if version != want_version:
                raise BackupError(f"index schema version {version} differs from this "
                                  f"pacsinfra's ({want_version}): back up with the "
                                  "pacsinfra version that runs the archive")
            lite.execute("BEGIN")
            for table in PG_TABLES:
                cur.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
                cols = [d[0] for d in cur.description or ()]
                insert = (f"INSERT INTO {table} ({', '.join(cols)}) "  # noqa: S608
                          f"VALUES ({', '.join('?' * len(cols))})")
                while rows := cur.fetchmany(5000):
                    lite.executemany(insert, rows)
            lite.execute("COMMIT")
        finally:
            cur.close()
            pg.rollback()
        lite.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file


def snapshot_index(src: Path, dst: Path) -> None:
    """Copy the live index to ``dst`` in one step of the online backup API (one snapshot)."""
    if not src.exists():
        raise UsageError(f"no archive index at {src}")
    source = sqlite3.connect(str(src), timeout=60)
    try:
        private_file(dst)
        target = sqlite3.connect(str(dst))
        try:
            # pages=-1: everything in one step, i.e. inside one read transaction of the
            # source, so the copy is a single committed state even while the archive writes.
            source.backup(target, pages=-1)
            target.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file
        finally:
            target.close()
    finally:
        source.close()
    with dst.open("rb") as f:
        os.fsync(f.fileno())


def _instances(index: Path) -> list[tuple[str, str, str, str, int, str, int]]:
    c = sqlite3.connect(str(index))
    try:
        rows = c.execute("SELECT sop_uid, study_uid, tier, rel_path, size, sha256, ds_offset "
                         "FROM instance ORDER BY study_uid, sop_uid").fetchall()
    finally:
        c.close()
    return [(str(a), str(b), str(t), str(p), int(s), str(h), int(o))
            for a, b, t, p, s, h, o in rows]


def _live_location(cfg: ArchiveConfig, sop_uid: str, sha256: str) -> tuple[str, str] | None:
    """Where the live archive holds the same bytes now (a lifecycle move since the snapshot)."""
    if cfg.index.backend != "sqlite":
        from pacsinfra.pacs.archive.db import open_database

        db = open_database(cfg.index, Path(cfg.data_dir))
        try:
            rows = db.query("SELECT tier, rel_path FROM instance WHERE sop_uid = ? AND sha256 = ?",
                            (sop_uid, sha256))
        finally:
            db.close()
        return (str(rows[0][0]), str(rows[0][1])) if rows else None
    c = sqlite3.connect(str(sqlite_index_path(cfg)), timeout=60)
    try:
        row = c.execute("SELECT tier, rel_path FROM instance WHERE sop_uid = ? AND sha256 = ?",
                        (sop_uid, sha256)).fetchone()
    finally:
        c.close()
    return (str(row[0]), str(row[1])) if row else None


def _place(src: Path, dst: Path, allow_link: bool) -> bool:
    """Hard-link (True) or copy with fsync (False)."""
    if allow_link:
        try:
            os.link(src, dst)
            return True
        except OSError:  # another filesystem (EXDEV), or links not allowed: copy instead
            pass
    copy_fsync(src, dst)
    return False


def run_backup(cfg: ArchiveConfig, to: Path, *, allow_link: bool = True,
               record_as: str | None = None) -> BackupSummary:
    """Back up the archive ``cfg`` describes into the new directory ``to``
    (``record_as``: the location ``backup.json`` names, when ``to`` is only staging)."""
    live_index = (sqlite_index_path(cfg) if cfg.index.backend == "sqlite"
                  else f"postgresql://{cfg.index.host}:{cfg.index.port}/{cfg.index.database}")
    non_fs = [t.name for t in cfg.tiers if t.kind != "filesystem"]
    if non_fs:
        raise UsageError(f"tiers {non_fs} are not filesystem tiers; backup supports filesystem only")
    if to.exists():
        raise UsageError(f"{to} already exists; give a new directory for each backup")
    parent = to.parent
    if not parent.is_dir():
        raise UsageError(f"{parent} is not a directory")
    data = Path(cfg.data_dir)
    tiers = {t.name: Tier.from_config(t, data) for t in cfg.tiers}
    started = time.time()
    tmp = parent / f".{to.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(mode=0o700)  # the backup holds patient data: its owner only
    except OSError as exc:
        raise UsageError(f"cannot create a backup in {parent}: {exc.strerror}") from exc
    try:
        if isinstance(live_index, Path):
            snapshot_index(live_index, tmp / INDEX_NAME)
        else:
            snapshot_pg_index(cfg, tmp / INDEX_NAME)
        rows = _instances(tmp / INDEX_NAME)
        linked = copied = total = 0
        made: set[Path] = set()
        lines: list[str] = []
        for sop, study, tier, rel, size, sha, offset in rows:
            if tier not in tiers:
                raise BackupError(f"instance {sop}: tier {tier!r} is not in the archive config")
            src = tiers[tier].path(rel)
            if not src.exists():
                moved = _live_location(cfg, sop, sha)
                if moved is None or moved[0] not in tiers:
                    raise BackupError(f"instance {sop}: {src} was deleted while backing up; "
                                      "run the backup again")
                src = tiers[moved[0]].path(moved[1])
            out_rel = f"tiers/{tier}/{rel}"
            dst = tmp / out_rel
            if dst.parent not in made:
                dst.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
                made.add(dst.parent)
            if _place(src, dst, allow_link):
                linked += 1
            else:
                copied += 1
            got_size = dst.stat().st_size
            got_sha = dataset_sha256(dst, offset)
            if got_size != size or got_sha != sha:
                raise BackupError(f"instance {sop}: {src} does not match its index row "
                                  f"(size {got_size} vs {size}, sha256 {got_sha[:12]} vs {sha[:12]})")
            total += size
            lines.append(json.dumps({"sop_uid": sop, "study_uid": study, "path": out_rel,
                                     "tier": tier, "rel_path": rel, "size": size,
                                     "sha256": sha, "ds_offset": offset}))
        write_fsync(tmp / MANIFEST_NAME, "".join(line + "\n" for line in lines))
        # Every entry durable before the summary exists: backup.json marks completeness.
        fsync_tree(tmp)
        summary = BackupSummary(
            path=record_as or str(to), started_at=started, finished_at=time.time(),
            source_ae=f"{cfg.ae_title}@{socket.gethostname()}:{cfg.port}",
            source_data_dir=str(data), studies=len({r[1] for r in rows}),
            instances=len(rows), bytes=total, linked=linked, copied=copied)
        write_fsync(tmp / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2) + "\n")
        fsync_dir(tmp)
        os.rename(tmp, to)
        fsync_dir(parent)
    except sqlite3.Error as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(f"{live_index}: cannot snapshot the index: {exc}") from exc
    except PacsinfraError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(f"backup to {to} failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
