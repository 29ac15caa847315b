"""Router benchmark: storescu -> router -> peer versus storescu -> peer, same data, same run.

Peers: DCMTK storescp (C, no fsync) and the pacsinfra archive (fsync + index commit per
instance, like the router). Prints a table: forwarding throughput (queue durable: SQLite WAL, synchronous=FULL,
spool fsynced) as a ratio of the direct path, and the end-to-end latency of single
instances (received by the router -> acknowledged by the destination), measured from
the router's own queue rows (``created_at`` and the successful attempt's time).

Run on demand:  .venv/bin/python bench/bench_router.py [--small 1000] [--large 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "tests")]

from test_router_support import (  # noqa: E402
    Proc,
    Router,
    StoreSCP,
    dcmtk,
    instance,
    port,
    wait_for,
    wait_port,
    write_all,
)

ENV = dict(os.environ, TCP_NODELAY="1")


def corpus(folder: Path, n: int, rows: int, per_study: int = 20) -> list[Path]:
    """``n`` CT instances of ``rows`` x ``rows`` 16-bit pixels, ``per_study`` per study."""
    dss = []
    study = ""
    for i in range(n):
        if i % per_study == 0:
            study = instance().StudyInstanceUID
        dss.append(instance(study=study, number=i % per_study + 1, rows=rows))
    return write_all(dss, folder)


def storescu(port: int, aec: str, files: list[Path]) -> float:
    """Send ``files`` over one association; seconds until storescu exits."""
    t = time.perf_counter()
    subprocess.run([dcmtk("storescu"), "-aec", aec, "127.0.0.1", str(port),
                    *map(str, files)], env=ENV, check=True, capture_output=True)
    return time.perf_counter() - t


class ArchiveDest(Proc):
    """The pacsinfra archive (durable: fsync + index commit per instance) as destination."""

    def __init__(self, folder: Path, aet: str = "DEST") -> None:
        self.folder, self.aet, self.port = folder, aet, port()
        super().__init__([sys.executable, "-m", "pacsinfra", "archive", "serve", "--aet", aet,
                          "--port", str(self.port), "--bind", "127.0.0.1", "--data",
                          str(folder)], folder.parent / f"{folder.name}.log", cwd=REPO)

    def start(self) -> None:
        super().start()
        wait_port(self.port, proc=self.proc)

    def count(self) -> int:
        return sum(1 for p in self.folder.rglob("*.dcm") if ".incoming" not in p.parts)

    def dest(self) -> dict[str, object]:
        return {"ae_title": self.aet, "host": "127.0.0.1", "port": self.port}


def make_dest(kind: str, folder: Path) -> tuple[Any, Any]:
    """(peer, function counting what it stored)."""
    if kind == "storescp":
        scp = StoreSCP(folder, "DEST")
        return scp, lambda: len(scp.files())
    arch = ArchiveDest(folder)
    return arch, arch.count


def direct(tmp: Path, files: list[Path], tag: str, kind: str) -> float:
    peer, count = make_dest(kind, tmp / f"direct-{kind}-{tag}")
    peer.start()
    try:
        secs = storescu(peer.port, "DEST", files)
        assert count() == len(files)
        return secs
    finally:
        peer.stop()


def routed(tmp: Path, files: list[Path], tag: str, kind: str) -> tuple[float, float]:
    """(seconds until every file is at the destination, seconds for storescu alone)."""
    peer, count = make_dest(kind, tmp / f"routed-{kind}-{tag}")
    peer.start()
    router = Router(tmp / f"router-{kind}-{tag}", {
        "destinations": {"dest": {**peer.dest(), "max_associations": 2}},
        "rules": [{"name": "all", "forward": ["dest"]}],
        "queue": {"keep_done_seconds": 3600},
    })
    router.start()
    try:
        t = time.perf_counter()
        send_secs = storescu(router.port, "ROUTER", files)
        wait_for(lambda: count() >= len(files), 600, "forwarding", step=0.02)
        return time.perf_counter() - t, send_secs
    finally:
        router.stop()
        peer.stop()


def latency(tmp: Path, files: list[Path]) -> list[float]:
    """Per-instance receive -> destination-acknowledged latency, one instance at a time."""
    scp = StoreSCP(tmp / "latency", "DEST")
    scp.start()
    router = Router(tmp / "router-latency", {
        "destinations": {"dest": scp.dest()},
        "rules": [{"name": "all", "forward": ["dest"]}],
        "queue": {"keep_done_seconds": 3600},
    })
    router.start()
    try:
        for i, f in enumerate(files):
            storescu(router.port, "ROUTER", [f])
            wait_for(lambda n=i + 1: len(scp.files()) >= n, 30, "delivery", step=0.005)
        wait_for(router.drained, 30, "drained")
        db = sqlite3.connect(str(Path(router.cfg["spool_dir"]) / "queue.sqlite"))
        rows = db.execute("SELECT a.at - i.created_at FROM items i JOIN attempts a "
                          "ON a.item_id = i.id WHERE a.status = 0").fetchall()
        return [float(r[0]) for r in rows]
    finally:
        router.stop()
        scp.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000, help="instances of 64x64 (8 KiB)")
    ap.add_argument("--large", type=int, default=500, help="instances of 512x512 (512 KiB)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="direct/routed pairs per row (interleaved); medians are shown")
    ap.add_argument("--latency", type=int, default=200, help="single-instance sends")
    ap.add_argument("--dest", nargs="+", default=["storescp", "archive"],
                    choices=["storescp", "archive"], help="destination peers to compare on")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    rows = []
    for tag, n, size in (("small", args.small, 64), ("large", args.large, 512)):
        if not n:
            continue
        files = corpus(tmp / f"in-{tag}", n, size)
        mb = sum(f.stat().st_size for f in files) / 1e6
        for kind in args.dest:
            runs = []
            for k in range(args.repeat):  # interleaved, so a load change hits both alike
                d = direct(tmp, files, f"{tag}{k}", kind)
                r, send_secs = routed(tmp, files, f"{tag}{k}", kind)
                runs.append((d, r, send_secs))
                print(f"  {kind} {tag} run {k + 1}: direct {n / d:.0f}/s, routed {n / r:.0f}/s "
                      f"({d / r:.0%})", flush=True)
            d, r, send_secs = (statistics.median(x[i] for x in runs) for i in range(3))
            rows.append((kind, tag, n, mb, d, r, send_secs))
    print()
    print(f"{'destination':<12}{'data':<7}{'inst':>6}{'MB':>7}{'direct s':>10}{'direct/s':>10}"
          f"{'routed s':>10}{'routed/s':>10}{'ratio':>8}{'ack s':>8}")
    for kind, tag, n, mb, d, r, s in rows:
        print(f"{kind:<12}{tag:<7}{n:>6}{mb:>7.1f}{d:>10.2f}{n / d:>10.0f}{r:>10.2f}"
              f"{n / r:>10.0f}{d / r:>8.0%}{s:>8.2f}")
    if args.latency:
        files = corpus(tmp / "in-latency", args.latency, 64)
        lat = sorted(latency(tmp, files))
        p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
        print(f"\nlatency receive->destination ack, {len(lat)} single instances: "
              f"median {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {lat[-1] * 1000:.1f} ms")
    print("\nratio = direct seconds / routed seconds (routed: until the last file is at the "
          f"destination); ack s = storescu time against the router; medians of {args.repeat}.")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
