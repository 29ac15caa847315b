"""Deleting studies (and series / instances): index first, then files, crash-safe.

Order, so that nothing indexed ever points at a missing file:

1. one transaction removes the instance rows (counts fixed, empty series / study /
   patient rows removed) and records each file in ``pending_unlink``;
2. after the commit, each file is unlinked (durably) and its ``pending_unlink`` row
   removed.

A crash between 1 and 2 leaves journalled files with no rows; :func:`sweep_pending`
(run at every start and by every lifecycle pass) unlinks them. A file is never
unlinked while an instance row points at it: a study re-sent after its deletion
gets the same content-tagged path back, so the sweep checks the index first, under
the service's per-SOP-instance lock when it runs inside the server.

Retention (``retention_days``) uses the same path: studies whose newest instance was
*received* more than N days ago (archive receive time, not StudyDate) are deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pacsinfra.pacs.archive.index import Index, StoredInstance, _delete_instance
from pacsinfra.pacs.archive.storage import Tier

LOG = logging.getLogger("pacsinfra.archive.delete")
DAY = 86400.0

# Returns the lock that serialises stores of one SOP Instance UID (the server's), or None.
LockFor = Callable[[str], "threading.Lock | None"]


@dataclass
class DeleteReport:
    """What one deletion did."""

    study_uid: str
    instances: int = 0
    files_removed: int = 0
    files_kept: list[str] = field(default_factory=list)  # re-indexed meanwhile, or I/O error


def _lock(lock_for: LockFor | None, sop_uid: str) -> AbstractContextManager[object]:
    lk = lock_for(sop_uid) if lock_for is not None else None
    return lk if lk is not None else nullcontext()


def _unlink_one(index: Index, tiers: dict[str, Tier], tier: str, rel: str,
                sop_uid: str | None, lock_for: LockFor | None) -> bool:
    """Unlink one journalled file unless a row points at it again; drop its journal row."""
    if sop_uid is None:  # file names are "<sop uid>.<content tag>.dcm"
        sop_uid = PurePosixPath(rel).name.rsplit(".", 2)[0]
    with _lock(lock_for, sop_uid):
        still = index.db.query(
            "SELECT 1 FROM instance WHERE tier = ? AND rel_path = ?", (tier, rel))
        t = tiers.get(tier)
        removed = False
        if not still and t is not None:
            t.remove(rel)
            removed = True
        if still or t is not None:
            with index.db.transaction() as cur:
                cur.execute("DELETE FROM pending_unlink WHERE tier = ? AND rel_path = ?",
                            (tier, rel))
        return removed


def unlink_journalled(index: Index, tiers: dict[str, Tier], tier: str, rel: str,
                      sop_uid: str | None, lock_for: LockFor | None = None) -> bool:
    """Unlink a file journalled in ``pending_unlink`` (in the transaction that removed its
    row), unless a row points at it again; True when it was removed."""
    return _unlink_one(index, tiers, tier, rel, sop_uid, lock_for)


def delete_instances(index: Index, tiers: dict[str, Tier], instances: list[StoredInstance],
                     *, study_uid: str, lock_for: LockFor | None = None) -> DeleteReport:
    """Remove ``instances`` from the index in one transaction, then unlink their files."""
    report = DeleteReport(study_uid, instances=len(instances))
    now = time.time()
    with index.db.transaction() as cur:
        for inst in instances:
            _delete_instance(cur, inst.sop_uid)
            cur.execute(
                "INSERT INTO pending_unlink (tier, rel_path, queued_at) VALUES (?, ?, ?) "
                "ON CONFLICT (tier, rel_path) DO NOTHING", (inst.tier, inst.rel_path, now))
    for inst in instances:
        try:
            if _unlink_one(index, tiers, inst.tier, inst.rel_path, inst.sop_uid, lock_for):
                report.files_removed += 1
            else:
                report.files_kept.append(inst.rel_path)
        except OSError as exc:  # journalled: the next sweep retries
            LOG.warning("delete %s: could not unlink %s yet: %s", study_uid, inst.rel_path, exc)
            report.files_kept.append(inst.rel_path)
    return report


def delete_study(index: Index, tiers: dict[str, Tier], study_uid: str, *,
                 series_uid: str | None = None, sop_uid: str | None = None,
                 lock_for: LockFor | None = None) -> DeleteReport | None:
    """Delete a study (or one series of it, or one instance); None when nothing matches."""
    where, params = "study_uid = ?", [study_uid]
    if series_uid is not None:
        where += " AND series_uid = ?"
        params.append(series_uid)
    if sop_uid is not None:
        where += " AND sop_uid = ?"
        params.append(sop_uid)
    instances = index.instances(where, tuple(params))
    if not instances:
        return None
    return delete_instances(index, tiers, instances, study_uid=study_uid, lock_for=lock_for)


def sweep_pending(index: Index, tiers: dict[str, Tier],
                  lock_for: LockFor | None = None) -> int:
    """Finish interrupted deletions: unlink journalled files no row points at."""
    n = 0
    for tier, rel in index.db.query("SELECT tier, rel_path FROM pending_unlink"):
        try:
            n += _unlink_one(index, tiers, tier, rel, None, lock_for)
        except OSError as exc:
            LOG.warning("sweep: could not unlink %s/%s: %s", tier, rel, exc)
    return n


def expired_studies(index: Index, retention_days: int, now: float) -> list[str]:
    """Studies whose newest instance was received more than ``retention_days`` ago."""
    rows = index.db.query(
        "SELECT study_uid FROM instance GROUP BY study_uid HAVING MAX(received_at) <= ?",
        (now - retention_days * DAY,))
    return [r[0] for r in rows]
