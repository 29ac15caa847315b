"""One existing host over SSH: a reused, host-key-verified connection, files and marks on it.

The connection is paramiko (:class:`~pacsinfra.deploy.ssh.SSHTransport`, engine ``ssh``)
or ansible-runner (:class:`~pacsinfra.deploy.ansible_transport.AnsibleTransport`, engine
``ansible``); both are Transports, so everything above them runs the same commands and
writes the same files either way.

Every error names the machine and the host (``st-archive-1 (root@10.0.0.5:22): ...``).
The private key is read when the connection opens, from ``key_file`` or a secret
reference (``key``); its content never appears in a message, the state or a plan.
"""

from __future__ import annotations

import io
import json
import shlex
import tempfile
import threading
from pathlib import Path
from typing import Any

import paramiko

from pacsinfra.deploy.ssh import SSHTarget, SSHTransport
from pacsinfra.deploy.systemd import InitProbe, pid1_is_systemd
from pacsinfra.deploy.transport import Command, Result, Transport, put_text
from pacsinfra.drivers.base import Ownership, Spec
from pacsinfra.drivers.local.marks import decode_mark, encode_mark
from pacsinfra.drivers.static.layout import HostSettings
from pacsinfra.errors import DeployError, SSHError

MARK_FORMAT = "pacsinfra-static/1"

# Run on the host (its venv's python when pacsinfra is installed, else its own python):
# every mark and config file under the root in one round trip, plus each service's
# status when pacsinfra is importable (nothing runs where it is not): from systemd for a
# service run by a unit, else from its supervisor.
_SNAPSHOT = """\
import glob, json, os, sys
root = sys.argv[1]
paths = [os.path.join(root, "machine.json")]
paths += sorted(glob.glob(os.path.join(root, "services", "*", "service.json")))
paths += sorted(glob.glob(os.path.join(root, "services", "*", "config.yaml")))
files = {}
for p in paths:
    try:
        with open(p, encoding="utf-8") as fh:
            files[p] = fh.read()
    except OSError:
        pass
status = {}
try:
    from dataclasses import asdict
    from pathlib import Path
    from pacsinfra.deploy.supervisor import read_status
except ImportError:
    pass
else:
    try:
        from pacsinfra.deploy.systemd import read_status as unit_status
    except ImportError:
        unit_status = None
    for d in sorted(glob.glob(os.path.join(root, "services", "*"))):
        name = os.path.basename(d)
        try:
            # a service run by a systemd unit records the unit's name here
            with open(os.path.join(d, "systemd.unit"), encoding="utf-8") as fh:
                unit = fh.read().strip()
        except OSError:
            unit = ""
        if unit and unit_status is not None:
            status[name] = asdict(unit_status(name, unit))
        else:
            status[name] = asdict(read_status(Path(root, "run"), name))
print(json.dumps({"files": files, "status": status}))
"""


def _private_key(settings: HostSettings) -> paramiko.PKey | None:
    """The login key from a secret reference (None: ``key_file`` is used instead)."""
    if settings.key is None:
        return None
    from pacsinfra.secrets import SecretRef

    ref = SecretRef(**dict(settings.key))
    text = ref.resolve()
    try:
        return paramiko.PKey.from_private_key(io.StringIO(text + "\n"))
    except (paramiko.SSHException, ValueError) as exc:
        # never the key itself: only where it came from
        raise SSHError(f"{settings.describe()}: the private key in {ref.describe()} is not "
                       f"a usable unencrypted key ({type(exc).__name__})") from None


class HostSession:
    """Commands and files on one host, through one transport opened on first use.

    ``engine`` is ``ssh`` (paramiko) or ``ansible`` (ansible-runner, run files under
    ``work_dir``, a private directory of this pacsinfra run).
    """

    def __init__(self, settings: HostSettings, engine: str = "ssh",
                 work_dir: Path | None = None) -> None:
        self.settings = settings
        self.name = settings.describe()
        self.engine = engine
        self.work_dir = work_dir
        self._transport: Transport | None = None
        self._lock = threading.Lock()
        self.install_lock = threading.Lock()  # one wheel install per host at a time
        self.installed: str | None = None  # content hash installed during this run
        self._init: InitProbe | None = None  # what PID 1 is there, asked once

    @property
    def transport(self) -> Transport:
        """The host's transport (connected, host key verified); errors name the machine."""
        s = self.settings
        with self._lock:
            if self._transport is None:
                if not s.host_keys and not s.known_hosts:
                    raise SSHError(f"{self.name}: no pinned host key (host_keys or known_hosts); "
                                   "pacsinfra never trusts a key on first use")
                if s.key is None and s.key_file is None:
                    raise SSHError(f"{self.name}: no private key (key_file or key)")
                self._transport = (self._ansible_transport() if self.engine == "ansible"
                                   else self._ssh_transport())
            t = self._transport
        try:
            t.connect()  # type: ignore[attr-defined]  # both transports have it
        except SSHError as exc:
            msg = str(exc)
            if s.machine in msg:
                raise
            raise SSHError(f"{s.machine}: {msg}") from None  # the cause is in the message
        return t

    def _ssh_transport(self) -> SSHTransport:
        s = self.settings
        target = SSHTarget(
            host=s.address, port=s.port, user=s.user,
            key_file=Path(s.key_file).expanduser() if s.key_file else None,
            known_hosts=Path(s.known_hosts).expanduser() if s.known_hosts else None,
            host_keys=tuple(s.host_keys), name=self.name,
        )
        return SSHTransport(target, pkey=_private_key(s))

    def _ansible_transport(self) -> Transport:
        from pacsinfra.deploy.ansible import FleetHost
        from pacsinfra.deploy.ansible_transport import AnsibleTransport, key_file_from_secret

        s = self.settings
        work = self.work_dir or Path(tempfile.mkdtemp(prefix="pacsinfra-ansible-"))
        if s.key_file is not None:
            key_file = Path(s.key_file).expanduser()
        else:
            _private_key(s)  # a key that is not usable fails here, named like over paramiko
            from pacsinfra.secrets import SecretRef

            assert s.key is not None
            key_file = key_file_from_secret(SecretRef(**dict(s.key)).resolve(), work / "keys")
        host = FleetHost(
            name=s.machine, address=s.address, key_file=key_file, host_keys=tuple(s.host_keys),
            port=s.port, user=s.user, python=s.python,
            known_hosts=Path(s.known_hosts).expanduser() if s.known_hosts else None,
        )
        return AnsibleTransport(host, work / s.machine, name=self.name)

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()

    def init_probe(self) -> InitProbe:
        """Whether the host's PID 1 is systemd and pacsinfra logs in as root (asked once)."""
        if self._init is None:
            self._init = pid1_is_systemd(self.transport)
        return self._init

    def has_venv(self) -> bool:
        """Whether ``<root>/venv`` holds a python (known without asking once installed here)."""
        if self.installed is not None:
            return True
        return self.transport.exists(self.settings.venv_python)

    # -- commands -------------------------------------------------------------------------
    def run(self, cmd: Command, timeout: float = 60.0) -> Result:
        return self.transport.run(cmd, timeout)

    def check(self, cmd: Command, timeout: float = 60.0, what: str = "") -> Result:
        """Run ``cmd``; a failure is a DeployError naming the host and the command's stderr."""
        res = self.run(cmd, timeout)
        if res.rc != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
            raise DeployError(f"{self.name}: {what or 'command'} failed (exit {res.rc})"
                              + ("\n  " + "\n  ".join(tail) if tail else ""))
        return res

    # -- files ------------------------------------------------------------------------------
    def read_text(self, path: str) -> str | None:
        """A file's content; None when it does not exist."""
        q = shlex.quote(path)
        res = self.run(f"if [ -e {q} ]; then cat -- {q}; else exit 3; fi", 60)
        if res.rc == 3:
            return None
        if res.rc != 0:
            raise DeployError(f"{self.name}: cannot read {path}: {res.stderr.strip()[-300:]}")
        return res.stdout

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Replace ``path`` atomically (temp file, fsync, rename: see SSHTransport.put)."""
        put_text(self.transport, text, path, mode)

    def write_mark(self, path: str, spec: Spec, owner: Ownership) -> None:
        self.write_text(path, encode_mark(spec, owner, MARK_FORMAT), 0o644)

    def read_mark(self, path: str) -> tuple[Spec, Ownership | None] | None:
        text = self.read_text(path)
        return decode_mark(text, MARK_FORMAT) if text is not None else None

    def snapshot(self) -> dict[str, Any]:
        """Every mark and config file under the root, and the supervisor status of each service."""
        s = self.settings
        script = shlex.quote(_SNAPSHOT)
        vpy, py, root = (shlex.quote(x) for x in (s.venv_python, s.python, s.root))
        res = self.run(f"if [ -x {vpy} ]; then p={vpy}; else p={py}; fi; "
                       f"exec \"$p\" -c {script} {root}", 60)
        if res.rc != 0:
            raise DeployError(f"{self.name}: cannot read pacsinfra's files under {s.root}: "
                              f"{res.stderr.strip()[-300:]}")
        try:
            data = json.loads(res.stdout)
        except ValueError as exc:
            raise DeployError(f"{self.name}: unreadable answer listing {s.root}: {exc}") from None
        if not isinstance(data, dict):
            raise DeployError(f"{self.name}: unreadable answer listing {s.root}")
        return data
