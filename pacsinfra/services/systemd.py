"""systemd units for the PACS services: rendering (``templates/systemd/*.service.j2``) and control.

Units run the service (by default ``<venv>/bin/pacsinfra archive|router serve --config
FILE``) with ``Restart=on-failure``, a start limit, a stop timeout that lets in-flight
work finish, and the hardening of ``_hardening.j2`` (read-only system, only the
service's own paths writable, no new privileges, IP/Unix sockets only, a system-call
filter). Secrets reach the process only through an ``EnvironmentFile=`` (mode 0600),
never through the unit.

:class:`SystemdUnit` drives one unit on a target through any Transport: install the
unit file (``daemon-reload`` when it changed) and its env file, ``enable`` +
``restart``, ``stop``, ``disable`` + remove, the journal's tail, and the unit's state
from ``systemctl show`` mapped onto the supervisor's :class:`ServiceStatus` (so the
drivers' health checks and drift detection read both the same way).
:func:`pid1_is_systemd` is systemd's own ``sd_booted()`` test, run on the target.

Templates are looked up like the KVM ones: ``$PACSINFRA_TEMPLATES/systemd``, package
data, ``<prefix>/share/pacsinfra/templates/systemd``, then the source tree.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pacsinfra import __version__
from pacsinfra.deploy.transport import Transport, put_text
from pacsinfra.errors import CapabilityError, DeployError
from pacsinfra.services.supervisor import ServiceStatus

Service = Literal["archive", "router", "viewer"]
UNIT_DIR = "/etc/systemd/system"
# What may appear in a path or name we write into a unit: no whitespace, quotes, %, or
# newlines (a newline would inject directives; % is a systemd specifier).
_SAFE = re.compile(r"^[A-Za-z0-9_@./+:=-]+$")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9_.@:-]+\.service$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# the properties status_from_show reads (systemctl show -p ...)
SHOW_PROPERTIES = ("LoadState", "ActiveState", "SubState", "MainPID", "NRestarts",
                   "ExecMainCode", "ExecMainStatus", "Result")
# siginfo si_code of ExecMainCode: how the main process ended
_CLD_EXITED, _CLD_KILLED, _CLD_DUMPED = 1, 2, 3
# systemd's ActiveState -> the supervisor's state words (SubState refines "activating")
_STATE_MAP = {"active": "running", "reloading": "running", "deactivating": "stopping",
              "failed": "failed", "inactive": "stopped"}
# sd_booted(): /run/systemd/system exists only when systemd is PID 1; systemctl must be
# there to drive it, and only root may install system units.
_PROBE = ('if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; '
          'then echo systemd; else echo other; fi; id -u')


def template_dirs() -> list[Path]:
    """Candidate directories holding the systemd templates, in search order."""
    from pacsinfra import templating

    return templating.template_dirs("systemd")


@dataclass
class UnitSpec:
    """What a unit needs to know; paths are absolute on the target."""

    service: Service
    ae_title: str
    port: int
    venv: str
    config_path: str
    rw_paths: list[str]
    user: str = "pacs"
    group: str | None = "pacs"  # None: the user's primary group
    site: str = "site"
    ro_paths: list[str] = field(default_factory=list)
    environment_file: str | None = None
    stop_timeout: int = 60
    after: list[str] = field(default_factory=list)  # e.g. ["postgresql.service"]
    # the command, one argument per item (default: <venv>/bin/pacsinfra <service> serve ...)
    exec_start: list[str] | None = None
    name: str | None = None  # the unit file's name (default: pacsinfra-<service>.service)

    @property
    def unit_name(self) -> str:
        return self.name or f"pacsinfra-{self.service}.service"

    @property
    def command(self) -> list[str]:
        """ExecStart's arguments."""
        if self.exec_start is not None:
            return list(self.exec_start)
        return [f"{self.venv}/bin/pacsinfra", self.service, "serve", "--config", self.config_path]


def _check(spec: UnitSpec) -> None:
    problems: list[str] = []
    values: list[tuple[str, str]] = [
        ("venv", spec.venv), ("config_path", spec.config_path), ("user", spec.user),
        ("site", spec.site), ("ae_title", spec.ae_title),
        *[("rw_paths", p) for p in spec.rw_paths], *[("ro_paths", p) for p in spec.ro_paths],
        *[("after", a) for a in spec.after], *[("exec_start", a) for a in spec.command],
    ]
    if spec.group is not None:
        values.append(("group", spec.group))
    if spec.environment_file:
        values.append(("environment_file", spec.environment_file))
    for name, value in values:
        if not _SAFE.match(value):
            problems.append(f"{name} {value!r} has characters a unit file cannot carry safely")
    for name, value in [("venv", spec.venv), ("config_path", spec.config_path),
                        ("exec_start", spec.command[0] if spec.command else ""),
                        *[("rw_paths", p) for p in spec.rw_paths]]:
        if not value.startswith("/"):
            problems.append(f"{name} {value!r} must be an absolute path")
    if not _UNIT_NAME.match(spec.unit_name):
        problems.append(f"unit name {spec.unit_name!r} is not a valid service unit name")
    if not spec.rw_paths:
        problems.append("rw_paths is empty: the service needs somewhere to write")
    if not 1 <= spec.port <= 65535:
        problems.append(f"port {spec.port} out of range")
    if problems:
        raise DeployError(f"cannot render {spec.unit_name}: " + "; ".join(problems))


def render_unit(spec: UnitSpec) -> str:
    """The unit file text for ``spec`` (validated first; DeployError lists every problem)."""
    # imported here: the status readers below run on targets, where Jinja2 is not needed
    from pacsinfra import templating

    _check(spec)
    try:
        env = templating.environment("systemd", f"{spec.service}.service.j2",
                                     trim_blocks=True, lstrip_blocks=True)
    except CapabilityError:
        raise DeployError(f"no {spec.service}.service.j2 in "
                          f"{[str(d) for d in template_dirs()]}") from None
    text = env.get_template(f"{spec.service}.service.j2").render(
        version=__version__, site=spec.site, ae_title=spec.ae_title, port=spec.port,
        venv=spec.venv, config_path=spec.config_path, user=spec.user, group=spec.group,
        rw_paths=spec.rw_paths, ro_paths=spec.ro_paths, environment_file=spec.environment_file,
        stop_timeout=spec.stop_timeout, after=spec.after, privileged_port=spec.port < 1024,
        exec_start=" ".join(spec.command),
    )
    return text


# -- what a service writes -------------------------------------------------------------------


def writable_paths(kind: str, config: Mapping[str, Any]) -> list[str]:
    """The absolute directories a rendered service config writes to (``ReadWritePaths``).

    ``ProtectSystem=strict`` makes everything else read-only for the service, so this
    lists every place its config points to: the data or spool directory, filesystem
    tiers, a SQLite index or queue outside them, the audit file's directory.
    """
    found: list[str] = []

    def add(path: Any, *, parent: bool = False) -> None:
        if not path or not str(path).startswith("/"):
            return  # relative paths are under the data/spool directory
        p = PurePosixPath(str(path))
        found.append(str(p.parent if parent else p))

    if kind == "archive":
        add(config.get("data_dir"))
        for tier in config.get("tiers") or ():
            if (tier or {}).get("kind", "filesystem") == "filesystem":
                add(tier.get("path"))
        index = config.get("index") or {}
        if index.get("backend", "sqlite") == "sqlite":
            add(index.get("path"), parent=True)
    elif kind == "router":
        add(config.get("spool_dir"))
        queue = config.get("queue") or {}
        if queue.get("backend", "sqlite") == "sqlite":
            add(queue.get("path"), parent=True)
    elif kind == "viewer":
        add(config.get("data_dir"))  # nginx's prefix: its files, logs, temp files
        add((config.get("ohif") or {}).get("cache_dir"))  # OHIF unpacked on first start
    add((config.get("audit") or {}).get("file"), parent=True)
    # a path below another one is already writable
    out: list[str] = []
    for path in sorted(set(found), key=lambda s: (len(s), s)):
        if not any(path == o or path.startswith(o.rstrip("/") + "/") for o in out):
            out.append(path)
    return sorted(out)


def env_file_text(env: Mapping[str, str]) -> str:
    """An ``EnvironmentFile=`` holding ``env`` exactly (double-quoted values).

    systemd unescapes ``\\\\ \\" \\` \\$`` inside double quotes and expands nothing, so
    any value survives, spaces, quotes, ``$`` and non-ASCII included; a NUL cannot be
    carried and is refused. The message never holds a value.
    """
    lines = ["# written by pacsinfra: the service's secrets (mode 0600); do not edit"]
    for name in sorted(env):
        value = env[name]
        if not _ENV_NAME.match(name):
            raise DeployError(f"environment variable name {name!r} cannot go into a unit's "
                              "environment file")
        if "\0" in value:
            raise DeployError(f"the value of {name} holds a NUL byte, which a process "
                              "environment cannot carry")
        quoted = re.sub(r'([\\"`$])', r"\\\1", value)
        lines.append(f'{name}="{quoted}"')
    return "\n".join(lines) + "\n"


# -- the state of a unit ------------------------------------------------------------------------


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def status_from_show(name: str, text: str) -> ServiceStatus:
    """``systemctl show -p <SHOW_PROPERTIES>`` output as the supervisor's :class:`ServiceStatus`.

    ``active`` means systemd keeps the service up (active, activating — including
    waiting to restart after a crash — or reloading); ``state`` is ``running``,
    ``backoff`` (SubState ``auto-restart``), ``starting``, ``stopping``, ``failed``
    (includes the start limit), ``exited`` (ended with code 0 under ``on-failure``) or
    ``stopped`` (inactive, or no such unit). ``last_exit`` describes the main process's
    end since its last start (None while it runs).
    """
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    if props.get("LoadState") != "loaded":
        return ServiceStatus(name=name, active=False, state="stopped")
    active_state = props.get("ActiveState", "")
    sub = props.get("SubState", "")
    code = int(props.get("ExecMainCode") or 0)
    status = int(props.get("ExecMainStatus") or 0)
    last_exit: dict[str, Any] | None = None
    if code == _CLD_EXITED:
        last_exit = {"code": status, "signal": None}
    elif code in (_CLD_KILLED, _CLD_DUMPED):
        last_exit = {"code": None, "signal": _signal_name(status)}
    if active_state == "activating":
        state = "backoff" if sub == "auto-restart" else "starting"
    elif active_state == "inactive" and last_exit == {"code": 0, "signal": None}:
        state = "exited"
    else:
        state = _STATE_MAP.get(active_state, "unknown")
    pid = int(props.get("MainPID") or 0)
    return ServiceStatus(
        name=name, active=active_state in ("active", "activating", "reloading"), state=state,
        pid=pid or None, restarts=int(props.get("NRestarts") or 0), last_exit=last_exit)


def show_command(unit: str) -> list[str]:
    """The ``systemctl show`` call :func:`status_from_show` reads."""
    return ["systemctl", "show", "-p", ",".join(SHOW_PROPERTIES), "--", unit]


def read_status(name: str, unit: str) -> ServiceStatus:
    """The status of ``unit`` on *this* machine (run on a target by the static snapshot)."""
    res = subprocess.run(show_command(unit), capture_output=True, text=True, timeout=60,
                         check=False)
    if res.returncode != 0:
        return ServiceStatus(name=name, active=False, state="unknown")
    return status_from_show(name, res.stdout)


@dataclass(frozen=True)
class InitProbe:
    """What a target's PID 1 is, and whether pacsinfra logs in there as root."""

    systemd: bool
    root: bool


def pid1_is_systemd(transport: Transport) -> InitProbe:
    """Ask the target: systemd as PID 1 (sd_booted: ``/run/systemd/system`` exists)? root?"""
    res = transport.run(_PROBE, 30)
    words = res.stdout.split()
    if res.rc != 0 or len(words) < 2:
        raise DeployError(f"{transport.name}: cannot tell which init runs there "
                          f"(exit {res.rc}): {res.stderr.strip()[-300:]}")
    return InitProbe(systemd=words[0] == "systemd", root=words[1] == "0")


# -- one unit on a target ------------------------------------------------------------------------


class SystemdUnit:
    """One unit on a target, driven with ``systemctl`` through a Transport (as root there).

    ``name`` is the service's name in statuses and messages; ``unit`` the unit file's name.
    """

    def __init__(self, transport: Transport, name: str, unit: str) -> None:
        if not _UNIT_NAME.match(unit):
            raise DeployError(f"{unit!r} is not a valid service unit name")
        self.t, self.name, self.unit = transport, name, unit

    @property
    def path(self) -> str:
        return f"{UNIT_DIR}/{self.unit}"

    def _systemctl(self, *args: str, timeout: float = 120.0, ok: Sequence[int] = (0,)) -> str:
        res = self.t.run(["systemctl", *args], timeout)
        if res.rc not in ok:
            tail = (res.stderr or res.stdout).strip()[-400:]
            raise DeployError(f"{self.t.name}: systemctl {' '.join(args)} failed "
                              f"(exit {res.rc}): {tail}")
        return res.stdout

    def installed_text(self) -> str | None:
        """The unit file as it is on the target (None when there is none)."""
        q = shlex.quote(self.path)
        res = self.t.run(f"if [ -e {q} ]; then cat -- {q}; else exit 3; fi", 30)
        if res.rc == 3:
            return None
        if res.rc != 0:
            raise DeployError(f"{self.t.name}: cannot read {self.path}: {res.stderr.strip()[-300:]}")
        return res.stdout

    def install(self, text: str, env_file: str | None = None,
                env: Mapping[str, str] | None = None) -> bool:
        """Write the env file (0600; removed when there are no secrets) and the unit file;
        ``daemon-reload`` when the unit changed. Returns whether it changed."""
        if env_file:
            if env:
                put_text(self.t, env_file_text(env), env_file, 0o600)
            else:
                self.t.run(["rm", "-f", "--", env_file], 30)
        if self.installed_text() == text:
            return False
        put_text(self.t, text, self.path, 0o644)
        self._systemctl("daemon-reload")
        return True

    def restart(self) -> ServiceStatus:
        """Enable it (started at boot) and (re)start it now with the current files."""
        # a unit that hit its start limit refuses to start until its failure is reset
        self._systemctl("reset-failed", "--", self.unit, ok=(0, 1, 5))
        self._systemctl("enable", "--quiet", "--", self.unit)
        res = self.t.run(["systemctl", "restart", "--", self.unit], 180)
        if res.rc != 0:
            raise DeployError(f"{self.name}: systemctl restart {self.unit} failed (exit "
                              f"{res.rc}): {res.stderr.strip()[-300:]}; end of its journal:\n"
                              + self.logs(20))
        return self.status()

    def stop(self) -> None:
        """Stop it (no unit, or already stopped: nothing to do)."""
        # 5: no such unit loaded
        self._systemctl("stop", "--", self.unit, timeout=180, ok=(0, 5))

    def status(self) -> ServiceStatus:
        res = self.t.run(show_command(self.unit), 60)
        if res.rc != 0:
            raise DeployError(f"{self.t.name}: systemctl show {self.unit} failed (exit "
                              f"{res.rc}): {res.stderr.strip()[-300:]}")
        return status_from_show(self.name, res.stdout)

    def logs(self, lines: int = 50) -> str:
        """The last ``lines`` of the unit's journal."""
        res = self.t.run(["journalctl", "-u", self.unit, "-n", str(lines), "--no-pager",
                          "-o", "short-iso", "--no-hostname"], 60)
        if res.rc != 0:
            return f"(journalctl -u {self.unit} failed: {res.stderr.strip()[-200:]})"
        return res.stdout

    def remove(self, env_file: str | None = None) -> None:
        """Stop and disable it, delete the unit (and env) file, ``daemon-reload``."""
        self._systemctl("disable", "--now", "--quiet", "--", self.unit, timeout=180,
                        ok=(0, 1, 5))
        self.t.run(["rm", "-f", "--", self.path, *([env_file] if env_file else [])], 30)
        self._systemctl("daemon-reload")
        self._systemctl("reset-failed", "--", self.unit, ok=(0, 1, 5))
