"""Helpers for the fuzzing and exhaustion suites (no tests in here).

A :class:`Target` is a real ``pacsinfra archive serve`` or ``router serve`` subprocess
with a private working directory and ``TMPDIR`` (so a file written outside its data
directory is found), a known study stored through it before any attack, and checks
that it survived: C-ECHO answers, the known study is intact, its resident set is
back under a bound, and nothing was written outside its data directory.

Associations are driven by hand on plain sockets: the A-ASSOCIATE-RQ proposes
storage only (the streaming path serves it) or storage plus a context the streaming
path does not serve (C-MOVE: pynetdicom serves it). Attack connections come from
127.0.0.2 and up (other "hosts" on loopback), legitimate clients from 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from pacsinfra.pacs import compat
from pacsinfra.pacs.archive.synth import make_instance, write
from pacsinfra.pacs.fastscp import codec

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # not served by the streaming path
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
#: limits small enough that a flood of "the number the limits name" is quick to make
FLOOD_LIMITS = {"max_pending": 12, "max_connections_per_address": 6, "request_timeout": 3,
                "max_associations": 16, "max_associations_per_ae": 16}


def rss(pid: int) -> int:
    """Resident set of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def request(called: str, *, calling: str = "FUZZER", pynetdicom_path: bool = False,
            max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ for CT storage (context 1) and Verification (3); with
    ``pynetdicom_path``, a C-MOVE context (5) too, which only pynetdicom serves."""
    contexts = [compat.ProposedContext(1, CT, (EXPLICIT, IMPLICIT)),
                compat.ProposedContext(3, VERIFICATION, (IMPLICIT,))]
    if pynetdicom_path:
        contexts.append(compat.ProposedContext(5, MOVE, (IMPLICIT,)))
    return compat.encode_associate_rq(compat.AssociateRequest(
        calling=calling, called=called, application_context=APP_CONTEXT,
        contexts=tuple(contexts), max_pdu=max_pdu, implementation_uid="1.2.3.4.5"))


ANSWER_TIMEOUT = 30.0


def connect(port: int, source: str = "127.0.0.2", timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the target from ``source``."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """One PDU, or None at end of stream / timeout / reset."""
    def exact(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    head = exact(6)
    if head is None:
        return None
    kind, length = codec.parse_header(head)
    if length > 1 << 20:
        return None
    body = exact(length)
    return None if body is None else (kind, body)


def associate(port: int, called: str, *, pynetdicom_path: bool = False,
              calling: str = "FUZZER", source: str = "127.0.0.2") -> socket.socket:
    """An established association (AssertionError if not accepted)."""
    # An answer is expected: wait as long as a loaded 2-core machine may take to start a
    # pynetdicom association (over 5 s measured beside stress-ng --cpu 2 and the suite).
    sock = connect(port, source, timeout=ANSWER_TIMEOUT)
    sock.sendall(request(called, calling=calling, pynetdicom_path=pynetdicom_path))
    reply = read_pdu(sock)
    assert reply is not None and reply[0] == codec.A_ASSOCIATE_AC, f"not accepted: {reply}"
    sock.settimeout(5.0)
    return sock


def exchange(sock: socket.socket, blob: bytes, *, quiet: float = 0.5,
             timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """Send ``blob`` and collect what the peer answers: until it closes, or has been quiet
    for ``quiet`` seconds; then close our sending side (so it never waits for bytes that
    will not come) and collect the rest until it closes."""
    out: list[tuple[int, bytes]] = []
    try:
        sock.settimeout(timeout)
        sock.sendall(blob)
        sock.settimeout(quiet)
        while (pdu := read_pdu(sock)) is not None:
            out.append(pdu)
        sock.settimeout(timeout)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    while (pdu := read_pdu(sock)) is not None:
        out.append(pdu)
    sock.close()
    return out


def respond(sock: socket.socket, blob: bytes, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """Send ``blob`` (a whole DIMSE message) and wait for the answer (a response, an
    A-ABORT or the end of the connection); then release."""
    out: list[tuple[int, bytes]] = []
    try:
        sock.settimeout(timeout)
        sock.sendall(blob)
        while (pdu := read_pdu(sock)) is not None:
            out.append(pdu)
            if pdu[0] != codec.P_DATA_TF or statuses([pdu]):
                break
        sock.sendall(codec.release_rq())
        while (pdu := read_pdu(sock)) is not None:
            out.append(pdu)
    except OSError:
        pass
    sock.close()
    return out


def store_pdus(ctx: int, sop_uid: str, dataset: bytes, *, sop_class: str = CT,
               message_id: int = 1, room: int = 16000) -> bytes:
    """A C-STORE-RQ command and its data set as P-DATA-TF PDUs."""
    return b"".join([codec.p_data(ctx, codec.COMMAND | codec.LAST,
                                  codec.store_rq(message_id, sop_class, sop_uid)),
                     *codec.fragments(ctx, dataset, command=False, room=room)])


def statuses(pdus: list[tuple[int, bytes]]) -> list[int]:
    """The Status of every response command set in ``pdus``."""
    out = []
    messages = codec.MessageAssembler()
    for kind, body in pdus:
        if kind != codec.P_DATA_TF:
            continue
        for part in messages.feed(body):
            if isinstance(part, codec.Command):
                out.append(int(codec.decode_command(part.raw).get(codec.STATUS, -1)))
    return out


def echo(port: int, called: str, *, pynetdicom_path: bool = False) -> int:
    """C-ECHO on a fresh association from 127.0.0.1; its status."""
    sock = associate(port, called, pynetdicom_path=pynetdicom_path, calling="ECHOSCU",
                     source="127.0.0.1")
    sock.sendall(codec.p_data(3, codec.COMMAND | codec.LAST, codec.echo_rq(1)))
    reply = read_pdu(sock)
    sock.sendall(codec.release_rq())
    read_pdu(sock)
    sock.close()
    assert reply is not None and reply[0] == codec.P_DATA_TF, f"no C-ECHO response: {reply}"
    return statuses([reply])[0]


def storescu(port: int, called: str, path: Path) -> float:
    """Store ``path`` with DCMTK storescu from 127.0.0.1; seconds taken (AssertionError
    if it failed)."""
    t0 = time.monotonic()
    run = subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", called,
                          "-to", "10", "-ta", "10", "-td", "10", "127.0.0.1", str(port),
                          str(path)], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, TCP_NODELAY="1"))
    took = time.monotonic() - t0
    assert run.returncode == 0 and "Status" not in run.stderr, run.stderr[-2000:]
    return took


def instance_file(folder: Path, *, study: str | None = None, rows: int = 32) -> tuple[Path, str]:
    """A small valid CT instance written to ``folder``: (path, SOP Instance UID)."""
    ds = make_instance(rows=rows, cols=rows, patient_id="ATTACK", study_uid=study or generate_uid())
    path = write(ds, folder / f"{ds.SOPInstanceUID}.dcm")
    return path, str(ds.SOPInstanceUID)


def dataset_bytes(**kwargs: Any) -> tuple[bytes, str]:
    """A valid CT data set (Explicit VR LE, no file meta) and its SOP Instance UID."""
    ds = make_instance(rows=8, cols=8, patient_id="FUZZ", **kwargs)
    return compat.encode_dataset(ds, implicit_vr=False), str(ds.SOPInstanceUID)


def stray_files(*roots: Path) -> list[str]:
    """Every file under ``roots`` (the target's private working dir and TMPDIR)."""
    return [str(p) for root in roots for p in root.rglob("*") if p.is_file()]


def wait_closed(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the peer closes ``sock`` (None if it is still open after ``limit``)."""
    t0 = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - t0 < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


class Target:
    """A running archive or router under attack, with what it must still be after."""

    def __init__(self, kind: str, base: Path, limits: dict[str, Any] | None = None) -> None:
        from test_archive_support import Archive
        from test_router_support import Router, StatusSCP

        self.kind = kind
        self.base = base
        self.private = [base / "cwd", base / "tmp"]
        for d in self.private:
            d.mkdir(parents=True, exist_ok=True)
        env = {"TMPDIR": str(base / "tmp")}
        cfg: dict[str, Any] = {"limits": dict(limits or {}),
                               "allowed_calling_aes": ["FUZZER", "ECHOSCU", "STORESCU",
                                                       "TESTSCU", "MODALITY", "LEGIT"],
                               "audit": {"file": str(base / "audit.jsonl")}}
        self.dest: Any = None
        if kind == "archive":
            cfg["staging"] = {"buffer_bytes": 4 << 20, "total_bytes": 8 << 20}
            self.service: Any = Archive(base / "data", config=cfg, env=env, cwd=base / "cwd")
            self.aet = "ARCHIVE"
            self.incoming = base / "data" / "fast" / ".incoming"  # the default tier
        else:
            self.dest = StatusSCP(0, "DEST")
            cfg.update(destinations={"d": self.dest.dest()},
                       rules=[{"name": "all", "forward": ["d"]}],
                       spool_dir=str(base / "spool"))
            self.service = Router(base / "router", cfg, env=env, cwd=base / "cwd")
            self.aet = "ROUTER"
            self.incoming = base / "spool" / ".incoming"
        self.known: dict[str, int] = {}  # study -> instances (archive) / SOP UIDs (router)
        self.known_uids: set[str] = set()
        self.baseline = 0

    @property
    def port(self) -> int:
        return int(self.service.port)

    @property
    def pid(self) -> int:
        return int(self.service.proc.pid)

    def start(self) -> Target:
        self.service.start()
        study = generate_uid()
        for _ in range(3):
            path, uid = instance_file(self.base, study=study)
            storescu(self.port, self.aet, path)
            self.known_uids.add(uid)
        self.known[study] = 3
        if self.dest is not None:
            self._delivered(self.known_uids)
        assert echo(self.port, self.aet) == 0
        self.baseline = rss(self.pid)
        return self

    def stop(self) -> None:
        self.service.stop()
        if self.dest is not None:
            self.dest.stop()

    def _delivered(self, uids: set[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not uids <= set(self.dest.received) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert uids <= set(self.dest.received), "the router did not forward a legitimate store"

    def alive(self, *, pynetdicom_path: bool = False) -> None:
        """C-ECHO answers (on either path)."""
        assert echo(self.port, self.aet, pynetdicom_path=pynetdicom_path) == 0

    def intact(self, *, rss_slack: int = 64 << 20) -> None:
        """Alive on both paths, the known study intact and still served, memory back under
        the bound, nothing written outside the data directory, no temporary file left."""
        assert self.service.proc.poll() is None, "the service died"
        self.alive()
        self.alive(pynetdicom_path=True)
        if self.kind == "archive":
            from test_archive_support import study_counts

            counts = study_counts(self.port, self.aet)
            for study, n in self.known.items():
                assert counts.get(study) == n, f"known study {study}: {counts.get(study)} != {n}"
        else:
            path, uid = instance_file(self.base)
            storescu(self.port, self.aet, path)
            self._delivered(self.known_uids | {uid})
        deadline = time.monotonic() + 10
        while rss(self.pid) > self.baseline + rss_slack and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rss(self.pid) <= self.baseline + rss_slack, (
            f"RSS {rss(self.pid) >> 20} MiB, baseline {self.baseline >> 20} MiB")
        assert not stray_files(*self.private), stray_files(*self.private)
        deadline = time.monotonic() + 10
        while list(self.incoming.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not list(self.incoming.iterdir()), "temporary files left in .incoming"
