"""Helpers for the DICOMweb integration tests (no tests in here).

A real archive (``pacsinfra archive serve`` subprocess) with DICOMweb on a free
loopback port; bearer tokens written to files and referenced from the config; raw
HTTP over sockets for what well-behaved clients never send (lying lengths, trickled
headers), from a chosen loopback source address to play several clients.
"""

from __future__ import annotations

import json
import socket
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from conftest import free_port
from test_archive_support import Archive, wait_port

TOKENS = {  # name -> (token, scopes)
    "reader": ("reader-token-0123456789abcdef", ["read"]),
    "writer": ("writer-token-0123456789abcdef", ["write"]),
    "deleter": ("deleter-token-0123456789abcde", ["read", "delete"]),
    "scraper": ("scraper-token-0123456789abcde", ["metrics"]),
    "admin": ("admin-token-0123456789abcdefgh", ["admin"]),
}
BOUNDARY = "pacsinfra-test-boundary"


def token_entries(folder: Path) -> list[dict[str, Any]]:
    """``dicomweb.tokens`` for :data:`TOKENS`, each value in its own file."""
    out = []
    for name, (value, scopes) in TOKENS.items():
        path = folder / f"{name}.token"
        path.write_text(value + "\n")
        path.chmod(0o600)
        out.append({"name": name, "token": {"file": str(path)}, "scopes": scopes})
    return out


def auth(name: str) -> dict[str, str]:
    """The Authorization header of token ``name``."""
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


def start_web_archive(base: Path, dicomweb: dict[str, Any], **config: Any
                      ) -> tuple[Archive, str, int]:
    """An archive with DICOMweb on 127.0.0.1 (``dicomweb`` merged in); (archive, base
    URL, HTTP port)."""
    http = free_port()
    web = {"enabled": True, "bind": "127.0.0.1", "port": http, **dicomweb}
    arch = Archive(base / "data", config={**config, "dicomweb": web}).start()
    wait_port(http, proc=arch.proc)
    return arch, f"http://127.0.0.1:{http}", http


def part10(ds: Any, *, preamble: bytes | None = b"\0" * 128) -> bytes:
    """A dataset as Part 10 bytes; ``preamble=None`` writes none (as dcmwrite can)."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    if preamble is None:
        return data[128:]
    return preamble + data[128:]


def multipart(parts: list[bytes], *, boundary: str = BOUNDARY,
              ctype: str | None = "application/dicom") -> bytes:
    """A multipart/related body of ``parts``."""
    head = f"Content-Type: {ctype}\r\n" if ctype else ""
    return b"".join(f"--{boundary}\r\n{head}\r\n".encode() + p + b"\r\n" for p in parts) + \
        f"--{boundary}--\r\n".encode()


def stow_headers(token: str = "writer", boundary: str = BOUNDARY) -> dict[str, str]:
    """Headers of a STOW-RS request."""
    return {**auth(token), "Content-Type":
            f'multipart/related; type="application/dicom"; boundary={boundary}'}


class Raw:
    """One raw HTTP/1.1 connection from ``source`` (a loopback address of the client)."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, to_head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """Read one response (status, headers, body); status 0 when closed unanswered.
        ``to_head``: the answer to a HEAD request (no body, whatever its headers say)."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            try:
                got = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                got = b""
            if not got:
                return 0, {}, buf
            buf += got
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        want = 0 if to_head else int(headers.get("content-length", "0"))
        while len(body) < want:
            try:
                got = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not got:
                break
            body += got
        return status, headers, body[:want]

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"", source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One raw request on its own connection."""
    raw = Raw(port, source)
    try:
        head = [f"{method} {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        raw.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return raw.response()
    finally:
        raw.close()


def error_of(body: bytes) -> str:
    """The JSON reason of a refusal."""
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str), doc
    return str(doc["error"])


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, _, hexport = fields[1].partition(":")
            if fields[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    raw = bytes.fromhex(addr)
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(
                        raw[i:i + 4][::-1] for i in range(0, 16, 4))))
    return found


def wait_until(pred: Any, timeout: float, what: str) -> None:
    """Poll ``pred()`` until true or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
