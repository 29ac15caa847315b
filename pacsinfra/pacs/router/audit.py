"""The router's audit trail: JSON lines shaped after PS3.15 A.5 (DICOM audit messages).

Events: associations refused or aborted for misbehaving (110113 "Security Alert",
see :mod:`pacsinfra.pacs.refusals`), instances received (110104 "DICOM Instances Transferred", router as
destination), forwarded (same event, router as source, the destination AE as
destination), dead-lettered (same event, outcome 8 "serious failure") and dropped
by a rule (110100 "Application Activity", outcome 0: a deliberate drop is not a
failure; the rule is named in the object's detail).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from pacsinfra.fsutil import open_private_append
from pacsinfra.pacs.config_common import AuditConfig
from pacsinfra.pacs.refusals import Refusal, audit_record

_TRANSFERRED = {"code": "110104", "codeSystemName": "DCM",
                "displayName": "DICOM Instances Transferred"}
_ACTIVITY = {"code": "110100", "codeSystemName": "DCM", "displayName": "Application Activity"}
_SOURCE = {"code": "110153", "codeSystemName": "DCM", "displayName": "Source Role ID"}
_DEST = {"code": "110152", "codeSystemName": "DCM", "displayName": "Destination Role ID"}


class AuditLog:
    """Appends one JSON object per event to a file (flushed per line); thread-safe."""

    def __init__(self, cfg: AuditConfig, ae_title: str) -> None:
        self._ae = ae_title
        self._lock = threading.Lock()
        self._file = open_private_append(cfg.file) if cfg.file else None

    def _emit(self, event: dict[str, str], action: str, outcome: int, source: str,
              dest: str, study: str, sop: str, note: str = "") -> None:
        if self._file is None:
            return
        obj: dict[str, Any] = {
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectIDTypeCode": {"code": "110180", "codeSystemName": "DCM",
                                            "displayName": "Study Instance UID"},
            "ParticipantObjectID": study,
            "ParticipantObjectDescription": {"SOPInstanceUID": sop},
        }
        if note:
            obj["ParticipantObjectDetail"] = [{"type": "note", "value": note}]
        msg = {
            "EventIdentification": {
                "EventID": event, "EventActionCode": action,
                "EventDateTime": datetime.now(UTC).isoformat(),
                "EventOutcomeIndicator": outcome,
            },
            "ActiveParticipant": [
                {"UserID": source, "UserIsRequestor": True, "RoleIDCode": _SOURCE},
                {"UserID": dest, "UserIsRequestor": False, "RoleIDCode": _DEST},
            ],
            "AuditSourceIdentification": {"AuditSourceID": self._ae},
            "ParticipantObjectIdentification": [obj],
        }
        self._write(msg)

    def _write(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, separators=(",", ":"))
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()

    def refused(self, refusal: Refusal, count: int = 1) -> None:
        """A connection or association refused, or aborted for misbehaving (PS3.15
        A.5.3.11 shaped, see :mod:`pacsinfra.pacs.refusals`)."""
        self._write(audit_record(refusal, count, self._ae))

    def received(self, calling: str, study: str, sop: str, targets: list[str]) -> None:
        """An instance was received and queued for ``targets``."""
        self._emit(_TRANSFERRED, "C", 0, calling, self._ae, study, sop,
                   "queued for " + ",".join(targets))

    def dropped(self, calling: str, study: str, sop: str, why: str) -> None:
        """An instance was acknowledged and deliberately not forwarded."""
        self._emit(_ACTIVITY, "E", 0, calling, self._ae, study, sop, why)

    def forwarded(self, node: str, ae: str, study: str, sop: str) -> None:
        """A destination acknowledged an instance."""
        self._emit(_TRANSFERRED, "R", 0, self._ae, ae, study, sop, f"destination {node}")

    def dead_lettered(self, node: str, ae: str, study: str, sop: str, error: str) -> None:
        """An instance will not be sent to ``node`` again without `queue retry`."""
        self._emit(_TRANSFERRED, "R", 8, self._ae, ae, study, sop, f"{node}: {error}")

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
