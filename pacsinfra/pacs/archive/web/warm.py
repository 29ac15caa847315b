"""Metadata encoded as instances arrive, so the first viewer to open a study waits on
nothing but the network.

A radiologist usually opens a study minutes after the modality sent it. Encoding its
WADO-RS metadata on that first ask costs a file parse per instance (a few hundred ms
for a CT series); done in the background right after each store, the ask is answered
from :class:`~pacsinfra.pacs.archive.web.metacache.MetadataCache`. Best effort: the
queue is bounded (a burst beyond it is encoded on its first ask, as without warming),
and an instance deleted or replaced before its turn is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading

from pacsinfra.pacs.archive.index import StoredInstance
from pacsinfra.pacs.archive.web.context import WebContext
from pacsinfra.pacs.archive.web.wado import instance_json

LOG = logging.getLogger(__name__)

QUEUE_MAX = 20000  # instances waiting; each entry is a few hundred bytes


class MetadataWarmer:
    """One background thread encoding the metadata of newly stored instances."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self._queue: queue.Queue[StoredInstance | None] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def offer(self, inst: StoredInstance) -> None:
        """Queue ``inst`` (called on the storing thread: never blocks; beyond the bound the
        instance is left to its first ask)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(inst)

    def start(self) -> None:
        """Start encoding what is offered."""
        self._thread = threading.Thread(target=self._run, name="metadata-warmer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the instance in hand (what is still queued is left)."""
        if self._thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # wake it if it waits; a full queue wakes it anyway
            self._queue.put_nowait(None)
        self._thread.join(timeout=10)
        self._thread = None

    def _run(self) -> None:
        cache = self.ctx.metadata
        while True:
            inst = self._queue.get()
            if inst is None or self._stopping.is_set():
                return
            if cache.peek(inst.sop_uid, inst.sha256):
                continue  # a viewer asked first
            try:
                cache.put(inst.sop_uid, inst.sha256, instance_json(self.ctx, inst))
                self.ctx.service.counters.add("metadata_warmed")
            except Exception as exc:  # noqa: BLE001 - best effort: the first ask encodes it
                # deleted, replaced or moved to another tier before its turn
                LOG.debug("metadata of %s not encoded ahead: %s", inst.sop_uid, exc)


__all__ = ["MetadataWarmer"]
