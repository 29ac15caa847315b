"""One host over SSH: a reused, host-key-verified connection, files and marks on it.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paramiko

from pacsinfra.deploy.ssh import SSHTarget, SSHTransport
from pacsinfra.deploy.transport import Command, Result, Transport, put_text
from pacsinfra.errors import DeployError, SSHError
from pacsinfra.services.marks import decode_mark, encode_mark
from pacsinfra.services.remote.settings import HostSettings
from pacsinfra.services.systemd import InitProbe, pid1_is_systemd
from pacsinfra.services.wheel import WheelSource, install_wheel
from pacsinfra.specs import Ownership, Spec

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
    try:
        from pacsinfra.services.supervisor import read_status
    except ImportError:  # a venv an older pacsinfra installed
        from pacsinfra.deploy.supervisor import read_status
except ImportError:
    pass
else:
    try:
        from pacsinfra.services.systemd import read_status as unit_status
    except ImportError:
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


#: ``sh -c`` script behind :meth:`HostSession.hand_over`. Arguments: root, account, venv
#: python, hands over (1/0), first call (1/0), check the venv (1/0), shared dirs, ``--``,
#: private dirs, ``--``, files the account reads. Says ``missing <tool>`` or
#: ``closed <dir>`` on failure.
_PREPARE = r"""
root=$1 user=$2 vpy=$3 hands=$4 first=$5 venv=$6; shift 6
umask 022
if [ "$first" = 1 ]; then
  mkdir -p -- "$root" "$root/data" "$root/services" "$root/run" || exit 1
  chmod 0751 -- "$root" "$root/data" "$root/services" && chmod 0700 -- "$root/run" || exit 1
fi
if [ "$hands" = 0 ]; then
  part=0
  for d; do
    if [ "$d" = -- ]; then part=$((part + 1)); continue; fi
    [ "$part" = 2 ] || mkdir -p -m 0750 -- "$d" || exit 1
  done
  exit 0
fi
for tool in setpriv useradd; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 4; }
done
if [ "$first" = 1 ] && ! id -u "$user" >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir "$root" \
    --shell /usr/sbin/nologin --comment "pacsinfra services" "$user" || exit 1
fi
as_user() { setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"; }
# can the account enter directory $1 (the shell's cd needs search permission)
enters() { as_user /bin/sh -c 'cd -- "$1"' sh "$1"; }
if [ "$venv" = 1 ] && ! why=$(as_user "$vpy" -c "import pacsinfra" 2>&1); then
  d=$vpy closed=
  while [ "$d" != / ]; do
    d=$(dirname -- "$d")
    enters "$d" || closed=$d
  done
  [ -n "$closed" ] && { echo "closed $closed"; exit 3; }
  echo "import $(printf '%s' "$why" | tail -n 1)"; exit 5
fi
uid=$(id -u "$user") gid=$(id -g "$user") owner="0:$gid" part=0
for d; do
  if [ "$d" = -- ]; then part=$((part + 1)); owner="$uid:$gid"; continue; fi
  if [ "$part" = 2 ]; then chown -- "0:$gid" "$d" || exit 1; continue; fi
  mkdir -p -- "$d" || exit 1
  if [ "$(stat -c %u:%g -- "$d")" != "$owner" ]; then chown -R -- "$owner" "$d" || exit 1; fi
  chmod 0750 -- "$d" || exit 1
  enters "$d" || { echo "closed $d"; exit 3; }
done
"""

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
        self._root_made = False  # <root> and the account, once per session
        self._reach_ok = False  # the account can run pacsinfra from the venv

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

    def ensure_installed(self, wheels: WheelSource) -> None:
        """pacsinfra in ``<root>/venv`` (a no-op when it holds this run's wheel already)."""
        built = wheels.wheel()
        s = self.settings
        with self.install_lock:
            if self.installed == built.content_hash:
                return
            install_wheel(self.transport, built, s.venv, python=s.python, extras=wheels.extras,
                          no_deps=s.system_site_packages, find_links=s.find_links,
                          system_site_packages=s.system_site_packages)
            self.installed = built.content_hash

    def make_root(self) -> None:
        """``<root>`` and its directories (see :data:`_PREPARE`), once per session."""
        if not self._root_made:
            self.hand_over()

    def hand_over(self, shared: Sequence[str] = (), private: Sequence[str] = (),
                  files: Sequence[str] = ()) -> None:
        """Create directories and give them to the service account, in one command.

        ``shared``: root's with the account's group (it reads, cannot change); ``private``:
        the account's own (what a service writes); both 0750. ``files``: existing files
        the account reads (configs), given the account's group. A directory that was not so
        yet (made by an earlier root-run service, or by a restore) is handed over with
        everything in it. The first call of a session also makes ``<root>`` (the account
        may pass through it, ``data`` and ``services``, not look into ``run``), creates
        the account when missing (a system account without a login shell) and checks it
        can run pacsinfra from ``<root>/venv``, naming the directory closed to it if not.
        """
        s = self.settings
        first = not self._root_made
        if not (first or shared or private or files or (s.hands_over and not self._reach_ok)):
            return
        hands = "1" if s.hands_over else "0"
        check_venv = "1" if s.hands_over and not self._reach_ok and self.has_venv() else "0"
        res = self.run(["sh", "-c", _PREPARE, "sh", s.root, s.runs_as, s.venv_python, hands,
                        "1" if first else "0", check_venv, *shared, "--", *private, "--",
                        *files], 3600)
        said = dict(ln.split(" ", 1) for ln in res.stdout.splitlines() if " " in ln)
        if res.rc == 0:
            self._root_made = True
            self._reach_ok = self._reach_ok or check_venv == "1"
            return
        who = s.runs_as
        if "closed" in said:
            told = (res.stderr.strip().splitlines() or [""])[-1]
            raise DeployError(
                f"{self.name}: the service account {who} cannot reach {said['closed']}"
                + (f" ({told})" if told else "") + ": a directory above it is closed to it; "
                "put root where it can reach (the default /opt/pacsinfra), or open the "
                "directories above it (chmod o+x)")
        if "import" in said:
            raise DeployError(f"{self.name}: pacsinfra does not start as {who} from {s.venv}: "
                              f"{said['import']}")
        if "missing" in said:
            raise DeployError(f"{self.name}: {said['missing']} is not installed; pacsinfra "
                              f"needs it to run services as {who} (Debian: util-linux, passwd)")
        raise DeployError(f"{self.name}: preparing {s.root} for {who} failed (exit {res.rc}): "
                          f"{(res.stderr or res.stdout).strip()[-300:]}")

    # -- commands -------------------------------------------------------------------------
    def run(self, cmd: Command, timeout: float = 60.0, *, input: bytes | None = None) -> Result:
        return self.transport.run(cmd, timeout, input=input)

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
