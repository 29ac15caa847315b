"""Benchmark: a clustered archive (1, 2, 3 nodes on one PostgreSQL index and one shared
path) against Orthanc on the same PostgreSQL, and what the shared index costs.

Run on demand (not part of the test suite; needs PostgreSQL's server binaries, DCMTK,
Orthanc and its PostgreSQL plugin: ``make bench-deps``)::

    .venv/bin/python bench/bench_cluster.py                 # 400 CT-like instances
    .venv/bin/python bench/bench_cluster.py --count 200 --commits 200

Ingest: DCMTK storescu sends the same instances (512x512x16 bit, ~0.5 MB) over four
associations at once, spread round-robin over the nodes; a run ends when the last
instance is acknowledged (fsynced and indexed). Each configuration gets a fresh
database. Orthanc uses the same PostgreSQL server through its PostgreSQL index plugin,
files on local disk.

Index cost: the archive's own ``Index.commit`` of synthetic rows, one thread (the
latency of a lone store) and eight threads (group commit under load), on SQLite
(``synchronous=FULL``) and on PostgreSQL (``fsync=on``), in this process.

This machine has two cores: more nodes here share the same CPU and disk, so the table
shows what the cluster costs, not how it scales; docs/archive.md turns the measured
per-instance costs into a model of where a real cluster is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "tests"), str(REPO),
                str(REPO / "bench")]

from bench_archive import free_port, make_set, send, wait_port  # noqa: E402
from pg_fixture import PgCluster, start_cluster, stop_cluster  # noqa: E402

ORTHANC_PG = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"


def fresh_db(pg: PgCluster, name: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return {**pg.index_config(), "database": name}


class Nodes:
    """N archive nodes of one cluster (subprocesses), or one Orthanc."""

    def __init__(self, aet: str, ports: list[int], procs: list[subprocess.Popen[bytes]]) -> None:
        self.aet, self._ports, self.procs = aet, ports, procs

    def ports(self, n: int) -> list[int]:
        return [self._ports[i % len(self._ports)] for i in range(n)]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_nodes(work: Path, n: int, index: dict[str, Any]) -> Nodes:
    shared = work / "shared"
    shared.mkdir(parents=True)
    ports, procs = [], []
    for i in range(n):
        port = free_port()
        cfg = {"ae_title": "ARCHIVE", "bind": "127.0.0.1", "port": port,
               "data_dir": str(work / f"node{i}"), "dicomweb": {"enabled": False},
               "limits": {"max_pdu": 1048576}, "index": index,
               "tiers": [{"name": "fast", "path": str(shared)}],
               "cluster": {"enabled": True, "node": f"node{i}"}}
        path = work / f"node{i}.yaml"
        path.write_text(json.dumps(cfg))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pacsinfra", "archive", "serve", "--config", str(path),
             "--log-level", "WARNING"], cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=open(work / f"node{i}.log", "wb")))  # noqa: SIM115
        ports.append(port)
    for port in ports:
        wait_port(port)
    return Nodes("ARCHIVE", ports, procs)


def start_orthanc(work: Path, pg: PgCluster, database: str) -> Nodes:
    port, http = free_port(), free_port()
    cfg = {"Name": "bench", "StorageDirectory": str(work / "storage"),
           "IndexDirectory": str(work / "index"), "DicomAet": "ORTHANC", "DicomPort": port,
           "HttpPort": http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
           "DicomCheckCalledAet": False, "StorageCompression": False,
           "Plugins": [ORTHANC_PG], "DicomAlwaysAllowStore": True,
           "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": pg.host,
                          "Port": pg.port, "Database": database, "Username": pg.user,
                          "Password": "", "Lock": False}}
    work.mkdir(parents=True, exist_ok=True)
    (work / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], cwd=work,
                            env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
                            stderr=open(work / "orthanc.log", "wb"))  # noqa: SIM115
    wait_port(port, timeout=120)
    return Nodes("ORTHANC", [port], [proc])


def commit_cost(index_cfg: dict[str, Any], data_dir: Path, n: int, threads: int) -> float:
    """Seconds per committed row with ``threads`` committing at once."""
    from pydicom.uid import generate_uid

    from pacsinfra.pacs.archive.config import IndexConfig
    from pacsinfra.pacs.archive.db import open_database
    from pacsinfra.pacs.archive.index import Index, InstanceRecord

    index = Index(open_database(IndexConfig(**index_cfg), data_dir))
    study = str(generate_uid())
    per = n // threads

    def rows(k: int) -> list[InstanceRecord]:
        series = str(generate_uid())
        return [InstanceRecord(
            sop_uid=str(generate_uid()), series_uid=series, study_uid=study,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
            tier="fast", rel_path=f"x/{k}/{i}.dcm", size=1000, sha256="0" * 64, ds_offset=300,
            received_at=time.time(), calling_ae="BENCH", patient_id="P1", modality="CT")
            for i in range(per)]

    batches = [rows(k) for k in range(threads)]

    def run(batch: list[InstanceRecord]) -> None:
        for r in batch:
            index.commit(r)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=run, args=(b,)) for b in batches]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    dt = time.perf_counter() - t0
    index.close()
    return dt / (per * threads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=400, help="CT-like instances per run")
    ap.add_argument("--commits", type=int, default=400, help="rows per index-cost run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row (medians shown)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "pacsinfra-bench",
                    help="where the generated instances are kept between runs")
    args = ap.parse_args()
    orthanc = not args.no_orthanc
    if orthanc and not (shutil.which("Orthanc") and Path(ORTHANC_PG).exists()):
        print("Orthanc or its PostgreSQL plugin is missing (apt-get install orthanc "
              "orthanc-postgresql); run with --no-orthanc to skip that row", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="pxcl-", dir="/tmp"))
    os.chmod(base, 0o755)  # the postgres user walks into it
    parts = make_set(args.data, "ct", args.count)
    n = sum(len(list(p.iterdir())) for p in parts)
    pg, prefix = start_cluster(base / "pg")
    rows: list[list[str]] = []
    try:
        print("index commit cost (in-process Index.commit):", flush=True)
        cost: list[list[str]] = []
        for label, make in (("SQLite", lambda d: {"backend": "sqlite", "path": str(d / "i.db")}),
                            ("PostgreSQL", lambda d: fresh_db(pg, f"cost{len(cost)}"))):
            d = Path(tempfile.mkdtemp(dir=base))
            one = commit_cost(make(d), d, args.commits // 4, 1)
            d = Path(tempfile.mkdtemp(dir=base))
            many = commit_cost(make(d), d, args.commits, 8)
            cost.append([label, f"{one * 1000:.2f}", f"{1 / many:.0f}"])
            print("  ", " | ".join(cost[-1]), flush=True)
        results: dict[str, list[float]] = {}
        runs = [(f"pacsinfra archive, {k} node{'s' if k > 1 else ''}", k) for k in args.nodes]
        if orthanc:
            runs.append(("Orthanc + PostgreSQL plugin", 0))
        for r in range(args.repeat):
            for label, k in runs:
                work = Path(tempfile.mkdtemp(dir=base))
                db = f"ingest{r}_{k}"
                index = fresh_db(pg, db)
                rcv = start_nodes(work, k, index) if k else start_orthanc(work, pg, db)
                try:
                    dt = send(parts, rcv, len(parts))  # type: ignore[arg-type]
                finally:
                    rcv.stop()
                    shutil.rmtree(work, ignore_errors=True)
                results.setdefault(label, []).append(dt)
                print(f"   {label}: {n / dt:.0f} instances/s", flush=True)
        first = statistics.median(results[runs[0][0]])
        peer = statistics.median(results[runs[-1][0]]) if orthanc else None
        for label, _ in runs:
            dt = statistics.median(results[label])
            rows.append([label, f"{n}", f"{dt:.2f}", f"{n / dt:.0f}", f"x{first / dt:.2f}",
                         f"x{peer / dt:.2f}" if peer else "-"])
    finally:
        stop_cluster(pg, prefix)
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{'backend':<12} {'ms per commit, 1 thread':>24} {'rows/s, 8 threads':>18}")
    for backend, one_ms, rate8 in cost:
        print(f"{backend:<12} {one_ms:>24} {rate8:>18}")
    print()
    print(f"{'receiver (4 associations)':<34} {'inst':>6} {'s':>7} {'inst/s':>7} "
          f"{'vs 1 node':>9} {'vs Orthanc':>10}")
    for name, count, secs, rate, ratio, vs_peer in rows:
        print(f"{name:<34} {count:>6} {secs:>7} {rate:>7} {ratio:>9} {vs_peer:>10}")
    print("\none 2-core machine: nodes share its CPU and disk (see docs/archive.md for the "
          "model of a real cluster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
