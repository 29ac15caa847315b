"""Profile the archive during a CT ingest with py-spy; print where the time goes.

    .venv/bin/python bench/profile_archive.py [--count 300] [--parallel 1] [--workers 1]

Starts ``pacsinfra archive serve`` (fsync + index, as in production), attaches
``py-spy record`` (pip install py-spy) to it, sends synthetic 512x512x16-bit CT
instances with DCMTK storescu, and prints two tables: functions by own samples and
by inclusive samples (idle waits excluded, so the shares are of busy time).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_archive import free_port, make_set, wait_port  # noqa: E402

IDLE = ("Condition.wait", "Event.wait", "select (selectors", "sleep", "serve_forever",
        "_PollLikeSelector.select")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--parallel", type=int, default=1, choices=(1, 4))
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "pacsinfra-bench")
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        sys.exit("py-spy not found: pip install py-spy")
    parts = make_set(args.data, "ct", args.count)
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    port = free_port()
    cfg = work / "a.yaml"
    cfg.write_text(f"{{ae_title: ARCHIVE, bind: 127.0.0.1, port: {port}, data_dir: {work}/data,"
                   " dicomweb: {enabled: false}, limits: {max_pdu: 1048576}}\n")
    arch = subprocess.Popen([sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
                             str(cfg), "--log-level", "WARNING"], cwd=REPO)
    raw = work / "profile.txt"
    try:
        wait_port(port)
        spy = subprocess.Popen([pyspy, "record", "-p", str(arch.pid), "-f", "raw", "-o", str(raw),
                                "-r", str(args.rate), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        t0 = time.perf_counter()
        base = ["/usr/bin/storescu", "+sd", "-aec", "ARCHIVE", "127.0.0.1", str(port)]
        if args.parallel == 1:
            subprocess.run([*base, *map(str, parts)], check=True)
        else:
            procs = [subprocess.Popen([*base, str(p)]) for p in parts]
            for p in procs:
                p.wait()
        dt = time.perf_counter() - t0
        spy.send_signal(2)
        spy.wait(30)
    finally:
        arch.terminate()
        arch.wait(30)
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if any(m in frames[-1] for m in IDLE):
            continue
        total += int(n)
        self_c[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    print(f"{args.count} CT instances, {args.parallel} association(s): {args.count / dt:.0f} "
          f"inst/s; {total} busy samples")
    print(f"\n{'own %':>6}  function")
    for f, n in self_c.most_common(20):
        print(f"{100 * n / max(1, total):6.1f}  {f[:110]}")
    print(f"\n{'incl %':>6}  function")
    for f, n in incl.most_common(30):
        print(f"{100 * n / max(1, total):6.1f}  {f[:110]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
