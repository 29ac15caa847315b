"""Storage Commitment Push Model messages (PS3.4 J), for both sides.

The requester (SCU) sends N-ACTION "Request Storage Commitment" with a Transaction UID
and the instances it wants committed; the SCP answers with an N-EVENT-REPORT listing
what it committed and what not. :mod:`pacsinfra.pacs.archive.commitment` is the
archive's SCP, :mod:`pacsinfra.pacs.router.commitment` the router's SCU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsinfra.pacs.dicom import valid_uid

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
REQUEST_ACTION = 1  # Action Type ID "Request Storage Commitment"
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type IDs of the report
# Failure Reason values (PS3.3 C.14.1.1)
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION = 0x0131
# N-ACTION statuses (PS3.7 10.1.4.1.10)
NO_SUCH_ACTION = 0x0123
NO_SUCH_INSTANCE = 0x0112
INVALID_ARGUMENT = 0x0115
MISSING_ATTRIBUTE = 0x0120
RESOURCE_LIMITATION = 0x0213
# A request's instances are held as one JSON row; beyond this a requester should split.
MAX_REFERENCES = 50_000
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # Explicit, Implicit VR LE


class BadRequest(Exception):
    """An N-ACTION this SCP refuses: ``status`` and a comment for the requester."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


@dataclass(frozen=True)
class Request:
    """One storage commitment request as recorded."""

    transaction_uid: str
    calling_ae: str
    refs: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID)
    received_at: float
    attempts: int = 0


def parse_request(ds: Dataset | None, calling_ae: str) -> Request:
    """The request an N-ACTION's Action Information carries, or :class:`BadRequest`."""
    if ds is None:
        raise BadRequest(MISSING_ATTRIBUTE, "no Action Information")
    uid = str(ds.get("TransactionUID", "") or "")
    if not uid:
        raise BadRequest(MISSING_ATTRIBUTE, "Transaction UID (0008,1195) is missing")
    if not valid_uid(uid):
        raise BadRequest(INVALID_ARGUMENT, f"Transaction UID {uid!r} is not a valid UID")
    items = ds.get("ReferencedSOPSequence")
    if not items:
        raise BadRequest(MISSING_ATTRIBUTE, "Referenced SOP Sequence (0008,1199) is empty")
    if len(items) > MAX_REFERENCES:
        raise BadRequest(RESOURCE_LIMITATION, f"{len(items)} instances in one request; "
                         f"at most {MAX_REFERENCES}: split the request")
    refs: list[tuple[str, str]] = []
    for n, item in enumerate(items, 1):
        cls = str(item.get("ReferencedSOPClassUID", "") or "")
        inst = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if not (valid_uid(cls) and valid_uid(inst)):
            raise BadRequest(INVALID_ARGUMENT, f"Referenced SOP Sequence item {n}: needs a "
                             "valid Referenced SOP Class UID and Referenced SOP Instance UID")
        refs.append((cls, inst))
    return Request(uid, calling_ae, refs, time.time())


def report_dataset(transaction_uid: str, committed: list[tuple[str, str]],
                   failed: list[tuple[str, str, int]], retrieve_ae: str) -> Dataset:
    """The N-EVENT-REPORT's Event Information (PS3.4 J.3.3.1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if committed:
        ds.RetrieveAETitle = retrieve_ae
        ds.ReferencedSOPSequence = Sequence([_ref(cls, inst) for cls, inst in committed])
    if failed:
        items = []
        for cls, inst, reason in failed:
            item = _ref(cls, inst)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = Sequence(items)
    return ds


def request_dataset(transaction_uid: str, refs: list[tuple[str, str]]) -> Dataset:
    """The N-ACTION's Action Information for ``refs`` ((SOP Class UID, SOP Instance UID))."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = Sequence([_ref(cls, inst) for cls, inst in refs])
    return ds


@dataclass(frozen=True)
class Report:
    """What an N-EVENT-REPORT says: committed SOP Instance UIDs, failed ones with reasons."""

    transaction_uid: str
    committed: set[str]
    failed: dict[str, int]


def parse_report(ds: Any) -> Report:
    """The report an N-EVENT-REPORT's Event Information carries (ValueError if unusable)."""
    if ds is None or not str(ds.get("TransactionUID", "") or ""):
        raise ValueError("the report has no Transaction UID")
    committed = {str(i.get("ReferencedSOPInstanceUID", ""))
                 for i in ds.get("ReferencedSOPSequence", None) or []}
    failed = {str(i.get("ReferencedSOPInstanceUID", "")): int(i.get("FailureReason", 0x0110))
              for i in ds.get("FailedSOPSequence", None) or []}
    return Report(str(ds.TransactionUID), committed - {""}, failed)


def _ref(cls: str, inst: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = cls
    item.ReferencedSOPInstanceUID = inst
    return item
