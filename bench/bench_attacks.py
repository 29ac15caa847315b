"""Resource-exhaustion attacks on the DICOM receive paths: memory and availability.

Run on demand (not part of the test suite)::

    .venv/bin/python bench/bench_attacks.py                       # archive, every attack
    .venv/bin/python bench/bench_attacks.py --service router
    .venv/bin/python bench/bench_attacks.py --attacks announce,idle --conns 64
    .venv/bin/python bench/bench_attacks.py --code /tmp/old-src    # another version's code

Each attack gets a fresh ``pacsinfra archive serve`` (or ``router serve``) subprocess
on a loopback port; its resident set (``VmRSS``) is sampled every 20 ms before, during
and after the attack. Attack connections come from 127.0.0.2 (another "host"), the
legitimate DCMTK ``storescu`` from 127.0.0.1 (``--sources N``: the attack from
127.0.0.2 to 127.0.0.N+1, round robin); it must store one instance within the
time printed. The attacks:

- ``announce``: an A-ASSOCIATE-RQ whose header announces a 4 GiB PDU (from a calling
  AE that is not allowed), then silence: how long is the connection held?
- ``trickle``: the same header, then 128 MiB of body as fast as the server reads it.
- ``idle``: ``--conns`` connections that never send a byte; storescu during the
  flood and right after the flood closes.
- ``loris``: ``--conns`` connections each sending a valid A-ASSOCIATE-RQ one byte a
  second; storescu during the flood.
- ``pdata``: an established association (streaming path) that announces a 4 GiB
  P-DATA-TF and sends 128 MiB of it; ``pdata-pn``: the same on an association that
  also proposes C-MOVE, so pynetdicom serves it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance, write  # noqa: E402

ATTACKER = "127.0.0.2"
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> int:
    """Resident set of ``pid`` in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """The peak RSS of a process while it runs (20 ms samples)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


class Service:
    """A ``pacsinfra archive|router serve`` subprocess with a fresh data directory."""

    def __init__(self, kind: str, base: Path, extra: dict[str, Any], code: Path = REPO
                 ) -> None:
        self.kind, self.port = kind, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=base))
        cfg: dict[str, Any] = {"ae_title": "ARCHIVE" if kind == "archive" else "ROUTER",
                               "bind": "127.0.0.1", "port": self.port,
                               "allowed_calling_aes": ["STORESCU", "ECHOSCU", "LEGIT"], **extra}
        if kind == "archive":
            cfg.update(data_dir=str(self.dir / "data"), dicomweb={"enabled": False})
        else:
            dest = {"ae_title": "NOWHERE", "host": "127.0.0.1", "port": free_port()}
            cfg.update(spool_dir=str(self.dir / "spool"), destinations={"d": dest},
                       rules=[{"name": "all", "forward": ["d"]}])
        (self.dir / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        self.aet = cfg["ae_title"]
        self.log = self.dir / "service.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pacsinfra", kind, "serve", "--config",
                 str(self.dir / "cfg.yaml")], stdout=log, stderr=subprocess.STDOUT,
                cwd=code, env=dict(os.environ, PYTHONPATH=str(code)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)  # the probe connection above is gone before the baseline

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SOURCES = [ATTACKER]


def connect(port: int, timeout: float = 5) -> socket.socket:
    s = socket.socket()
    s.bind((SOURCES[connect.count % len(SOURCES)], 0))  # type: ignore[attr-defined]
    connect.count += 1  # type: ignore[attr-defined]
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


connect.count = 0  # type: ignore[attr-defined]


def associate_rq(calling: str, called: str, *, announced: int | None = None,
                 move: bool = False) -> bytes:
    """A minimal A-ASSOCIATE-RQ (Verification, Implicit VR LE; with ``move``, Study Root
    C-MOVE too, which only pynetdicom serves); ``announced`` replaces the PDU length in
    its header (a lie)."""
    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BxH", kind, len(body)) + body

    ctx = item(0x20, bytes((1, 0, 0, 0)) + item(0x30, b"1.2.840.10008.1.1")
               + item(0x40, b"1.2.840.10008.1.2"))
    if move:
        ctx += item(0x20, bytes((3, 0, 0, 0)) + item(0x30, b"1.2.840.10008.5.1.4.1.2.2.2")
                    + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.3.4"))
    body = (struct.pack(">H2x", 1) + called.ljust(16).encode() + calling.ljust(16).encode()
            + b"\x00" * 32 + item(0x10, b"1.2.840.10008.3.1.1.1") + ctx + user)
    return struct.pack(">BxL", 0x01, len(body) if announced is None else announced) + body


def closed_after(sock: socket.socket, limit: float) -> tuple[float, str]:
    """Seconds until the server closes ``sock`` (or ``limit``), and what it sent first."""
    t0 = time.monotonic()
    sock.settimeout(0.5)
    first = b""
    while time.monotonic() - t0 < limit:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        first = first or data
    return time.monotonic() - t0, _pdu_name(first)


def _pdu_name(data: bytes) -> str:
    names = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x07: "A-ABORT", 0x04: "P-DATA"}
    if not data:
        return "closed"
    return names.get(data[0], f"0x{data[0]:02X}")


def storescu(port: int, aet: str, path: Path) -> tuple[bool, float]:
    """Store ``path`` with DCMTK storescu from 127.0.0.1: (stored, seconds)."""
    t0 = time.monotonic()
    run = subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", aet, "-to", "10",
                          "-ta", "10", "-td", "10", "127.0.0.1", str(port), str(path)],
                         capture_output=True, text=True, env=dict(os.environ, TCP_NODELAY="1"))
    return run.returncode == 0 and "Status" not in run.stderr, time.monotonic() - t0


def send_for(sock: socket.socket, total: int, chunk: int = MIB) -> int:
    """Send up to ``total`` bytes; the number the server took before it closed."""
    sent, block = 0, b"\x00" * chunk
    sock.settimeout(10)
    try:
        while sent < total:
            sock.sendall(block)
            sent += chunk
    except OSError:
        pass
    return sent


# -- attacks: each returns a row of results -----------------------------------------------------

def attack_announce(svc: Service, args: argparse.Namespace, legit: Path) -> dict[str, Any]:
    sock = connect(svc.port)
    sock.sendall(associate_rq("INTRUDER", svc.aet, announced=0xFFFFFFFF))
    held, answer = closed_after(sock, args.hold_limit)
    sock.close()
    return {"held_s": held, "answer": answer}


def attack_trickle(svc: Service, args: argparse.Namespace, legit: Path) -> dict[str, Any]:
    sock = connect(svc.port)
    sock.sendall(associate_rq("INTRUDER", svc.aet, announced=0xFFFFFFFF))
    sent = send_for(sock, args.trickle_mib * MIB)
    held, answer = closed_after(sock, 2)
    sock.close()
    return {"server_took_mib": sent // MIB, "answer": answer}


def _flood(svc: Service, args: argparse.Namespace, legit: Path,
           feed: Callable[[list[socket.socket], threading.Event], None]) -> dict[str, Any]:
    socks: list[socket.socket] = []
    refused = 0
    for _ in range(args.conns):
        try:
            socks.append(connect(svc.port, timeout=2))
        except OSError:
            refused += 1
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(socks, stop), daemon=True)
    feeder.start()
    time.sleep(args.flood_wait)
    ok_during, t_during = storescu(svc.port, svc.aet, legit)
    stop.set()
    feeder.join()
    for s in socks:
        s.close()
    ok_after, t_after = storescu(svc.port, svc.aet, legit)
    return {"connected": len(socks), "refused_at_connect": refused,
            "storescu_during": f"{'ok' if ok_during else 'FAILED'} {t_during:.1f}s",
            "storescu_after": f"{'ok' if ok_after else 'FAILED'} {t_after:.1f}s"}


def attack_idle(svc: Service, args: argparse.Namespace, legit: Path) -> dict[str, Any]:
    return _flood(svc, args, legit, lambda socks, stop: stop.wait())


def attack_loris(svc: Service, args: argparse.Namespace, legit: Path) -> dict[str, Any]:
    rq = associate_rq("LEGIT", svc.aet)

    def feed(socks: list[socket.socket], stop: threading.Event) -> None:
        pos = 0
        while not stop.wait(1.0) and pos < len(rq):
            for s in socks:
                try:
                    s.send(rq[pos:pos + 1])
                except OSError:
                    pass
            pos += 1

    return _flood(svc, args, legit, feed)


def attack_pdata(svc: Service, args: argparse.Namespace, legit: Path, *,
                 move: bool = False) -> dict[str, Any]:
    s = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
    s.sendall(associate_rq("LEGIT", svc.aet, move=move))
    reply = s.recv(65536)
    if _pdu_name(reply) != "A-ASSOCIATE-AC":
        return {"answer": f"association {_pdu_name(reply)}"}
    s.sendall(struct.pack(">BxL", 0x04, 0xFFFFFFFF) + struct.pack(">LBB", 0xFFFFFFFB, 1, 0))
    sent = send_for(s, args.trickle_mib * MIB)
    _, answer = closed_after(s, 2)
    s.close()
    return {"server_took_mib": sent // MIB, "answer": answer}


def attack_pdata_pynetdicom(svc: Service, args: argparse.Namespace,
                            legit: Path) -> dict[str, Any]:
    return attack_pdata(svc, args, legit, move=True)


ATTACKS = {"announce": attack_announce, "trickle": attack_trickle, "idle": attack_idle,
           "loris": attack_loris, "pdata": attack_pdata, "pdata-pn": attack_pdata_pynetdicom}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--service", choices=["archive", "router"], default="archive")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--conns", type=int, default=100, help="connections of the floods")
    ap.add_argument("--flood-wait", type=float, default=1.0,
                    help="seconds between opening a flood and the legitimate store")
    ap.add_argument("--trickle-mib", type=int, default=128)
    ap.add_argument("--hold-limit", type=float, default=75.0,
                    help="stop waiting for the server to drop an announce after this")
    ap.add_argument("--config", default="{}", help="extra service config (YAML/JSON)")
    ap.add_argument("--code", type=Path, default=REPO,
                    help="run the service from this source tree (another version of pacsinfra)")
    ap.add_argument("--sources", type=int, default=1,
                    help="attack from this many loopback addresses (127.0.0.2, .3, ...)")
    args = ap.parse_args()
    SOURCES[:] = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    extra = yaml.safe_load(args.config) or {}
    base = Path(tempfile.mkdtemp(prefix="pacsinfra-attacks-"))
    legit = write(make_instance(rows=256, cols=256, patient_id="LEGIT"), base / "legit.dcm")
    print("| service | attack | RSS before (MB) | peak (MB) | after (MB) | outcome |")
    print("|---|---|---|---|---|---|")
    try:
        run_all(args, extra, base, legit)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_all(args: argparse.Namespace, extra: dict[str, Any], base: Path, legit: Path) -> None:
    """Each attack against a fresh service; one table row each."""
    for name in args.attacks.split(","):
        svc = Service(args.service, base, extra, args.code)
        try:
            before = rss(svc.proc.pid)
            sampler = Sampler(svc.proc.pid)
            sampler.start()
            result = ATTACKS[name](svc, args, legit)
            time.sleep(3)
            after = rss(svc.proc.pid)
            peak = sampler.stop()
            alive = svc.proc.poll() is None
            outcome = ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in result.items())
            if not alive:
                outcome += f", SERVICE DIED ({svc.proc.returncode})"
            print(f"| {args.service} | {name} | {before / 1e6:.0f} | {peak / 1e6:.0f} | "
                  f"{after / 1e6:.0f} | {outcome} |", flush=True)
        finally:
            svc.stop()


if __name__ == "__main__":
    main()
