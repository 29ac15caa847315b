"""The forwarding process: senders, health checks and metrics, apart from the listener.

Receiving (parse, fsync, commit) and sending (pynetdicom, one thread per association)
both burn CPU under the GIL; in two processes they use two cores. The processes share
only the queue (SQLite WAL handles two processes; PostgreSQL anyway) and the spool
directory. The listener process tells the forwarder "rows queued for these targets"
over a pipe; when the listener dies (even by SIGKILL) the pipe reaches EOF and the
forwarder stops at once, so a restarted router never races a forwarder of the old one.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from pacsinfra.pacs.router.config import RouterConfig

LOG = logging.getLogger("pacsinfra.router")


class ForwarderProcess:
    """Handle on the forwarding process, used by the listener process."""

    def __init__(self, cfg: RouterConfig, log_level: int = logging.INFO) -> None:
        self.cfg = cfg
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._recv, self._send = self._ctx.Pipe(duplex=False)
        self.received: Synchronized[int] = self._ctx.Value("q", 0)  # type: ignore[assignment]
        self.dropped: Synchronized[int] = self._ctx.Value("q", 0)  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._log_level = log_level
        self.proc: Any = None

    def start(self) -> None:
        """Start the forwarding process."""
        self.proc = self._ctx.Process(
            target=_main, name="pacsinfra-router-forwarder", daemon=True,
            args=(self.cfg.model_dump_json(by_alias=True), self._recv, self.received,
                  self.dropped, self._log_level))
        self.proc.start()
        self._recv.close()  # only the child reads; its EOF then means "listener gone"

    def wake(self, names: set[str] | None = None) -> None:
        """Rows were queued for ``names`` (None: re-check every target)."""
        data = b"" if names is None else "\0".join(sorted(names)).encode()
        with self._lock:
            try:
                self._send.send_bytes(data)
            except (BrokenPipeError, OSError):
                LOG.error("the forwarding process is gone; rows wait in the queue")

    def count(self, name: str) -> None:
        """Count a received or dropped instance (metrics live in the forwarding process)."""
        value = self.received if name == "received" else self.dropped
        with value.get_lock():
            value.value += 1

    def stop(self, timeout: float = 20) -> None:
        """Close the pipe (the child finishes its batches and exits); wait for it."""
        with self._lock:
            self._send.close()
        if self.proc is not None:
            self.proc.join(timeout)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(5)


def _main(cfg_json: str, conn: Any, received: Any, dropped: Any, log_level: int) -> None:
    """Entry point of the forwarding process."""
    from pynetdicom import _config as pynetdicom_config

    from pacsinfra.pacs.router import metrics
    from pacsinfra.pacs.router.audit import AuditLog
    from pacsinfra.pacs.router.forwarder import Forwarder
    from pacsinfra.pacs.router.queue import open_queue
    from pacsinfra.pacs.router.spool import Spool

    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    cfg = RouterConfig.model_validate_json(cfg_json)
    # Spool files go out chunked from disk, never decoded, when the syntax matches.
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    queue = open_queue(cfg)
    audit = AuditLog(cfg.audit, cfg.ae_title) if cfg.audit.file else None
    fwd = Forwarder(cfg, queue, Spool(Path(cfg.spool_dir)), audit)
    fwd.start()
    httpd = None
    if cfg.metrics_port:
        httpd = metrics.serve(cfg.metrics_bind, cfg.metrics_port, lambda: metrics.render(
            queue, fwd, received.value, dropped.value))
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                break  # the listener process is gone
            fwd.wake(set(data.decode().split("\0")) if data else None)
    finally:
        fwd.stop()
        if httpd is not None:
            httpd.shutdown()
        queue.close()
        if audit is not None:
            audit.close()
