"""The router's DICOM service: which associations and instances it takes, and what
becomes of each instance received (route, spool durably, queue durably).

A C-STORE is answered Success only after (1) the instance (and each tag-morphed
variant the rules ask for) is in the spool — written, fsynced, directory fsynced —
and (2) its queue rows are committed. Any failure on that path answers 0xA700 (out
of resources) so the sender keeps its copy. The same :meth:`RouterService.admit`
serves C-STORE through pynetdicom (:meth:`RouterService.on_store`) and through the
streaming SCP (:class:`~pacsinfra.pacs.router.sink.RouterSink`); the network and
process side is :mod:`pacsinfra.pacs.router.server`'s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pynetdicom import AE, evt

from pacsinfra.pacs.archive.attrs import DatasetUnreadable, read_header
from pacsinfra.pacs.commitment import STORAGE_COMMITMENT, SYNTAXES, Report, parse_report
from pacsinfra.pacs.compat import (
    STORAGE_SOP_CLASSES,
    association_server,
    received_dataset,
    reject_association,
)
from pacsinfra.pacs.dicom import (
    TCP_TUNING_HANDLER,
    TRANSFER_SYNTAXES,
    Status,
    association_limit,
    make_ae,
    prefer_requestor_syntaxes,
    valid_uid,
)
from pacsinfra.pacs.router.audit import AuditLog
from pacsinfra.pacs.router.config import RouterConfig, TagEdit
from pacsinfra.pacs.router.queue import NewItem, Queue
from pacsinfra.pacs.router.rules import Subject, TagValues, apply_edits, route, rule_tags
from pacsinfra.pacs.router.spool import Spool, file_crc

LOG = logging.getLogger("pacsinfra.router")
SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)
SERIES_INSTANCE_UID = Tag(0x0020, 0x000E)
SERIES_DESCRIPTION = Tag(0x0008, 0x103E)
VERIFICATION = "1.2.840.10008.1.1"
_PREAMBLE = b"\x00" * 128 + b"DICM"


def _first(values: list[str] | None) -> str:
    return values[0] if values else ""


class RouterService:
    """Route, spool and queue what arrives; ``wake(targets)`` tells the senders of those
    destinations that work is waiting."""

    def __init__(self, cfg: RouterConfig, spool: Spool, queue: Queue, audit: AuditLog | None,
                 wake: Callable[[set[str]], None]) -> None:
        self.cfg = cfg
        self.spool = spool
        self.queue = queue
        self.audit = audit
        self.wake = wake
        #: what the receive path reads of each instance: the UIDs and the rules' tags
        self.header_tags = rule_tags(cfg.rules) | {int(SOP_INSTANCE_UID),
                                                   int(STUDY_INSTANCE_UID)}
        if any(r.per_study or r.complete for r in cfg.rules):
            # what completion is judged on
            self.header_tags |= {int(SERIES_INSTANCE_UID), int(SERIES_DESCRIPTION)}
        self.received = 0
        self.dropped = 0
        self._count_lock = threading.Lock()
        #: storage commitment reports from destinations (set by the server)
        self.on_commitment_report: Callable[[Report], Any] | None = None

    # -- pynetdicom wiring -------------------------------------------------------------------
    def make_ae(self) -> AE:
        """The listening AE: Verification and every storage class in every syntax."""
        ae = make_ae(self.cfg.ae_title, self.cfg.limits)
        if self.cfg.allowed_calling_aes:
            ae.require_calling_aet = list(self.cfg.allowed_calling_aes)
        ae.add_supported_context(VERIFICATION)
        for sop in sorted(STORAGE_SOP_CLASSES):
            ae.add_supported_context(sop, TRANSFER_SYNTAXES)
        if any(d.storage_commitment for d in self.cfg.destinations.values()):
            # reports come on new associations, the destination proposing the SCP role
            ae.add_supported_context(STORAGE_COMMITMENT, SYNTAXES, scu_role=True, scp_role=True)
        return ae

    def streaming_contexts(self) -> dict[str, list[str]]:
        """What the streaming path accepts: storage classes and Verification."""
        supported = {sop: list(TRANSFER_SYNTAXES) for sop in STORAGE_SOP_CLASSES}
        supported[VERIFICATION] = list(TRANSFER_SYNTAXES)
        return supported

    def handlers(self) -> list[tuple[Any, Any]]:
        """Event handlers for the pynetdicom side of the listener."""
        return [TCP_TUNING_HANDLER, (evt.EVT_REQUESTED, self.on_requested),
                (evt.EVT_C_ECHO, lambda e: 0), (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_N_EVENT_REPORT, self.on_event_report)]

    def on_event_report(self, event: Any) -> tuple[int, None]:
        """N-EVENT-REPORT: a destination's storage commitment report."""
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.on_commitment_report is None or str(
                event.request.AffectedSOPClassUID) != STORAGE_COMMITMENT:
            return 0x0112, None  # no such SOP instance: nothing here takes such reports
        try:
            report = parse_report(event.event_information)
        except Exception as exc:  # noqa: BLE001 - an undecodable report is the sender's fault
            LOG.warning("storage commitment report from %s unusable: %s", calling, exc)
            return 0x0115, None  # invalid argument value
        try:
            self.on_commitment_report(report)
        except Exception:  # noqa: BLE001 - not applied: the sender may send it again
            LOG.exception("storage commitment report from %s not applied", calling)
            return 0x0110, None
        return 0x0000, None

    def on_requested(self, event: Any) -> None:
        """Per-calling-AE association limit (same rule as the archive)."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        server = association_server(assoc)
        if server is None:
            return
        limits = self.cfg.limits
        why = association_limit(server, calling, max_associations=limits.max_associations,
                                per_ae=limits.max_associations_per_ae, exclude=assoc)
        if why:
            LOG.info("rejecting %s: %s", calling, why)  # the listener audits the rejection
            reject_association(assoc, 0x02, 0x03, 0x02)
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
        calling = str(event.assoc.requestor.ae_title).strip()
        # pynetdicom wrote the data set to a file in the spool's .incoming as it arrived
        # (see RouterServer.start): read through a map, never whole in memory
        with received_dataset(event) as (meta, raw):
            try:
                ds = read_header(raw, str(event.context.transfer_syntax))
            except DatasetUnreadable as exc:
                LOG.warning("C-STORE %s from %s: unreadable: %s", sop_uid, calling, exc)
                return Status.CANNOT_UNDERSTAND
            return self.admit(sop_uid, calling, str(event.assoc.acceptor.ae_title).strip(), ds,
                              keep_received=lambda: self.spool.write([_PREAMBLE, meta, raw]),
                              read_received=lambda: b"".join((_PREAMBLE, meta, raw)))

    # -- the store itself --------------------------------------------------------------------
    @staticmethod
    def refusal(sop_class: str, sop_uid: str) -> Status | None:
        """The status refusing a C-STORE from its command alone, or None."""
        if sop_class not in STORAGE_SOP_CLASSES:
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
            # read back from the page cache: what the senders will check before sending
            sums = {rel: file_crc(self.spool.path(rel)) for rel in files.values()}
            series = described = ""
            if any(d.per_study for d in decision.deliveries):  # read only when held
                series = _first(subject.values(SERIES_INSTANCE_UID))
                described = _first(subject.values(SERIES_DESCRIPTION))
            self.queue.enqueue([NewItem(d.target, study, sop_uid, files[key], d.rule,
                                        held=d.per_study, series_uid=series,
                                        series_description=described)
                                for d, key in zip(decision.deliveries, keys, strict=True)],
                               sums=sums)
        except Exception as exc:  # noqa: BLE001 - disk full, queue trouble: refuse, keep nothing
            LOG.error("C-STORE %s: could not queue: %s", sop_uid, exc)
            for rel in files.values():
                self.spool.remove(rel)
            return Status.OUT_OF_RESOURCES
        targets = sorted({d.target for d in decision.deliveries})
        if self.audit is not None:
            self.audit.received(calling, study, sop_uid, targets)
        self.wake(set(targets))
        return Status.SUCCESS

    @staticmethod
    def _morphed(data: bytes, edits: tuple[TagEdit, ...]) -> bytes:
        ds = dcmread(BytesIO(data))
        apply_edits(ds, edits)
        out = BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()
