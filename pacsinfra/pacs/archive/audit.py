"""Audit messages shaped after PS3.15 A.5 (DICOM audit message schema), as JSON lines.

One object per event: ``EventIdentification`` (EventID code, action, outcome,
datetime), ``ActiveParticipant`` (the calling AE as source, this archive as
destination), ``ParticipantObjectIdentification`` (the study). Written to a file
(appended, flushed per message) and/or syslog.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import threading
from datetime import UTC, datetime
from typing import Any

from pacsinfra.fsutil import open_private_append
from pacsinfra.pacs.config_common import AuditConfig
from pacsinfra.pacs.refusals import Refusal, audit_record

# (code, codeSystemName, displayName) from DCM (PS3.16 CID 400/401)
_EVENTS = {
    "stored": ("110104", "DCM", "DICOM Instances Transferred"),
    "query": ("110112", "DCM", "Query"),
    "accessed": ("110103", "DCM", "DICOM Instances Accessed"),
    "deleted": ("110105", "DCM", "DICOM Study Deleted"),
    "authentication": ("110114", "DCM", "User Authentication"),
    "security": ("110113", "DCM", "Security Alert"),
    "corrupt": ("110113", "DCM", "Security Alert"),
    "rejected": ("110103", "DCM", "DICOM Instances Accessed"),
}
_ACTION = {"stored": "C", "query": "E", "accessed": "R", "deleted": "D",
           "authentication": "E", "security": "E", "corrupt": "E",
           "rejected": "U"}
# PS3.15 A.5.3.11 / A.5.3.9 event type codes of the refusals (CID 402 / 403)
_EVENT_TYPES = {
    "authentication": ("110122", "DCM", "Login"),
    "security": ("110132", "DCM", "Use of Restricted Function"),
}
MINOR_FAILURE = 4  # EventOutcomeIndicator: the request was refused, nothing changed
SERIOUS_FAILURE = 8  # EventOutcomeIndicator: the action was aborted (stored data went bad)


class AuditLog:
    """Appends audit messages; thread-safe."""

    def __init__(self, cfg: AuditConfig, ae_title: str) -> None:
        self._ae = ae_title
        self._lock = threading.Lock()
        self._file = open_private_append(cfg.file) if cfg.file else None
        self._syslog: logging.Logger | None = None
        if cfg.syslog:
            self._syslog = logging.getLogger("pacsinfra.audit")
            try:
                self._syslog.addHandler(logging.handlers.SysLogHandler(address="/dev/log"))
            except OSError:
                self._syslog.addHandler(logging.handlers.SysLogHandler())

    def _emit(self, kind: str, source: str, objects: list[dict[str, Any]], outcome: int, *,
              address: str | None = None, description: str | None = None) -> None:
        code, system, name = _EVENTS[kind]
        event: dict[str, Any] = {
            "EventID": {"code": code, "codeSystemName": system, "displayName": name},
            "EventActionCode": _ACTION[kind],
            "EventDateTime": datetime.now(UTC).isoformat(),
            "EventOutcomeIndicator": outcome,
        }
        if kind in _EVENT_TYPES:
            tcode, tsystem, tname = _EVENT_TYPES[kind]
            event["EventTypeCode"] = [{"code": tcode, "codeSystemName": tsystem,
                                       "displayName": tname}]
        if description:
            event["EventOutcomeDescription"] = description
        requestor: dict[str, Any] = {
            "UserID": source, "UserIsRequestor": True,
            "RoleIDCode": {"code": "110153", "displayName": "Source Role ID"}}
        if address:
            # NetworkAccessPointTypeCode 2: an IP address
            requestor.update(NetworkAccessPointID=address, NetworkAccessPointTypeCode=2)
        msg = {
            "EventIdentification": event,
            "ActiveParticipant": [
                requestor,
                {"UserID": self._ae, "UserIsRequestor": False,
                 "RoleIDCode": {"code": "110152", "displayName": "Destination Role ID"}},
            ],
            "AuditSourceIdentification": {"AuditSourceID": self._ae},
            "ParticipantObjectIdentification": objects,
        }
        self._write(msg)

    def _write(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, separators=(",", ":"))
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            if self._syslog is not None:
                self._syslog.info(line)

    def refused(self, refusal: Refusal, count: int = 1) -> None:
        """A connection or association refused, or aborted for misbehaving (PS3.15
        A.5.3.11 shaped, see :mod:`pacsinfra.pacs.refusals`)."""
        self._write(audit_record(refusal, count, self._ae))

    def instances_stored(self, calling: str, study_uid: str, sop_uid: str) -> None:
        """An instance was stored (PS3.15 A.5.3.10 shaped)."""
        self._emit("stored", calling, [{
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectIDTypeCode": {"code": "110180", "displayName": "Study Instance UID"},
            "ParticipantObjectID": study_uid,
            "ParticipantObjectDescription": {"SOPInstanceUID": sop_uid},
        }], 0)

    def rejected(self, actor: str, study_uid: str, instances: int, code: str,
                 title: str) -> None:
        """Instances of a study were rejected by a rejection note (IHE IOCM: DICOM
        Instances Accessed, action Update)."""
        self._emit("rejected", actor, [{
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectIDTypeCode": {"code": "110180", "displayName": "Study Instance UID"},
            "ParticipantObjectID": study_uid,
            "ParticipantObjectDescription": {"NumberOfInstances": instances,
                                             "RejectionCode": code, "Rejection": title},
        }], 0)

    def study_deleted(self, actor: str, study_uid: str, instances: int) -> None:
        """A study (or part of it) was deleted (PS3.15 A.5.3.5 shaped)."""
        self._emit("deleted", actor, [{
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectIDTypeCode": {"code": "110180", "displayName": "Study Instance UID"},
            "ParticipantObjectID": study_uid,
            "ParticipantObjectDescription": {"NumberOfInstances": instances},
        }], 0)

    def corrupt_instance(self, study_uid: str, sop_uid: str, reason: str) -> None:
        """A read was refused because the stored file no longer matches its checksum
        (PS3.15 A.5.3.11 Security Alert shaped: an unauthorized change of data)."""
        self._emit("corrupt", self._ae, [{
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectIDTypeCode": {"code": "110180", "displayName": "Study Instance UID"},
            "ParticipantObjectID": study_uid,
            "ParticipantObjectDescription": {"SOPInstanceUID": sop_uid},
        }], SERIOUS_FAILURE, description=reason)

    def query(self, calling: str, level: str) -> None:
        """A C-FIND was answered (PS3.15 A.5.3.12 shaped)."""
        self._emit("query", calling, [{
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectIDTypeCode": {"code": "110181", "displayName": "SOP Class UID"},
            "ParticipantObjectID": level,
        }], 0)

    def request_refused(self, *, kind: str, user: str, address: str, method: str, path: str,
                        status: int, reason: str) -> None:
        """An HTTP request was refused (PS3.15 A.5 shaped, outcome "minor failure").

        ``kind`` is the event the request was after (query, accessed, stored, deleted),
        or authentication (401) / security (403, limits); ``path`` is the request's
        path without its query string (which may hold patient names).
        """
        self._emit(kind, user, [{
            "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 3,
            "ParticipantObjectIDTypeCode": {"code": "12", "codeSystemName": "RFC-3881",
                                            "displayName": "URI"},
            "ParticipantObjectID": path,
            "ParticipantObjectDescription": {"Method": method, "HTTPStatus": status},
        }], MINOR_FAILURE, address=address, description=reason)

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
