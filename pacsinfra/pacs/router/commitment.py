"""Storage commitment towards destinations that require it (the router as the SCU).

After a batch reached a destination with ``storage_commitment``, its rows become
``committing`` (their spool files stay) and one N-ACTION asks the destination to commit
them under a new Transaction UID. The destination's N-EVENT-REPORT arrives at the
router's listener (or, if the destination answers at once, on the N-ACTION's own
association) and :meth:`Commitments.report` ends the rows: committed ones are done, the
others count as a failed attempt and are sent again. A report overdue by
``commitment_timeout`` is a failed attempt for every row still waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydicom.uid import generate_uid
from pynetdicom import build_context

from pacsinfra.pacs.commitment import (
    REQUEST_ACTION,
    STORAGE_COMMITMENT,
    SYNTAXES,
    WELL_KNOWN_INSTANCE,
    Report,
    parse_report,
    request_dataset,
)
from pacsinfra.pacs.config_common import Limits, Peer
from pacsinfra.pacs.dicom import associate, make_ae
from pacsinfra.pacs.router.config import Destination
from pacsinfra.pacs.router.queue import Item, Queue

LOG = logging.getLogger("pacsinfra.router")
# a report on the N-ACTION's association is taken if it comes this quickly; later ones
# come on a new association to the listener
_WAIT_ON_ASSOCIATION_S = 2.0


def request(dest: Destination, calling_ae: str, limits: Limits, txn: str,
            refs: list[tuple[str, str]], on_report: Callable[[Report], Any]) -> str | None:
    """N-ACTION "Request Storage Commitment" for ``refs``; None when the destination
    answered Success, else why not. A report sent on this association within a moment
    goes to ``on_report``."""
    ae = make_ae(calling_ae, limits)
    ae.acse_timeout = min(limits.acse_timeout, 10)
    peer = Peer(ae_title=dest.ae_title, host=dest.host or "", port=dest.port, tls=dest.tls)
    got: list[Report] = []

    def reported(event: Any) -> tuple[int, None]:
        try:
            got.append(parse_report(event.event_information))
        except ValueError as exc:
            LOG.warning("storage commitment report from %s unusable: %s", dest.ae_title, exc)
            return 0x0115, None  # invalid argument value
        on_report(got[-1])
        return 0x0000, None

    from pynetdicom import evt

    try:
        assoc = associate(ae, peer, contexts=[build_context(STORAGE_COMMITMENT, SYNTAXES)],
                          evt_handlers=[(evt.EVT_N_EVENT_REPORT, reported)])
    except Exception as exc:  # noqa: BLE001 - TLS/socket setup errors
        return f"storage commitment: cannot associate: {exc}"
    try:
        if not assoc.is_established:
            return f"storage commitment: {dest.ae_title} refused the association"
        if not assoc.accepted_contexts:
            return f"storage commitment: {dest.ae_title} does not offer it (context refused)"
        status, _ = assoc.send_n_action(request_dataset(txn, refs), REQUEST_ACTION,
                                        STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
        code = getattr(status, "Status", None) if status is not None else None
        if code is None:
            return f"storage commitment: no N-ACTION response from {dest.ae_title}"
        if int(code) != 0:
            return f"storage commitment: {dest.ae_title} answered N-ACTION with 0x{int(code):04X}"
        deadline = time.monotonic() + _WAIT_ON_ASSOCIATION_S
        while not got and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.02)
        if got:
            # the handler ran; its N-EVENT-REPORT-RSP goes out right after it returns:
            # releasing at once could leave the destination without its answer
            time.sleep(0.2)
        return None
    finally:
        if assoc.is_established:
            assoc.release()


class Commitments:
    """Ends ``committing`` rows from reports and deadlines (see the module docstring).

    ``done(items)`` and ``failed(item, status, error)`` are the forwarder's own
    bookkeeping for a delivered and a failed attempt.
    """

    def __init__(self, queue: Queue, done: Callable[[list[Item]], None],
                 failed: Callable[[Item, int | None, str], None]) -> None:
        self.queue = queue
        self._done = done
        self._failed = failed

    @staticmethod
    def new_transaction() -> str:
        """A Transaction UID for one request."""
        return str(generate_uid())

    def report(self, rep: Report) -> int:
        """Apply a destination's report; the number of rows it ended."""
        rows = self.queue.awaiting(rep.transaction_uid)
        if not rows:
            LOG.info("storage commitment report %s: no rows wait for it (already ended)",
                     rep.transaction_uid)
            return 0
        committed = [r for r in rows if r.sop_uid in rep.committed]
        if committed:
            self._done(committed)
        for r in rows:
            if r.sop_uid in rep.committed:
                continue
            reason = rep.failed.get(r.sop_uid)
            why = (f"not committed by {r.node or r.dest}: failure reason 0x{reason:04X}"
                   if reason is not None else
                   f"not in the storage commitment report of {r.node or r.dest}")
            self._failed(r, reason, why)
        LOG.info("storage commitment %s: %d committed, %d not", rep.transaction_uid,
                 len(committed), len(rows) - len(committed))
        return len(rows)

    def expire(self, now: float | None = None) -> int:
        """Rows whose report is overdue: a failed attempt each (they are sent again)."""
        n = 0
        for item, txn in self.queue.overdue(now):
            self._failed(item, None, f"no storage commitment report from {item.node or item.dest} "
                         f"(transaction {txn}) in time")
            n += 1
        return n


__all__ = ["Commitments", "request"]
