"""The running router: storage SCP in front, durable queue in the middle, senders behind.

A C-STORE is answered Success only after (1) the instance (and each tag-morphed
variant the rules ask for) is in the spool — written to a temporary file, fsynced,
renamed, directory fsynced — and (2) its queue rows are committed. Any failure on
that path answers 0xA700 (out of resources) so the sender keeps its copy.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import _STORAGE_CLASSES as STORAGE_CLASSES

from pacsinfra.pacs.dicom import (
    TCP_TUNING_HANDLER,
    TRANSFER_SYNTAXES,
    Status,
    make_ae,
    open_associations,
    prefer_requestor_syntaxes,
    ssl_context,
    valid_uid,
)
from pacsinfra.pacs.fastscp.server import FastPath, start_server
from pacsinfra.pacs.router.audit import AuditLog
from pacsinfra.pacs.router.config import RouterConfig, TagEdit
from pacsinfra.pacs.router.forwarder import Forwarder
from pacsinfra.pacs.router.queue import NewItem, Queue
from pacsinfra.pacs.router.rules import Subject, TagValues, apply_edits, route, rule_tags
from pacsinfra.pacs.router.sink import RouterSink
from pacsinfra.pacs.router.spool import Spool

LOG = logging.getLogger("pacsinfra.router")
SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)


def _first(values: list[str] | None) -> str:
    return values[0] if values else ""
_STORAGE_UIDS = frozenset(STORAGE_CLASSES.values())
Verification = "1.2.840.10008.1.1"
_PREAMBLE = b"\x00" * 128 + b"DICM"


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
        #: what the receive path reads of each instance: the UIDs and the rules' tags
        self.header_tags = rule_tags(cfg.rules) | {int(SOP_INSTANCE_UID),
                                                   int(STUDY_INSTANCE_UID)}
        self.received = 0
        self.dropped = 0
        self._count_lock = threading.Lock()
        self._server: Any = None
        self._sink: RouterSink | None = None
        self._metrics: Any = None
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
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        self.forwarder.start()
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        if cfg.metrics_port:
            from pacsinfra.pacs.router import metrics

            self._metrics = metrics.serve(cfg.metrics_bind, cfg.metrics_port, lambda: metrics.render(
                self.queue, self.forwarder, self.received, self.dropped))
        ae = make_ae(cfg.ae_title, cfg.limits)
        if cfg.allowed_calling_aes:
            ae.require_calling_aet = list(cfg.allowed_calling_aes)
        ae.add_supported_context(Verification)
        for sop in sorted(_STORAGE_UIDS):
            ae.add_supported_context(sop, TRANSFER_SYNTAXES)
        # Storage-only associations over plain TCP are streamed into the spool by
        # fastscp; TLS and anything unusual are served by pynetdicom.
        self._sink = RouterSink(self)
        supported = {sop: list(TRANSFER_SYNTAXES) for sop in _STORAGE_UIDS}
        supported[Verification] = list(TRANSFER_SYNTAXES)
        fast = FastPath(ae, self._sink, supported,
                        per_ae_limit=cfg.limits.max_associations_per_ae)
        self._server = start_server(
            ae, (cfg.bind, cfg.port), fast, ssl_context=ssl_context(cfg.tls, server=True),
            evt_handlers=[TCP_TUNING_HANDLER, (evt.EVT_REQUESTED, self.on_requested),
                          (evt.EVT_C_ECHO, lambda e: 0), (evt.EVT_C_STORE, self.on_store)])
        LOG.info("router %s listening on %s:%d", cfg.ae_title, cfg.bind, cfg.port)

    def stop(self) -> None:
        """Stop listening, stop senders, close the queue."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._sink is not None:
            self._sink.close()
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
                if self.queue.release_held(self.cfg.stable_study_seconds):
                    self.forwarder.wake()
                if time.monotonic() - last_clean > 5:
                    last_clean = time.monotonic()
                    for rel in self.queue.expired_spools():
                        self.spool.remove(rel)
                    if self._lease() and self.queue.recover(older_than=self._lease()):
                        self.forwarder.wake()
            except Exception:  # noqa: BLE001 - housekeeping retries on its next round
                LOG.exception("housekeeping failed")

    # -- DICOM -------------------------------------------------------------------------------
    def on_requested(self, event: Any) -> None:
        """Per-calling-AE association limit (same rule as the archive)."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        server = assoc._server
        if server is None:
            return
        same = open_associations(server, calling, exclude=assoc)
        if same >= self.cfg.limits.max_associations_per_ae:
            LOG.warning("rejecting %s: %d associations already open", calling, same)
            assoc.acse.send_reject(0x02, 0x03, 0x02)
            assoc.is_rejected = True
            return
        # Our list puts compressed syntaxes first; keep the sender's own choice so an
        # uncompressed study is never pushed into a lossy syntax on the way through.
        prefer_requestor_syntaxes(assoc)

    def on_store(self, event: Any) -> int:
        """C-STORE: route, spool durably, queue durably, then Success."""
        try:
            return int(self._store(event))
        except Exception:  # noqa: BLE001 - never Success on a bug, never kill the association
            LOG.exception("C-STORE failed unexpectedly")
            return int(Status.OUT_OF_RESOURCES)

    def _store(self, event: Any) -> Status:
        req = event.request
        sop_class = str(req.AffectedSOPClassUID)
        sop_uid = str(req.AffectedSOPInstanceUID)
        if (refusal := self.refusal(sop_class, sop_uid)) is not None:
            return refusal
        raw: bytes = req.DataSet.getvalue()
        data = b"".join((_PREAMBLE, encode_file_meta(event.file_meta), raw))
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = dcmread(BytesIO(data), stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - unparseable data set
            LOG.warning("C-STORE %s from %s: unreadable: %s", sop_uid, calling, exc)
            return Status.CANNOT_UNDERSTAND
        return self.admit(sop_uid, calling, str(event.assoc.acceptor.ae_title).strip(), ds,
                          keep_received=lambda: self.spool.write([data]),
                          read_received=lambda: data)

    @staticmethod
    def refusal(sop_class: str, sop_uid: str) -> Status | None:
        """The status refusing a C-STORE from its command alone, or None."""
        if sop_class not in _STORAGE_UIDS:
            return Status.SOP_CLASS_NOT_SUPPORTED
        if not valid_uid(sop_uid):
            return Status.CANNOT_UNDERSTAND
        return None

    def admit(self, sop_uid: str, calling: str, called: str, ds: Dataset | TagValues, *,
              keep_received: Callable[[], str], read_received: Callable[[], bytes]) -> Status:
        """Route a received instance (``ds``: its attributes, pixel data not needed, or
        the values of :attr:`header_tags`), spool what the rules ask for and queue it;
        the status to answer. Shared by C-STORE through pynetdicom and the streaming path.

        ``keep_received()`` makes the file as received durable in the spool and returns
        its spool name; ``read_received()`` returns its bytes (for tag morphing), and is
        only called before ``keep_received``.
        """
        subject = Subject(ds, calling, called)
        if _first(subject.values(SOP_INSTANCE_UID)) != sop_uid:
            return Status.DATASET_MISMATCH
        study = _first(subject.values(STUDY_INSTANCE_UID)) or sop_uid
        with self._count_lock:
            self.received += 1
        decision = route(self.cfg.rules, subject)
        if not decision.deliveries:
            with self._count_lock:
                self.dropped += 1
            why = (f"dropped by rule {decision.dropped_by!r}" if decision.dropped_by
                   else "no rule forwards it")
            LOG.info("%s from %s: %s", sop_uid, calling, why)
            if self.audit is not None:
                self.audit.dropped(calling, study, sop_uid, why)
            return Status.SUCCESS
        keys = [tuple(e.model_dump_json() for e in d.edits) for d in decision.deliveries]
        files: dict[tuple[str, ...], str] = {}  # edits (as JSON) -> spool file
        try:
            # Morphed variants first: they are made from the received file, which
            # keep_received() may move into the spool.
            for d, key in zip(decision.deliveries, keys, strict=True):
                if key and key not in files:
                    files[key] = self.spool.write([self._morphed(read_received(), d.edits)])
            if () in keys:
                files[()] = keep_received()
            self.queue.enqueue([NewItem(d.target, study, sop_uid, files[key], d.rule,
                                        held=d.per_study)
                                for d, key in zip(decision.deliveries, keys, strict=True)])
        except Exception as exc:  # noqa: BLE001 - disk full, queue trouble: refuse, keep nothing
            LOG.error("C-STORE %s: could not queue: %s", sop_uid, exc)
            for rel in files.values():
                self.spool.remove(rel)
            return Status.OUT_OF_RESOURCES
        targets = sorted({d.target for d in decision.deliveries})
        if self.audit is not None:
            self.audit.received(calling, study, sop_uid, targets)
        self.forwarder.wake(set(targets))
        return Status.SUCCESS

    @staticmethod
    def _morphed(data: bytes, edits: tuple[TagEdit, ...]) -> bytes:
        ds = dcmread(BytesIO(data))
        apply_edits(ds, edits)
        out = BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()
