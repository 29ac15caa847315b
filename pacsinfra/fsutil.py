"""Durable file-system writes shared by everything that must survive a crash.

The rule everywhere (archive files, router spool, state, marks, configs, backups):
write a temp file, fsync it, rename it into place, then fsync the directory so the
rename itself is on disk.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TextIO

#: The umask of services that hold patient data: files 0640, directories 0750 at most.
PRIVATE_UMASK = 0o027
PRIVATE_FILE = 0o640
PRIVATE_DIR = 0o750


def private_umask() -> int:
    """Set the process umask to :data:`PRIVATE_UMASK` (nothing the service creates is
    readable by others, whatever the caller's umask); returns the previous one."""
    return os.umask(PRIVATE_UMASK)


def restrict(path: Path, mode: int) -> bool:
    """Take away the permission bits of ``path`` that ``mode`` does not grant (files and
    directories made before the service set its umask, or by another tool); False when
    they stay (not ours to change, or gone)."""
    try:
        current = path.stat().st_mode & 0o7777
        if current & ~mode:
            os.chmod(path, current & mode)
    except (FileNotFoundError, PermissionError):
        return False
    return True


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0750 directories; an existing one loses
    the bits 0750 does not grant."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    restrict(path, PRIVATE_DIR)


def private_file(path: Path) -> None:
    """Make sure ``path`` exists with at most 0640 before another library opens it
    (SQLite gives its -wal and -shm files the mode of the database file)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        restrict(path, PRIVATE_FILE)


def open_private_append(path: str | Path) -> TextIO:
    """Open a log file for appending, created 0640 (an existing one loses other bits)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, os.fstat(fd).st_mode & PRIVATE_FILE)
    except OSError:
        pass  # not ours to change (a shared log file): its owner decides
    return os.fdopen(fd, "a", encoding="utf-8")


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, directory fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
