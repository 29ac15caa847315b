"""Benchmark: pacsinfra archive vs Orthanc vs DCMTK storescp (ingest), and C-FIND latency.

Run on demand (not part of the test suite)::

    .venv/bin/python bench/bench_archive.py            # 2,000 CT + 200 CR, medians of 3
    .venv/bin/python bench/bench_archive.py --quick    # 300 CT + 30 CR, medians of 3
    .venv/bin/python bench/bench_archive.py --find-only --index-size 1000000

Ingest: DCMTK storescu sends synthetic CT-like (512x512x16 bit, ~0.5 MB) and CR-like
(~8 MB) instances over one association and over four in parallel; receivers are the
archive (fsync + index commit per instance), Orthanc (own JSON config, SQLite index,
temp dir) and storescp (writes files, no index, no fsync: the floor). Receiver CPU is
user+system seconds of the receiver process tree during the run (storescp's per-association
children included). TCP_NODELAY=1 is set for DCMTK and Orthanc. ``--separate`` adds, with
four associations, four independent archives with one sender each: a ceiling for what
the same code does when only the cores and the disk are shared.

C-FIND: study-level PatientID query latency on one open association over an index of
N generated instances (rows bulk-inserted into the archive's index), and the cost per
match compared with Orthanc on the same small set of studies.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.uid import generate_uid  # noqa: E402

from pacsinfra.pacs.archive.synth import CR_IMAGE, make_instance, write  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


def tree_cpu(pid: int) -> float:
    """user+system CPU seconds of ``pid``, its live children and the children it has
    reaped (storescp --fork's per-association processes) (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            if p == pid:  # cutime + cstime: children already waited for
                total += (int(fields[13]) + int(fields[14])) / tick
        except (OSError, IndexError):
            pass
    return total


# -- data -------------------------------------------------------------------------------------

def make_set(root: Path, kind: str, count: int) -> list[Path]:
    """Generate (once) ``count`` instances of ``kind`` (ct|cr) under ``root``; split in 4."""
    d = root / f"{kind}-{count}"
    done = d / ".done"
    if done.exists():
        return sorted(p for p in d.glob("part*"))
    shutil.rmtree(d, ignore_errors=True)
    rows, cols, sop, mod = (512, 512, None, "CT") if kind == "ct" else (2048, 2048, CR_IMAGE, "CR")
    per_series = 100 if kind == "ct" else 10
    study = generate_uid()
    series = generate_uid()
    for i in range(count):
        if i % per_series == 0:
            series = generate_uid()
        if i % (per_series * 5) == 0:
            study = generate_uid()
        kwargs = {"sop_class": sop} if sop else {}
        ds = make_instance(study_uid=study, series_uid=series, rows=rows, cols=cols,
                           modality=mod, instance_number=i + 1, private=False,
                           patient_id=f"BENCH{i // (per_series * 5)}", **kwargs)
        write(ds, d / f"part{i % 4}" / f"{i:05d}.dcm")
    done.write_text("ok")
    return sorted(p for p in d.glob("part*"))


# -- receivers --------------------------------------------------------------------------------

@dataclass
class Receiver:
    name: str
    aet: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    def ports(self, n: int) -> list[int]:
        """The port each of ``n`` parallel senders uses."""
        return [self.port] * n

    def cpu(self) -> float:
        """CPU seconds used so far by the receiver's processes."""
        return tree_cpu(self.proc.pid)

    def workdirs(self) -> list[Path]:
        """What to delete once the block is over."""
        return [self.workdir]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Separate:
    """Several independent archives, one sender each (own process, own index): the
    most the same code can do when nothing is shared but the two cores and the disk.
    Not a way to deploy (one AE, one index is); a ceiling for the table."""

    name: str
    aet: str
    members: list[Receiver]

    def ports(self, n: int) -> list[int]:
        return [self.members[i % len(self.members)].port for i in range(n)]

    def cpu(self) -> float:
        return sum(m.cpu() for m in self.members)

    def workdirs(self) -> list[Path]:
        return [m.workdir for m in self.members]

    def stop(self) -> None:
        for m in self.members:
            m.stop()


def start_separate(base: Path, n: int) -> Separate:
    members = [start_archive(base, 1) for _ in range(n)]
    return Separate(f"({n} separate archives)", "ARCHIVE", members)


# Receivers' files are deleted after each block of runs (one data set, one sender mode),
# followed by a pause, not after each receiver: on ext4 without a journal (this
# testbed's disk) a new inode skips the ones freed in the last ~30 s, so deleting
# thousands of files just before a run makes the next receiver's file creation scan
# the inode tables (measured: 24% of the archive's CPU in openat).
INODE_QUIET_S = 65.0  # ext4 (no journal) skips inodes freed in the last 60 s (RECENTCY_MIN)


def clear_block(workdirs: list[Path]) -> None:
    """Delete a block's receiver directories, then wait out ext4's recently-deleted window."""
    for d in workdirs:
        shutil.rmtree(d, ignore_errors=True)
    workdirs.clear()
    os.sync()
    time.sleep(INODE_QUIET_S)


def start_archive(base: Path, workers: int) -> Receiver:
    work = Path(tempfile.mkdtemp(dir=base, prefix="archive-"))
    port = free_port()
    cfg = {
        "ae_title": "ARCHIVE", "bind": "127.0.0.1", "port": port, "data_dir": str(work / "data"),
        "dicomweb": {"enabled": False},
        "limits": {"max_pdu": 1048576},
    }
    if workers > 1:
        cfg["workers"] = workers
    (work / "archive.yaml").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
         str(work / "archive.yaml"), "--log-level", "WARNING"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"),  # noqa: SIM115
    )
    wait_port(port)  # with workers, the port opens once every worker can accept
    return Receiver(f"pacsinfra archive{f' x{workers}' if workers > 1 else ''}", "ARCHIVE",
                    port, proc, work)


def start_orthanc(base: Path) -> Receiver:
    work = Path(tempfile.mkdtemp(dir=base, prefix="orthanc-"))
    port, http = free_port(), free_port()
    cfg = {
        "Name": "bench", "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"), "DicomAet": "ORTHANC", "DicomPort": port,
        "HttpPort": http, "HttpServerEnabled": True, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "StorageCompression": False, "Plugins": [], "ConcurrentJobs": 2,
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
        "LoadPrivateDictionary": False,
    }
    (work / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, TCP_NODELAY="1")
    proc = subprocess.Popen(["Orthanc", str(work / "config.json")], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))  # noqa: SIM115
    wait_port(port)
    return Receiver("Orthanc", "ORTHANC", port, proc, work)


def start_storescp(base: Path) -> Receiver:
    work = Path(tempfile.mkdtemp(dir=base, prefix="storescp-"))
    (work / "out").mkdir()
    port = free_port()
    env = dict(os.environ, TCP_NODELAY="1")
    # --fork: one process per association, so four senders are served in parallel
    proc = subprocess.Popen(["/usr/bin/storescp", "--fork", "+xa", "-aet", "STORESCP", "-od",
                             str(work / "out"), str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Receiver("DCMTK storescp", "STORESCP", port, proc, work)


# -- ingest -----------------------------------------------------------------------------------

def send(parts: list[Path], rcv: Receiver | Separate, parallel: int) -> float:
    """storescu the parts (1 association for all, or one per part in parallel); seconds."""
    env = dict(os.environ, TCP_NODELAY="1")
    base = ["/usr/bin/storescu", "+sd", "-aec", rcv.aet]
    t0 = time.perf_counter()
    if parallel == 1:
        r = subprocess.run([*base, "127.0.0.1", str(rcv.ports(1)[0]), *map(str, parts)], env=env,
                           capture_output=True)
        rcs = [r.returncode]
    else:
        procs = [subprocess.Popen([*base, "127.0.0.1", str(port), str(p)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for p, port in zip(parts, rcv.ports(len(parts)), strict=True)]
        rcs = [p.wait() for p in procs]
    dt = time.perf_counter() - t0
    if any(rcs):
        raise RuntimeError(f"storescu to {rcv.name} failed: {rcs}")
    return dt


def bench_ingest(args: argparse.Namespace, base: Path, data: Path) -> list[list[str]]:
    rows: list[list[str]] = []
    sets = [(label, make_set(data, kind, count))
            for label, kind, count in (("CT", "ct", args.ct), ("CR", "cr", args.cr)) if count]
    starters: list[tuple[str, Callable[[], Receiver | Separate]]] = [
        ("archive", lambda: start_archive(base, 1))]
    if args.workers > 1:
        starters.append(("archive-mp", lambda: start_archive(base, args.workers)))
    starters += [("orthanc", lambda: start_orthanc(base)), ("storescp", lambda: start_storescp(base))]
    used: list[Path] = []
    for label, parts in sets:
        n = sum(len(list(p.iterdir())) for p in parts)
        mb = sum(f.stat().st_size for p in parts for f in p.iterdir()) / 1e6
        for parallel in (1, 4):
            clear_block(used)  # also waits out deletions made before this block
            block = list(starters)
            if parallel > 1 and args.separate:
                block.append(("separate", functools.partial(start_separate, base, parallel)))
            results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in block}
            names: dict[str, str] = {}
            for k in range(args.repeat):
                # each round starts with another receiver: none always runs first
                for name, start in block[k % len(block):] + block[:k % len(block)]:
                    rcv = start()
                    try:
                        c0 = rcv.cpu()
                        dt = send(parts, rcv, parallel)
                        cpu = rcv.cpu() - c0
                    finally:
                        rcv.stop()
                        used.extend(rcv.workdirs())
                    results[name].append((dt, cpu))
                    names[name] = rcv.name
            for name, _ in block:
                dt = statistics.median(r[0] for r in results[name])
                cpu = statistics.median(r[1] for r in results[name])
                rows.append([label, f"{parallel}", names[name], f"{n}", f"{n / dt:.0f}",
                             f"{mb / dt:.0f}", f"{100 * cpu / dt:.0f}%"])
                print("  ", " | ".join(rows[-1]), flush=True)
    clear_block(used)
    return rows


# -- C-FIND -----------------------------------------------------------------------------------

def fill_index(db_path: Path, n_instances: int) -> tuple[str, int]:
    """Bulk-insert ``n_instances`` rows (50 per study, 2 studies per patient) into a fresh
    archive index; returns a PatientID to query and its number of studies."""
    from pacsinfra.pacs.archive.config import IndexConfig
    from pacsinfra.pacs.archive.db import open_database

    db = open_database(IndexConfig(path=str(db_path)), db_path.parent)
    per_study, studies_per_patient, per_series = 50, 2, 25
    n_studies = max(1, n_instances // per_study)
    now = time.time()
    with db.connection() as c:
        _bulk_rows(c, n_studies, per_study, studies_per_patient, per_series, now)
    db.close()
    return f"P{(n_studies // 2) // studies_per_patient:07d}", studies_per_patient


def _bulk_rows(c: Any, n_studies: int, per_study: int, studies_per_patient: int,
               per_series: int, now: float) -> None:
    c.execute("BEGIN")
    patients, studies, series, inst = [], [], [], []
    for s in range(n_studies):
        pid = f"P{s // studies_per_patient:07d}"
        st = f"1.2.826.0.1.3680043.10.1.{s}"
        if s % studies_per_patient == 0:
            patients.append((pid, f"Name^{s}", "19700101", "O", studies_per_patient,
                             per_study * studies_per_patient))
        studies.append((st, pid, f"Name^{s}", "19700101", "O", f"2024{1 + s % 12:02d}15",
                        "101500", f"A{s}", "1", "bench", "Ref", "\\CT\\", 2, per_study, now, now))
        for k in range(per_study // per_series):
            se = f"{st}.{k + 1}"
            series.append((se, st, "CT", str(k + 1), "", "CHEST", "", "", per_series))
            for i in range(per_series):
                sop = f"{se}.{i + 1}"
                inst.append((sop, se, st, "1.2.840.10008.5.1.4.1.1.2", str(i + 1),
                             "1.2.840.10008.1.2.1", "fast", f"x/{sop}.dcm", 1000, "0" * 64, 300,
                             now, "BENCH"))
        if len(inst) >= 200_000:
            c.executemany("INSERT INTO instance (sop_uid, series_uid, study_uid, sop_class_uid, "
                          "instance_number, transfer_syntax, tier, rel_path, size, sha256, "
                          "ds_offset, received_at, calling_ae) VALUES "
                          "(?,?,?,?,?,?,?,?,?,?,?,?,?)", inst)
            inst.clear()
    c.executemany("INSERT INTO instance (sop_uid, series_uid, study_uid, sop_class_uid, "
                  "instance_number, transfer_syntax, tier, rel_path, size, sha256, ds_offset, "
                  "received_at, calling_ae) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", inst)
    c.executemany("INSERT INTO series VALUES (?,?,?,?,?,?,?,?,?)", series)
    c.executemany("INSERT INTO study VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", studies)
    c.executemany("INSERT INTO patient VALUES (?,?,?,?,?,?)", patients)
    c.execute("COMMIT")
    c.execute("ANALYZE")


def find_latency(port: int, aet: str, patient_id: str, n: int = 200) -> tuple[float, int]:
    """Median ms of a study-level PatientID C-FIND on one open association, and matches."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    from pacsinfra.pacs.dicom import TCP_TUNING_HANDLER

    ae = AE(ae_title="BENCHSCU")
    model = "1.2.840.10008.5.1.4.1.2.2.1"
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet, evt_handlers=[TCP_TUNING_HANDLER])
    assert assoc.is_established, f"cannot associate with {aet}"
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientID = patient_id
    ident.StudyInstanceUID = ""
    ident.StudyDate = ""
    ident.AccessionNumber = ""
    ident.ModalitiesInStudy = ""
    ident.NumberOfStudyRelatedInstances = ""
    times, matches = [], 0
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            matches = sum(1 for st, _ds in assoc.send_c_find(ident, model)
                          if st and st.Status in (0xFF00, 0xFF01))
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        assoc.release()
    return statistics.median(times), matches


def bench_find(args: argparse.Namespace, base: Path) -> list[list[str]]:
    rows: list[list[str]] = []
    # 1) the big index
    rcv = start_archive(base, 1)
    rcv.stop()  # created dirs; now fill the index offline and restart on it
    work = Path(tempfile.mkdtemp(dir=base, prefix="findidx-"))
    t0 = time.perf_counter()
    pid, nst = fill_index(work / "data" / "index.sqlite", args.index_size)
    fill_s = time.perf_counter() - t0
    port = free_port()
    (work / "archive.yaml").write_text(json.dumps({
        "ae_title": "ARCHIVE", "bind": "127.0.0.1", "port": port,
        "data_dir": str(work / "data"), "dicomweb": {"enabled": False}}))
    proc = subprocess.Popen([sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
                             str(work / "archive.yaml"), "--log-level", "WARNING"], cwd=REPO)
    try:
        wait_port(port)
        ms, matches = find_latency(port, "ARCHIVE", pid)
        rows.append(["archive", f"{args.index_size:,} instances", f"{matches}", f"{ms:.2f}",
                     f"(index filled in {fill_s:.0f}s)"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    # 2) per-match cost on the same small set of studies, archive vs Orthanc
    src = Path(tempfile.mkdtemp(dir=base, prefix="findset-"))
    n_studies = 50
    for s in range(n_studies):
        write(make_instance(patient_id="FINDME", study_uid=generate_uid(), rows=8, cols=8,
                            accession=f"F{s}", private=False), src / f"{s}.dcm")
    write(make_instance(patient_id="OTHER", rows=8, cols=8, private=False), src / "other.dcm")
    for start in (lambda: start_archive(base, 1), lambda: start_orthanc(base)):
        rcv = start()
        try:
            send([src], rcv, 1)
            time.sleep(1.0)
            ms_many, m_many = find_latency(rcv.port, rcv.aet, "FINDME", 50)
            ms_one, m_one = find_latency(rcv.port, rcv.aet, "OTHER", 50)
            per = (ms_many - ms_one) / max(1, m_many - m_one)
            rows.append([rcv.name, f"{n_studies + 1} studies", f"{m_many} / {m_one}",
                         f"{ms_many:.2f} / {ms_one:.2f}", f"{per:.3f} ms/match"])
        finally:
            rcv.stop()
    shutil.rmtree(src, ignore_errors=True)
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 CT + 30 CR, 100k-instance index")
    ap.add_argument("--ct", type=int, default=2000)
    ap.add_argument("--cr", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2,
                    help="also run the archive with N worker processes (1: skip)")
    ap.add_argument("--separate", action="store_true",
                    help="with four associations, also run four separate archives, one "
                         "sender each (a ceiling: nothing shared but cores and disk)")
    ap.add_argument("--index-size", type=int, default=1_000_000)
    ap.add_argument("--find-only", action="store_true")
    ap.add_argument("--ingest-only", action="store_true")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "pacsinfra-bench")
    args = ap.parse_args()
    if args.quick:
        args.ct, args.cr = min(args.ct, 300), min(args.cr, 30)
        args.index_size = min(args.index_size, 100_000)
    for tool in ("/usr/bin/storescu", "/usr/bin/storescp"):
        if not Path(tool).exists():
            sys.exit(f"missing {tool}: apt-get install -y dcmtk")
    if not shutil.which("Orthanc"):
        sys.exit("missing Orthanc: apt-get install -y orthanc")
    args.data.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-run-", dir=args.data))
    try:
        if not args.find_only:
            print(f"ingest (medians of {args.repeat}):", flush=True)
            rows = bench_ingest(args, base, args.data)
            print()
            print(table(["data", "assocs", "receiver", "n", "inst/s", "MB/s", "rcv CPU"], rows))
            print()
        if not args.ingest_only:
            print("C-FIND study level by PatientID (one open association):", flush=True)
            frows = bench_find(args, base)
            print(table(["receiver", "index", "matches", "median ms", "note"], frows))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
