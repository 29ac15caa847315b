"""Refused connections and associations: one record type, logged and audited without
letting a flood of them flood the log.

A refusal (A-ASSOCIATE-RJ, an A-ABORT of a misbehaving peer, a connection closed
before it associated) is logged and written to the audit trail as a PS3.15 A.5.3.11
"Security Alert" (110113) of type "Node Authentication" (110126), with the peer's
network address and the reason. The first refusal of a kind from an address is
written at once; repeats within ``window`` seconds are counted and written as one
record with their number (``count``) when the window has passed, so each refusal
is accounted for and an attacker opening thousands of connections a second writes
a few lines, not thousands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LOG = logging.getLogger("pacsinfra.pacs.refusals")
_MAX_KEYS = 4096  # (address, kind) pairs remembered; the oldest are written out first


@dataclass(frozen=True)
class Refusal:
    """A connection or association refused or cut short.

    ``kind``: a short code for grouping (``calling-ae``, ``limit``, ``per-address``,
    ``too-large``, ``timeout``, ``evicted``, ``protocol``, ``tls``, ``draining``,
    ``rejected``); ``reason``: what happened, for people; ``aborted``: an association
    that was established and then aborted (otherwise refused before).
    """

    address: str
    kind: str
    reason: str
    calling: str = ""
    called: str = ""
    aborted: bool = False


def audit_record(refusal: Refusal, count: int, ae_title: str) -> dict[str, Any]:
    """The PS3.15 A.5.3.11 shaped audit message for ``count`` refusals like ``refusal``."""
    what = "association aborted" if refusal.aborted else "association refused"
    return {
        "EventIdentification": {
            "EventID": {"code": "110113", "codeSystemName": "DCM",
                        "displayName": "Security Alert"},
            "EventActionCode": "E",
            "EventDateTime": datetime.now(UTC).isoformat(),
            "EventOutcomeIndicator": 4,  # minor failure: the request was not served
            "EventTypeCode": [{"code": "110126", "codeSystemName": "DCM",
                               "displayName": "Node Authentication"}],
            "EventOutcomeDescription": f"{what}: {refusal.reason}",
        },
        "ActiveParticipant": [
            {"UserID": refusal.calling or "unknown", "UserIsRequestor": True,
             "NetworkAccessPointTypeCode": 2, "NetworkAccessPointID": refusal.address,
             "RoleIDCode": {"code": "110153", "codeSystemName": "DCM",
                            "displayName": "Source Role ID"}},
            {"UserID": ae_title, "UserIsRequestor": False,
             "RoleIDCode": {"code": "110152", "codeSystemName": "DCM",
                            "displayName": "Destination Role ID"}},
        ],
        "AuditSourceIdentification": {"AuditSourceID": ae_title},
        "ParticipantObjectIdentification": [{
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 13,
            "ParticipantObjectIDTypeCode": {"code": "110182", "codeSystemName": "DCM",
                                            "displayName": "Node ID"},
            "ParticipantObjectID": refusal.address,
            "ParticipantObjectDetail": [
                {"type": "kind", "value": refusal.kind},
                {"type": "count", "value": str(count)},
                {"type": "called", "value": refusal.called},
            ],
        }],
    }


class RefusalLog:
    """Where a listener reports refusals: logged, and audited through ``audit(refusal,
    count)`` when the service has an audit trail; repeats grouped (see the module)."""

    def __init__(self, audit: Callable[[Refusal, int], None] | None, *,
                 window: float = 10.0) -> None:
        self.audit = audit
        self.window = window
        self._lock = threading.Lock()
        # (address, kind) -> [window start, repeats not yet written, the latest of them]
        self._recent: dict[tuple[str, str], list[Any]] = {}

    def __call__(self, refusal: Refusal) -> None:
        """Report one refusal."""
        now = time.monotonic()
        due: list[tuple[Refusal, int]] = []
        with self._lock:
            key = (refusal.address, refusal.kind)
            entry = self._recent.get(key)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                entry[2] = refusal
            else:
                if entry is not None and entry[1]:
                    due.append((entry[2], entry[1]))
                self._recent.pop(key, None)
                self._recent[key] = [now, 0, refusal]
                due.append((refusal, 1))
            due += self._expired(now)
        for item, count in due:
            self._write(item, count)

    def _expired(self, now: float) -> list[tuple[Refusal, int]]:
        out: list[tuple[Refusal, int]] = []
        for key in list(self._recent):
            start, repeats, last = self._recent[key]
            if now - start >= self.window or len(self._recent) > _MAX_KEYS:
                del self._recent[key]
                if repeats:
                    out.append((last, repeats))
            else:
                break  # insertion order is window order: the rest are younger
        return out

    def flush(self) -> None:
        """Write every grouped repeat now (at shutdown)."""
        with self._lock:
            due = [(last, n) for _, n, last in self._recent.values() if n]
            self._recent.clear()
        for item, count in due:
            self._write(item, count)

    def _write(self, refusal: Refusal, count: int) -> None:
        who = f"{refusal.calling or '?'} at {refusal.address}"
        times = f" ({count} times)" if count > 1 else ""
        verb = "aborted association from" if refusal.aborted else "refused"
        LOG.warning("%s %s%s: %s", verb, who, times, refusal.reason)
        if self.audit is not None:
            try:
                self.audit(refusal, count)
            except Exception:  # noqa: BLE001 - the audit trail failing must not stop service
                LOG.exception("could not audit a refusal")
