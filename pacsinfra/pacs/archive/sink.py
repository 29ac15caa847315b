"""The archive as a :class:`~pacsinfra.pacs.fastscp.association.StoreSink`.

The streaming SCP writes each data set straight into a temp file under the
default tier's ``.incoming`` directory (same filesystem, swept at start-up), so
the durable write the archive owes before Success is an ``fsync`` of what is
already on its way to disk, a rename and a directory ``fsync``, not a second copy.
The checks, duplicate policy and index commit are :meth:`ArchiveService.store_checked`,
the same code C-STORE through pynetdicom and STOW-RS run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pacsinfra.fsutil import fsync_dir
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.archive.storage import TMP_MARK, ensure_dir
from pacsinfra.pacs.dicom import Status
from pacsinfra.pacs.fastscp.association import StoreRequest
from pacsinfra.pacs.fastscp.incoming import IncomingFile

LOG = logging.getLogger("pacsinfra.archive")


class ArchiveSink:
    """Stream into the default tier, then check, rename into place and index."""

    def __init__(self, service: ArchiveService) -> None:
        self.service = service

    def open(self, req: StoreRequest, meta: bytes) -> IncomingFile | int:
        """A temp file in the default tier, or a refusal when the tier is full."""
        tier = self.service.default_tier
        if not tier.has_room(0):
            LOG.error("tier %s above %s%% full: refusing %s", tier.name,
                      tier.max_usage_percent, req.sop_uid)
            self.service.counters.add("failed")
            return int(Status.OUT_OF_RESOURCES)
        return IncomingFile(tier.root / ".incoming", meta, tmp_mark=TMP_MARK)

    def finish(self, req: StoreRequest, incoming: IncomingFile) -> int:
        """fsync, rename, index (or refuse); the temp file is gone afterwards either way."""

        def persist(path: Path) -> None:
            incoming.seal()  # raises the write error (ENOSPC, EIO) if there was one
            ensure_dir(path.parent)
            os.replace(incoming.path, path)
            fsync_dir(path.parent)

        meta = incoming.meta
        try:
            if incoming.error is not None:  # ENOSPC, EIO while streaming: not stored
                LOG.error("C-STORE %s: write failed: %s", req.sop_uid, incoming.error)
                status = int(Status.OUT_OF_RESOURCES)
            else:
                with incoming.mapped() as raw:
                    status = self.service.store_checked(
                        sop_class=req.sop_class, sop_uid=req.sop_uid,
                        transfer_syntax=req.transfer_syntax, raw=raw, calling=req.calling,
                        sha=incoming.sha256(), meta_tag=hashlib.sha256(meta).hexdigest()[:4],
                        ds_offset=incoming.ds_offset, size=incoming.size, room_needed=0,
                        persist=persist)
        finally:
            incoming.discard()  # after a successful rename there is nothing left to remove
        if status != Status.SUCCESS:
            self.service.counters.add("failed")
        return int(status)
