"""The running router process: listener in front, durable queue in the middle, senders
behind; start-up recovery, housekeeping, metrics and shutdown.

What the router does with each association and instance is
:class:`~pacsinfra.pacs.router.service.RouterService`'s; this module owns the
sockets, threads and the process's life.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pacsinfra.pacs.compat import (
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    receive_datasets_to,
    set_send_chunked_datasets,
)
from pacsinfra.pacs.dicom import ssl_context
from pacsinfra.pacs.fastscp.fastpath import FastPath, ListenerLimits
from pacsinfra.pacs.fastscp.server import start_server
from pacsinfra.pacs.refusals import RefusalLog
from pacsinfra.pacs.router.audit import AuditLog
from pacsinfra.pacs.router.completion import Completer
from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.pacs.router.forwarder import Forwarder
from pacsinfra.pacs.router.queue import Queue
from pacsinfra.pacs.router.service import RouterService
from pacsinfra.pacs.router.sink import RouterSink
from pacsinfra.pacs.router.spool import Spool

LOG = logging.getLogger("pacsinfra.router")


def open_queue(cfg: RouterConfig) -> Queue:
    """The queue the config names (SQLite file under the spool by default)."""
    q = cfg.queue
    if q.backend == "postgresql":
        from psycopg.conninfo import make_conninfo

        if not q.host:
            raise ValueError("queue.host is not set (a blueprint fills it from queue.service)")
        password = q.password.resolve() if q.password is not None else None
        return Queue.postgresql(make_conninfo(host=q.host, port=q.port, dbname=q.database,
                                              user=q.user, password=password))
    path = Path(q.path) if q.path else Path(cfg.spool_dir) / "queue.sqlite"
    return Queue.sqlite(path)


class RouterServer:
    """One router process."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.cfg = cfg
        self.spool = Spool(Path(cfg.spool_dir))
        self.queue = open_queue(cfg)
        self.audit = AuditLog(cfg.audit, cfg.ae_title) if cfg.audit.file else None
        self.forwarder = Forwarder(cfg, self.queue, self.spool, self.audit)
        self.service = RouterService(cfg, self.spool, self.queue, self.audit,
                                     self.forwarder.wake)
        self.service.on_commitment_report = self.forwarder.commitments.report
        audit = self.audit
        self.completer = Completer(cfg, self.queue, None if audit is None else (
            lambda study, why, n: audit.dropped(cfg.ae_title, study, f"{n} instance(s)", why)))
        self._server: Any = None
        self._sink: RouterSink | None = None
        self._metrics: Any = None
        self._refusals = RefusalLog(self.audit.refused if self.audit is not None else None)
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover, start senders, housekeeping, metrics and the listener (non-blocking)."""
        cfg = self.cfg
        recovered = self.queue.recover(older_than=self._lease())
        if recovered:
            LOG.warning("%d rows were in flight when the router stopped: re-sending", recovered)
        for dest in sorted(set(self.queue.stats()) - set(self.forwarder.targets)):
            LOG.warning("queue rows for %r, which this config no longer names: they wait "
                        "(see `router queue list --dest %s`)", dest, dest)
        swept = self.spool.sweep(self.queue.referenced_spools(), min_age=self._lease())
        if swept:
            LOG.info("removed %d unreferenced spool files", swept)
        # Spool files go out chunked from disk, never decoded, when the syntax matches.
        set_send_chunked_datasets(True)
        # C-STOREs served by pynetdicom stream to files in the spool's .incoming (swept at
        # start-up), never whole in memory.
        receive_datasets_to(self.spool.incoming)
        self.forwarder.start()
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        if cfg.metrics_port:
            from pacsinfra.pacs.router import metrics

            service = self.service
            self._metrics = metrics.serve(cfg.metrics_bind, cfg.metrics_port, lambda: metrics.render(
                self.queue, self.forwarder, service.received, service.dropped))
        ae = self.service.make_ae()
        # Storage-only associations over plain TCP are streamed into the spool by
        # fastscp; TLS and anything unusual are served by pynetdicom.
        self._sink = RouterSink(self.service)
        fast = FastPath(self._sink, self.service.streaming_contexts(),
                        limits=ListenerLimits.from_config(cfg.limits),
                        implementation=(IMPLEMENTATION_UID, IMPLEMENTATION_VERSION),
                        allowed=cfg.allowed_calling_aes, refused=self._refusals)
        self._server = start_server(
            ae, (cfg.bind, cfg.port), fast, ssl_context=ssl_context(cfg.tls, server=True),
            evt_handlers=self.service.handlers())
        LOG.info("router %s listening on %s:%d", cfg.ae_title, cfg.bind, cfg.port)

    def stop(self) -> None:
        """Stop listening, stop senders, close the queue."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._sink is not None:
            self._sink.close()
        self._refusals.flush()
        self.forwarder.stop()
        if self._metrics is not None:
            self._metrics.shutdown()
        self.queue.close()
        if self.audit is not None:
            self.audit.close()

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT."""
        def _stop(signum: int, frame: Any) -> None:
            self._stopped.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        finally:
            self.stop()

    def _lease(self) -> float:
        """0 for a queue of our own; the lease for a queue shared with other routers."""
        q = self.cfg.queue
        return q.inflight_lease_seconds if q.backend == "postgresql" else 0.0

    def _housekeeping(self) -> None:
        last_clean = 0.0
        while not self._stopped.wait(0.5):
            try:
                if self.completer.step():
                    self.forwarder.wake()
                if self.forwarder.commitments.expire():  # overdue storage commitment reports
                    self.forwarder.wake()
                if time.monotonic() - last_clean > 5:
                    last_clean = time.monotonic()
                    for rel in self.queue.expired_spools():
                        self.spool.remove(rel)
                    if self._lease() and self.queue.recover(older_than=self._lease()):
                        self.forwarder.wake()
            except Exception:  # noqa: BLE001 - housekeeping retries on its next round
                LOG.exception("housekeeping failed")
