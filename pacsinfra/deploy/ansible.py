"""AnsibleFleet: run commands and playbooks on many hosts at once through ansible-runner.

For fleets, where one paramiko connection per host stops scaling. The inventory is
generated from :class:`FleetHost` values; the connection is OpenSSH (multiplexed with
ControlPersist, pipelining on) and host keys are checked against the known_hosts file we
generate from the pinned keys, with ``StrictHostKeyChecking=yes``: an unknown or changed
key makes the host *unreachable*, exactly as :class:`~pacsinfra.deploy.ssh.SSHTransport`
refuses it. Nothing is ever added to a known_hosts file.

``ansible-runner`` and ``ansible-core`` are the ``ansible`` extra; ``ansible-playbook``
must be on PATH — the directory of the running interpreter (the venv's ``bin``) is put
first on the runner's PATH, so a venv install is enough.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pacsinfra.deploy.transport import Command, Result, to_shell
from pacsinfra.errors import DeployError, DriverUnavailable


@dataclass(frozen=True)
class FleetHost:
    """One inventory entry: how to reach a host and which key it must present."""

    name: str
    address: str
    key_file: Path
    host_keys: Sequence[str]  # OpenSSH public-key lines ("ssh-ed25519 AAAA...")
    port: int = 22
    user: str = "root"
    python: str = "/usr/bin/python3"
    vars: Mapping[str, Any] = field(default_factory=dict)
    known_hosts: Path | None = None  # an OpenSSH known_hosts file pinning more keys


class Unsafe(str):
    """A string ansible must not template (a command or data holding ``{{`` is taken as is).

    Dumped as YAML ``!unsafe``, which ansible reads as a value never passed to Jinja.
    """


class _PlayDumper(yaml.SafeDumper):
    pass


_PlayDumper.add_representer(Unsafe, lambda d, v: d.represent_scalar("!unsafe", str(v)))


@dataclass
class TaskEvent:
    """One task's outcome on one host: ``ok``, ``failed``, ``skipped`` or ``unreachable``."""

    host: str
    task: str
    outcome: str
    res: dict[str, Any]


@dataclass
class HostOutcome:
    """Per-host totals of a playbook run, from the runner's stats."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: bool = False
    messages: list[str] = field(default_factory=list)


@dataclass
class FleetResult:
    """What a playbook did on every host."""

    status: str  # ansible-runner status: successful | failed | timeout | canceled
    rc: int
    hosts: dict[str, HostOutcome]

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not any(h.failed or h.unreachable for h in self.hosts.values())


def _runner() -> Any:
    try:
        import ansible_runner
    except ImportError as exc:
        raise DriverUnavailable(
            "ansible-runner is not installed: pip install 'pacsinfra[ansible]'"
        ) from exc
    return ansible_runner


class AnsibleFleet:
    """A group of hosts driven together. ``work_dir`` keeps inventories and run artifacts."""

    def __init__(self, hosts: Sequence[FleetHost], work_dir: Path | None = None, *,
                 forks: int = 10, timeout: float = 600.0, keep_runs: bool = True) -> None:
        if not hosts:
            raise DeployError("an ansible fleet needs at least one host")
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise DeployError(f"duplicate host names in fleet: {sorted(names)}")
        for h in hosts:
            if not h.host_keys and h.known_hosts is None:
                raise DeployError(f"{h.name}: no pinned host key (pacsinfra never trusts on "
                                  "first use)")
        self.hosts = list(hosts)
        self.forks, self.timeout = forks, timeout
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="pacsinfra-ansible-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # OpenSSH ControlPath sockets must fit in 108 bytes: a short directory of their own.
        self._sockets = Path(tempfile.mkdtemp(prefix="pxa-", dir="/tmp"))
        self.known_hosts = self.work_dir / "known_hosts"
        self._write_known_hosts()
        self._bin = str(Path(sys.executable).parent)
        self._runs = 0
        self._runs_lock = threading.Lock()
        # Without keep_runs each run's directory (inventory, artifacts: the commands' output)
        # is removed once its result is read, so nothing a command printed stays on disk.
        self.keep_runs = keep_runs

    def close(self) -> None:
        """Stop the multiplexed SSH masters and remove their socket directory."""
        import subprocess

        for sock in self._sockets.glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                           capture_output=True, timeout=10, check=False)
        shutil.rmtree(self._sockets, ignore_errors=True)

    def __enter__(self) -> AnsibleFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_known_hosts(self) -> None:
        lines = []
        for h in self.hosts:
            name = h.address if h.port == 22 else f"[{h.address}]:{h.port}"
            lines += [f"{name} {' '.join(k.split()[:2])}" for k in h.host_keys]
            if h.known_hosts is not None:
                try:
                    lines += [ln for ln in h.known_hosts.read_text().splitlines()
                              if ln.strip() and not ln.startswith("#")]
                except OSError as exc:
                    raise DeployError(f"{h.name}: cannot read known_hosts {h.known_hosts}: "
                                      f"{exc}") from exc
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def inventory(self) -> dict[str, Any]:
        """The generated inventory (YAML-shaped dict)."""
        ssh_args = (
            f"-o UserKnownHostsFile={self.known_hosts} -o GlobalKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=yes -o UpdateHostKeys=no -o IdentitiesOnly=yes "
            "-o PasswordAuthentication=no -o BatchMode=yes -o ConnectTimeout=10 "
            f"-o ControlMaster=auto -o ControlPersist=60s -o ControlPath={self._sockets}/%C"
        )
        hosts = {
            h.name: {
                "ansible_host": h.address, "ansible_port": h.port, "ansible_user": h.user,
                "ansible_ssh_private_key_file": str(h.key_file),
                "ansible_python_interpreter": h.python, **dict(h.vars),
            }
            for h in self.hosts
        }
        return {"all": {"hosts": hosts, "vars": {"ansible_connection": "ssh",
                                                 "ansible_ssh_common_args": ssh_args,
                                                 "ansible_pipelining": True}}}

    def _env(self) -> dict[str, str]:
        path = f"{self._bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        if shutil.which("ansible-playbook", path=path) is None:
            raise DriverUnavailable("ansible-playbook is not on PATH (pip install ansible-core "
                                    "into the venv that runs pacsinfra)")
        return {
            "PATH": path,
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(self.work_dir / "tmp"),
            "ANSIBLE_GATHERING": "explicit",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
        }

    def _private_dir(self) -> Path:
        with self._runs_lock:  # runs may start from several threads at once
            self._runs += 1
            d = self.work_dir / f"run{self._runs}"
        (d / "inventory").mkdir(parents=True, exist_ok=True)
        (d / "inventory" / "hosts.yml").write_text(yaml.safe_dump(self.inventory()))
        return d

    def _done(self, pdir: Path) -> None:
        if not self.keep_runs:
            shutil.rmtree(pdir, ignore_errors=True)

    def _run_plays(self, plays: Sequence[Mapping[str, Any]] | Path,
                   extravars: Mapping[str, Any] | None, timeout: float) -> tuple[Any, Path]:
        runner = _runner()
        pdir = self._private_dir()
        if isinstance(plays, Path):
            playbook = str(plays.resolve())
        else:
            (pdir / "project").mkdir(exist_ok=True)
            (pdir / "project" / "site.yml").write_text(
                yaml.dump(list(plays), Dumper=_PlayDumper, sort_keys=False))
            playbook = "site.yml"
        r = runner.run(private_data_dir=str(pdir), playbook=playbook, envvars=self._env(),
                       extravars=dict(extravars or {}), forks=self.forks, quiet=True,
                       timeout=max(1, int(timeout)))
        return r, pdir

    def tasks(self, tasks: Sequence[Mapping[str, Any]],
              timeout: float | None = None) -> tuple[str, list[TaskEvent]]:
        """Run ``tasks`` as one play on every host; the runner's status and each task's outcome.

        A host stops at its first failed task (ansible's rule), so later tasks have no event
        for it. Strings that must reach the host verbatim should be :class:`Unsafe`.
        """
        play = {"hosts": "all", "gather_facts": False, "tasks": list(tasks)}
        r, pdir = self._run_plays([play], None, self.timeout if timeout is None else timeout)
        try:
            events: list[TaskEvent] = []
            kinds = {"runner_on_ok": "ok", "runner_on_failed": "failed",
                     "runner_on_skipped": "skipped", "runner_on_unreachable": "unreachable"}
            for ev in r.events:
                outcome = kinds.get(ev.get("event", ""))
                data = ev.get("event_data", {})
                if outcome is None or data.get("host") is None:
                    continue
                events.append(TaskEvent(str(data["host"]), str(data.get("task", "")), outcome,
                                        dict(data.get("res") or {})))
            return str(r.status), events
        finally:
            self._done(pdir)

    def playbook(self, plays: Sequence[Mapping[str, Any]] | Path,
                 extravars: Mapping[str, Any] | None = None) -> FleetResult:
        """Run a playbook (a list of plays, or a playbook file) on the fleet."""
        r, pdir = self._run_plays(plays, extravars, self.timeout)
        try:
            return self._result(r)
        finally:
            self._done(pdir)

    def run(self, cmd: Command, timeout: float = 60.0) -> dict[str, Result]:
        """Run one shell command on every host; per-host (rc, stdout, stderr) like a Transport.

        An unreachable host (or a refused host key) gets rc 255 and the reason on stderr,
        as the ``ssh`` client reports it.
        """
        runner = _runner()
        pdir = self._private_dir()
        r = runner.run(private_data_dir=str(pdir), host_pattern="all", module="shell",
                       module_args=to_shell(cmd), envvars=self._env(), forks=self.forks,
                       quiet=True, timeout=int(timeout))
        out: dict[str, Result] = {}
        for ev in r.events:
            data = ev.get("event_data", {})
            host, res = data.get("host"), data.get("res") or {}
            if host is None:
                continue
            if ev["event"] in ("runner_on_ok", "runner_on_failed"):
                rc = res.get("rc", 0 if ev["event"] == "runner_on_ok" else 1)
                out[host] = Result(int(rc), _nl(res.get("stdout", "")), _nl(res.get("stderr", "")))
            elif ev["event"] == "runner_on_unreachable":
                out[host] = Result(255, "", str(res.get("msg", "unreachable")))
        for h in self.hosts:
            out.setdefault(h.name, Result(124, "", f"no result from ansible ({r.status})"))
        self._done(pdir)
        return out

    @staticmethod
    def _result(r: Any) -> FleetResult:
        stats = r.stats or {}
        hosts: dict[str, HostOutcome] = {}

        def get(name: str) -> HostOutcome:
            return hosts.setdefault(name, HostOutcome())

        for name, n in (stats.get("ok") or {}).items():
            get(name).ok = n
        for name, n in (stats.get("changed") or {}).items():
            get(name).changed = n
        for name, n in (stats.get("failures") or {}).items():
            get(name).failed = n
        for name in (stats.get("dark") or {}):
            get(name).unreachable = True
        for ev in r.events:
            if ev.get("event") in ("runner_on_failed", "runner_on_unreachable"):
                data = ev.get("event_data", {})
                msg = (data.get("res") or {}).get("msg", "")
                get(data.get("host", "?")).messages.append(f"{data.get('task', '')}: {msg}")
        return FleetResult(str(r.status), int(r.rc), hosts)


def _nl(text: str) -> str:
    # The shell module strips one trailing newline; add it back so outputs compare equal
    # to what a Transport returns.
    return text + "\n" if text else ""
