"""Storage Commitment Push Model, SCP side (PS3.4 J).

A requester sends N-ACTION "Request Storage Commitment" with a Transaction UID and the
instances it wants committed. The request is written to the index (table
``commitment``) before the N-ACTION is answered, so a restart between the answer and
the report still reports. A committer thread then checks every referenced instance:
committed means indexed (so its file was fsynced before it was acknowledged) and its
file read back and hashed to the indexed SHA-256 at that moment. The outcome goes back
as an N-EVENT-REPORT (event type 1: all committed, 2: some failed, each failure with
its reason) on the requester's association while it is open, otherwise on a new
association to the requester's AE title in ``peers``. The row leaves the table only
once the requester answered the report with Success.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role

from pacsinfra.pacs.archive.config import ArchiveConfig
from pacsinfra.pacs.archive.db import Database
from pacsinfra.pacs.commitment import (
    ALL_COMMITTED,
    DUPLICATE_TRANSACTION,
    INVALID_ARGUMENT,
    NO_SUCH_ACTION,
    NO_SUCH_INSTANCE,
    PROCESSING_FAILURE,
    REQUEST_ACTION,
    SOME_FAILED,
    STORAGE_COMMITMENT,
    SYNTAXES,
    WELL_KNOWN_INSTANCE,
    BadRequest,
    Request,
    parse_request,
    report_dataset,
)
from pacsinfra.pacs.compat import release_requested
from pacsinfra.pacs.dicom import associate, make_ae

LOG = logging.getLogger("pacsinfra.archive.commitment")

_MAX_RETRY_S = 600.0
# how long a requester has to release after our answer before the report goes on its
# association (one that releases gets it on a new association instead)
SETTLE_S = 0.5


class CommitmentStore:
    """The ``commitment`` table: requests accepted and not yet reported."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, req: Request) -> bool:
        """Record ``req`` (due at once); False when its Transaction UID is already pending."""
        with self.db.transaction() as cur:
            row = cur.execute("SELECT 1 FROM commitment WHERE transaction_uid = ?",
                              (req.transaction_uid,)).fetchone()
            if row:
                return False
            cur.execute(
                "INSERT INTO commitment (transaction_uid, calling_ae, refs, received_at, "
                "attempts, next_try) VALUES (?, ?, ?, ?, 0, ?)",
                (req.transaction_uid, req.calling_ae, json.dumps(req.refs), req.received_at,
                 req.received_at))
        return True

    def claim_due(self, now: float, hold: float, limit: int = 8) -> list[Request]:
        """Take up to ``limit`` due requests for ``hold`` seconds (another process of the
        archive skips them meanwhile; a claim a crash left behind lapses)."""
        rows = self.db.query(
            "SELECT transaction_uid, calling_ae, refs, received_at, attempts FROM commitment "
            "WHERE next_try <= ? ORDER BY next_try LIMIT ?", (now, limit))
        out: list[Request] = []
        for uid, ae, refs, received, attempts in rows:
            with self.db.transaction() as cur:
                cur.execute("UPDATE commitment SET next_try = ?, attempts = attempts + 1 "
                            "WHERE transaction_uid = ? AND next_try <= ?", (now + hold, uid, now))
                if cur.rowcount != 1:
                    continue  # another process took it first
            out.append(Request(str(uid), str(ae), [(str(c), str(i)) for c, i in json.loads(refs)],
                               float(received), int(attempts) + 1))
        return out

    def done(self, transaction_uid: str) -> None:
        """The report was delivered (or given up): forget the request."""
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM commitment WHERE transaction_uid = ?", (transaction_uid,))

    def retry(self, transaction_uid: str, when: float, error: str) -> None:
        """Delivery failed: try again at ``when``."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE commitment SET next_try = ?, last_error = ? "
                        "WHERE transaction_uid = ?", (when, error[:500], transaction_uid))

    def release_claims(self) -> int:
        """Make every pending request due now (at start-up, before any process claims)."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE commitment SET next_try = received_at")
            return cur.rowcount

    def pending(self) -> list[tuple[str, str, int, int, float, str | None]]:
        """(transaction UID, requester, instances, attempts, received at, last error)."""
        rows = self.db.query("SELECT transaction_uid, calling_ae, refs, attempts, received_at, "
                             "last_error FROM commitment ORDER BY received_at")
        return [(str(u), str(a), len(json.loads(r)), int(n), float(t), e)
                for u, a, r, n, t, e in rows]


class Committer:
    """Answers N-ACTION requests and delivers their reports (one thread per process).

    ``check`` tells whether one referenced instance is committed: None when it is, else
    the Failure Reason.
    """

    def __init__(self, config: ArchiveConfig, store: CommitmentStore,
                 check: Callable[[str, str], int | None], counters: Any = None) -> None:
        self.config = config
        self.store = store
        self.check = check
        self.counters = counters
        self._open: dict[str, Any] = {}  # transaction UID -> the requester's association
        self._lock = threading.Lock()
        self._wake = threading.Event()

    # -- the N-ACTION handler (an association thread) -----------------------------------------
    def on_action(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_ACTION: record the request durably, then answer Success."""
        req = event.request
        calling = str(event.assoc.requestor.ae_title).strip()
        if str(req.RequestedSOPClassUID) != STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        if str(req.RequestedSOPInstanceUID) != WELL_KNOWN_INSTANCE:
            LOG.warning("storage commitment from %s: instance %s is not the well-known "
                        "instance", calling, req.RequestedSOPInstanceUID)
            return NO_SUCH_INSTANCE, None
        if req.ActionTypeID != REQUEST_ACTION:
            return NO_SUCH_ACTION, None
        try:
            request = parse_request(event.action_information, calling)
        except BadRequest as exc:
            LOG.warning("storage commitment from %s refused: %s", calling, exc)
            return _status(exc.status, str(exc)), None
        except Exception as exc:  # noqa: BLE001 - an undecodable data set is the requester's
            LOG.warning("storage commitment from %s: unreadable request: %s", calling, exc)
            return _status(INVALID_ARGUMENT, "the Action Information cannot be decoded"), None
        try:
            if not self.store.add(request):
                return _status(DUPLICATE_TRANSACTION, "Transaction UID "
                               f"{request.transaction_uid} is already pending"), None
        except Exception:  # noqa: BLE001 - not recorded, so not promised
            LOG.exception("storage commitment from %s: cannot record the request", calling)
            return _status(PROCESSING_FAILURE, "the request could not be recorded"), None
        with self._lock:
            self._open[request.transaction_uid] = event.assoc
        LOG.info("storage commitment %s from %s: %d instance(s)", request.transaction_uid,
                 calling, len(request.refs))
        self._count("commitment_requests")
        self._wake.set()
        return 0x0000, None

    # -- the committer thread -----------------------------------------------------------------
    def run(self, stop: threading.Event, poll: float = 2.0) -> None:
        """Deliver due reports until ``stop`` is set (polling for other processes' rows)."""
        while not stop.is_set():
            self._wake.clear()
            try:
                due = self.store.claim_due(time.time(), hold=self._hold())
            except Exception:  # noqa: BLE001 - the index is away for a moment: try again
                LOG.exception("storage commitment: cannot read pending requests")
                due = []
            for req in due:
                if stop.is_set():
                    return
                self.process(req)
            if not due:
                self._wake.wait(poll)

    def _hold(self) -> float:
        # long enough for one delivery (association + report + answer)
        limits = self.config.limits
        return float(limits.acse_timeout + limits.dimse_timeout + 30)

    def process(self, req: Request) -> bool:
        """Check ``req``'s instances and deliver the report; True once delivered."""
        committed: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        for cls, inst in req.refs:
            try:
                reason = self.check(cls, inst)
            except Exception:  # noqa: BLE001 - a check that broke is not a commitment
                LOG.exception("storage commitment %s: checking %s", req.transaction_uid, inst)
                reason = PROCESSING_FAILURE
            if reason is None:
                committed.append((cls, inst))
            else:
                failed.append((cls, inst, reason))
        ds = report_dataset(req.transaction_uid, committed, failed, self.config.ae_title)
        event_type = SOME_FAILED if failed else ALL_COMMITTED
        with self._lock:
            assoc = self._open.pop(req.transaction_uid, None)
        try:
            how = self._deliver(req, assoc, ds, event_type)
        except Exception as exc:  # noqa: BLE001 - any delivery failure is retried
            return self._failed(req, str(exc) or type(exc).__name__)
        self.store.done(req.transaction_uid)
        self._count("commitment_reports")
        self._count("commitment_failed_instances", len(failed))
        LOG.info("storage commitment %s to %s %s: %d committed, %d failed", req.transaction_uid,
                 req.calling_ae, how, len(committed), len(failed))
        return True

    def _failed(self, req: Request, error: str) -> bool:
        cfg = self.config.commitment
        now = time.time()
        if now - req.received_at > cfg.expire_hours * 3600:
            LOG.error("storage commitment %s to %s: report not delivered after %d attempts "
                      "(%s); given up", req.transaction_uid, req.calling_ae, req.attempts, error)
            self.store.done(req.transaction_uid)
            self._count("commitment_expired")
            return False
        wait = min(cfg.retry_s * 2 ** (req.attempts - 1), _MAX_RETRY_S)
        LOG.warning("storage commitment %s to %s: report not delivered (%s); again in %.0f s",
                    req.transaction_uid, req.calling_ae, error, wait)
        self.store.retry(req.transaction_uid, now + wait, error)
        return False

    def _deliver(self, req: Request, assoc: Any, ds: Dataset, event_type: int) -> str:
        if assoc is not None and assoc.is_established:
            # A requester that does not wait for the report releases right after our
            # answer; a report sent into its release is never answered. Give the release
            # time to arrive, then look for one before sending.
            time.sleep(max(0.0, SETTLE_S - (time.time() - req.received_at)))
        if assoc is not None and assoc.is_established and not release_requested(assoc):
            status = assoc.send_n_event_report(ds, event_type, STORAGE_COMMITMENT,
                                               WELL_KNOWN_INSTANCE)
            if _ok(status):
                return "on its association"
            if assoc.is_established:
                raise RuntimeError(f"the requester answered the report with {_code(status)}")
            # released meanwhile: fall through to a new association
        peer = self.config.peers.get(req.calling_ae)
        if peer is None:
            raise RuntimeError(f"the association closed and {req.calling_ae} is not in peers "
                               "(add it to send the report on a new association)")
        ae = make_ae(self.config.ae_title, self.config.limits)
        # PS3.4 J.3.3: on a new association the SCP proposes the SCP role
        context = build_context(STORAGE_COMMITMENT, SYNTAXES)
        role = build_role(STORAGE_COMMITMENT, scp_role=True, scu_role=False)
        out = associate(ae, peer, contexts=[context], ext_neg=[role])
        if not out.is_established:
            raise RuntimeError(f"cannot associate with {peer.ae_title} at "
                               f"{peer.host}:{peer.port}")
        try:
            status = out.send_n_event_report(ds, event_type, STORAGE_COMMITMENT,
                                             WELL_KNOWN_INSTANCE)
        finally:
            if out.is_established:
                out.release()
        if not _ok(status):
            raise RuntimeError(f"the requester answered the report with {_code(status)}")
        return "on a new association"

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None and n:
            self.counters.add(name, n)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _ok(rsp: Any) -> bool:
    status = rsp[0] if isinstance(rsp, tuple) else rsp
    return bool(status is not None and "Status" in status and int(status.Status) == 0)


def _code(rsp: Any) -> str:
    status = rsp[0] if isinstance(rsp, tuple) else rsp
    if status is None or "Status" not in status:
        return "no answer"
    return f"status 0x{int(status.Status):04X}"


__all__ = ["CommitmentStore", "Committer"]
