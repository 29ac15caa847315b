"""A cluster node's uploads: from its receive cache to the shared object store.

The queue is the index itself: the instances whose tier is this node's receive cache
(``<tier>@<node>``, see :func:`~pacsinfra.pacs.archive.objects.archive_tiers`), oldest
first. Each is copied to the ``cluster.upload_to`` tier, read back and checked against
its indexed SHA-256, then the index row is pointed at the object store, and only then is
the cached file removed — the lifecycle's move, one instance at a time, under the
instance's store lock. A crash anywhere leaves the row pointing at a copy that exists;
a node rebuilt with the same name and receive cache uploads what its predecessor had not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pacsinfra.pacs.archive.index import Index
from pacsinfra.pacs.archive.lifecycle import move_instance
from pacsinfra.pacs.archive.storage import Tier

LOG = logging.getLogger("pacsinfra.archive.upload")
BATCH = 64
_BACKOFF_MAX_S = 60.0


class Uploader:
    """Empties one node's receive cache into the object store (run :meth:`run` in a thread)."""

    def __init__(self, index: Index, cache: Tier, store: Tier,
                 lock_for: Callable[[str], threading.Lock], counters: Any = None) -> None:
        self.index = index
        self.cache = cache
        self.store = store
        self.lock_for = lock_for
        self.counters = counters
        self.wake = threading.Event()  # set after a store: upload soon

    def pending(self) -> int:
        """Instances of this node not uploaded yet."""
        return int(self.index.db.query("SELECT COUNT(*) FROM instance WHERE tier = ?",
                                       (self.cache.name,))[0][0])

    def step(self) -> tuple[int, int]:
        """Upload one batch; (uploaded, failed)."""
        batch = self.index.instances("tier = ? ORDER BY received_at LIMIT ?",
                                     (self.cache.name, BATCH))
        done = failed = 0
        for inst in batch:
            with self.lock_for(inst.sop_uid):
                current = self.index.get(inst.sop_uid)
                if current is None or (current.tier, current.rel_path) != (inst.tier,
                                                                          inst.rel_path):
                    continue  # deleted, replaced or rejected meanwhile
                try:
                    move_instance(self.index, current, self.cache, self.store)
                except (OSError, ValueError) as exc:
                    LOG.warning("upload of %s to %s failed: %s", inst.sop_uid, self.store.name,
                                exc)
                    failed += 1
                    self._count("upload_failures")
                    break  # the store is away or refusing: back off, keep the order
                except Exception as exc:  # noqa: BLE001 - S3 client errors: same as above
                    LOG.warning("upload of %s to %s failed: %s", inst.sop_uid, self.store.name,
                                exc)
                    failed += 1
                    self._count("upload_failures")
                    break
            done += 1
            self._count("uploaded")
        return done, failed

    def run(self, stop: threading.Event, poll: float = 1.0) -> None:
        """Upload until ``stop`` is set; back off (up to a minute) while uploads fail."""
        backoff = 0.0
        while not stop.is_set():
            try:
                done, failed = self.step()
            except Exception:  # noqa: BLE001 - the index is away for a moment
                LOG.exception("upload pass failed")
                done, failed = 0, 1
            if failed:
                backoff = min(_BACKOFF_MAX_S, max(1.0, backoff * 2))
                stop.wait(backoff)
                continue
            backoff = 0.0
            if not done:
                self.wake.wait(poll)
                self.wake.clear()

    def _count(self, name: str) -> None:
        if self.counters is not None:
            self.counters.add(name)


__all__ = ["Uploader"]
