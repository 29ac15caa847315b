"""Start and stop the archive: index, tiers, DICOM listener (and DICOMweb when enabled)."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pacsinfra.fsutil import PRIVATE_DIR, restrict
from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.archive.datalock import hold_shared
from pacsinfra.pacs.archive.db import open_database
from pacsinfra.pacs.archive.index import Index
from pacsinfra.pacs.archive.objects import ObjectTier, archive_tiers
from pacsinfra.pacs.archive.service import ArchiveService
from pacsinfra.pacs.archive.sink import ArchiveSink
from pacsinfra.pacs.archive.storage import TMP_MARK, Tier, ensure_dir, sweep_temp_files
from pacsinfra.pacs.compat import (
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    receive_datasets_to,
    set_unrestricted_storage,
)
from pacsinfra.pacs.dicom import ssl_context
from pacsinfra.pacs.fastscp.fastpath import FastPath, ListenerLimits
from pacsinfra.pacs.fastscp.server import listening_socket, start_server
from pacsinfra.pacs.refusals import RefusalLog

LOG = logging.getLogger("pacsinfra.archive")
READY_TIMEOUT_S = 120.0  # workers' start-up (index, tiers) before the port opens anyway


# A cluster's nodes write temp files into the same shared .incoming: a starting node
# removes only those no write can still be busy with.
CLUSTER_SWEEP_AGE_S = 3600.0


def _sweep(tier: Tier, min_age: float = 0.0) -> None:
    swept = sweep_temp_files(tier.root / ".incoming", min_age)
    if swept:
        LOG.info("tier %s: removed %d interrupted writes", tier.name, swept)


class ArchiveServer:
    """One running archive (DICOM listener + index + tiers).

    ``worker`` is this process's number when ``config.workers > 1``: every worker
    accepts on the supervisor's listening socket (``listener``; the first idle worker
    takes each connection); only worker 0 runs DICOMweb and the lifecycle.
    ``handshake``: the supervisor's (ready queue, go event): once set up, the worker
    reports ready and waits for go, so no connection is accepted before every worker
    can take one.
    """

    def __init__(self, config: ArchiveConfig, worker: int | None = None, *,
                 listener: socket.socket | None = None,
                 handshake: tuple[Any, Any] | None = None) -> None:
        self.config = config
        self.worker = worker
        self.listener = listener
        self.handshake = handshake
        self.data_dir = Path(config.data_dir)
        self.tiers: dict[str, Tier] = {}
        self.index: Index | None = None
        self.service: ArchiveService | None = None
        self._server: Any = None
        self._sink: ArchiveSink | None = None
        self._web: Any = None
        self._refusals: RefusalLog | None = None
        self._stopped = threading.Event()
        self._scrub_stop = threading.Event()  # set first at stop: the scrub reads the index
        self._scrub: threading.Thread | None = None
        self._committer: threading.Thread | None = None
        self._worklist: Any = None  # the worklist's auto-completion (primary process)
        self.cluster: Any = None  # a cluster node's heartbeat and lease (primary process)
        self._cluster_thread: threading.Thread | None = None
        self._uploader: threading.Thread | None = None
        self._leading = False  # this node holds the leader lease
        self._lock_fd: int | None = None  # the data directory's lock, held shared

    def start(self) -> None:
        """Open the index, prepare tiers, start listening (non-blocking)."""
        cfg = self.config
        ensure_dir(self.data_dir)
        restrict(self.data_dir, PRIVATE_DIR)  # made by hand or an older version: 0750
        self._lock_fd = hold_shared(self.data_dir)
        for tier in archive_tiers(cfg, self.data_dir).values():
            self.tiers[tier.name] = tier
            if isinstance(tier, ObjectTier):
                continue
            ensure_dir(tier.root / ".incoming")
            restrict(tier.root, PRIVATE_DIR)
            if self.worker is None:
                # Workers never sweep: a sibling's in-flight temp files live there too;
                # the supervisor sweeps once before any worker starts.
                _sweep(tier, CLUSTER_SWEEP_AGE_S if cfg.cluster.enabled else 0.0)
        self.index = Index(open_database(cfg.index, self.data_dir))
        self.service = ArchiveService(cfg, self.index, self.tiers)
        if self.worker is None:
            # Finish deletions a crash interrupted (rows gone, files not yet unlinked);
            # with workers, the supervisor does it before any worker stores.
            from pacsinfra.pacs.archive.delete import sweep_pending

            swept = sweep_pending(self.index, self.tiers, self.service.lock_for)
            if swept:
                LOG.info("removed %d files of interrupted deletions", swept)
        if cfg.audit.file or cfg.audit.syslog:
            from pacsinfra.pacs.archive.audit import AuditLog

            self.service.audit = AuditLog(cfg.audit, cfg.ae_title)
        # Unknown SOP classes are negotiable only when the site asks for it.
        set_unrestricted_storage(cfg.accept_unknown_sop_classes)
        # C-STOREs served by pynetdicom stream to files beside the fast path's (swept at
        # start-up like them), never whole in memory.
        receive_datasets_to(self.service.default_tier.root / ".incoming", prefix=f"pn{TMP_MARK}")
        ae = self.service.make_ae()
        # Storage and C-FIND associations are served by fastscp (instances streamed to
        # disk, matches encoded directly); everything else (retrieves, TLS, role
        # selection, mixed proposals) by pynetdicom.
        if self.handshake is not None:
            ready, go = self.handshake
            ready.put(self.worker)
            while not go.wait(0.5):
                if self._stopped.is_set():
                    return  # stopped before serving: serve_forever's stop() closes up
        if cfg.commitment.enabled:
            self._start_committer()
        self._sink = ArchiveSink(self.service)
        audit = self.service.audit
        self._refusals = RefusalLog(audit.refused if audit is not None else None)
        fast = FastPath(self._sink, self.service.streaming_contexts(),
                        limits=ListenerLimits.from_config(cfg.limits),
                        implementation=(IMPLEMENTATION_UID, IMPLEMENTATION_VERSION),
                        allowed=cfg.allowed_calling_aes,
                        draining=lambda: bool(self.service and self.service.draining),
                        queries=self._sink, refused=self._refusals)
        self._server = start_server(
            ae, (cfg.bind, cfg.port), fast, evt_handlers=self.service.handlers(),
            ssl_context=ssl_context(cfg.tls, server=True), listener=self.listener)
        LOG.info("archive %s listening on %s:%d", cfg.ae_title, cfg.bind, cfg.port)
        primary = self.worker in (None, 0)
        if (cfg.lifecycle or cfg.retention_days) and primary:
            self._lifecycle = threading.Thread(target=self._lifecycle_loop, name="lifecycle",
                                               daemon=True)
            self._lifecycle.start()
        if cfg.scrub.rate_mb_s > 0 and primary and not cfg.cluster.enabled:
            self._start_scrub(self._scrub_stop)
        if cfg.cluster.enabled and primary:
            self._start_cluster()
            if cfg.cluster.upload_to:
                self._start_uploader()
        if cfg.worklist.enabled and cfg.worklist.complete_after_s and primary:
            from pacsinfra.pacs.archive.worklist import AutoCompleter

            self._worklist = AutoCompleter(
                self.service.worklist, cfg.worklist.complete_after_s,
                may_run=lambda: not cfg.cluster.enabled or self._leading)
            self._worklist.start()
        if cfg.dicomweb.enabled and primary:
            # imported here: starlette/uvicorn are needed only when DICOMweb is on
            from pacsinfra.pacs.archive.dicomweb import DicomWeb

            self._web = DicomWeb(self.service, cfg.dicomweb)
            self._web.start()
            LOG.info("DICOMweb on %s:%d", cfg.dicomweb.bind, cfg.dicomweb.port)

    def _start_scrub(self, stop: threading.Event) -> None:
        from pacsinfra.pacs.archive.scrub import Scrubber

        assert self.service is not None
        scrubber = Scrubber(self.service, self.config.scrub, self.data_dir / "scrub.json", stop)
        self._scrub = threading.Thread(target=scrubber.run, name="scrub", daemon=True)
        self._scrub.start()

    def _start_cluster(self) -> None:
        """Heartbeat, and the leader lease that decides where once-only jobs run."""
        from pacsinfra.pacs.archive.cluster import Cluster
        from pacsinfra.pacs.archive.db import _version

        assert self.index is not None
        self.cluster = Cluster(self.index.db, self.config, version=_version())
        self._cluster_thread = threading.Thread(target=self._cluster_loop, name="cluster",
                                                daemon=True)
        self._cluster_thread.start()

    def _start_uploader(self) -> None:
        """Move this node's receive cache to the object store, in the background."""
        from pacsinfra.pacs.archive.upload import Uploader

        assert self.service is not None and self.index is not None
        store = self.tiers[str(self.config.cluster.upload_to)]
        uploader = Uploader(self.index, self.service.default_tier, store, self.service.lock_for,
                            self.service.counters)
        self.service.on_stored.append(lambda stored: uploader.wake.set())
        self._uploader = threading.Thread(target=uploader.run, args=(self._scrub_stop,),
                                          name="upload", daemon=True)
        self._uploader.start()

    def _cluster_loop(self) -> None:
        cluster, cfg = self.cluster, self.config
        assert cluster is not None and self.service is not None
        scrub_stop: threading.Event | None = None
        while True:
            try:
                cluster.heartbeat(self.service.counters.stored)
                self._leading = cluster.lead()
            except Exception as exc:  # noqa: BLE001 - the index is away: not leading now
                LOG.warning("cluster heartbeat failed: %s", exc)
                self._leading = False
            if cfg.scrub.rate_mb_s > 0:
                if self._leading and scrub_stop is None:
                    scrub_stop = threading.Event()
                    self._start_scrub(scrub_stop)
                elif not self._leading and scrub_stop is not None:
                    scrub_stop.set()  # another node scrubs now
                    scrub_stop = None
            if self._scrub_stop.wait(cfg.cluster.heartbeat_seconds):
                break
        if scrub_stop is not None:
            scrub_stop.set()
        try:
            if self._leading:
                cluster.resign()  # another node takes the jobs over at once
        except Exception as exc:  # noqa: BLE001 - it lapses on its own
            LOG.warning("could not give the lease up: %s", exc)

    def _start_committer(self) -> None:
        """Storage commitment: every process answers N-ACTIONs and delivers reports."""
        from pacsinfra.pacs.archive.commitment import CommitmentStore, Committer

        assert self.service is not None and self.index is not None
        store = CommitmentStore(self.index.db)
        if self.worker is None and not self.config.cluster.enabled:
            # a crash's claims: report at once, not after they lapse (in a cluster they
            # may be another node's, and lapse on their own)
            store.release_claims()
        committer = Committer(self.config, store, self.service.committed, self.service.counters)
        self.service.committer = committer
        self._committer = threading.Thread(target=committer.run, args=(self._scrub_stop,),
                                           name="commitment", daemon=True)
        self._committer.start()

    def _lifecycle_loop(self, interval: float = 3600.0) -> None:
        from pacsinfra.pacs.archive.lifecycle import run_lifecycle

        wait = 5.0  # first pass soon after start, then every interval
        while not self._stopped.wait(wait):
            wait = interval
            index = self.index
            if index is None:
                return
            if self.config.cluster.enabled and not self._leading:
                wait = self.config.cluster.heartbeat_seconds  # another node runs it
                continue
            try:
                report = run_lifecycle(self.config, index, self.tiers, service=self.service)
                if report.deleted_studies:
                    LOG.info("retention: deleted %d studies", len(report.deleted_studies))
                if report.moved_studies or report.failed_studies:
                    LOG.info("lifecycle: moved %d studies (%d instances), %d failed",
                             len(report.moved_studies), report.moved_instances,
                             len(report.failed_studies))
            except Exception:  # noqa: BLE001 - the next pass retries; ingest must go on
                LOG.exception("lifecycle pass failed")

    def stop(self, grace: float = 5.0) -> None:
        """Drain, then stop: refuse new associations, give open ones ``grace`` seconds to
        finish, abort the rest, let the index finish pending commits, close everything.

        An aborted C-STORE is never acknowledged, so it is simply not stored (or is
        stored and indexed if its commit already happened); nothing is half-indexed.
        """
        self._scrub_stop.set()  # the scrub and the committer: both read the index
        if self._worklist is not None:
            self._worklist.stop()
            self._worklist = None
        if self._scrub is not None and self._cluster_thread is None:
            self._scrub.join(10)  # it saves its place and stops between two files
            self._scrub = None
        srv = self._server
        if srv is not None:
            assert self.service is not None
            self.service.draining = True
            deadline = time.monotonic() + grace
            # Connections that never sent an A-ASSOCIATE-RQ have nothing in flight.
            while any(a.is_established for a in srv.active_associations) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.05)
            for assoc in srv.active_associations:
                LOG.info("aborting association from %s at shutdown", assoc.requestor.ae_title)
                assoc.abort()
            srv.shutdown()
            self._server = None
        if self._committer is not None:
            self._committer.join(10)  # a report in flight: delivered, or retried after restart
            self._committer = None
        if self._cluster_thread is not None:
            self._cluster_thread.join(10)  # resigns the lease on its way out
            self._cluster_thread = None
        if self._uploader is not None:
            self._uploader.join(30)  # finishes the instance it is uploading
            self._uploader = None
        if self._scrub is not None:
            self._scrub.join(10)
            self._scrub = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._refusals is not None:
            self._refusals.flush()
        if self._web is not None:
            self._web.stop()
            self._web = None
        if self.index is not None:
            self.index.close()
            self.index = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._stopped.set()

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down cleanly (one process, or supervise
        ``config.workers`` worker processes)."""
        if self.config.workers > 1 and self.worker is None:
            supervise(self.config)
            return
        def _stop(signum: int, frame: Any) -> None:
            LOG.info("signal %d: shutting down", signum)
            self._stopped.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        finally:
            self.stop()


def _worker_main(config: dict[str, Any], worker: int, listener: socket.socket,
                 ready: Any, go: Any) -> None:
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker{worker} %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ArchiveServer(ArchiveConfig.model_validate(config), worker=worker, listener=listener,
                  handshake=(ready, go)).serve_forever()


def _listen_socket(config: ArchiveConfig) -> socket.socket:
    """The workers' shared listening socket, bound (not yet listening)."""
    return listening_socket((config.bind, config.port), config.limits.pdu_size_limit)


def supervise(config: ArchiveConfig) -> None:
    """Run ``config.workers`` archive processes on one port; restart any that dies;
    on SIGTERM/SIGINT stop them all (each drains like a single archive)."""
    import multiprocessing

    if config.dicomweb.enabled:
        # Unreadable token references stop the start here, not in worker 0's restart loop.
        from pacsinfra.pacs.archive.web.auth import Authenticator

        Authenticator(config.dicomweb)
    # Migrate once, here, so workers never race on schema changes.
    data_dir = Path(config.data_dir)
    ensure_dir(data_dir)
    hold_shared(data_dir)  # for this process's life (workers take it too)
    listener = _listen_socket(config)  # a port in use fails here, before any worker starts
    tiers: dict[str, Tier] = {}
    tiers.update(archive_tiers(config, data_dir))  # interrupted deletes swept in all
    for tier in tiers.values():
        if not isinstance(tier, ObjectTier):
            ensure_dir(tier.root / ".incoming")
            _sweep(tier, CLUSTER_SWEEP_AGE_S if config.cluster.enabled else 0.0)
    index = Index(open_database(config.index, data_dir))
    try:
        from pacsinfra.pacs.archive.delete import sweep_pending

        swept = sweep_pending(index, tiers)
        if swept:
            LOG.info("removed %d files of interrupted deletions", swept)
        if config.commitment.enabled and not config.cluster.enabled:
            from pacsinfra.pacs.archive.commitment import CommitmentStore

            CommitmentStore(index.db).release_claims()  # reported by whichever worker
    finally:
        index.close()
    ctx = multiprocessing.get_context("spawn")
    dumped = config.model_dump(mode="json")
    stopping = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    procs: dict[int, Any] = {}
    ready, go = ctx.Queue(), ctx.Event()

    def spawn(i: int) -> None:
        p = ctx.Process(target=_worker_main, args=(dumped, i, listener, ready, go),
                        name=f"archive-worker-{i}")
        p.start()
        procs[i] = p

    for i in range(config.workers):
        spawn(i)
    # Listen only once every worker can accept: connections made earlier would all go
    # to the first worker up (and clients would wait on the others' start-up).
    starting = set(range(config.workers))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while starting and not stopping.is_set() and time.monotonic() < deadline:
        try:
            starting.discard(ready.get(timeout=0.5))
        except queue.Empty:
            pass
        for i, p in list(procs.items()):
            if i in starting and not p.is_alive():
                LOG.error("worker %d exited with %s while starting; restarting", i, p.exitcode)
                spawn(i)
    if starting and not stopping.is_set():
        LOG.warning("workers %s not ready after %.0f s: serving with the others",
                    sorted(starting), READY_TIMEOUT_S)
    if not stopping.is_set():
        listener.listen(config.limits.listen_backlog)
        go.set()
        LOG.info("archive supervising %d workers on port %d", config.workers, config.port)
    while not stopping.wait(0.5):
        for i, p in list(procs.items()):
            if not p.is_alive() and not stopping.is_set():
                LOG.error("worker %d exited with %s; restarting", i, p.exitcode)
                spawn(i)
    for p in procs.values():
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs.values():
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join()
