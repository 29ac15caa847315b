"""Measure what large and lying STOW-RS requests cost the archive's DICOMweb server.

Run on demand (not part of the test suite)::

    .venv/bin/python bench/bench_dicomweb.py                # 511 MiB bodies
    .venv/bin/python bench/bench_dicomweb.py --mib 64       # smaller, quicker

For each case a fresh ``pacsinfra archive serve`` (DICOMweb on loopback with a bearer
token) receives one request; the archive's resident memory (VmRSS) is read before, its
peak (VmHWM) after, and VmRSS again two seconds later:

* ``instance``: one real Part 10 instance (8-bit, 1 MiB frames) of about ``--mib`` MiB
  in a multipart/related body, sent from a file;
* ``garbage``: a body of ``--mib`` MiB of zeros announced as multipart/related;
* ``announce``: headers announcing a 100 GB body, then nothing: the time until the
  first byte of an answer (or the wait cap).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_archive import free_port, wait_port  # noqa: E402 - the benches' shared helpers

TOKEN = "bench-token"
BOUNDARY = "benchboundary0123456789"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start(base: Path) -> tuple[subprocess.Popen[bytes], int]:
    http = free_port()
    (base / "token").write_text(TOKEN)
    cfg = {"ae_title": "BENCH", "bind": "127.0.0.1", "port": free_port(),
           "data_dir": str(base / "data"),
           "dicomweb": {"enabled": True, "bind": "127.0.0.1", "port": http,
                        "token": {"file": str(base / "token")}}}
    (base / "archive.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = (base / "archive.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
                             str(base / "archive.yaml")], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)
    wait_port(http)
    time.sleep(0.5)
    return proc, http


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def big_instance(path: Path, mib: int) -> None:
    """A Part 10 file whose pixel data is ``mib`` frames of 1 MiB (written in pieces)."""
    from pydicom.uid import ExplicitVRLittleEndian

    from pacsinfra.pacs.archive.synth import make_instance

    frames = max(1, mib)
    ds = make_instance(rows=1024, cols=1024)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.NumberOfFrames = frames
    ds.PixelData = b"\0" * 8  # placeholder, replaced by the streamed value below
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = path.with_suffix(".head")
    ds.save_as(head, enforce_file_format=True)
    size = frames * 1024 * 1024
    with path.open("wb") as out:
        out.write(head.read_bytes())
        # (7FE0,0010) OB, explicit VR little endian: tag, VR, 2 reserved, 4-byte length
        out.write(b"\xe0\x7f\x10\x00OB\x00\x00" + size.to_bytes(4, "little"))
        block = b"\x11" * (1024 * 1024)
        for _ in range(frames):
            out.write(block)
    head.unlink()


def multipart_file(payload: Path, out: Path) -> None:
    with out.open("wb") as f:
        f.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        with payload.open("rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
        f.write(f"\r\n--{BOUNDARY}--\r\n".encode())


def post_file(port: int, body: Path) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.monotonic()
    with body.open("rb") as f:
        conn.request("POST", "/studies", body=f, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Length": str(body.stat().st_size),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
        try:
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (ConnectionError, http.client.HTTPException):
            status = 0
    conn.close()
    return status, time.monotonic() - started


def announce(port: int, cap: float) -> tuple[str, float]:
    """Headers announcing 100 GB, no body: time to the first answer byte."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(cap)
    started = time.monotonic()
    s.sendall((f"POST /studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\n"
               f"Content-Length: {100 * 10**9}\r\n\r\n").encode())
    try:
        first = s.recv(200)
        took = time.monotonic() - started
        line = first.split(b"\r\n", 1)[0].decode("latin-1") or "(closed)"
    except TimeoutError:
        took, line = cap, f"no answer within {cap:.0f} s"
    s.close()
    return line, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=511)
    ap.add_argument("--cap", type=float, default=30.0, help="wait cap for the announce case")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    try:
        payload = base / "big.dcm"
        big_instance(payload, args.mib)
        inst_body = base / "instance.body"
        multipart_file(payload, inst_body)
        payload.unlink()
        garbage = base / "garbage.body"
        with garbage.open("wb") as f:
            f.truncate(args.mib * 1024 * 1024)
        rows = []
        for name, body in (("instance", inst_body), ("garbage", garbage)):
            run = base / name
            run.mkdir()
            proc, port = start(run)
            before = status_kib(proc.pid, "VmRSS")
            status, took = post_file(port, body)
            peak = status_kib(proc.pid, "VmHWM")
            time.sleep(2)
            after = status_kib(proc.pid, "VmRSS")
            stop(proc)
            rows.append(f"{name:9} body {body.stat().st_size / 2**20:7.1f} MiB  HTTP {status}  "
                        f"{took:6.2f} s  RSS before {before / 1024:6.1f} MiB  peak "
                        f"{peak / 1024:7.1f} MiB (+{(peak - before) / 1024:.1f})  2 s after "
                        f"{after / 1024:7.1f} MiB (+{(after - before) / 1024:.1f})")
            shutil.rmtree(run)
        run = base / "announce"
        run.mkdir()
        proc, port = start(run)
        line, took = announce(port, args.cap)
        stop(proc)
        rows.append(f"announce  100 GB Content-Length, no body: {line!r} after {took:.3f} s")
        print("\n".join(rows))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
