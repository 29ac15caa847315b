"""The background scrub: every stored file re-verified against its indexed SHA-256.

Bit rot and files changed behind the archive's back are otherwise found only when
someone retrieves them, maybe years later. The scrub reads the index in SOP Instance
UID order, a batch at a time, and hashes each file (:meth:`ArchiveService.verify` with
``again``: a mismatch is flagged, logged, audited and counted exactly as a refused
retrieve is), no faster than the configured rate. Its place (the last UID done) is
written to ``scrub.json`` in the data directory every few seconds, so a restart
resumes the pass instead of starting over; at the end of a pass it rests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from pacsinfra.fsutil import write_atomic
from pacsinfra.pacs.archive.config import ScrubConfig
from pacsinfra.pacs.archive.service import ArchiveService, CorruptInstance

LOG = logging.getLogger("pacsinfra.archive.scrub")
BATCH = 256
SAVE_EVERY_S = 5.0


class Scrubber:
    """Runs passes over the archive until ``stopped`` is set (call :meth:`run` in a thread)."""

    def __init__(self, service: ArchiveService, cfg: ScrubConfig, place: Path,
                 stopped: threading.Event) -> None:
        self.service, self.cfg, self.place, self.stopped = service, cfg, place, stopped
        self.after = ""  # the last SOP Instance UID of this pass done
        self.pass_started = 0.0
        self._load()

    def _load(self) -> None:
        try:
            saved: dict[str, Any] = json.loads(self.place.read_text())
            self.after = str(saved.get("after", ""))
            self.pass_started = float(saved.get("pass_started", 0.0))
        except (OSError, ValueError, TypeError):
            pass  # no place yet (or unreadable): start a pass from the beginning

    def _save(self, **extra: Any) -> None:
        try:
            write_atomic(self.place, json.dumps({"after": self.after,
                                                 "pass_started": self.pass_started, **extra}))
        except OSError as exc:  # losing the place costs a re-read, nothing else
            LOG.warning("scrub: cannot save its place in %s: %s", self.place, exc)

    def run(self) -> None:
        """Wait ``start_after_s``, then scrub at ``rate_mb_s`` until stopped."""
        if self.stopped.wait(self.cfg.start_after_s):
            return
        while not self.stopped.is_set():
            if not self.pass_started:
                self.pass_started = time.time()
            if self._one_pass():
                return  # stopped
            counters = self.service.counters
            counters.add("scrub_passes")
            LOG.info("scrub: pass done (%d instances, %d changed files found since start)",
                     counters.scrub_instances, counters.scrub_found)
            self.after, self.pass_started = "", 0.0
            self._save(last_pass_ended=time.time())
            if self.stopped.wait(self.cfg.pause_hours * 3600):
                return

    def _one_pass(self) -> bool:
        """Verify every instance after ``self.after``; True when stopped before the end."""
        rate = self.cfg.rate_mb_s * 1_000_000
        started, done_bytes, saved = time.monotonic(), 0, time.monotonic()
        counters = self.service.counters
        while True:
            batch = self.service.index.instances("sop_uid > ? ORDER BY sop_uid LIMIT ?",
                                                 (self.after, BATCH))
            if not batch:
                return False
            for inst in batch:
                if self.stopped.is_set():
                    self._save()
                    return True
                try:
                    n = self.service.verify(inst, again=True)
                except CorruptInstance as exc:
                    counters.add("scrub_found")
                    LOG.error("scrub: %s", exc)
                    n = inst.size
                except OSError as exc:  # deleted or moved since the batch was read
                    LOG.debug("scrub: %s: %s", inst.sop_uid, exc)
                    n = 0
                counters.add("scrub_instances")
                counters.add("scrub_bytes", n)
                self.after = inst.sop_uid
                done_bytes += n
                # no faster than the rate, on average since the pass (re)started
                ahead = done_bytes / rate - (time.monotonic() - started)
                if ahead > 0 and self.stopped.wait(ahead):
                    self._save()
                    return True
                if time.monotonic() - saved > SAVE_EVERY_S:
                    self._save()
                    saved = time.monotonic()


__all__ = ["Scrubber"]
