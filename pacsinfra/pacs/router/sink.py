"""The router as a :class:`~pacsinfra.pacs.fastscp.association.StoreSink`.

The streaming SCP writes each data set straight into its spool file: a fresh random
name in one of the spool's fan-out directories, so no rename is needed (a crash
leaves a file no queue row names, which the start-up sweep removes); the new
directory entry is fsynced on a helper thread while the data set streams in. When
it is complete, the attributes the rules need are read back through an mmap of the
page cache (pixel data skipped; plain values straight from the bytes); the rules
decide; then, if anything is to be forwarded as received, the file is fsynced and is
the spool file of every unmodified delivery, morphed variants are written from it,
and the queue rows are committed, all by :meth:`RouterService.admit`, the same step
C-STORE through pynetdicom takes. Its pages stay cached: the forwarder reads the
file again at once.
"""

from __future__ import annotations

import logging

from pacsinfra.pacs.archive.attrs import DatasetUnreadable, header_values, read_header
from pacsinfra.pacs.dicom import Status
from pacsinfra.pacs.fastscp.incoming import IncomingFile, Sealer
from pacsinfra.pacs.fastscp.sinks import StoreRequest
from pacsinfra.pacs.router.service import RouterService

LOG = logging.getLogger("pacsinfra.router")


class RouterSink:
    """Stream into the spool, then route and queue the file where it is."""

    def __init__(self, service: RouterService, fsync_threads: int = 8) -> None:
        self.service = service
        self._sealer = Sealer(fsync_threads)

    def open(self, req: StoreRequest, meta: bytes) -> IncomingFile | int:
        """The instance's spool file, or the refusal the command alone earns."""
        refusal = self.service.refusal(req.sop_class, req.sop_uid)
        if refusal is not None:
            return int(refusal)
        path, _ = self.service.spool.new_path()
        incoming = IncomingFile(self.service.spool.incoming, meta, final=path)
        # the new name is made durable while the data set streams in, off the
        # acknowledgement's critical path
        self._sealer.sync_parent(incoming)
        return incoming

    def finish(self, req: StoreRequest, incoming: IncomingFile) -> int:
        """fsync, route, queue (or refuse); unless queued, the file is gone after."""
        try:
            if incoming.error is not None:  # ENOSPC, EIO while streaming: not stored
                LOG.error("C-STORE %s: write failed: %s", req.sop_uid, incoming.error)
                return int(Status.OUT_OF_RESOURCES)
            return int(self._admit(req, incoming))
        finally:
            incoming.discard()  # closes; removes the file unless a queue row kept it

    def _admit(self, req: StoreRequest, incoming: IncomingFile) -> Status:
        try:
            with incoming.mapped() as raw:
                # the rules' tags from the bytes; pydicom only when they need it
                fields = header_values(raw, req.transfer_syntax, self.service.header_tags)
                ds = fields if fields is not None else read_header(raw, req.transfer_syntax)
        except DatasetUnreadable as exc:
            LOG.warning("C-STORE %s from %s: unreadable: %s", req.sop_uid, req.calling, exc)
            return Status.CANNOT_UNDERSTAND

        def keep_received() -> str:
            # fsync here, on this thread: the parse above is too short to be worth
            # overlapping with it through a hand-off to a helper thread
            incoming.seal()  # raises the write/fsync error (ENOSPC, EIO) if any
            incoming.parent_synced()  # and its directory entry's (started at open)
            incoming.keep()
            return f"{incoming.path.parent.name}/{incoming.path.name}"

        return self.service.admit(req.sop_uid, req.calling, req.called, ds,
                                 keep_received=keep_received,
                                 read_received=incoming.path.read_bytes)

    def close(self) -> None:
        """Stop the fsync helpers (after the listener has stopped)."""
        self._sealer.close()
