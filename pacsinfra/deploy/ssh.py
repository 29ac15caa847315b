"""SSHTransport: the Transport protocol over SSH (paramiko), with host keys verified.

Host-key policy (never trust on first use):

- the key must be known *before* connecting: from a ``known_hosts`` file, from a key
  the blueprint states, or from one learnt out of band (cloud-init prints the new
  machine's host keys on its console: :func:`host_keys_from_console`);
- an unknown host or a changed key is refused with :class:`~pacsinfra.errors.SSHError`
  naming the host and the SHA256 fingerprint(s), as OpenSSH prints them.

One connection per transport is opened lazily and reused for every command and file
(an SFTP session is kept beside it); a dropped connection is reopened on the next call.
paramiko's exceptions are translated into :class:`SSHError` here and only here.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import select
import shlex
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import paramiko

from pacsinfra.deploy.transport import Command, Result, to_shell
from pacsinfra.errors import SSHError

_CONSOLE_KEYS = re.compile(
    r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S
)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key: ``SHA256:<base64, no padding>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(line: str) -> paramiko.PKey:
    """A public key from an OpenSSH line ``<type> <base64> [comment]`` (known_hosts style too)."""
    parts = line.split()
    # A known_hosts line starts with the host pattern; a .pub line with the key type.
    if len(parts) >= 3 and not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        parts = parts[1:]
    if len(parts) < 2:
        raise SSHError(f"not an SSH public key: {line[:60]!r}")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception as exc:  # noqa: BLE001 - paramiko raises several unrelated types here
        raise SSHError(f"not an SSH public key ({parts[0]}): {exc}") from exc


def host_keys_from_console(text: str) -> list[str]:
    """The host public keys cloud-init printed to a machine's console (for pinning)."""
    keys: list[str] = []
    for block in _CONSOLE_KEYS.findall(text):
        keys += [ln.strip() for ln in block.splitlines() if ln.strip()]
    return keys


#: seconds an SFTP request may wait for its answer
SFTP_TIMEOUT = 300.0

class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key we were not told, showing its fingerprint to pin it."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise SSHError(
            f"{hostname}: unknown SSH host key {key.get_name()} {fingerprint(key)}; refusing to "
            "connect. Pin it in the blueprint (host_keys) or a known_hosts file after checking it "
            "out of band (e.g. the machine's console, where cloud-init prints it)"
        )


@dataclass
class SSHTarget:
    """Where and how to log in. ``host_keys`` are OpenSSH public-key lines to trust."""

    host: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    known_hosts: Path | None = None
    host_keys: Sequence[str] = field(default_factory=tuple)
    connect_timeout: float = 10.0
    name: str = ""

    @property
    def hostkey_name(self) -> str:
        """The name known_hosts uses for this host (``[host]:port`` off port 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class SSHTransport:
    """Commands and files on one host over one reused, host-key-verified SSH connection."""

    def __init__(self, target: SSHTarget, *, pkey: paramiko.PKey | None = None) -> None:
        if not target.known_hosts and not target.host_keys:
            raise SSHError(
                f"{target.host}: no host key to verify against; give known_hosts or host_keys "
                "(pacsinfra never trusts a key on first use)"
            )
        if pkey is None and target.key_file is None:
            raise SSHError(f"{target.host}: no private key given (key-only authentication)")
        self.target = target
        self.name = target.name or f"{target.user}@{target.host}:{target.port}"
        self._pkey = pkey
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()
        # One SFTP request at a time: paramiko's SFTPClient matches answers to requests
        # per call, and a thread that reads another's answer drops it (the other then
        # waits forever). Steps on one host run in parallel and share this transport.
        self._sftp_lock = threading.Lock()

    # -- connection -----------------------------------------------------------------

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        t = self.target
        if t.known_hosts:
            try:
                client.load_host_keys(str(t.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise SSHError(f"cannot read known_hosts {t.known_hosts}: {exc}") from exc
        store = client.get_host_keys()
        for line in t.host_keys:
            key = parse_public_key(line)
            store.add(t.hostkey_name, key.get_name(), key)
        client.set_missing_host_key_policy(_RefuseUnknown())
        return client

    def connect(self) -> paramiko.SSHClient:
        """Open (or reuse) the connection; raise SSHError with a clear reason on failure."""
        with self._lock:
            if self._client is not None:
                tr = self._client.get_transport()
                if tr is not None and tr.is_active():
                    return self._client
                self._drop()
            t = self.target
            client = self._new_client()
            try:
                pkey = self._pkey
                if pkey is None and t.key_file is not None:
                    pkey = _load_private_key(t.key_file)
                client.connect(
                    t.host, port=t.port, username=t.user, pkey=pkey, timeout=t.connect_timeout,
                    banner_timeout=t.connect_timeout, auth_timeout=t.connect_timeout,
                    allow_agent=False, look_for_keys=False,
                )
            except SSHError:
                client.close()
                raise
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise SSHError(
                    f"{t.hostkey_name}: HOST KEY MISMATCH: the server offered "
                    f"{exc.key.get_name()} {fingerprint(exc.key)} but "
                    f"{fingerprint(exc.expected_key)} is pinned. The machine was rebuilt, or "
                    "someone is intercepting the connection; refusing to connect"
                ) from exc
            except paramiko.AuthenticationException as exc:
                client.close()
                raise SSHError(f"{self.name}: key authentication refused: {exc}") from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                client.close()
                raise SSHError(f"{self.name}: cannot connect: {exc or type(exc).__name__}") from exc
            self._client = client
            return client

    def _drop(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - closing a dead session may fail any way
                pass
        if self._client is not None:
            self._client.close()
        self._sftp = None
        self._client = None

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host_key(self) -> paramiko.PKey:
        """The (verified) key the server presented."""
        tr = self.connect().get_transport()
        assert tr is not None
        return tr.get_remote_server_key()

    # -- commands -------------------------------------------------------------------

    def run(self, cmd: Command, timeout: float = 60.0, *, input: bytes | None = None) -> Result:
        """Run ``cmd`` with the login shell; rc 124 (and the channel closed) on timeout.

        Closing the channel does not kill the remote command outright (SSH has no portable
        signal request): it loses its pipes and dies on its next write. Wrap commands that
        must not outlive the timeout in coreutils ``timeout`` on the target.
        """
        client = self.connect()
        tr = client.get_transport()
        assert tr is not None
        try:
            chan = tr.open_session(timeout=self.target.connect_timeout)
            chan.exec_command(to_shell(cmd))
            feeder = None
            if input:
                # Feed stdin from a thread: a command that writes while it reads would
                # otherwise block on our full receive window while we block on sendall.
                feeder = threading.Thread(target=_feed, args=(chan, input), daemon=True)
                feeder.start()
            else:
                chan.shutdown_write()
            out, err, timed_out = _drain(chan, timeout)
            if feeder is not None:
                feeder.join(1.0)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise SSHError(f"{self.name}: running {to_shell(cmd)[:80]!r} failed: {exc}") from exc
        if timed_out:
            chan.close()
            return Result(124, out, err + f"\ntimed out after {timeout:g}s")
        rc = _exit_status(chan, deadline=time.monotonic() + 10)
        chan.close()
        return Result(rc, out, err)

    # -- files ----------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            client = self.connect()
            if self._sftp is None:
                try:
                    self._sftp = client.open_sftp()
                except (paramiko.SSHException, OSError) as exc:
                    raise SSHError(f"{self.name}: cannot open SFTP: {exc}") from exc
                # an answer that never comes is an error, not a hang
                channel = self._sftp.get_channel()
                if channel is not None:
                    channel.settimeout(SFTP_TIMEOUT)
            return self._sftp

    def put(self, local: Path | str, remote: str, mode: int = 0o644) -> None:
        """Upload to a temp name beside ``remote``, fsync it, rename over ``remote``, fsync the dir.

        ``sync FILE`` (coreutils) fsyncs the named file or directory; a crash at any point
        leaves either the old file or the new one, never a torn one.
        """
        rpath = PurePosixPath(remote)
        tmp = str(rpath.with_name(f".{rpath.name}.pacsinfra-{secrets.token_hex(4)}.tmp"))
        sftp = self._sftp_client()
        try:
            self.run(["mkdir", "-p", "--", str(rpath.parent)], 30)
            with self._sftp_lock:
                sftp.put(str(local), tmp, confirm=True)
                sftp.chmod(tmp, mode)
        except (OSError, paramiko.SSHException) as exc:
            self.run(["rm", "-f", "--", tmp], 30)
            raise SSHError(f"{self.name}: uploading {local} to {remote} failed: {exc}") from exc
        res = self.run(
            f"sync -- {_q(tmp)} && mv -f -- {_q(tmp)} {_q(remote)} && sync -- {_q(str(rpath.parent))}",
            120,
        )
        if res.rc != 0:
            self.run(["rm", "-f", "--", tmp], 30)
            raise SSHError(f"{self.name}: installing {remote} failed: {res.stderr.strip()}")

    def get(self, remote: str, local: Path | str) -> None:
        """Download ``remote`` to ``local``."""
        try:
            sftp = self._sftp_client()
            with self._sftp_lock:
                sftp.get(remote, str(local))
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"{self.name}: downloading {remote} failed: {exc}") from exc

    def exists(self, remote: str) -> bool:
        """Whether ``remote`` exists (a dangling symlink counts)."""
        try:
            sftp = self._sftp_client()
            with self._sftp_lock:
                sftp.lstat(remote)
        except FileNotFoundError:
            return False
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"{self.name}: stat {remote} failed: {exc}") from exc
        return True


def _q(text: str) -> str:
    return shlex.quote(text)


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except (OSError, paramiko.SSHException):
        pass  # the command exited without reading all of it; its status tells the story


def _load_private_key(path: Path) -> paramiko.PKey:
    """Load an unencrypted private key of any type paramiko knows."""
    try:
        return paramiko.PKey.from_path(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise SSHError(f"cannot load private key {path}: {exc}") from exc


def _drain(chan: paramiko.Channel, timeout: float) -> tuple[str, str, bool]:
    """Read stdout and stderr together until the command exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    out: list[bytes] = []
    err: list[bytes] = []
    while True:
        progressed = False
        while chan.recv_ready():
            out.append(chan.recv(65536))
            progressed = True
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(65536))
            progressed = True
        # EOF, not the exit status, marks the end of output: sshd may send the status
        # while output is still held back by our flow-control window.
        if (chan.eof_received or chan.closed) and not chan.recv_ready() \
                and not chan.recv_stderr_ready():
            break
        left = deadline - time.monotonic()
        if left <= 0:
            return _dec(out), _dec(err), True
        if not progressed:
            select.select([chan], [], [], min(left, 0.02))
    return _dec(out), _dec(err), False


def _exit_status(chan: paramiko.Channel, deadline: float) -> int:
    """The exit status after EOF; -1 when the server closed without sending one (a signal)."""
    while not chan.exit_status_ready():
        if chan.closed or time.monotonic() > deadline:
            return chan.exit_status if chan.exit_status_ready() else -1
        time.sleep(0.005)
    return chan.recv_exit_status()


def _dec(chunks: Iterable[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", "replace")


def scan_host_key(host: str, port: int, timeout: float = 5.0) -> paramiko.PKey:
    """The key a server presents, *unverified*: for tests and for showing a fingerprint to pin.

    Never use the result to trust a host without checking it out of band.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise SSHError(f"{host}:{port}: cannot connect: {exc}") from exc
    tr = paramiko.Transport(sock)
    try:
        tr.start_client(timeout=timeout)
        return tr.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise SSHError(f"{host}:{port}: SSH handshake failed: {exc}") from exc
    finally:
        tr.close()
