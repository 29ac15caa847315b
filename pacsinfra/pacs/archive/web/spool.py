"""One STOW-RS part on its way to the archive: spooled to disk, then stored in place.

A part's bytes go to a temp file in the default tier's ``.incoming`` directory (same
filesystem as the tier, swept at start-up) as they arrive, in memory only a megabyte
at a time. The file is written in the archive's layout whatever the client sent (a
zeroed 128-byte preamble, ``DICM``, file meta, data set: a client's preamble may hold
anything and is not kept), so storing it is an fsync, a rename and an index commit
through :meth:`ArchiveService.store_checked`, the checks and duplicate policy C-STORE
uses, and never a second copy. Only the data set's header is mapped and parsed.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.filereader import _read_file_meta_info

from pacsinfra.fsutil import PRIVATE_FILE, fsync_dir
from pacsinfra.pacs.archive.attrs import DatasetUnreadable, read_indexed
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.archive.storage import TMP_MARK, Tier, ensure_dir, forget_dirs
from pacsinfra.pacs.dicom import Status

LOG = logging.getLogger("pacsinfra.archive.dicomweb")
FLUSH_BYTES = 1 << 20  # what a part holds in memory before it is written out
ROOM_CHECK_BYTES = 64 << 20  # how often (in bytes written) the tier's fill level is checked
MAX_META_BYTES = 64 * 1024  # a file meta group larger than this is not understood
_PREAMBLE = b"\0" * 128 + b"DICM"
_FAILURES = {  # PS3.18 Table I.2-2 and the codes C-STORE shares
    Status.CANNOT_UNDERSTAND, Status.SOP_CLASS_NOT_SUPPORTED, Status.DATASET_MISMATCH,
    Status.OUT_OF_RESOURCES, Status.DUPLICATE_SOP_INSTANCE, Status.PROCESSING_FAILURE}
#: Failure Reason for an instance of another study than the one the request names
#: (implementation-specific Cxxx code, as dcm4chee uses)
NOT_IN_STUDY = 0xC409


@dataclass(frozen=True)
class PartResult:
    """What became of one part: a DICOM status (0 = stored) and the UIDs it named."""

    status: int
    sop_class: str = ""
    sop_uid: str = ""
    reason: str = ""


class SpooledPart:
    """A part's temp file; ``add`` buffers, ``flush`` (blocking) writes what is buffered."""

    def __init__(self, directory: Path) -> None:
        ensure_dir(directory)
        self.path = directory / f"stow{TMP_MARK}{uuid.uuid4().hex}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        self._head: bytearray | None = bytearray()  # until the client's layout is known
        self._pending = bytearray()
        self.size = 0
        self._checked_at = 0
        self.failure: PartResult | None = None  # set once the part cannot be stored

    def add(self, data: bytes) -> bool:
        """Take ``data``; True when enough is buffered that :meth:`flush` should run."""
        if self.failure is not None:
            return False  # the rest of a refused part is read and dropped
        if self._head is not None:
            self._head += data
            if len(self._head) >= len(_PREAMBLE):
                self._decide()
            return len(self._pending) >= FLUSH_BYTES
        self._pending += data
        return len(self._pending) >= FLUSH_BYTES

    def _decide(self) -> None:
        """Rewrite the start into the archive's layout (the three forms STOW-RS clients
        send: with a preamble, without one, or without even the DICM prefix)."""
        head, self._head = bytes(self._head or b""), None
        if head[128:132] == b"DICM":
            body = head[132:]
        elif head[:4] == b"DICM":
            body = head[4:]
        elif head[:2] == b"\x02\x00":
            body = head
        else:
            self.failure = PartResult(int(Status.CANNOT_UNDERSTAND),
                                      reason="not a DICOM Part 10 payload (no file meta)")
            return
        self._pending += _PREAMBLE + body

    def flush(self, tier: Tier | None = None) -> None:
        """Write what is buffered (blocking: run it off the event loop). A write error
        or a full tier fails the part (out of resources); nothing is raised."""
        if self.failure is not None or not self._pending:
            return
        data, self._pending = memoryview(bytes(self._pending)), bytearray()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:  # ENOSPC, EIO
            LOG.error("STOW-RS spool write failed: %s", exc)
            self.failure = PartResult(int(Status.OUT_OF_RESOURCES), reason="write failed")
            return
        self.size = os.lseek(self._fd, 0, os.SEEK_CUR)
        if tier is not None and self.size - self._checked_at >= ROOM_CHECK_BYTES:
            self._checked_at = self.size
            if not tier.has_room(0):
                self.failure = PartResult(int(Status.OUT_OF_RESOURCES), reason="storage full")

    def finish(self, tier: Tier | None = None) -> None:
        """The part is complete: settle its layout and write the rest (blocking)."""
        if self._head is not None and self.failure is None:
            self._decide()
        self.flush(tier)

    def discard(self) -> None:
        """Close and remove the temp file (if it was not stored)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)

    # -- storing -----------------------------------------------------------------------------
    def store(self, service: ArchiveService, *, study: str | None, calling: str) -> PartResult:
        """Check and store the complete part (blocking); the temp file is consumed or left
        for :meth:`discard`."""
        if self.failure is not None:
            return self.failure
        # the file meta is parsed from a bounded copy: a lying element length in it
        # must not make the reader pull the whole part into memory
        head = os.pread(self._fd, MAX_META_BYTES, len(_PREAMBLE))
        try:
            fp = BytesIO(head)
            meta_ds = _read_file_meta_info(fp)
            offset = len(_PREAMBLE) + fp.tell()
            ts = str(meta_ds.get("TransferSyntaxUID", "") or "")
            sop_class = str(meta_ds.get("MediaStorageSOPClassUID", "") or "")
            sop_uid = str(meta_ds.get("MediaStorageSOPInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - whatever pydicom makes of junk: not understood
            return PartResult(int(Status.CANNOT_UNDERSTAND), reason="unreadable file meta")
        if not (ts and sop_class and sop_uid):
            return PartResult(int(Status.CANNOT_UNDERSTAND), sop_class, sop_uid,
                              "the file meta lacks a transfer syntax or SOP UIDs")
        if offset >= self.size or offset >= len(_PREAMBLE) + len(head):
            return PartResult(int(Status.CANNOT_UNDERSTAND), sop_class, sop_uid,
                              "no data set after the file meta")
        meta = os.pread(self._fd, offset - len(_PREAMBLE), len(_PREAMBLE))
        sha = hashlib.sha256()
        at = offset
        while at < self.size:  # read back in pieces: the data set is never in memory whole
            block = os.pread(self._fd, min(FLUSH_BYTES, self.size - at), at)
            if not block:
                break
            sha.update(block)
            at += len(block)
        with mmap.mmap(self._fd, self.size, access=mmap.ACCESS_READ) as mm:
            raw = memoryview(mm)[offset:]
            try:
                return self._checked(service, study, calling, raw, ts, sop_class, sop_uid,
                                     meta, sha.hexdigest(), offset)
            finally:
                raw.release()

    def _checked(self, service: ArchiveService, study: str | None, calling: str,
                 raw: memoryview, ts: str, sop_class: str, sop_uid: str, meta: bytes,
                 sha: str, offset: int) -> PartResult:
        if study is not None:
            try:
                found = read_indexed(raw, ts)["study_uid"]
            except (DatasetUnreadable, ValueError, KeyError):
                return PartResult(int(Status.CANNOT_UNDERSTAND), sop_class, sop_uid,
                                  "unreadable data set")
            if found != study:
                return PartResult(NOT_IN_STUDY, sop_class, sop_uid,
                                  "the instance belongs to another study than the request's")

        def persist(path: Path) -> None:
            os.fsync(self._fd)
            ensure_dir(path.parent)
            try:
                os.replace(self.path, path)
            except FileNotFoundError:  # its directory was removed behind our back
                forget_dirs()
                ensure_dir(path.parent)
                os.replace(self.path, path)
            fsync_dir(path.parent)

        try:
            status = service.store_checked(
                sop_class=sop_class, sop_uid=sop_uid, transfer_syntax=ts, raw=raw,
                calling=calling, sha=sha, meta_tag=hashlib.sha256(meta).hexdigest()[:4],
                ds_offset=offset, size=self.size, room_needed=0, persist=persist)
        except Exception:  # noqa: BLE001 - a bug must not become Success nor a 500
            LOG.exception("STOW-RS %s: store failed", sop_uid)
            status = Status.PROCESSING_FAILURE
        if status == Status.SUCCESS:
            if service.default_tier.drop_cache:
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return PartResult(0, sop_class, sop_uid)
        code = int(status) if status in _FAILURES else int(Status.PROCESSING_FAILURE)
        return PartResult(code, sop_class, sop_uid, Status(code).name.lower().replace("_", " "))
