"""The archive's worklist: scheduled procedure steps kept in the index, served as a
Modality Worklist (C-FIND, PS3.4 K) and as UPS-RS workitems (PS3.18 11), and completed
automatically once their study has arrived and gone quiet.

An item is one data set (kept as DICOM JSON in the ``worklist`` table) plus the columns
the index filters on. Its life follows the UPS state machine (PS3.4 CC.1.1):
SCHEDULED -> IN PROGRESS (claimed with a Transaction UID) -> COMPLETED or CANCELED; a
SCHEDULED item may also be cancelled directly. The Modality Worklist offers the items
that are still SCHEDULED.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName

from pacsinfra.errors import PacsinfraError
from pacsinfra.pacs.archive.db import Database
from pacsinfra.pacs.archive.worklistmatch import (
    SPS,
    IdentifierError,
    check_identifier,
    dataset_matches,
    project,
)
from pacsinfra.pacs.dicom import valid_uid

LOG = logging.getLogger("pacsinfra.archive.worklist")
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
UPS_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # Unified Procedure Step - Push
SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
# DIMSE statuses of a C-FIND
PENDING, SUCCESS, CANCEL, IDENTIFIER_MISMATCH, UNABLE = 0xFF00, 0x0000, 0xFE00, 0xA900, 0xC000


class WorklistError(PacsinfraError):
    """A worklist item cannot be created or changed; ``status`` is the HTTP answer
    (400 bad item, 404 no such item, 409 not allowed in its state)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Item:
    """One stored worklist item."""

    uid: str
    state: str
    dataset: Dataset
    transaction_uid: str | None


def _first_step(ds: Dataset) -> Dataset:
    steps = ds.get(SPS)
    return steps[0] if steps else Dataset()


def normalise(ds: Dataset, uid: str | None = None) -> Dataset:
    """Check a new item and fill what the archive assigns: its SOP Instance UID, a Study
    Instance UID, the state SCHEDULED. Raises :class:`WorklistError` (400)."""
    try:
        return _normalise(ds, uid)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # odd values from pydicom
        raise WorklistError(400, f"the item is not a valid data set: {exc}") from None


def _check_values(ds: Dataset) -> None:
    """Every value of the plain types DICOM JSON gives (a nested object where a string
    belongs is refused)."""
    for elem in ds:
        if elem.VR == "SQ":
            for sub in elem.value or []:
                _check_values(sub)
            continue
        value = elem.value
        values = list(value) if isinstance(value, list | MultiValue) else [value]
        for v in values:
            if v is not None and not isinstance(v, str | int | float | bytes | PersonName):
                raise WorklistError(400, f"{elem.keyword or elem.tag}: a value of the "
                                         "wrong type")


def _normalise(ds: Dataset, uid: str | None) -> Dataset:
    _check_values(ds)
    uid = uid or str(ds.get("SOPInstanceUID", "")) or generate_uid()
    if not valid_uid(uid):
        raise WorklistError(400, f"{uid!r} is not a valid workitem UID")
    if str(ds.get("SOPInstanceUID", uid)) != uid:
        raise WorklistError(400, "SOPInstanceUID in the data set differs from the workitem UID")
    state = str(ds.get("ProcedureStepState", SCHEDULED) or SCHEDULED)
    if state != SCHEDULED:
        raise WorklistError(400, "a new workitem must be SCHEDULED (ProcedureStepState)")
    steps = ds.get(SPS)
    if not steps or len(steps) != 1:
        raise WorklistError(400, f"{SPS} with exactly one item is required")
    step = steps[0]
    if not str(step.get("ScheduledProcedureStepStartDate", "")):
        raise WorklistError(400, "ScheduledProcedureStepStartDate is required in "
                                 f"{SPS}")
    try:
        check_identifier(ds)  # dates, times and UIDs in their DICOM forms
    except IdentifierError as exc:
        raise WorklistError(400, str(exc)) from None
    for keyword in ("StudyInstanceUID",):
        if keyword in ds and not valid_uid(str(ds[keyword].value)):
            raise WorklistError(400, f"{keyword} is not a valid UID")
    ds.SOPClassUID = UPS_SOP_CLASS
    ds.SOPInstanceUID = uid
    ds.ProcedureStepState = SCHEDULED
    if not str(ds.get("StudyInstanceUID", "")):
        ds.StudyInstanceUID = generate_uid()
    return ds


def _json(ds: Dataset) -> str:
    return json.dumps(ds.to_json_dict(bulk_data_threshold=1 << 30,
                                      bulk_data_element_handler=lambda e: ""))


class Worklist:
    """Worklist items in the archive index."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading -----------------------------------------------------------------------------
    def get(self, uid: str) -> Item | None:
        """The item ``uid``, or None."""
        rows = self.db.query("SELECT uid, state, dataset, transaction_uid FROM worklist "
                             "WHERE uid = ?", (uid,))
        return self._item(rows[0]) if rows else None

    @staticmethod
    def _item(row: tuple[Any, ...]) -> Item:
        ds = Dataset.from_json(row[2])
        ds.ProcedureStepState = row[1]
        return Item(row[0], row[1], ds, row[3])

    def items(self, states: tuple[str, ...] = STATES) -> list[Item]:
        """Items in ``states``, by scheduled start."""
        marks = ",".join("?" for _ in states)
        rows = self.db.query(f"SELECT uid, state, dataset, transaction_uid FROM worklist "
                             f"WHERE state IN ({marks}) ORDER BY start_date, uid", states)
        return [self._item(r) for r in rows]

    def search(self, query: Dataset, states: tuple[str, ...] = STATES,
               ) -> Iterator[tuple[Item, Dataset]]:
        """Items matching ``query`` (K.6 matching), each with its projected answer.
        Raises :class:`IdentifierError` for a query no item can be matched with."""
        check_identifier(query)
        for item in self.items(states):
            if dataset_matches(query, item.dataset):
                yield item, project(query, item.dataset)

    # -- changing ----------------------------------------------------------------------------
    def add(self, ds: Dataset, uid: str | None = None) -> str:
        """Store a new SCHEDULED item; its UID. 409 if the UID exists."""
        ds = normalise(ds, uid)
        step = _first_step(ds)
        uid = str(ds.SOPInstanceUID)
        try:  # values pydicom cannot encode are the sender's to fix
            text = _json(ds)
        except (ValueError, TypeError, AttributeError) as exc:
            raise WorklistError(400, f"the item cannot be stored as DICOM JSON: {exc}") from None
        now = time.time()
        with self.db.transaction() as cur:
            if cur.execute("SELECT 1 FROM worklist WHERE uid = ?", (uid,)).fetchone():
                raise WorklistError(409, f"workitem {uid} already exists")
            cur.execute(
                "INSERT INTO worklist (uid, state, patient_id, accession, study_uid, "
                "start_date, modality, station_ae, created_at, updated_at, transaction_uid, "
                "dataset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (uid, SCHEDULED, str(ds.get("PatientID", "")),
                 str(ds.get("AccessionNumber", "")), str(ds.StudyInstanceUID),
                 str(step.get("ScheduledProcedureStepStartDate", "")),
                 str(step.get("Modality", "")), str(step.get("ScheduledStationAETitle", "")),
                 now, now, text))
        return uid

    def change_state(self, uid: str, state: str, transaction_uid: str | None) -> str:
        """Move ``uid`` to ``state`` as the UPS state machine allows; returns a warning
        (empty when none). Raises :class:`WorklistError` (400/404/409)."""
        if state not in (IN_PROGRESS, COMPLETED, CANCELED):
            raise WorklistError(400, f"ProcedureStepState {state!r} cannot be requested")
        if not transaction_uid or not valid_uid(transaction_uid):
            raise WorklistError(400, "a valid TransactionUID (0008,1195) is required")
        with self.db.transaction() as cur:
            row = cur.execute("SELECT state, transaction_uid FROM worklist WHERE uid = ?",
                              (uid,)).fetchone()
            if row is None:
                raise WorklistError(404, f"no workitem {uid}")
            current, held = row
            if state == IN_PROGRESS:
                if current != SCHEDULED:
                    raise WorklistError(409, f"workitem is {current}, not SCHEDULED: "
                                             "it cannot be claimed")
            elif current == state:
                return f"workitem is already {state}"
            elif current != IN_PROGRESS:
                raise WorklistError(409, f"workitem is {current}, not IN PROGRESS: "
                                         f"it cannot become {state}")
            elif transaction_uid != held:
                raise WorklistError(409, "TransactionUID does not match the one that "
                                         "claimed the workitem")
            cur.execute("UPDATE worklist SET state = ?, transaction_uid = ?, updated_at = ? "
                        "WHERE uid = ?", (state, transaction_uid, time.time(), uid))
        return ""

    def cancel(self, uid: str) -> str:
        """Cancel a SCHEDULED item (a cancel request or ``worklist cancel``); returns a
        warning when it already was. 404/409 as :meth:`change_state`."""
        with self.db.transaction() as cur:
            row = cur.execute("SELECT state FROM worklist WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                raise WorklistError(404, f"no workitem {uid}")
            if row[0] == CANCELED:
                return "workitem is already CANCELED"
            if row[0] != SCHEDULED:
                raise WorklistError(409, f"workitem is {row[0]}: only a SCHEDULED workitem "
                                         "can be cancelled by request")
            cur.execute("UPDATE worklist SET state = ?, updated_at = ? WHERE uid = ?",
                        (CANCELED, time.time(), uid))
        return ""

    def complete_quiet(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Complete every open item whose study (by Study Instance UID, else Accession
        Number) has instances and received none for ``quiet_s``; the UIDs completed."""
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT w.uid, (SELECT MAX(i.received_at) FROM instance i WHERE i.study_uid IN "
            "(SELECT s.study_uid FROM study s WHERE s.study_uid = w.study_uid OR "
            "(w.accession <> '' AND s.accession_number = w.accession))) "
            "FROM worklist w WHERE w.state IN (?, ?)", (SCHEDULED, IN_PROGRESS))
        done = []
        for uid, last in rows:
            if last is None or now - float(last) < quiet_s:
                continue
            with self.db.transaction() as cur:
                cur.execute("UPDATE worklist SET state = ?, updated_at = ? WHERE uid = ? "
                            "AND state IN (?, ?)", (COMPLETED, now, uid, SCHEDULED,
                                                    IN_PROGRESS))
                if cur.rowcount:
                    done.append(uid)
        for uid in done:
            LOG.info("worklist item %s completed: its study arrived and has been quiet "
                     "for %.0f s", uid, quiet_s)
        return done


def mwl_find(worklist: Worklist, ident: Dataset, *,
             cancelled: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, Any]]:
    """C-FIND on the Modality Worklist model: (status, identifier) per SCHEDULED match,
    then 0xFE00 if cancelled; 0xA900 for an identifier no worklist matches with, 0xC000
    when the index cannot answer."""
    try:
        matches = list(worklist.search(ident, (SCHEDULED,)))
    except IdentifierError as exc:
        LOG.info("worklist C-FIND refused: %s", exc)
        yield IDENTIFIER_MISMATCH, None
        return
    except Exception:  # noqa: BLE001 - index trouble or an undecodable identifier
        LOG.exception("worklist C-FIND failed")
        yield UNABLE, None
        return
    for _item, answer in matches:
        if cancelled():
            yield CANCEL, None
            return
        yield PENDING, answer


class AutoCompleter:
    """Completes items whose study has gone quiet, checking every few seconds."""

    def __init__(self, worklist: Worklist, quiet_s: float,
                 may_run: Callable[[], bool] = lambda: True) -> None:
        self.worklist = worklist
        self.quiet_s = quiet_s
        self.may_run = may_run  # a cluster node: only while it holds the leader lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worklist", daemon=True)

    def start(self) -> None:
        """Start checking in a background thread."""
        self._thread.start()

    def _run(self) -> None:
        interval = min(max(self.quiet_s / 4, 0.2), 10.0)
        while not self._stop.wait(interval):
            if not self.may_run():
                continue
            try:
                self.worklist.complete_quiet(self.quiet_s)
            except Exception:  # noqa: BLE001 - index trouble: try again next round
                LOG.exception("worklist auto-completion failed")

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
