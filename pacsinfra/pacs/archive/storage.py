"""Durable file storage on filesystem tiers.

A file is durable when its bytes and its name are on disk: write to a temporary
name in the final directory, fsync the file, rename it into place (atomic on
POSIX), then fsync the directory so the rename itself survives a crash. Newly
created directories are fsynced into their parents the same way. A crash at any
point leaves either the old file, the new file, or a ``*.tmp-*`` leftover that no
index row points at (swept at startup).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pacsinfra.fsutil import PRIVATE_DIR, fsync_dir
from pacsinfra.pacs.archive.config import TierConfig

TMP_MARK = ".tmp-"


@dataclass
class Tier:
    """A filesystem tier: where files go and how full it may get."""

    name: str
    root: Path
    max_usage_percent: float
    drop_cache: bool = True  # evict new files' pages once durable (TierConfig)

    @classmethod
    def from_config(cls, cfg: TierConfig, data_dir: Path) -> Tier:
        """Resolve a tier's path (relative paths live under ``data_dir``)."""
        path = Path(cfg.path) if cfg.path else Path(cfg.name)
        if not path.is_absolute():
            path = data_dir / path
        return cls(cfg.name, path, cfg.max_usage_percent, cfg.drop_cache_after_store)

    def has_room(self, nbytes: int) -> bool:
        """False when writing ``nbytes`` would take the filesystem past the threshold."""
        usage = shutil.disk_usage(self.root)
        return (usage.used + nbytes) * 100.0 / usage.total <= self.max_usage_percent

    def path(self, rel: str) -> Path:
        """The absolute path of a file stored under this tier."""
        return self.root / rel

    # What lifecycle, retrieval and deletion use, so a tier need not be a filesystem
    # (pacsinfra.pacs.archive.objects.ObjectTier implements the same for S3).
    def read(self, rel: str) -> bytes:
        """A stored file's bytes."""
        return self.path(rel).read_bytes()

    def source(self, rel: str) -> str | BinaryIO:
        """Something ``dcmread`` reads a stored file from (here: its path, read lazily)."""
        return str(self.path(rel))

    def store(self, rel: str, data: bytes) -> None:
        """Store ``data`` durably under ``rel`` (temp name, fsync, rename, dir fsync)."""
        write_durable(self.path(rel), [data], tmp_dir=self.root / ".incoming")

    def remove(self, rel: str) -> None:
        """Delete a stored file durably (already gone is fine)."""
        remove_durable(self.path(rel))


# Directories whose entry in their parent is known durable in this process: most
# stores go into a study's existing series directory, which then costs no syscall.
_durable_dirs: set[Path] = set()
_dirs_lock = threading.Lock()


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents; on return, every entry from ``path`` up is
    durable in its parent. A directory another thread or process just created, or one
    left by a crash, gets its parent fsynced here once too: existing is not durable."""
    if path in _durable_dirs:
        return
    with _dirs_lock:  # one creator at a time: a directory is cached only once durable
        chain: list[Path] = []
        p = path
        while p not in _durable_dirs and p != p.parent:
            chain.append(p)
            p = p.parent
        for d in reversed(chain):
            created = True
            try:
                d.mkdir(mode=PRIVATE_DIR)
            except FileExistsError:
                created = False
            try:
                fsync_dir(d.parent)
            except PermissionError:
                if created:
                    raise
                # an ancestor we may only traverse (mode --x): it predates us, nothing to do
            _durable_dirs.add(d)


def forget_dirs() -> None:
    """Drop what :func:`ensure_dir` knows (a directory was removed behind its back)."""
    with _dirs_lock:
        _durable_dirs.clear()


def write_durable(path: Path, chunks: Iterable[bytes | bytearray | memoryview],
                  tmp_dir: Path | None = None) -> int:
    """Write ``chunks`` to ``path`` crash-safely (see module docstring); return the size.

    ``tmp_dir`` (same filesystem) holds the temporary file so leftovers are found
    without walking the whole tier; default: beside ``path``.
    """
    ensure_dir(path.parent)
    if tmp_dir is not None:
        ensure_dir(tmp_dir)
    tmp = (tmp_dir or path.parent) / f"{path.name}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileNotFoundError:  # a directory was removed behind ensure_dir's back
        forget_dirs()
        ensure_dir(path.parent)
        ensure_dir(tmp.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                size += n
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        try:
            os.replace(tmp, path)
        except FileNotFoundError:  # the target directory was removed behind our back
            forget_dirs()
            ensure_dir(path.parent)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


def remove_durable(path: Path) -> None:
    """Delete a file and make the deletion durable (missing files are fine)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def dataset_sha256(path: Path, ds_offset: int) -> str:
    """sha256 of a stored file's dataset bytes (everything after the file meta)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(ds_offset)
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sweep_temp_files(root: Path, min_age: float = 0.0) -> int:
    """Remove ``*.tmp-*`` leftovers of interrupted writes in directory ``root``; return how
    many. ``min_age``: spare younger ones (a directory other processes write into too)."""
    n = 0
    if not root.exists():
        return 0
    cutoff = time.time() - min_age
    for entry in os.scandir(root):
        if TMP_MARK in entry.name and entry.is_file():
            if min_age and entry.stat().st_mtime > cutoff:
                continue
            os.unlink(entry.path)
            n += 1
    return n
