"""Rejection notes (IHE IOCM): Key Object Selection documents that take instances away.

A KOS whose document title is one of the rejection codes (DCM 113001 Rejected for
Quality Reasons, 113037 Rejected for Patient Safety Reasons, 113038 Incorrect Modality
Worklist Entry, 113039 Data Retention Policy Expired) is stored like any instance, and
then every instance its Current Requested Procedure Evidence Sequence references:

- leaves the index's ``instance`` table (the study and series counts follow, a series or
  study left empty goes), so no C-FIND, C-MOVE, C-GET, QIDO or WADO sees it again;
- is recorded in ``rejection`` with the note, its code and (unless 113039) where its
  file still is, so ``archive check`` knows the file and an admin can restore it;
- with 113039, has its file deleted the crash-safe way deletions go (journalled in
  ``pending_unlink`` in the same transaction).

A rejected instance sent again is refused (0x0111), so it never becomes visible again;
a note that arrives before the instances it names works the same way. Restoring puts
the instances back from their files (113039 ones cannot come back).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from pacsinfra.pacs.archive.attrs import DatasetUnreadable, read_indexed
from pacsinfra.pacs.archive.index import Index, InstanceRecord, _delete_instance, _insert_hierarchy
from pacsinfra.pacs.archive.storage import Tier
from pacsinfra.pacs.fastscp.part10 import read_meta

LOG = logging.getLogger("pacsinfra.archive.rejection")

KOS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
RETENTION_EXPIRED = "113039"  # the one that deletes
_RECHECK_S = 1.0  # how long "no rejections at all" is believed without asking the index


@dataclass(frozen=True)
class Reference:
    """One instance a note names."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_uid: str


@dataclass(frozen=True)
class Note:
    """A rejection note: its SOP Instance UID, its code and what it rejects."""

    note_uid: str
    code: str
    refs: list[Reference]


def parse_note(ds: Any) -> Note | None:
    """The rejection ``ds`` carries, or None when it is not a rejection note."""
    if str(ds.get("SOPClassUID", "")) != KOS:
        return None
    titles = ds.get("ConceptNameCodeSequence") or []
    if not titles:
        return None
    title = titles[0]
    code = str(title.get("CodeValue", ""))
    if code not in TITLES or str(title.get("CodingSchemeDesignator", "")) != "DCM":
        return None
    refs: list[Reference] = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        study_uid = str(study.get("StudyInstanceUID", ""))
        for series in study.get("ReferencedSeriesSequence") or []:
            series_uid = str(series.get("SeriesInstanceUID", ""))
            for item in series.get("ReferencedSOPSequence") or []:
                sop = str(item.get("ReferencedSOPInstanceUID", ""))
                if sop:
                    refs.append(Reference(study_uid, series_uid,
                                          str(item.get("ReferencedSOPClassUID", "")), sop))
    return Note(str(ds.SOPInstanceUID), code, refs)


@dataclass(frozen=True)
class Rejected:
    """One row of ``rejection``: an instance taken away, and where its file is."""

    sop_uid: str
    study_uid: str
    series_uid: str
    code: str
    note_uid: str
    rejected_at: float
    tier: str | None  # None: deleted (113039), or the instance never arrived
    rel_path: str | None


_COLS = "sop_uid, study_uid, series_uid, code, note_uid, rejected_at, tier, rel_path"


class Rejections:
    """Applies, looks up, lists and undoes rejections over the archive's index.

    ``lock_for`` gives the lock that serialises stores of one SOP Instance UID: applying
    holds those of every instance it names, so a store racing the note either lands
    before (and is taken away) or after (and is refused).
    """

    def __init__(self, index: Index, tiers: dict[str, Tier],
                 lock_for: Callable[[str], threading.Lock]) -> None:
        self.index = index
        self.tiers = tiers
        self.lock_for = lock_for
        self._any: tuple[float, bool] = (0.0, False)

    # -- the store path ------------------------------------------------------------------------
    def rejected(self, sop_uid: str) -> str | None:
        """The rejection code of ``sop_uid``, or None. Costs nothing on an archive that has
        no rejections (checked at most once a second, as other processes may add some)."""
        checked, exists = self._any
        now = time.monotonic()
        if now - checked > _RECHECK_S:
            exists = bool(self.index.db.query("SELECT 1 FROM rejection LIMIT 1"))
            self._any = (now, exists)
        if not exists:
            return None
        rows = self.index.db.query("SELECT code FROM rejection WHERE sop_uid = ?", (sop_uid,))
        return str(rows[0][0]) if rows else None

    @contextmanager
    def _locked(self, uids: list[str]) -> Iterator[None]:
        # several stripes at once, always in one order: two notes never deadlock
        locks = {id(lk): lk for lk in (self.lock_for(u) for u in uids)}
        with ExitStack() as stack:
            for key in sorted(locks):
                stack.enter_context(locks[key])
            yield

    def apply(self, note: Note, actor: str, audit: Any = None) -> tuple[int, int]:
        """Take away what ``note`` names; (instances hidden or deleted now, names of
        instances not here yet). Idempotent: a note applied again changes nothing."""
        now = time.time()
        unlink: list[tuple[str, str, str]] = []
        taken: dict[str, int] = {}  # study -> instances taken away now
        with self._locked([r.sop_uid for r in note.refs]), self.index.db.transaction() as cur:
            for ref in note.refs:
                row = cur.execute("SELECT tier, rel_path, study_uid, series_uid FROM instance "
                                  "WHERE sop_uid = ?", (ref.sop_uid,)).fetchone()
                before = cur.execute("SELECT tier, rel_path FROM rejection WHERE sop_uid = ?",
                                     (ref.sop_uid,)).fetchone()
                tier = rel = None
                study, series = ref.study_uid, ref.series_uid
                if row is not None:
                    tier, rel, study, series = row
                    _delete_instance(cur, ref.sop_uid)
                    taken[study] = taken.get(study, 0) + 1
                elif before is not None:
                    tier, rel = before  # hidden by an earlier note: its file is still here
                if note.code == RETENTION_EXPIRED and tier is not None and rel is not None:
                    cur.execute("INSERT INTO pending_unlink (tier, rel_path, queued_at) "
                                "VALUES (?, ?, ?) ON CONFLICT (tier, rel_path) DO NOTHING",
                                (tier, rel, now))
                    unlink.append((tier, rel, ref.sop_uid))
                    tier = rel = None
                cur.execute(
                    "INSERT INTO rejection (sop_uid, study_uid, series_uid, code, note_uid, "
                    "rejected_at, tier, rel_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (sop_uid) DO UPDATE SET code = excluded.code, "
                    "note_uid = excluded.note_uid, tier = excluded.tier, "
                    "rel_path = excluded.rel_path",
                    (ref.sop_uid, study, series, note.code, note.note_uid, now, tier, rel))
        self._any = (time.monotonic(), True)
        if unlink:
            from pacsinfra.pacs.archive.delete import unlink_journalled

            for tier_name, rel_path, sop in unlink:
                try:
                    unlink_journalled(self.index, self.tiers, tier_name, rel_path, sop,
                                      self.lock_for)
                except OSError as exc:  # journalled: the next sweep finishes it
                    LOG.warning("rejection %s: could not unlink %s yet: %s", note.note_uid,
                                rel_path, exc)
        hidden = sum(taken.values())
        LOG.info("rejection note %s (%s %s) from %s: %d instance(s) %s, %d not here (yet)",
                 note.note_uid, note.code, TITLES[note.code], actor, hidden,
                 "deleted" if note.code == RETENTION_EXPIRED else "hidden",
                 len(note.refs) - hidden)
        if audit is not None:
            for study, n in sorted(taken.items()):
                audit.rejected(actor, study, n, note.code, TITLES[note.code])
        return hidden, len(note.refs) - hidden

    # -- administration ---------------------------------------------------------------------
    def listing(self) -> list[Rejected]:
        """Every rejected instance, by note."""
        return [Rejected(*r) for r in self.index.db.query(
            f"SELECT {_COLS} FROM rejection ORDER BY rejected_at, note_uid, sop_uid")]

    def restore(self, uid: str, actor: str) -> tuple[int, list[str]]:
        """Undo the rejection of ``uid`` (a note's SOP Instance UID: all it rejected; or one
        rejected instance): (instances visible again, why the others could not come back)."""
        rows = [Rejected(*r) for r in self.index.db.query(
            f"SELECT {_COLS} FROM rejection WHERE note_uid = ? OR sop_uid = ?", (uid, uid))]
        back, problems = 0, []
        for rej in rows:
            with self.lock_for(rej.sop_uid):
                why = self._restore_one(rej)
            if why:
                problems.append(f"{rej.sop_uid}: {why}")
            else:
                back += 1
        if rows:
            LOG.info("rejection of %s undone by %s: %d instance(s) back", uid, actor, back)
        return back, problems

    def _restore_one(self, rej: Rejected) -> str | None:
        if rej.tier is None or rej.rel_path is None:
            if rej.code == RETENTION_EXPIRED:
                why = "deleted (113 039, data retention policy expired): cannot come back"
            else:
                why = "never arrived: its rejection is lifted, so it can be stored"
            if rej.code == RETENTION_EXPIRED:
                return why
            with self.index.db.transaction() as cur:
                cur.execute("DELETE FROM rejection WHERE sop_uid = ?", (rej.sop_uid,))
            LOG.info("%s %s", rej.sop_uid, why)
            return None
        tier = self.tiers.get(rej.tier)
        if tier is None:
            return f"tier {rej.tier} is not configured"
        path = tier.path(rej.rel_path)
        try:
            meta = read_meta(path)
            data = path.read_bytes()
        except (OSError, ValueError) as exc:
            return f"its file {rej.tier}/{rej.rel_path} cannot be read: {exc}"
        ts, ds_offset = meta.transfer_syntax, meta.dataset_offset
        raw = memoryview(data)[ds_offset:]
        try:
            attrs = read_indexed(raw, ts)
        except DatasetUnreadable as exc:
            return f"its file {rej.tier}/{rej.rel_path} cannot be read: {exc}"
        record = InstanceRecord(
            sop_uid=rej.sop_uid, series_uid=attrs["series_uid"], study_uid=attrs["study_uid"],
            sop_class_uid=attrs["sop_class_uid"], transfer_syntax=ts, tier=rej.tier,
            rel_path=rej.rel_path, size=len(data), sha256=hashlib.sha256(raw).hexdigest(),
            ds_offset=ds_offset, received_at=time.time(), calling_ae="",
            **{k: v for k, v in attrs.items()
               if k not in ("sop_uid", "series_uid", "study_uid", "sop_class_uid")})
        with self.index.db.transaction() as cur:
            if cur.execute("SELECT 1 FROM instance WHERE sop_uid = ?",
                           (rej.sop_uid,)).fetchone() is None:
                _insert_hierarchy(cur, record)
            cur.execute("DELETE FROM rejection WHERE sop_uid = ?", (rej.sop_uid,))
        return None


__all__ = ["KOS", "TITLES", "Note", "Reference", "Rejected", "Rejections", "parse_note"]
