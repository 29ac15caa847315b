"""The temporary file an incoming instance is streamed into.

Fragments are written as they arrive; every ~1 MiB the kernel is asked to start
writing them to the device (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux), so
the data reaches the disk while the rest is still on the wire and the final
:meth:`IncomingFile.seal` (``fsync``) waits only for the tail. The dataset bytes
are hashed (sha256) on the way and never copied or kept: the sink reads the
attributes it needs through :meth:`IncomingFile.mapped` (an mmap of the page cache,
of which only element headers are touched). A write error (ENOSPC, EIO) is remembered, the rest of the data is discarded, and
the sink answers a failure: the sender keeps its copy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import mmap
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG = logging.getLogger("pacsinfra.fastscp")
PREAMBLE = b"\x00" * 128 + b"DICM"
_KICK_BYTES = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: fsync alone does the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SFR = _sync_file_range()


class IncomingFile:
    """``<directory>/<name><tmp_mark><random>``: preamble + file meta + the dataset."""

    def __init__(self, directory: Path, meta: bytes, *, tmp_mark: str = ".tmp-") -> None:
        self.path = directory / f"in{tmp_mark}{uuid.uuid4().hex}"
        self.meta = meta
        self.ds_offset = len(PREAMBLE) + len(meta)
        self.size = 0
        self.error: OSError | None = None
        self._sha = hashlib.sha256()
        self._kicked = 0
        # read-write: mapped() maps the file to read the attributes back
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        self._write(memoryview(PREAMBLE))
        self._write(memoryview(meta))

    def _write(self, view: memoryview) -> None:
        fd = self._fd
        if fd is None or self.error is not None:
            return
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
                self.size += n
        except OSError as exc:
            self.error = exc
            return
        if _SFR is not None and self.size - self._kicked >= _KICK_BYTES:
            _SFR(fd, self._kicked, self.size - self._kicked, _SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]
            self._kicked = self.size

    def write(self, data: memoryview) -> None:
        """Append a dataset fragment (``data`` is only read during the call)."""
        self._sha.update(data)
        self._write(data)

    @contextmanager
    def mapped(self) -> Iterator[memoryview]:
        """The dataset bytes written so far, as a read-only view of the file (mmap);
        valid inside the ``with`` block, even after :meth:`seal`."""
        fd = self._fd
        if fd is None:
            raise OSError("incoming file already closed")
        if self.size <= self.ds_offset:
            yield memoryview(b"")
            return
        with mmap.mmap(fd, self.size, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            dataset = view[self.ds_offset:]
            try:
                yield dataset
            finally:
                # every export must be released before the mmap closes
                dataset.release()
                view.release()

    def sha256(self) -> str:
        """sha256 (hex) of the dataset bytes, as the index stores it."""
        return self._sha.hexdigest()

    def seal(self) -> None:
        """fsync and close; raises the first write error, if there was one."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise OSError("incoming file already closed")
        try:
            if self.error is not None:
                raise self.error
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Close (if open) and delete the temporary file; never raises."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.path.unlink()
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                LOG.warning("could not remove %s: %s", self.path, exc)
