"""The smoke test of a running PACS: store a synthetic study, find it, move it back, compare.

Flow (each step timed and reported, none raised; :class:`SmokeReport` says what passed):

1. C-ECHO the entry AE (archive or router) and every archive AE.
2. Generate a synthetic CT-like study (:mod:`pacsinfra.verify.study`) and C-STORE it to the
   entry AE on one association.
3. Wait until every archive AE reports all instances (C-FIND at IMAGE level, polling).
4. C-FIND at STUDY, SERIES and IMAGE level (study root) and check counts and UIDs.
5. C-MOVE the study from each archive to a temporary storage SCP (started on a free port)
   and compare, per instance, the SHA-256 of the pixel data and of the sent elements
   re-encoded (:func:`~pacsinfra.verify.study.dataset_digest`).
6. Open the study in each viewer given (its proxy, its login; the first frame compared).
7. Delete the study where the archive offers a way (:class:`StudyDeleter`: the pacsinfra
   archive's DICOMweb DELETE, Orthanc's REST API), then check C-FIND no longer finds it;
   otherwise the step is SKIP with the reason (a DICOM-only archive such as dcmqrscp, or a
   pacsinfra archive with DICOMweb disabled, has no delete).

The receiver's AE title and address must be known to the archive as a move destination.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from pacsinfra.pacs.config_common import Peer
from pacsinfra.pacs.dicom import associate, storage_contexts
from pacsinfra.verify.study import PROFILES, dataset_digest, make_study, pixel_digest

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# SOP classes by UID (pynetdicom's sop_class names are generated at import; mypy cannot see them).
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


@dataclass
class Step:
    """One line of the report."""

    name: str
    target: str
    result: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str = ""


@dataclass
class SmokeReport:
    """Every step, the study it used, and whether the whole run passed (SKIPs do not fail)."""

    study_uid: str = ""
    patient_id: str = ""
    instances: int = 0
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.result != FAIL for s in self.steps)

    def table(self) -> str:
        """A fixed-width table for a terminal or a CI log."""
        rows = [("step", "target", "result", "ms", "detail")]
        rows += [(s.name, s.target, s.result, f"{s.seconds * 1000:.1f}", s.detail)
                 for s in self.steps]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
                 for r in rows]
        lines.insert(1, "-" * (sum(widths) + 8 + 6))
        verdict = "PASSED" if self.ok else "FAILED"
        lines.append(f"smoke test {verdict}: study {self.study_uid} ({self.instances} instances)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "study_uid": self.study_uid, "patient_id": self.patient_id,
                "instances": self.instances,
                "steps": [vars(s) for s in self.steps]}


class StudyDeleter(Protocol):
    """Removes a study from an archive by its Study Instance UID."""

    def delete_study(self, study_uid: str) -> str:
        """Delete it; return a short description of what was done. Raise on failure."""
        ...


class OrthancDeleter:
    """Deletes through Orthanc's REST API (``/tools/lookup`` then ``DELETE /studies/{id}``)."""

    def __init__(self, base_url: str, *, auth: tuple[str, str] | None = None,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers: dict[str, str] = {}
        if auth is not None:
            import base64

            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(self.base_url + path, data=body, method=method,
                                     headers=self._headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def delete_study(self, study_uid: str) -> str:
        found = self._call("POST", "/tools/lookup", study_uid.encode())
        ids = [m["ID"] for m in found or [] if m.get("Type") == "Study"]
        if not ids:
            raise LookupError(f"Orthanc does not know study {study_uid}")
        for oid in ids:
            self._call("DELETE", f"/studies/{oid}")
        return f"deleted Orthanc study {', '.join(ids)}"


class UnusableDeleter:
    """An archive that has a delete API pacsinfra cannot use (its credentials cannot be
    read): the delete step fails with ``reason`` rather than being skipped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def delete_study(self, study_uid: str) -> str:
        """Always refuses, with the reason."""
        raise RuntimeError(self.reason)


class DicomWebDeleter:
    """Deletes through the pacsinfra archive's DICOMweb ``DELETE /studies/{uid}`` (204 / 404)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0,
                 ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl: Any = None
        if self.base_url.startswith("https:"):
            import ssl

            self._ssl = ssl.create_default_context(cafile=ca_file)

    def delete_study(self, study_uid: str) -> str:
        import urllib.error

        req = urllib.request.Request(f"{self.base_url}/studies/{study_uid}", method="DELETE",
                                     headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:  # the message never carries the token
            if exc.code == 404:
                raise LookupError(f"the archive does not know study {study_uid}") from exc
            raise RuntimeError(f"DELETE {self.base_url}/studies/...: HTTP {exc.code}") from exc
        if status != 204:
            raise RuntimeError(f"DELETE {self.base_url}/studies/...: HTTP {status}")
        return f"deleted via DICOMweb DELETE at {self.base_url}"


class Receiver:
    """A temporary storage SCP that keeps what it receives in memory, keyed by SOP Instance UID."""

    def __init__(self, ae_title: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ae_title, self.host, self.port = ae_title, host, port
        self.received: dict[str, Dataset] = {}
        self._lock = threading.Lock()
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def __enter__(self) -> Receiver:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = storage_contexts()
        ae.maximum_pdu_size = 0
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()


def _timed(report: SmokeReport, name: str, target: str,
           fn: Callable[[], tuple[str, str]]) -> str:
    started = time.monotonic()
    try:
        result, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a step's failure is reported, not raised
        result, detail = FAIL, f"{type(exc).__name__}: {exc}"
    report.steps.append(Step(name, target, result, time.monotonic() - started, detail))
    return result


def _label(peer: Peer) -> str:
    return f"{peer.ae_title}@{peer.host}:{peer.port}"


class _Scu:
    """One calling AE for all the SCU work of a smoke run."""

    def __init__(self, ae_title: str, timeout: float) -> None:
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout

    def open(self, peer: Peer, contexts: Sequence[Any]) -> Any:
        assoc = associate(self.ae, peer, contexts=list(contexts))
        if not assoc.is_established:
            raise ConnectionError(f"association to {_label(peer)} "
                                  f"{'rejected' if assoc.is_rejected else 'failed'}")
        return assoc

    def echo(self, peer: Peer) -> tuple[str, str]:
        from pynetdicom import build_context

        assoc = self.open(peer, [build_context(VERIFICATION)])
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        return (PASS, "") if code == 0 else (FAIL, f"status {code}")

    def find(self, peer: Peer, query: Dataset) -> list[Dataset]:
        from pynetdicom import build_context

        assoc = self.open(peer, [build_context(STUDY_ROOT_FIND)])
        out: list[Dataset] = []
        try:
            for status, ident in assoc.send_c_find(query, STUDY_ROOT_FIND):
                code = getattr(status, "Status", None)
                if code in (0xFF00, 0xFF01) and ident is not None:
                    out.append(ident)
                elif code != 0:
                    raise RuntimeError(f"C-FIND status 0x{code or 0:04X}")
        finally:
            assoc.release()
        return out


def _instances(scu: _Scu, arc: Peer, study_uid: str) -> list[Dataset]:
    """IMAGE-level matches, queried hierarchically (series first, then images per series).

    Baseline (hierarchical) query SCPs such as dcmqrscp need the unique key of every level
    above the one queried; relational ones (Orthanc) answer either way.
    """
    out: list[Dataset] = []
    for ser in scu.find(arc, _query("SERIES", study_uid, SeriesInstanceUID="")):
        out += scu.find(arc, _query("IMAGE", study_uid, SeriesInstanceUID=ser.SeriesInstanceUID,
                                    SOPInstanceUID=""))
    return out


def _query(level: str, study_uid: str, **extra: Any) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = level
    q.StudyInstanceUID = study_uid
    for k, v in extra.items():
        setattr(q, k, v)
    return q


def run_smoke(
    entry: Peer,
    archives: Sequence[Peer] | None = None,
    *,
    receiver_ae: str = "PXSMOKERCV",
    receiver_host: str = "127.0.0.1",
    receiver_port: int = 0,
    calling_ae: str = "PXSMOKE",
    series: int = 3,
    instances: int = 4,
    scale: float = 0.25,
    wait_timeout: float = 60.0,
    dimse_timeout: float = 30.0,
    deleters: dict[str, StudyDeleter] | None = None,
    viewers: Sequence[tuple[str, Callable[[str, list[Dataset]], tuple[str, str]]]] = (),
) -> SmokeReport:
    """Run the whole flow. ``archives`` default to ``[entry]``; ``deleters`` map archive AE titles
    to a :class:`StudyDeleter` (archives without one are reported SKIP at the delete step);
    ``viewers``: (label, check) run once the study is stored, before it is deleted, with
    its UID and the data sets sent."""
    archives = list(archives or [entry])
    deleters = deleters or {}
    scu = _Scu(calling_ae, dimse_timeout)
    report = SmokeReport()

    for peer in [entry, *[a for a in archives if a != entry]]:
        _timed(report, "c-echo", _label(peer), lambda p=peer: scu.echo(p))  # type: ignore[misc]

    study: list[Dataset] = []

    def generate() -> tuple[str, str]:
        study.extend(make_study(PROFILES["ct"], series=series, instances=instances, scale=scale))
        report.study_uid = str(study[0].StudyInstanceUID)
        report.patient_id = str(study[0].PatientID)
        report.instances = len(study)
        size = sum(len(d.PixelData) for d in study)
        return PASS, f"{series} series x {instances} CT {study[0].Rows}x{study[0].Columns}, " \
                     f"{size / 1e6:.1f} MB pixels, patient {report.patient_id}"

    if _timed(report, "generate", "-", generate) != PASS:
        return report

    def store() -> tuple[str, str]:
        from pynetdicom import build_context

        assoc = scu.open(entry, [build_context(study[0].SOPClassUID,
                                               study[0].file_meta.TransferSyntaxUID)])
        failed: list[str] = []
        try:
            for ds in study:
                st = assoc.send_c_store(ds)
                code = getattr(st, "Status", None)
                if code != 0:
                    failed.append(f"0x{code or 0:04X}" if code is not None else "no response")
        finally:
            assoc.release()
        if failed:
            return FAIL, f"{len(failed)}/{len(study)} refused: {', '.join(failed[:3])}"
        return PASS, f"{len(study)} instances acknowledged"

    if _timed(report, "c-store", _label(entry), store) != PASS:
        return report

    sent = {str(d.SOPInstanceUID): d for d in study}
    series_uids = {str(d.SeriesInstanceUID) for d in study}
    for arc in archives:
        lab = _label(arc)

        def wait(arc: Peer = arc) -> tuple[str, str]:
            deadline = time.monotonic() + wait_timeout
            seen = 0
            while True:
                seen = len(_instances(scu, arc, report.study_uid))
                if seen >= len(sent) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            return (PASS, f"{seen}/{len(sent)} instances") if seen >= len(sent) else \
                (FAIL, f"only {seen}/{len(sent)} instances after {wait_timeout:g}s")

        if _timed(report, "arrival", lab, wait) != PASS:
            continue

        def find_study(arc: Peer = arc) -> tuple[str, str]:
            res = scu.find(arc, _query("STUDY", report.study_uid, PatientID="",
                                       PatientName="", NumberOfStudyRelatedInstances=""))
            if len(res) != 1:
                return FAIL, f"{len(res)} study matches (expected 1)"
            r = res[0]
            if str(r.get("PatientID", "")) != report.patient_id:
                return FAIL, f"PatientID {r.get('PatientID')!r} != {report.patient_id!r}"
            n = r.get("NumberOfStudyRelatedInstances")
            if n not in (None, "") and int(n) != len(sent):
                return FAIL, f"NumberOfStudyRelatedInstances {n} != {len(sent)}"
            return PASS, "1 match, patient matches" + (f", {n} instances" if n else "")

        def find_series(arc: Peer = arc) -> tuple[str, str]:
            res = scu.find(arc, _query("SERIES", report.study_uid, SeriesInstanceUID="",
                                       Modality=""))
            got = {str(r.SeriesInstanceUID) for r in res}
            if got != series_uids or len(res) != len(series_uids):
                return FAIL, f"{len(res)} series matches, expected {len(series_uids)}"
            return PASS, f"{len(res)} series"

        def find_images(arc: Peer = arc) -> tuple[str, str]:
            res = _instances(scu, arc, report.study_uid)
            got = [str(r.SOPInstanceUID) for r in res]
            if sorted(got) != sorted(sent):
                return FAIL, f"{len(got)} instance matches, {len(set(got) & set(sent))} expected"
            return PASS, f"{len(got)} instances, UIDs match"

        _timed(report, "c-find study", lab, find_study)
        _timed(report, "c-find series", lab, find_series)
        _timed(report, "c-find image", lab, find_images)

        def move_compare(arc: Peer = arc) -> tuple[str, str]:
            from pynetdicom import build_context

            with Receiver(receiver_ae, receiver_host, receiver_port) as rcv:
                assoc = scu.open(arc, [build_context(STUDY_ROOT_MOVE)])
                final: Any = None
                try:
                    for status, _ident in assoc.send_c_move(
                        _query("STUDY", report.study_uid), receiver_ae,
                        STUDY_ROOT_MOVE,
                    ):
                        final = status
                finally:
                    assoc.release()
                code = getattr(final, "Status", None)
                got = dict(rcv.received)
            if code != 0:
                return FAIL, f"C-MOVE final status 0x{code or 0:04X}" if code is not None \
                    else "C-MOVE: no final status"
            missing = set(sent) - set(got)
            if missing:
                return FAIL, f"{len(missing)} of {len(sent)} instances not received"
            bad_pixels = [u for u in sent if pixel_digest(got[u]) != pixel_digest(sent[u])]
            bad_ds = [u for u in sent
                      if dataset_digest(got[u], set(sent[u].keys())) != dataset_digest(sent[u])]
            if bad_pixels or bad_ds:
                return FAIL, f"checksum mismatch: pixels {len(bad_pixels)}, datasets {len(bad_ds)}"
            return PASS, f"{len(got)} received, pixel + dataset SHA-256 identical"

        _timed(report, "c-move+compare", lab, move_compare)

    for label, check in viewers:
        _timed(report, "viewer", label,
               lambda check=check: check(report.study_uid, study))  # type: ignore[misc]

    for arc in archives:
        deleter = deleters.get(arc.ae_title)
        if deleter is None:
            report.steps.append(Step("delete", _label(arc), SKIP, 0.0,
                                     "cannot delete: no delete API known for this archive "
                                     "(test study left in place; its UIDs are under the "
                                     "pacsinfra test-data root)"))
            continue

        def delete(arc: Peer = arc, deleter: StudyDeleter = deleter) -> tuple[str, str]:
            what = deleter.delete_study(report.study_uid)
            left = scu.find(arc, _query("STUDY", report.study_uid))
            return (PASS, what) if not left else (FAIL, f"{what}, but C-FIND still finds it")

        _timed(report, "delete", _label(arc), delete)
    return report
