"""The archive as a :class:`~pacsinfra.pacs.fastscp.association.StoreSink`.

The streaming SCP writes each data set straight into a temp file under the
default tier's ``.incoming`` directory (same filesystem, swept at start-up), so
the durable write the archive owes before Success is an ``fsync`` of what is
already on its way to disk, a rename and a directory ``fsync``, not a second copy.
The ``fsync`` runs on a helper thread while this one hashes and parses the data
set (both release the GIL, so on two cores they overlap); the rename waits for it.
The checks, duplicate policy and index commit are :meth:`ArchiveService.store_checked`,
the same code C-STORE through pynetdicom and STOW-RS run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

from pydicom.filereader import read_dataset
from pydicom.uid import ImplicitVRLittleEndian

from pacsinfra.fsutil import fsync_dir
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.archive.storage import TMP_MARK, ensure_dir, forget_dirs
from pacsinfra.pacs.compat import encode_dataset
from pacsinfra.pacs.dicom import Status
from pacsinfra.pacs.fastscp.incoming import IncomingFile, Sealer, StagingPool
from pacsinfra.pacs.fastscp.sinks import FindRequest, StoreRequest

LOG = logging.getLogger("pacsinfra.archive")


class ArchiveSink:
    """Stream into the default tier, then check, rename into place and index; and
    answer C-FIND on the same path."""

    def __init__(self, service: ArchiveService, fsync_threads: int = 8) -> None:
        self.service = service
        self._sealer = Sealer(fsync_threads)
        staging = service.config.staging
        self.staging = StagingPool(staging.buffer_bytes, staging.total_bytes)

    def open(self, req: StoreRequest, meta: bytes) -> IncomingFile | int:
        """A temp file in the default tier, or a refusal when the tier is full."""
        tier = self.service.default_tier
        if not tier.has_room(0):
            LOG.error("tier %s above %s%% full: refusing %s", tier.name,
                      tier.max_usage_percent, req.sop_uid)
            self.service.counters.add("failed")
            return int(Status.OUT_OF_RESOURCES)
        # Files kept out of the page cache (the default) are collected in a staging
        # buffer and written with O_DIRECT when complete; with none free (or staging
        # off) the instance streams to its file as it arrives.
        staging = self.staging.acquire() if tier.drop_cache else None
        return IncomingFile(tier.root / ".incoming", meta, tmp_mark=TMP_MARK, staging=staging,
                            release=self.staging.release)

    def finish(self, req: StoreRequest, incoming: IncomingFile) -> int:
        """fsync, rename, index (or refuse); the temp file is gone afterwards either way."""
        status = int(Status.OUT_OF_RESOURCES)
        try:
            if incoming.error is not None:  # ENOSPC, EIO while streaming: not stored
                LOG.error("C-STORE %s: write failed: %s", req.sop_uid, incoming.error)
            else:
                status = self._store(req, incoming)
        finally:
            # after a successful rename there is nothing left to remove, only pages to drop
            incoming.discard(drop_cache=status == Status.SUCCESS and
                             self.service.default_tier.drop_cache)
        if status != Status.SUCCESS:
            self.service.counters.add("failed")
        return status

    def _store(self, req: StoreRequest, incoming: IncomingFile) -> int:
        if incoming.staged:
            return self._store_staged(req, incoming)
        with incoming.mapped() as raw, self._sealer.sealing(incoming) as sealed:

            def persist(path: Path) -> None:
                sealed()  # raises the write/fsync error (ENOSPC, EIO) if any
                self._rename_into_place(incoming, path)

            return self._checked(req, incoming, raw, hashlib.sha256(raw).hexdigest(), persist)

    def _store_staged(self, req: StoreRequest, incoming: IncomingFile) -> int:
        """The whole instance is in memory, already hashed: its file is made at its final
        (content-addressed) name and written once; the new directory entry is fsynced
        while the data is. A file of that name already there (the same bytes from
        another worker, or left by a crash before it was indexed) is replaced the
        atomic way instead: temp file, fsync, rename."""
        sha = incoming.sha256()
        assert sha is not None
        with incoming.mapped() as raw:

            def persist(path: Path) -> None:
                ensure_dir(path.parent)
                if not incoming.create_at(path):
                    incoming.seal()
                    self._rename_into_place(incoming, path)
                    return
                self._sealer.sync_parent(incoming)
                try:
                    incoming.seal()
                finally:
                    incoming.parent_synced()
                incoming.keep()  # the stored file: discard() must not remove it

            return self._checked(req, incoming, raw, sha, persist)

    @staticmethod
    def _rename_into_place(incoming: IncomingFile, path: Path) -> None:
        ensure_dir(path.parent)
        try:
            os.replace(incoming.path, path)
        except FileNotFoundError:  # its directory was removed behind our back
            forget_dirs()
            ensure_dir(path.parent)
            os.replace(incoming.path, path)
        fsync_dir(path.parent)

    def _checked(self, req: StoreRequest, incoming: IncomingFile, raw: memoryview, sha: str,
                 persist: Callable[[Path], None]) -> int:
        return int(self.service.store_checked(
            sop_class=req.sop_class, sop_uid=req.sop_uid,
            transfer_syntax=req.transfer_syntax, raw=raw, calling=req.calling, sha=sha,
            meta_tag=hashlib.sha256(incoming.meta).hexdigest()[:4],
            ds_offset=incoming.ds_offset, size=incoming.size, room_needed=0,
            persist=persist))

    def find(self, req: FindRequest, identifier: bytes) -> Iterator[tuple[int, bytes | None]]:
        """C-FIND on a streaming association: the service's matches, encoded here (one
        small data set each, not pynetdicom's per-response machinery)."""
        implicit = req.transfer_syntax == ImplicitVRLittleEndian
        try:
            ident = read_dataset(BytesIO(identifier), implicit, True)
        except Exception as exc:  # noqa: BLE001 - an identifier pydicom cannot decode
            LOG.warning("C-FIND from %s: unreadable identifier: %s", req.calling, exc)
            yield int(Status.CANNOT_UNDERSTAND), None
            return
        for status, ds in self.service.find(ident, req.sop_class, req.calling):
            yield status, (encode_dataset(ds, implicit, True) if ds is not None else None)

    def close(self) -> None:
        """Stop the fsync helpers (after the listener has stopped)."""
        self._sealer.close()
