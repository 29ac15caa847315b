"""The archive's DIMSE service: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET handlers.

Handlers return DICOM statuses, never raise to pynetdicom: every failure path maps
to a failure status, and Success is returned only after the file is durable
(:func:`~pacsinfra.pacs.archive.storage.write_durable`) and its index row committed
(:meth:`~pacsinfra.pacs.archive.index.Index.commit`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FuturesTimeout
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import evt

from pacsinfra.pacs.archive.attrs import Buffer, DatasetUnreadable, read_indexed
from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.archive.index import Index, InstanceRecord, StoredInstance
from pacsinfra.pacs.archive.query import LEVELS, QueryError, compile_query, response
from pacsinfra.pacs.archive.rejection import KOS, TITLES, Rejections, parse_note
from pacsinfra.pacs.archive.storage import Tier, remove_durable, write_durable
from pacsinfra.pacs.archive.worklist import MODALITY_WORKLIST_FIND, Worklist, mwl_find
from pacsinfra.pacs.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT,
    PROCESSING_FAILURE,
    STORAGE_COMMITMENT,
)
from pacsinfra.pacs.compat import (
    STORAGE_SOP_CLASSES,
    association_server,
    keep_responses,
    received_dataset,
    reject_association,
)
from pacsinfra.pacs.dicom import (
    TCP_TUNING_HANDLER,
    TRANSFER_SYNTAXES,
    Status,
    accept_proposed,
    associate_kwargs,
    association_limit,
    make_ae,
    scu_contexts,
    uid_path,
    valid_uid,
)
from pacsinfra.pacs.transcode import Choice, Refusal, accepted_by_class, choices, decodable, prepare

LOG = logging.getLogger("pacsinfra.archive")
# Query/Retrieve SOP classes (PS3.4 C.6); literal UIDs keep the type checker happy.
Verification = "1.2.840.10008.1.1"
PatientRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.1.1"
PatientRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.1.2"
PatientRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.1.3"
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.2.2"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"
_STORAGE_UIDS = STORAGE_SOP_CLASSES
_PREAMBLE = b"\x00" * 128 + b"DICM"
_QR_FIND = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
_QR_MOVE = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)
_QR_GET = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)
_QR_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                "1.2.840.10008.1.2.2"]
_SUPPORTED: dict[str, list[str]] = {
    Verification: _QR_SYNTAXES,
    **{uid: _QR_SYNTAXES for uid in (*_QR_FIND, *_QR_MOVE, *_QR_GET)},
    **{uid: TRANSFER_SYNTAXES for uid in _STORAGE_UIDS},
}
_STUDY_ROOT = {
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
}


class Counters:
    """Plain counters the metrics endpoint and the benchmark read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stored = 0
        self.stored_bytes = 0
        self.failed = 0
        self.duplicates = 0
        self.finds = 0
        self.retrieved = 0
        self.deleted = 0
        self.metadata_warmed = 0
        self.transcoded = 0  # instances decoded for a peer that took none of their syntax
        self.corrupt_reads = 0  # reads refused: the file no longer hashes to the index's sum
        self.scrub_bytes = 0  # read by the background scrub
        self.scrub_instances = 0
        self.scrub_found = 0  # files the scrub found changed
        self.scrub_passes = 0  # passes completed since start-up
        self.commitment_requests = 0  # Storage Commitment requests accepted
        self.commitment_reports = 0  # reports delivered
        self.commitment_failed_instances = 0  # instances reported as not committed
        self.commitment_expired = 0  # reports given up undelivered
        self.uploaded = 0  # cluster: instances moved from the receive cache to the store
        self.upload_failures = 0

    def add(self, name: str, n: int = 1) -> None:
        """Increment counter ``name`` by ``n``."""
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


_VERIFIED_KEPT = 100_000  # files remembered as verified (about 20 MB)


class CorruptInstance(Exception):
    """A stored file no longer matches its indexed checksum (it is flagged, never sent)."""


def _unsendable(inst: StoredInstance) -> Dataset:
    """A failed sub-operation for pynetdicom: a data set it cannot send (no transfer syntax),
    so it counts the failure and lists the instance in Failed SOP Instance UID List
    (PS3.4 C.4.2.1.4.2), which it leaves empty for anything that is not a data set."""
    ds = Dataset()
    ds.SOPClassUID = inst.sop_class_uid
    ds.SOPInstanceUID = inst.sop_uid
    return ds


class ArchiveService:
    """Owns the tiers and the index; provides the pynetdicom event handlers."""

    def __init__(self, config: ArchiveConfig, index: Index, tiers: dict[str, Tier]) -> None:
        self.config = config
        self.index = index
        self.tiers = tiers
        default = config.default_tier or config.tiers[0].name
        # a cluster node's receive cache is named <tier>@<node> (objects.archive_tiers)
        self.default_tier = tiers.get(default) or next(
            t for name, t in tiers.items() if name.startswith(default + "@"))
        self.counters = Counters()
        # files verified by :meth:`verify`, oldest first (a viewer reads frames of the
        # same instances again and again)
        self._verified: OrderedDict[tuple[str, str, str, int, int], None] = OrderedDict()
        self._verified_lock = threading.Lock()
        self.audit: Any = None  # set by the server when an audit log is configured
        self.draining = False  # set at shutdown: new associations are refused
        # Striped locks: two associations storing the same SOP Instance UID serialise on
        # the duplicate check + write + commit, different UIDs never wait on each other.
        self._locks = [threading.Lock() for _ in range(256)]
        # Called with each newly stored instance after it is durable and indexed (before
        # the answer is sent): enqueue, never block, never raise.
        self.on_stored: list[Callable[[StoredInstance], None]] = []
        self.rejections = Rejections(index, tiers, self.lock_for)
        # Storage commitment (set by the server when enabled: it needs the index's table)
        self.committer: Any = None
        self.supported = dict(_SUPPORTED)
        if config.commitment.enabled:
            self.supported[STORAGE_COMMITMENT] = _QR_SYNTAXES
        # Modality Worklist: not in streaming_contexts, so pynetdicom serves it (on_find)
        self.worklist = Worklist(index.db)
        if config.worklist.enabled:
            self.supported[MODALITY_WORKLIST_FIND] = _QR_SYNTAXES

    # -- pynetdicom wiring -------------------------------------------------------------------
    def handlers(self) -> list[tuple[Any, Any]]:
        """Event handlers to pass to ``AE.start_server``."""
        return [
            TCP_TUNING_HANDLER,
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_N_ACTION, self.on_n_action),
        ]

    def make_ae(self) -> Any:
        """The listening AE with every context the archive serves."""
        cfg = self.config
        ae = make_ae(cfg.ae_title, cfg.limits)
        if cfg.allowed_calling_aes:
            ae.require_calling_aet = list(cfg.allowed_calling_aes)
        # The AE itself holds only Verification: each association gets contexts built
        # from its proposal in on_requested (see dicom.accept_proposed for why).
        ae.add_supported_context(Verification)
        return ae

    def streaming_contexts(self) -> dict[str, list[str]]:
        """What the streaming path accepts: storage classes, Verification, and C-FIND
        with identifiers in Implicit or Explicit VR Little Endian."""
        out = {uid: list(syntaxes) for uid, syntaxes in _SUPPORTED.items()
               if uid in _STORAGE_UIDS or uid == Verification}
        out.update({uid: list(_QR_SYNTAXES[:2]) for uid in _QR_FIND})
        return out

    def on_requested(self, event: Any) -> None:
        """Association limits (both paths' associations count); accept each context in the
        sender's preferred syntax."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        server = association_server(assoc)
        if server is None:
            return
        limits = self.config.limits
        why = "shutting down" if self.draining else association_limit(
            server, calling, max_associations=limits.max_associations,
            per_ae=limits.max_associations_per_ae, exclude=assoc)
        if why:
            LOG.info("rejecting %s: %s", calling, why)  # the listener audits the rejection
            reject_association(assoc, 0x02, 0x03, 0x02)  # transient, local limit exceeded
            return
        # Storage: both roles (we are the Storage SCP for C-STORE, and the Storage SCU on
        # a C-GET association when the requestor proposes role selection).
        accept_proposed(assoc, self.supported, both_roles=_STORAGE_UIDS, other_syntaxes=(
            TRANSFER_SYNTAXES if self.config.accept_unknown_sop_classes else None))

    def on_n_action(self, event: Any) -> tuple[Any, Any]:
        """N-ACTION: Storage Commitment requests (see :mod:`.commitment`)."""
        if self.committer is None:
            return 0x0123, None  # no such action
        result: tuple[Any, Any] = self.committer.on_action(event)
        return result

    def committed(self, sop_class: str, sop_uid: str) -> int | None:
        """Whether an instance is committed now: None when it is indexed under
        ``sop_class`` and its file hashes to the indexed sum, else the Failure Reason."""
        inst = self.index.get(sop_uid)
        if inst is None:
            return NO_SUCH_OBJECT
        if inst.sop_class_uid != sop_class:
            return CLASS_INSTANCE_CONFLICT
        try:
            self.verify(inst, again=True)
        except (CorruptInstance, OSError) as exc:
            LOG.error("storage commitment: %s is not committed: %s", sop_uid, exc)
            return PROCESSING_FAILURE
        return None

    def on_echo(self, event: Any) -> int:
        """C-ECHO: always Success while the service is up."""
        return int(Status.SUCCESS)

    # -- C-STORE -----------------------------------------------------------------------------
    def on_store(self, event: Any) -> int:
        """C-STORE: durable write + index commit, or a failure status."""
        try:
            status = self._store(event)
        except Exception:  # noqa: BLE001 - a bug must not turn into Success, nor crash the assoc
            LOG.exception("C-STORE failed unexpectedly")
            status = Status.OUT_OF_RESOURCES
        if status not in (Status.SUCCESS,):
            self.counters.add("failed")
        return int(status)

    def _store(self, event: Any) -> Status:
        req = event.request
        # pynetdicom wrote the data set to a file in the default tier's .incoming as it
        # arrived (see ArchiveServer.start): read it through a map, never whole in memory
        with received_dataset(event) as (meta, raw):
            return self.store_raw(
                sop_class=str(req.AffectedSOPClassUID),
                sop_uid=str(req.AffectedSOPInstanceUID),
                transfer_syntax=str(event.context.transfer_syntax),
                meta=meta, raw=raw, calling=str(event.assoc.requestor.ae_title).strip(),
            )

    def store_raw(self, *, sop_class: str, sop_uid: str, transfer_syntax: str, meta: bytes,
                  raw: bytes | memoryview, calling: str) -> Status:
        """Store one instance as received (``raw`` = dataset bytes, ``meta`` = encoded file
        meta group); the status to answer. Shared by C-STORE and STOW-RS."""
        tier = self.default_tier
        ds_offset = len(_PREAMBLE) + len(meta)

        def persist(path: Path) -> None:
            write_durable(path, (_PREAMBLE, meta, raw), tmp_dir=tier.root / ".incoming")

        return self.store_checked(
            sop_class=sop_class, sop_uid=sop_uid, transfer_syntax=transfer_syntax, raw=raw,
            calling=calling, sha=hashlib.sha256(raw).hexdigest(),
            meta_tag=hashlib.sha256(meta).hexdigest()[:4], ds_offset=ds_offset,
            size=ds_offset + len(raw), room_needed=ds_offset + len(raw), persist=persist)

    def store_checked(self, *, sop_class: str, sop_uid: str, transfer_syntax: str, raw: Buffer,
                      calling: str, sha: str, meta_tag: str, ds_offset: int, size: int,
                      room_needed: int, persist: Callable[[Path], None]) -> Status:
        """Check, write (``persist(final_path)``), index: the whole store, whoever received
        the bytes. ``raw`` is the dataset, ``sha`` its sha256; ``room_needed``: bytes the
        write will still add to the tier (0 when they are already there). A rejection
        note is applied before its Success is answered."""
        status = self._store_checked(
            sop_class=sop_class, sop_uid=sop_uid, transfer_syntax=transfer_syntax, raw=raw,
            calling=calling, sha=sha, meta_tag=meta_tag, ds_offset=ds_offset, size=size,
            room_needed=room_needed, persist=persist)
        if status == Status.SUCCESS and sop_class == KOS:
            # also for a note sent again: applying is idempotent, and finishes one that
            # failed half-way (its store succeeded, the answer said it did not)
            return self._apply_rejection(sop_uid, calling)
        return status

    def _apply_rejection(self, sop_uid: str, calling: str) -> Status:
        inst = self.index.get(sop_uid)
        if inst is None:  # deleted meanwhile: nothing to apply
            return Status.SUCCESS
        try:
            note = parse_note(dcmread(BytesIO(self.read_verified(inst))))
        except Exception as exc:  # noqa: BLE001 - a KOS that is not a usable note is stored
            LOG.warning("key object %s: not read as a rejection note: %s", sop_uid, exc)
            return Status.SUCCESS
        if note is None:
            return Status.SUCCESS
        try:
            self.rejections.apply(note, calling, audit=self.audit)
        except Exception:  # noqa: BLE001 - not applied: the sender is told, and sends again
            LOG.exception("rejection note %s could not be applied", sop_uid)
            return Status.OUT_OF_RESOURCES
        return Status.SUCCESS

    def _store_checked(self, *, sop_class: str, sop_uid: str, transfer_syntax: str,
                       raw: Buffer, calling: str, sha: str, meta_tag: str, ds_offset: int,
                       size: int, room_needed: int, persist: Callable[[Path], None]) -> Status:
        ts = transfer_syntax
        if sop_class not in _STORAGE_UIDS and not self.config.accept_unknown_sop_classes:
            return Status.SOP_CLASS_NOT_SUPPORTED
        if not valid_uid(sop_uid) or not valid_uid(sop_class):
            return Status.CANNOT_UNDERSTAND
        try:
            attrs = read_indexed(raw, ts)
        except DatasetUnreadable as exc:
            LOG.warning("C-STORE %s from %s: unreadable dataset: %s", sop_uid, calling, exc)
            return Status.CANNOT_UNDERSTAND
        if attrs["sop_uid"] != sop_uid or attrs["sop_class_uid"] != sop_class:
            return Status.DATASET_MISMATCH
        study, series = attrs["study_uid"], attrs["series_uid"]
        if not valid_uid(study) or not valid_uid(series):
            return Status.CANNOT_UNDERSTAND
        tier = self.default_tier
        if not tier.has_room(room_needed):
            LOG.error("tier %s above %s%% full: refusing %s", tier.name,
                      tier.max_usage_percent, sop_uid)
            return Status.OUT_OF_RESOURCES
        # The content hash in the name: two different objects claiming one SOP Instance
        # UID (overwrite, or racing worker processes) never share a file, so an index row
        # always describes the bytes at its path.
        tag = sha[:16] + meta_tag  # dataset + file meta
        rel = str(uid_path(Path(), study, series, sop_uid))[: -len(".dcm")] + f".{tag}.dcm"
        with self._locks[hash(sop_uid) & 255]:
            existing = self.index.get(sop_uid)
            rejected = self.rejections.rejected(sop_uid) if existing is None else None
            if rejected is not None:
                # taken away by a rejection note: it stays away, whoever sends it again
                LOG.warning("C-STORE %s from %s refused: rejected (%s %s)", sop_uid, calling,
                            rejected, TITLES.get(rejected, ""))
                return Status.DUPLICATE_SOP_INSTANCE
            if existing is not None:
                self.counters.add("duplicates")
                policy = self.config.duplicates
                if policy == "reject":
                    return Status.DUPLICATE_SOP_INSTANCE
                if policy == "keep_first":
                    return Status.SUCCESS  # the first copy is already durable and indexed
                if existing.sha256 == sha:
                    return Status.SUCCESS  # identical bytes are already durable and indexed
                if policy == "keep_if_identical":
                    return Status.DUPLICATE_SOP_INSTANCE
            path = tier.path(rel)
            try:
                persist(path)
            except OSError as exc:
                LOG.error("C-STORE %s: write failed: %s", sop_uid, exc)
                return Status.OUT_OF_RESOURCES  # ENOSPC, EIO, EROFS, ...: all mean "not stored"
            record = InstanceRecord(
                sop_uid=sop_uid, series_uid=series, study_uid=study, sop_class_uid=sop_class,
                transfer_syntax=ts, tier=tier.name, rel_path=rel, size=size, sha256=sha,
                ds_offset=ds_offset, received_at=time.time(),
                calling_ae=calling,
                **{k: v for k, v in attrs.items()
                   if k not in ("sop_uid", "series_uid", "study_uid", "sop_class_uid")},
            )
            try:
                self.index.commit(record, replace=existing is not None)
            except FuturesTimeout:
                # The row may still commit later: keep the file it would point to.
                LOG.error("C-STORE %s: index commit timed out", sop_uid)
                return Status.OUT_OF_RESOURCES
            except Exception as exc:  # noqa: BLE001 - any index failure is a refusal
                # Another worker process may have indexed the same SOP Instance UID
                # between our check and our commit: then its row owns the file.
                winner = self.index.get(sop_uid)
                if winner is None or (winner.tier, winner.rel_path) != (tier.name, rel):
                    try:
                        remove_durable(path)
                    except OSError:
                        pass
                if winner is not None and winner.sha256 == sha and self.config.duplicates in (
                        "keep_if_identical", "keep_first", "overwrite"):
                    return Status.SUCCESS  # the same bytes are durable and indexed
                LOG.error("C-STORE %s: index commit failed: %s", sop_uid, exc)
                return (Status.DUPLICATE_SOP_INSTANCE if winner is not None
                        else Status.OUT_OF_RESOURCES)
            if existing is not None and (existing.rel_path, existing.tier) != (rel, tier.name):
                old = self.tiers.get(existing.tier)
                if old is not None:
                    try:
                        remove_durable(old.path(existing.rel_path))
                    except OSError as exc:
                        LOG.warning("could not remove replaced file %s: %s", existing.rel_path, exc)
        self.counters.add("stored")
        self.counters.add("stored_bytes", size)
        if self.audit is not None:
            self.audit.instances_stored(calling, study, sop_uid)
        if self.on_stored:
            stored = StoredInstance(sop_uid, study, series, sop_class, ts, tier.name, rel, size,
                                    sha, ds_offset)
            for listener in self.on_stored:
                listener(stored)
        return Status.SUCCESS

    # -- C-FIND ------------------------------------------------------------------------------
    def on_find(self, event: Any) -> Iterator[tuple[int, Any]]:
        """C-FIND at any level of the patient and study root models (pynetdicom)."""
        try:
            ident = event.identifier
        except Exception:  # noqa: BLE001 - an identifier pydicom cannot decode
            LOG.exception("C-FIND failed")
            self.counters.add("finds")
            yield int(Status.CANNOT_UNDERSTAND), None
            return
        if str(event.request.AffectedSOPClassUID) == MODALITY_WORKLIST_FIND:
            self.counters.add("finds")
            yield from mwl_find(self.worklist, ident,
                                cancelled=lambda: bool(event.is_cancelled))
            return
        yield from self.find(ident, str(event.request.AffectedSOPClassUID),
                             str(event.assoc.requestor.ae_title).strip(),
                             cancelled=lambda: bool(event.is_cancelled))

    def find(self, ident: Dataset, model: str, calling: str, *,
             cancelled: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, Any]]:
        """(status, identifier Dataset or None) for each match of a C-FIND, then a
        failure or Cancel status if it ends so; shared by pynetdicom and fastscp."""
        self.counters.add("finds")
        try:
            level = str(ident.get("QueryRetrieveLevel", "")).upper()
            if level not in LEVELS or (model in _STUDY_ROOT and level == "PATIENT"):
                yield int(Status.DATASET_MISMATCH), None
                return
            q = compile_query(ident, level)
            rows = self.index.db.query(q.sql, q.params)
        except QueryError:
            yield int(Status.DATASET_MISMATCH), None
            return
        except Exception:  # noqa: BLE001 - malformed identifier or index trouble
            LOG.exception("C-FIND failed")
            yield int(Status.CANNOT_UNDERSTAND), None
            return
        if self.audit is not None:
            self.audit.query(calling, level)
        for row in rows:
            if cancelled():
                yield int(Status.CANCEL), None
                return
            yield int(Status.PENDING), response(q, row)

    # -- deletion ----------------------------------------------------------------------------
    def lock_for(self, sop_uid: str) -> threading.Lock:
        """The lock that serialises stores (and file unlinks) of one SOP Instance UID."""
        return self._locks[hash(sop_uid) & 255]

    def delete(self, study_uid: str, *, series_uid: str | None = None,
               sop_uid: str | None = None, actor: str = "") -> Any:
        """Delete a study / series / instance (index first, then files); audit-logged.

        Returns the :class:`~pacsinfra.pacs.archive.delete.DeleteReport`, or None when
        nothing matched."""
        from pacsinfra.pacs.archive.delete import delete_study

        report = delete_study(self.index, self.tiers, study_uid, series_uid=series_uid,
                              sop_uid=sop_uid, lock_for=self.lock_for)
        if report is not None:
            self.counters.add("deleted", report.instances)
            if self.audit is not None:
                self.audit.study_deleted(actor, study_uid, report.instances)
        return report

    # -- C-MOVE / C-GET ----------------------------------------------------------------------
    def match_instances(self, ident: Any) -> list[StoredInstance]:
        """Instances an identifier selects (any level), for retrieval."""
        level = str(ident.get("QueryRetrieveLevel", "")).upper()
        if level not in LEVELS:
            raise QueryError(f"unknown QueryRetrieveLevel {level!r}")
        # Relational: the keys given are matched at image level, so a study-level
        # retrieve returns every instance of the matched studies.
        q = compile_query(ident, "IMAGE", select=(
            "i.sop_uid, i.study_uid, i.series_uid, i.sop_class_uid, i.transfer_syntax, "
            "i.tier, i.rel_path, i.size, i.sha256, i.ds_offset"))
        return [StoredInstance(*r) for r in self.index.db.query(q.sql, q.params)]

    def read_verified(self, inst: StoredInstance) -> bytes:
        """A stored file's bytes, after checking its data set against the indexed SHA-256.

        A mismatch (bit rot, a file changed behind the archive's back) raises
        :class:`CorruptInstance`: the instance is flagged in the index (``archive check``
        lists it), logged, audited and counted, and nothing of it leaves the archive."""
        data = self._tier_of(inst).read(inst.rel_path)
        self._check_digest(inst, hashlib.sha256(memoryview(data)[inst.ds_offset:]).hexdigest())
        return data

    def verify(self, inst: StoredInstance, *, again: bool = False) -> int:
        """Check a stored file against its indexed SHA-256 without holding it in memory,
        as :meth:`read_verified` does; the bytes read. A file verified before and
        unchanged since (same size and modification time) is not read again, unless
        ``again`` (the scrub)."""
        tier = self._tier_of(inst)
        if not isinstance(tier, Tier):  # an object tier: the whole object, once
            return len(self.read_verified(inst))
        path = tier.path(inst.rel_path)
        st = path.stat()
        key = (inst.sop_uid, inst.sha256, str(path), st.st_mtime_ns, st.st_size)
        with self._verified_lock:
            if key in self._verified and not again:
                self._verified.move_to_end(key)
                return 0
        h = hashlib.sha256()
        with path.open("rb") as fh:
            fh.seek(inst.ds_offset)
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        self._check_digest(inst, h.hexdigest())
        with self._verified_lock:
            self._verified[key] = None
            while len(self._verified) > _VERIFIED_KEPT:
                self._verified.popitem(last=False)
        return st.st_size

    def _tier_of(self, inst: StoredInstance) -> Any:
        tier = self.tiers.get(inst.tier)
        if tier is None:
            if "@" in inst.tier:
                raise FileNotFoundError(f"{inst.sop_uid} is on node {inst.tier.split('@', 1)[1]}'s "
                                        "receive cache, not uploaded yet")
            raise FileNotFoundError(f"tier {inst.tier} is not configured")
        return tier

    def _check_digest(self, inst: StoredInstance, digest: str) -> None:
        if digest == inst.sha256:
            return
        reason = (f"checksum mismatch: {inst.tier}/{inst.rel_path} hashes to "
                  f"{digest[:16]}..., the index holds {inst.sha256[:16]}...")
        self.counters.add("corrupt_reads")
        try:
            self.index.flag(inst, reason)
        except Exception:  # noqa: BLE001 - the refusal stands even if the flag is lost
            LOG.exception("could not flag %s", inst.sop_uid)
        if self.audit is not None:
            self.audit.corrupt_instance(inst.study_uid, inst.sop_uid, reason)
        raise CorruptInstance(f"{inst.sop_uid}: {reason}")

    def _read(self, inst: StoredInstance) -> Any:
        return dcmread(BytesIO(self.read_verified(inst)))

    def _retrieve(self, event: Any, instances: list[StoredInstance],
                  accepted: Callable[[], dict[str, list[str]]],
                  to: str) -> Iterator[tuple[int, Any]]:
        """The sub-operations: each instance read, and decoded when the peer takes none of
        its stored syntax (``accepted``: SOP class -> syntaxes, once associated)."""
        for study in {i.study_uid for i in instances}:
            try:
                self.index.touch_study(study)
            except Exception:  # noqa: BLE001 - access time is advisory
                LOG.warning("could not record access to %s", study)
        plan: dict[tuple[str, str], Choice | Refusal] | None = None
        for inst in instances:
            if event.is_cancelled:
                yield int(Status.CANCEL), None
                return
            if plan is None:  # the association to the peer is up by the first instance
                plan = choices(((i.sop_class_uid, i.transfer_syntax) for i in instances),
                               accepted())
            choice = plan[(inst.sop_class_uid, inst.transfer_syntax)]
            try:
                if isinstance(choice, Refusal):
                    raise choice
                ds = prepare(self._read(inst), choice)
            except Exception as exc:  # noqa: BLE001 - a missing/corrupt file fails one sub-op
                LOG.error("retrieve %s to %s: %s", inst.sop_uid, to, exc)
                yield int(Status.PENDING), _unsendable(inst)
                continue
            if choice.decode:
                self.counters.add("transcoded")
            self.counters.add("retrieved")
            yield int(Status.PENDING), ds

    def on_move(self, event: Any) -> Iterator[Any]:
        """C-MOVE to a destination from the peers table (unknown -> 0xA801)."""
        dest = event.move_destination
        dest = (dest.decode("ascii", "replace") if isinstance(dest, bytes) else str(dest)).strip()
        peer = self.config.peers.get(dest)
        if peer is None:
            LOG.warning("C-MOVE to unknown destination %r", dest)
            yield None, None
            return
        try:
            instances = self.match_instances(event.identifier)
        except Exception:  # noqa: BLE001
            LOG.exception("C-MOVE matching failed")
            yield peer.host, peer.port, associate_kwargs(peer, [])
            yield int(Status.OUT_OF_RESOURCES_MATCHES), None
            return
        # Verification too: a destination that takes none of the storage contexts still
        # associates, and its sub-operations fail one by one (0xA702 with the counts),
        # instead of "destination unknown" for a destination that is known and running.
        contexts = scu_contexts(((i.sop_class_uid, i.transfer_syntax) for i in instances),
                                decodable=decodable, verification=True)
        store_assoc: list[Any] = []

        def accepted(event: Any) -> None:
            # EVT_ACCEPTED fires before the association counts as established, so the
            # accepted contexts are known when pynetdicom asks for the first instance.
            keep_responses(event.assoc)  # as for every association that sends C-STOREs
            store_assoc.append(event.assoc)

        kwargs = associate_kwargs(peer, contexts)
        kwargs["evt_handlers"] = [*kwargs["evt_handlers"], (evt.EVT_ACCEPTED, accepted)]
        yield peer.host, peer.port, kwargs
        yield len(instances)
        yield from self._retrieve(
            event, instances,
            lambda: accepted_by_class(store_assoc[0].accepted_contexts) if store_assoc else {},
            dest)

    def on_get(self, event: Any) -> Iterator[Any]:
        """C-GET: sub-operations on the same association."""
        try:
            instances = self.match_instances(event.identifier)
        except Exception:  # noqa: BLE001
            LOG.exception("C-GET matching failed")
            yield 1
            yield int(Status.OUT_OF_RESOURCES_MATCHES), None
            return
        yield len(instances)
        # C-GET's sub-operations go back on the requestor's association, on the storage
        # contexts it proposed with the SCP role
        yield from self._retrieve(event, instances,
                                  lambda: accepted_by_class(event.assoc.accepted_contexts),
                                  str(event.assoc.requestor.ae_title).strip())
