"""The data directory's lock: held shared by every serving archive process, taken
exclusively by maintenance that must not run beside one (``archive check
--remove-orphans``). ``flock(2)``: the kernel drops it when the holder dies."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "archive.lock"


class ArchiveRunning(Exception):
    """The lock is held: an archive is serving from this data directory."""


def _open(data_dir: Path) -> int:
    return os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)


def hold_shared(data_dir: Path) -> int:
    """Take the lock shared for as long as the returned descriptor stays open."""
    fd = _open(data_dir)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


@contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the lock exclusively, or raise :class:`ArchiveRunning` at once."""
    fd = _open(data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ArchiveRunning(str(data_dir)) from exc
            raise
        yield
    finally:
        os.close(fd)
