"""The patient / study / series / instance index, with group commit for ingest.

Many associations store at once; each hands its row to :meth:`Index.commit` and
blocks until the committer thread has written *a transaction containing it*. The
committer takes every row waiting at that moment, so N concurrent stores cost one
commit (one WAL fsync) instead of N, and no store is acknowledged before its row is
durable.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, fields

from pacsinfra.pacs.archive.db import Cursor, Database, like_escape


@dataclass
class InstanceRecord:
    """Everything indexed about one stored instance."""

    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    tier: str
    rel_path: str
    size: int
    sha256: str
    ds_offset: int
    received_at: float
    calling_ae: str = ""
    instance_number: str = ""
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    body_part: str = ""
    series_date: str = ""
    series_time: str = ""
    rows: str = ""
    columns: str = ""
    bits_allocated: str = ""
    number_of_frames: str = ""


def _count(text: str) -> int | None:
    """An indexed integer attribute as the index keeps it (None: absent or not one)."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if 0 <= value < 2**31 else None


RECORD_FIELDS = [f.name for f in fields(InstanceRecord)]


@dataclass
class StoredInstance:
    """Where an indexed instance is and how to check it."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    tier: str
    rel_path: str
    size: int
    sha256: str
    ds_offset: int


_STORED_COLS = (
    "sop_uid, study_uid, series_uid, sop_class_uid, transfer_syntax, tier, rel_path, size, "
    "sha256, ds_offset"
)


# PostgreSQL: serialization_failure, deadlock_detected (another node's transaction won)
_RETRYABLE = ("40001", "40P01")


def _insert_hierarchy(cur: Cursor, r: InstanceRecord) -> None:
    """Insert or count one new instance into patient / study / series / instance."""
    cur.execute(
        "INSERT INTO patient (patient_id, patient_name, patient_birth_date, patient_sex) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (patient_id) DO NOTHING",
        (r.patient_id, r.patient_name, r.patient_birth_date, r.patient_sex),
    )
    new_study = cur.execute(
        "INSERT INTO study (study_uid, patient_id, patient_name, patient_birth_date, "
        "patient_sex, study_date, study_time, accession_number, study_id, study_description, "
        "referring_physician, created_at, last_access) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (study_uid) DO NOTHING",
        (r.study_uid, r.patient_id, r.patient_name, r.patient_birth_date, r.patient_sex,
         r.study_date, r.study_time, r.accession_number, r.study_id, r.study_description,
         r.referring_physician, r.received_at, r.received_at),
    ).rowcount == 1
    new_series = cur.execute(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, "
        "series_description, body_part, series_date, series_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series_uid) DO NOTHING",
        (r.series_uid, r.study_uid, r.modality, r.series_number, r.series_description,
         r.body_part, r.series_date, r.series_time),
    ).rowcount == 1
    cur.execute(
        "INSERT INTO instance (sop_uid, series_uid, study_uid, sop_class_uid, instance_number, "
        "transfer_syntax, tier, rel_path, size, sha256, ds_offset, received_at, calling_ae, "
        "img_rows, img_columns, bits_allocated, num_frames) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.sop_uid, r.series_uid, r.study_uid, r.sop_class_uid, r.instance_number,
         r.transfer_syntax, r.tier, r.rel_path, r.size, r.sha256, r.ds_offset, r.received_at,
         r.calling_ae, _count(r.rows), _count(r.columns), _count(r.bits_allocated),
         _count(r.number_of_frames) or (1 if _count(r.rows) else None)),
    )
    cur.execute(
        "UPDATE series SET num_instances = num_instances + 1 WHERE series_uid = ?",
        (r.series_uid,),
    )
    mod = f"\\{r.modality}\\" if r.modality else ""
    cur.execute(
        "UPDATE study SET num_instances = num_instances + 1, num_series = num_series + ?, "
        "modalities = CASE WHEN ? = '' OR modalities LIKE ? ESCAPE '!' THEN modalities "
        "ELSE modalities || ? END WHERE study_uid = ?",
        (1 if new_series else 0, mod, f"%{like_escape(mod)}%", r.modality + "\\" if mod else "",
         r.study_uid),
    )
    cur.execute(
        "UPDATE patient SET num_instances = num_instances + 1, num_studies = num_studies + ? "
        "WHERE patient_id = ?",
        (1 if new_study else 0, r.patient_id),
    )


def _delete_instance(cur: Cursor, sop_uid: str) -> None:
    """Remove one instance row and fix the counts above it (empty parents are removed)."""
    row = cur.execute(
        "SELECT i.series_uid, i.study_uid, s.patient_id FROM instance i "
        "JOIN study s ON s.study_uid = i.study_uid WHERE i.sop_uid = ?",
        (sop_uid,),
    ).fetchone()
    if row is None:
        return
    series_uid, study_uid, patient_id = row
    cur.execute("DELETE FROM instance WHERE sop_uid = ?", (sop_uid,))
    cur.execute(
        "UPDATE series SET num_instances = num_instances - 1 WHERE series_uid = ?", (series_uid,)
    )
    gone_series = cur.execute(
        "DELETE FROM series WHERE series_uid = ? AND num_instances <= 0", (series_uid,)
    ).rowcount
    cur.execute(
        "UPDATE study SET num_instances = num_instances - 1, num_series = num_series - ? "
        "WHERE study_uid = ?",
        (gone_series, study_uid),
    )
    if gone_series:  # recompute ModalitiesInStudy from what is left
        mods = [m for (m,) in cur.execute(
            "SELECT DISTINCT modality FROM series WHERE study_uid = ?", (study_uid,)
        ).fetchall() if m]
        cur.execute(
            "UPDATE study SET modalities = ? WHERE study_uid = ?",
            ("\\" + "".join(m + "\\" for m in sorted(mods)), study_uid),
        )
    gone_study = cur.execute(
        "DELETE FROM study WHERE study_uid = ? AND num_instances <= 0", (study_uid,)
    ).rowcount
    cur.execute(
        "UPDATE patient SET num_instances = num_instances - 1, num_studies = num_studies - ? "
        "WHERE patient_id = ?",
        (gone_study, patient_id),
    )
    cur.execute("DELETE FROM patient WHERE patient_id = ? AND num_instances <= 0", (patient_id,))


@dataclass
class _Pending:
    record: InstanceRecord
    replace: bool
    future: Future[None]


class Index:
    """Ingest (group-committed) and lookups over a :class:`Database`."""

    def __init__(self, db: Database, *, max_batch: int = 256) -> None:
        self.db = db
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._cv = threading.Condition()
        self._leading = False  # a thread is writing a batch right now
        self._stop = False
        self.commits = 0  # number of transactions (for metrics and the benchmark)

    # -- ingest ------------------------------------------------------------------------------
    def commit(self, record: InstanceRecord, *, replace: bool = False, timeout: float = 60) -> None:
        """Index ``record`` durably; returns only after its transaction committed.

        Group commit without a committer thread: the caller queues its row; if no
        thread is writing, it becomes the leader and commits everything queued
        (its own row included) in one transaction; otherwise it waits for a leader
        to commit it. Alone, a store commits in its own thread (no hand-off); under
        load, N stores share one commit. ``replace`` drops an existing row for the
        same SOP Instance UID first (overwrite). Raises what the database raised, or
        :class:`concurrent.futures.TimeoutError` (the row may still commit later).
        """
        fut: Future[None] = Future()
        deadline = time.monotonic() + timeout
        with self._cv:
            if self._stop:
                raise RuntimeError("index is shutting down")
            self._queue.append(_Pending(record, replace, fut))
            while not fut.done():
                if not self._leading:
                    self._lead_locked()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FuturesTimeout("index commit did not complete in time")
                self._cv.wait(remaining)
        fut.result()

    def _lead_locked(self) -> None:
        """Write one batch from the queue; called and returns with ``_cv`` held."""
        self._leading = True
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        self._cv.release()
        try:
            self._write(batch)
        finally:
            self._cv.acquire()
            self._leading = False
            self._cv.notify_all()

    def _write(self, batch: list[_Pending]) -> None:
        try:
            with self.db.transaction() as cur:
                for p in batch:
                    if p.replace:
                        _delete_instance(cur, p.record.sop_uid)
                    _insert_hierarchy(cur, p.record)
            self.commits += 1
        except Exception:  # noqa: BLE001 - retry one by one so one bad row fails alone
            for p in batch:
                try:
                    self._write_one(p)
                except Exception as exc:  # noqa: BLE001 - reported to that store's caller
                    p.future.set_exception(exc)
                else:
                    p.future.set_result(None)
            return
        for p in batch:
            p.future.set_result(None)

    def _write_one(self, p: _Pending, attempts: int = 5) -> None:
        """One row in its own transaction. Several archive nodes writing one study's
        counts can deadlock (PostgreSQL aborts one) or, under stricter isolation, fail
        to serialise: such a transaction is tried again, with a short random backoff."""
        for attempt in range(1, attempts + 1):
            try:
                with self.db.transaction() as cur:
                    if p.replace:
                        _delete_instance(cur, p.record.sop_uid)
                    _insert_hierarchy(cur, p.record)
                self.commits += 1
                return
            except Exception as exc:
                if attempt == attempts or getattr(exc, "sqlstate", None) not in _RETRYABLE:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * attempt)

    def close(self) -> None:
        """Commit anything still queued (timed-out callers' rows), then close."""
        with self._cv:
            self._stop = True
            while self._leading:
                self._cv.wait(1.0)
            while self._queue:
                self._lead_locked()
        self.db.close()

    # -- lookups -----------------------------------------------------------------------------
    def get(self, sop_uid: str) -> StoredInstance | None:
        """The indexed instance with this SOP Instance UID, if any."""
        rows = self.db.query(f"SELECT {_STORED_COLS} FROM instance WHERE sop_uid = ?", (sop_uid,))
        return StoredInstance(*rows[0]) if rows else None

    def instances(self, where: str = "", params: tuple[object, ...] = ()) -> list[StoredInstance]:
        """Instances matching a WHERE clause over ``instance`` (all when empty)."""
        sql = f"SELECT {_STORED_COLS} FROM instance"
        if where:
            sql += " WHERE " + where
        return [StoredInstance(*r) for r in self.db.query(sql, params)]

    def delete(self, sop_uid: str) -> None:
        """Remove one instance from the index (its file is the caller's business)."""
        with self.db.transaction() as cur:
            _delete_instance(cur, sop_uid)

    def move_tier(self, sop_uid: str, tier: str, rel_path: str) -> None:
        """Point an instance at its copy on another tier."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE instance SET tier = ?, rel_path = ? WHERE sop_uid = ?",
                (tier, rel_path, sop_uid),
            )

    def flag(self, inst: StoredInstance, reason: str) -> None:
        """Record that a read of ``inst`` found its file changed (see :meth:`flagged`)."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO flagged (sop_uid, sha256, reason, flagged_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sop_uid, sha256) DO UPDATE SET reason = excluded.reason, "
                "flagged_at = excluded.flagged_at",
                (inst.sop_uid, inst.sha256, reason, time.time()))

    def flagged(self) -> list[tuple[StoredInstance, str, float]]:
        """Flagged instances that are still indexed as they were when flagged (a deleted
        or re-stored instance drops out): (instance, reason, when)."""
        cols = ", ".join(f"i.{c.strip()}" for c in _STORED_COLS.split(","))
        rows = self.db.query(
            f"SELECT {cols}, f.reason, f.flagged_at FROM flagged f JOIN instance i "
            "ON i.sop_uid = f.sop_uid AND i.sha256 = f.sha256 ORDER BY f.flagged_at")
        return [(StoredInstance(*r[:-2]), str(r[-2]), float(r[-1])) for r in rows]

    def touch_study(self, study_uid: str) -> None:
        """Record an access (retrieve) for lifecycle's not_accessed_days."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE study SET last_access = ? WHERE study_uid = ?", (time.time(), study_uid)
            )
