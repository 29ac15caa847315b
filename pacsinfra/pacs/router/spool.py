"""The router's spool: received instances as DICOM files, written crash-safely.

A file is durable once its bytes and its directory entry are on disk: write to a
temporary name under ``.incoming`` (same filesystem), fsync, rename into place
(atomic), fsync the directory. A crash leaves either no file or the whole file,
plus possibly a ``.incoming`` leftover that no queue row names (swept at start).
"""

from __future__ import annotations

import os
import time
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path

from pacsinfra.fsutil import PRIVATE_DIR, fsync_dir, restrict

INCOMING = ".incoming"


def file_crc(path: Path) -> tuple[int, int]:
    """(CRC-32, size) of a file. CRC-32, not a cryptographic hash: it guards against
    disks and file systems, not attackers (who could rewrite the queue as well), at a
    third of SHA-256's cost (0.14 ms per 512 KiB here)."""
    crc, size = 0, 0
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


class Spool:
    """Files under ``root``, fanned out over 256 directories by a random name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING
        for d in [root, self.incoming, *(root / f"{i:02x}" for i in range(256))]:
            if not d.exists():
                d.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
                fsync_dir(d.parent)
        restrict(root, PRIVATE_DIR)

    def write(self, chunks: Iterable[bytes | bytearray | memoryview]) -> str:
        """Write ``chunks`` durably; return the file's name relative to the root."""
        name = uuid.uuid4().hex
        tmp = self.incoming / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return self.adopt(tmp, name)

    def new_path(self) -> tuple[Path, str]:
        """A fresh place for a file written in place (absolute path, spool name); the
        writer fsyncs the file and its directory before a queue row names it."""
        name = uuid.uuid4().hex
        rel = f"{name[:2]}/{name}.dcm"
        return self.root / rel, rel

    def adopt(self, tmp: Path, name: str | None = None) -> str:
        """Move a complete, fsynced file from ``.incoming`` into the spool, durably;
        return its spool name (``name``: the random part, drawn when not given)."""
        name = name or uuid.uuid4().hex
        rel = f"{name[:2]}/{name}.dcm"
        final = self.root / rel
        try:
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        return rel

    def path(self, rel: str) -> Path:
        """Absolute path of a spooled file."""
        return self.root / rel

    def drop_cache(self, rel: str) -> None:
        """Evict a spooled file's (clean) pages from the page cache once it has been sent.

        The file usually stays for ``keep_done_seconds`` but is rarely read again; the
        pages it frees are the ones the next incoming file is written into, and on
        virtual machines writing into recycled pages is several times cheaper than into
        fresh ones (measured here: 0.05-0.1 ms vs 1.2 ms per 512 KB). Best effort.
        """
        try:
            fd = os.open(self.root / rel, os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def remove(self, rel: str) -> None:
        """Delete a spooled file (already gone is fine)."""
        try:
            (self.root / rel).unlink()
        except FileNotFoundError:
            pass

    def sweep(self, referenced: set[str], min_age: float = 0.0) -> int:
        """Remove interrupted writes and files no queue row names; return how many.

        ``min_age`` (seconds): spare younger files — on a spool shared by several
        routers, another router may have written a file whose row it has not committed yet.
        """
        n = 0
        cutoff = time.time() - min_age
        for entry in os.scandir(self.incoming):
            if not min_age or entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                n += 1
        for i in range(256):
            d = self.root / f"{i:02x}"
            for entry in os.scandir(d):
                if f"{i:02x}/{entry.name}" in referenced:
                    continue
                if not min_age or entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    n += 1
        return n
