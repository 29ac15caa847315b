"""Try each class of HTTP attack on ``pacsinfra archive serve``'s DICOMweb and print what
happened, one line per attack: a table to compare two versions of the code.

Run on demand (not part of the test suite); about three minutes (the slow-client
attacks wait for the server's default timeouts)::

    .venv/bin/python bench/attack_dicomweb.py                       # this checkout
    .venv/bin/python bench/attack_dicomweb.py --code /tmp/old-src   # another source tree

The archive config uses only settings every version knows (``dicomweb.bind``, ``port``
and the single ``token``), so the same attacks meet each version's defaults.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "attack-bench-token-0123456789"
CT = 'multipart/related; type="application/dicom"; boundary=bb'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Target:
    """One archive process of the code under test."""

    def __init__(self, code: Path, base: Path, dicomweb: dict[str, Any]) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.http = free_port()
        self.data = base / "data"
        cfg = {"ae_title": "ATTACK", "bind": "127.0.0.1", "port": free_port(),
               "data_dir": str(self.data), "audit": {"file": str(self.data / "audit.jsonl")},
               "dicomweb": {"enabled": True, "port": self.http, **dicomweb}}
        (base / "a.yaml").write_text(yaml.safe_dump(cfg))
        self.log = base / "archive.log"
        env = dict(os.environ, PYTHONPATH=str(code))
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "pacsinfra", "archive", "serve",
                                          "--config", str(base / "a.yaml")], stdout=fh,
                                         stderr=subprocess.STDOUT, env=env, cwd=base)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.http), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)

    def up(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def raw(port: int, data: bytes, *, wait: float = 10.0, source: str = "127.0.0.1"
        ) -> tuple[str, float]:
    """Send ``data`` on a new connection; (first answer line or what happened, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait, source_address=(source, 0))
    started = time.monotonic()
    try:
        s.sendall(data)
        got = s.recv(65536)
        line = got.split(b"\r\n", 1)[0].decode("latin-1") if got else "closed, no answer"
        if got and b"\r\n\r\n" in got:
            head, _, body = got.partition(b"\r\n\r\n")
            ctype = next((h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-type:")), "")
            line += f" [{ctype.split(';')[0]}]" if ctype else ""
    except TimeoutError:
        line = f"no answer in {wait:.0f} s"
    except ConnectionResetError:
        line = "reset"
    finally:
        s.close()
    return line, time.monotonic() - started


def req(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
        length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def instance(study: str | None = None) -> bytes:
    from pacsinfra.pacs.archive.synth import make_instance

    buf = BytesIO()
    make_instance(study_uid=study, patient_id="ATTACK").save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart(*parts: bytes) -> bytes:
    return b"".join(b"--bb\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--bb--\r\n"


def held(port: int, opening: bytes, trickle: bytes, seconds: float) -> str:
    """Open a connection, send ``opening``, then ``trickle`` every second: what the server
    did within ``seconds``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    started = time.monotonic()
    s.sendall(opening)
    s.settimeout(1.0)
    try:
        while time.monotonic() - started < seconds:
            try:
                got = s.recv(4096)
                took = time.monotonic() - started
                first = got.split(b"\r\n", 1)[0].decode("latin-1")
                return f"{first} after {took:.1f} s" if got else f"closed after {took:.1f} s"
            except TimeoutError:
                s.sendall(trickle)
        return f"still held after {seconds:.0f} s"
    except (ConnectionResetError, BrokenPipeError):
        return f"closed after {time.monotonic() - started:.1f} s"
    finally:
        s.close()


def listening(port: int) -> set[str]:
    """IPv4 addresses listening on ``port`` (from /proc/net/tcp)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        addr, _, hexport = fields[1].partition(":")
        if fields[3] == "0A" and int(hexport, 16) == port:
            out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def endless_body(port: int, seconds: float) -> str:
    """A GET announcing a 1 GB body, answered at once; then the client keeps sending:
    how long the server keeps taking it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(req("GET", "/studies", auth(), length=10**9))
        answer = s.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            try:
                s.sendall(b"x" * 4096)
            except OSError:
                return f"{answer}, then closed after {time.monotonic() - started:.1f} s"
            time.sleep(0.1)
        return f"{answer}, then still taking the body after {seconds:.0f} s"
    finally:
        s.close()


def modes(root: Path) -> str:
    widest = 0
    for dirpath, _dirs, files in os.walk(root):
        for p in [Path(dirpath), *(Path(dirpath, f) for f in files)]:
            widest |= stat.S_IMODE(p.stat().st_mode) & 0o077
    return f"group/other bits seen: {oct(widest)}"


def attacks(code: Path, work: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def run(name: str, fn: Callable[[], str]) -> None:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - an attack's own failure is a result too
            out = f"attack failed: {type(exc).__name__}: {exc}"
        rows.append((name, out))
        print(f"{name:62} {out}", flush=True)

    # -- open by default ------------------------------------------------------------------
    t = Target(code, work / "default", {})
    run("config without bind/token: listening address", lambda: ",".join(
        sorted(listening(t.http))) or "nothing")
    run("  anonymous QIDO", lambda: raw(t.http, req("GET", "/studies"))[0])
    ds = instance()
    run("  anonymous STOW", lambda: raw(t.http, req("POST", "/studies", {"Content-Type": CT},
                                                    multipart(ds)))[0])
    from pydicom import dcmread

    study = str(dcmread(BytesIO(ds)).StudyInstanceUID)
    run("  anonymous DELETE of a study", lambda: raw(t.http, req("DELETE",
                                                                 f"/studies/{study}"))[0])
    t.stop()
    run("  file modes in the data directory (index, files, audit log)", lambda: modes(t.data))
    cfg = work / "open.yaml"
    cfg.write_text(yaml.safe_dump({"ae_title": "OPEN", "port": free_port(), "bind": "127.0.0.1",
                                   "data_dir": str(work / "open"),
                                   "dicomweb": {"bind": "0.0.0.0", "port": free_port()}}))

    def open_bind() -> str:
        p = subprocess.Popen([sys.executable, "-m", "pacsinfra", "archive", "serve", "--config",
                              str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=str(code)), cwd=work)
        try:
            p.wait(8)
            return f"refused, exit {p.returncode}"
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
            return "started, serving 0.0.0.0 without authentication"

    run("bind 0.0.0.0 without any token", open_bind)

    # -- with a token ---------------------------------------------------------------------
    (work / "token").write_text(TOKEN)
    t = Target(code, work / "tok", {"bind": "127.0.0.1", "token": {"file": str(work / "token")}})
    port = t.http
    run("no token", lambda: raw(port, req("GET", "/studies"))[0])
    run("wrong token", lambda: raw(port, req("GET", "/studies",
                                             {"Authorization": "Bearer nope"}))[0])
    run("Basic instead of Bearer", lambda: raw(port, req("GET", "/studies",
                                                         {"Authorization": "Basic eDp5"}))[0])
    run("Content-Length 100 GB, no body", lambda: "{} in {:.3f} s".format(*raw(
        port, req("POST", "/studies", {**auth(), "Content-Type": CT}, length=100 * 10**9),
        wait=30)))
    run("STOW body that is not multipart (64 KiB of zeros)", lambda: raw(port, req(
        "POST", "/studies", {**auth(), "Content-Type": CT}, b"\0" * 65536))[0])
    run("STOW multipart with no parts", lambda: raw(port, req(
        "POST", "/studies", {**auth(), "Content-Type": CT}, b"--bb--\r\n"))[0])
    run("STOW part that is not DICOM", lambda: raw(port, req(
        "POST", "/studies", {**auth(), "Content-Type": CT}, multipart(b"junk")))[0])
    run("STOW of study B's instance to /studies/{A}", lambda: raw(port, req(
        "POST", "/studies/1.2.3.4", {**auth(), "Content-Type": CT}, multipart(instance())))[0])
    run("STOW file meta with a 2 GiB element length", lambda: raw(port, req(
        "POST", "/studies", {**auth(), "Content-Type": CT}, multipart(
            b"\0" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00\xff\xff\xff\x7f"
            b"\x02\x00\x01\x00OB\x00\x00\xff\xff\xff\x7f")))[0])
    for name, query in (("QIDO offset=99999999999999999999", "offset=99999999999999999999"),
                        ("QIDO limit=0", "limit=0"), ("QIDO unknown key Foo", "Foo=1"),
                        ("QIDO sequence key ReferencedStudySequence",
                         "ReferencedStudySequence="),
                        ("QIDO dotted sequence path", "ReferencedStudySequence.PatientID=1"),
                        ("QIDO StudyDate=2024-01-01", "StudyDate=2024-01-01"),
                        ("QIDO instance key on a study search", "SOPInstanceUID=1.2.3"),
                        ("QIDO PatientID with NUL", "PatientID=a%00b"),
                        ("QIDO includefield=NoSuchAttribute", "includefield=NoSuchAttribute")):
        run(name, lambda q=query: raw(port, req("GET", f"/studies?{q}", auth()))[0])
    run("WADO path UID ..%2f..%2fetc", lambda: raw(port, req(
        "GET", "/studies/..%2f..%2fetc", auth()))[0])
    run("frames/0", lambda: raw(port, req("GET", "/studies/1.2/series/1.2/instances/1.2/"
                                                "frames/0", auth()))[0])
    run("unknown route", lambda: raw(port, req("GET", "/nope", auth()))[0])
    run("PUT /studies", lambda: raw(port, req("PUT", "/studies", auth()))[0])
    run("malformed HTTP (header without colon)", lambda: raw(
        port, b"GET /studies HTTP/1.1\r\nno colon\r\n\r\n")[0])
    run("70 KB header in one piece", lambda: raw(port, req(
        "GET", "/studies", {**auth(), "X-Big": "a" * 70_000}))[0])
    run("request head trickled (a byte a second)", lambda: held(
        port, b"GET /studies HTTP/1.1\r\n", b"X", 20))
    run("STOW body stalled after headers", lambda: held(
        port, req("POST", "/studies", {**auth(), "Content-Type": CT}, length=1000), b"", 40))
    run("GET with a body that never ends", lambda: endless_body(port, 20))

    def flood() -> str:
        socks = []
        try:
            for _ in range(200):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.5)
            answers = {}
            for s in socks:
                s.settimeout(0.2)
                try:
                    got = s.recv(100)
                    key = got.split(b"\r\n", 1)[0].decode() if got else "closed"
                except TimeoutError:
                    key = "held open"
                answers[key] = answers.get(key, 0) + 1
            other = raw(port, req("GET", "/studies", auth()), source="127.0.0.2")[0]
            return f"{answers}; another address: {other}"
        finally:
            for s in socks:
                s.close()

    run("200 idle connections from one address", flood)

    def slow_stows() -> str:
        socks = []
        try:
            for _ in range(40):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(req("POST", "/studies", {**auth(), "Content-Type": CT}, b"--bb\r\n",
                              length=100_000))
                socks.append(s)
            time.sleep(1.0)
            same = raw(port, req("GET", "/studies", auth()))[0]
            other = raw(port, req("GET", "/studies", auth()), source="127.0.0.2")[0]
            return f"41st from the same address: {same}; another address: {other}"
        finally:
            for s in socks:
                s.close()

    run("40 slow STOW requests in progress from one address", slow_stows)
    run("server still up after all of it", lambda: "yes" if t.up() else "NO")
    t.stop()
    audit = t.data / "audit.jsonl"
    run("refusals in the audit trail", lambda: str(sum(
        '"EventOutcomeIndicator":4' in line for line in audit.read_text().splitlines()))
        if audit.exists() else "no audit file")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=REPO, help="source tree to run (PYTHONPATH)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="attack-dicomweb-"))
    try:
        attacks(args.code.resolve(), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
