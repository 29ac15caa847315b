"""A C-STORE load generator with representative study sizes and a target concurrency.

Each worker thread plays a modality: it takes the next study, opens one association,
sends every instance, releases. Studies follow :data:`~pacsinfra.verify.study.PROFILES`
(CT 512x512x16, MR 256x256x24, CR 2048x2500, breast tomosynthesis 50x2457x1890) and
cycle through the requested mix. Pixel data is generated once per profile and shared;
every study gets fresh UIDs (so an archive stores each instance, no duplicates).

The report gives instances/s, MB/s (pixel + header bytes sent, 10^6), C-STORE latency
p50/p95/p99 and errors (refusals, failed associations) — counted, never raised.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

from pacsinfra.pacs.config_common import Peer
from pacsinfra.pacs.dicom import associate
from pacsinfra.verify.study import PROFILES, make_study, new_uid


@dataclass
class LoadReport:
    """Measured totals of one load run."""

    target: str
    profiles: list[str]
    concurrency: int
    seconds: float = 0.0
    studies: int = 0
    instances: int = 0
    bytes_sent: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """C-STORE latency percentile in seconds (0 when nothing was sent)."""
        return float(np.percentile(self.latencies, p)) if self.latencies else 0.0

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_sent / 1e6 / self.seconds if self.seconds else 0.0

    def table(self) -> str:
        """One header line and one result line, fixed width."""
        head = (f"{'target':<28} {'mix':<14} {'conc':>4} {'studies':>7} {'inst':>6} "
                f"{'inst/s':>8} {'MB/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
        row = (f"{self.target:<28} {'+'.join(self.profiles):<14} {self.concurrency:>4} "
               f"{self.studies:>7} {self.instances:>6} {self.instances_per_s:>8.1f} "
               f"{self.mb_per_s:>8.1f} {self.percentile(50) * 1e3:>8.1f} "
               f"{self.percentile(95) * 1e3:>8.1f} {self.percentile(99) * 1e3:>8.1f} "
               f"{self.errors:>6}")
        return head + "\n" + row

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "profiles": self.profiles, "concurrency": self.concurrency,
                "seconds": self.seconds, "studies": self.studies, "instances": self.instances,
                "bytes_sent": self.bytes_sent, "errors": self.errors,
                "instances_per_s": self.instances_per_s, "mb_per_s": self.mb_per_s,
                "p50": self.percentile(50), "p95": self.percentile(95),
                "p99": self.percentile(99), "error_samples": self.error_samples}

_PIXEL_DATA = 0x7FE00010


def _fresh(template: list[Dataset]) -> list[Dataset]:
    """The template study with new study/series/instance UIDs; pixel bytes are shared."""
    study_uid = new_uid()
    series_map: dict[str, str] = {}
    out = []
    for ds in template:
        # pydicom sets an attribute by mutating its element in place, so every element is
        # copied (cheap) except the pixel data, which is shared read-only.
        new = Dataset()
        for elem in ds:
            new.add(elem if elem.tag == _PIXEL_DATA else copy.copy(elem))
        new.file_meta = copy.deepcopy(ds.file_meta)
        new.StudyInstanceUID = study_uid
        new.SeriesInstanceUID = series_map.setdefault(str(ds.SeriesInstanceUID), new_uid())
        new.SOPInstanceUID = new_uid()
        new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
        out.append(new)
    return out


def run_load(
    peer: Peer,
    *,
    profiles: Sequence[str] = ("ct",),
    concurrency: int = 4,
    studies: int | None = None,
    duration: float | None = None,
    scale: float = 1.0,
    calling_ae: str = "PXLOAD",
    timeout: float = 60.0,
) -> LoadReport:
    """Send studies to ``peer`` from ``concurrency`` threads until ``studies`` are sent or
    ``duration`` seconds pass (whichever is given; both: whichever comes first)."""
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown or not profiles:
        raise ValueError(f"unknown profiles {unknown}; choose from {sorted(PROFILES)}")
    if studies is None and duration is None:
        raise ValueError("give studies= or duration=")
    templates = {p: make_study(p, scale=scale) for p in profiles}
    report = LoadReport(f"{peer.ae_title}@{peer.host}:{peer.port}", list(profiles), concurrency)
    lock = threading.Lock()
    counter = iter(range(10**12))
    deadline = time.monotonic() + duration if duration is not None else None

    def next_job() -> int | None:
        with lock:
            n = next(counter)
        if studies is not None and n >= studies:
            return None
        if deadline is not None and time.monotonic() >= deadline:
            return None
        return n

    def error(msg: str) -> None:
        with lock:
            report.errors += 1
            if len(report.error_samples) < 10:
                report.error_samples.append(msg)

    def worker() -> None:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        while (n := next_job()) is not None:
            study = _fresh(templates[profiles[n % len(profiles)]])
            first = study[0]
            ctx = build_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
            try:
                assoc = associate(ae, peer, contexts=[ctx])
            except Exception as exc:  # noqa: BLE001 - counted as a load error
                error(f"associate: {exc}")
                continue
            if not assoc.is_established:
                error("association rejected" if assoc.is_rejected else "association failed")
                continue
            lat: list[float] = []
            sent = nbytes = 0
            try:
                for ds in study:
                    if not assoc.is_established:  # aborted by the peer, or timed out
                        error("association lost before the study was sent")
                        break
                    t0 = time.monotonic()
                    status = assoc.send_c_store(ds)
                    lat.append(time.monotonic() - t0)
                    code = getattr(status, "Status", None)
                    if code == 0:
                        sent += 1
                        nbytes += len(ds.PixelData) + 1024  # ~1 kB of header per instance
                    else:
                        error(f"C-STORE status {code if code is None else hex(code)}")
            finally:
                if assoc.is_established:
                    assoc.release()
            with lock:
                report.studies += 1
                report.instances += sent
                report.bytes_sent += nbytes
                report.latencies += lat

    started = time.monotonic()
    threads = [threading.Thread(target=worker, name=f"load-{i}", daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.seconds = time.monotonic() - started
    return report
