"""The router as a :class:`~pacsinfra.pacs.fastscp.association.StoreSink`.

The streaming SCP writes each data set straight into a temp file in the spool's
``.incoming`` (swept at start-up). When it is complete, the file is fsynced on a
helper thread while this one reads the attributes the rules need (pixel data
skipped); the rules decide; then the file itself becomes the spool file of every
unmodified delivery (a rename and a directory fsync, no second copy), morphed
variants are written from it, and the queue rows are committed, all by
:meth:`RouterServer.admit`, the same step C-STORE through pynetdicom takes.
Its pages stay cached: the forwarder reads the file again at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydicom import dcmread

from pacsinfra.pacs.dicom import Status
from pacsinfra.pacs.fastscp.association import StoreRequest
from pacsinfra.pacs.fastscp.incoming import IncomingFile, Sealer

if TYPE_CHECKING:
    from pacsinfra.pacs.router.server import RouterServer

LOG = logging.getLogger("pacsinfra.router")


class RouterSink:
    """Stream into the spool, then route, adopt the file and queue it."""

    def __init__(self, router: RouterServer, fsync_threads: int = 8) -> None:
        self.router = router
        self._sealer = Sealer(fsync_threads)

    def open(self, req: StoreRequest, meta: bytes) -> IncomingFile | int:
        """A temp file in the spool, or the refusal the command alone earns."""
        refusal = self.router.refusal(req.sop_class, req.sop_uid)
        if refusal is not None:
            return int(refusal)
        return IncomingFile(self.router.spool.incoming, meta)

    def finish(self, req: StoreRequest, incoming: IncomingFile) -> int:
        """fsync, route, adopt or copy, queue (or refuse); the temp file is gone after."""
        try:
            if incoming.error is not None:  # ENOSPC, EIO while streaming: not stored
                LOG.error("C-STORE %s: write failed: %s", req.sop_uid, incoming.error)
                return int(Status.OUT_OF_RESOURCES)
            return int(self._admit(req, incoming))
        finally:
            incoming.discard()  # after adoption there is nothing left to remove

    def _admit(self, req: StoreRequest, incoming: IncomingFile) -> Status:
        with self._sealer.sealing(incoming) as sealed:
            try:
                ds = dcmread(incoming.path, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - unparseable data set
                LOG.warning("C-STORE %s from %s: unreadable: %s", req.sop_uid, req.calling, exc)
                return Status.CANNOT_UNDERSTAND

            def keep_received() -> str:
                sealed()  # raises the write/fsync error (ENOSPC, EIO) if any
                return self.router.spool.adopt(incoming.path)

            return self.router.admit(req.sop_uid, req.calling, req.called, ds,
                                     keep_received=keep_received,
                                     read_received=incoming.path.read_bytes)

    def close(self) -> None:
        """Stop the fsync helpers (after the listener has stopped)."""
        self._sealer.close()
