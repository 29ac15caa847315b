"""One PACS service on an existing host: its config file, its process, its health.

What keeps the process running depends on the host (``init``: ``auto`` by default):

- **systemd** where PID 1 is systemd (``/run/systemd/system`` exists, as
  ``sd_booted()`` tests) and pacsinfra logs in as root: a unit
  ``/etc/systemd/system/pacsinfra-<svc>.service`` rendered from
  ``templates/systemd/<kind>.service.j2`` (:mod:`pacsinfra.services.systemd`), running
  ``<root>/venv/bin/python -m pacsinfra <kind> serve --config
  <root>/services/<svc>/config.yaml`` hardened (read-only system but the service's own
  paths, no capabilities); secrets in ``<root>/services/<svc>/secrets.env`` (0600,
  ``EnvironmentFile=``). ``daemon-reload`` when the unit changed, ``enable`` +
  ``restart`` on every deploy, the state from ``systemctl show``, the log from the
  journal. ``<svc>/systemd.unit`` records the unit's name: the service is read, stopped
  and removed through systemd exactly when it holds one.
- **the pacsinfra supervisor** otherwise (containers, the test hosts), with the same
  restart policy (:class:`~pacsinfra.services.supervisor.Supervised`), secrets in its
  spec (0600 on the host, like the ``EnvironmentFile``).

``init: systemd`` insists on systemd (an error naming the host where PID 1 is not),
``init: supervisor`` never uses it. A ``database`` service is the host's own
PostgreSQL (:class:`~pacsinfra.services.postgres.PgServer`, its commands run over the
same session), always under the supervisor. Health is a C-ECHO (``SELECT 1`` for a
database) from the pacsinfra machine; a failure carries the end of the service's log.
Secrets named by ``env`` references in a rendered config are resolved here: the host's
login shell does not have the admin's environment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pacsinfra.errors import DeployError
from pacsinfra.services import common, health, supervisor
from pacsinfra.services import systemd as sd
from pacsinfra.services.postgres import PgServer
from pacsinfra.services.remote.session import HostSession
from pacsinfra.services.remote.settings import DEFAULT_ROOT, HostSettings
from pacsinfra.services.runner import ServiceRunner
from pacsinfra.services.settings import DEFAULT_START_TIMEOUT
from pacsinfra.specs import ServiceSpec

INIT_CHOICES = ("auto", "systemd", "supervisor")
UNIT_RECORD = "systemd.unit"  # in the service's directory: the unit that runs it
# PrivateTmp= and ProtectHome= hide these from a hardened unit: a root there cannot work
_HIDDEN = ("/tmp", "/var/tmp", "/home", "/root", "/run/user")


def init_choice(value: Any) -> str:
    """``deploy.init`` checked: auto, systemd or supervisor."""
    value = str(value or "auto")
    if value not in INIT_CHOICES:
        raise DeployError(f"init {value!r} is not one of {', '.join(INIT_CHOICES)}")
    return value


def unit_name(host: HostSettings, service: str) -> str:
    """``pacsinfra-<svc>.service``; under another root, with a tag of the root (two roots
    on one host are two deployments, so their units must not share names)."""
    if host.root.rstrip("/") == DEFAULT_ROOT:
        return f"pacsinfra-{service}.service"
    tag = hashlib.sha256(host.root.encode()).hexdigest()[:8]
    return f"pacsinfra-{tag}-{service}.service"


class RemoteService(ServiceRunner):
    """Files and process of one ServiceSpec on one host."""

    def __init__(self, session: HostSession, spec: ServiceSpec, init: str = "auto",
                 provider: str = "static") -> None:
        self.session = session
        self.spec = spec
        self.init = init
        self.provider = provider  # named in the config file's header
        host = session.settings
        self.dir = host.service_dir(spec.service)
        self.config_path = f"{self.dir}/config.yaml"
        self.mark_path = f"{self.dir}/service.json"
        self.unit_record = f"{self.dir}/{UNIT_RECORD}"
        self.env_path = f"{self.dir}/secrets.env"
        self.data_dir = host.data_dir(spec.service)
        self._supervised = supervisor.Supervised(
            _LazyTransport(session),
            supervisor.ServiceSpec(
                name=spec.service,
                argv=[*drop_privileges(host, spec),
                      *common.serve_argv(host.venv_python, spec, self.config_path)],
                run_dir=host.run_dir,
                cwd=host.root,
                stop_timeout=30.0,
            ),
            python=host.venv_python,
        )
        if spec.kind == "database":
            self.database = PgServer(_LazyTransport(session), spec.name, spec.config,
                                     host=host.address)
        self._unit: sd.SystemdUnit | None = None
        self._unit_known = False

    # -- files ------------------------------------------------------------------------
    def write_config(self) -> None:
        """The rendered config, 0640, replaced atomically (the service reads old or new);
        its directory is root's, the directories it writes are the service account's."""
        self.session.write_text(self.config_path, common.config_text(self.spec, self.provider), 0o640)
        # PostgreSQL hands its directories to its own account
        self.session.hand_over([self.dir], [] if self.database is not None else self.writable(),
                               [self.config_path])

    def writable(self) -> list[str]:
        """The directories the service writes (its data directory when the config names none)."""
        return sd.writable_paths(self.spec.kind, self.spec.config) or [self.data_dir]

    def read_config(self) -> dict[str, Any] | None:
        return common.parse_config(self.session.read_text(self.config_path))

    def remove_files(self) -> None:
        """Config, mark, and the unit with its env file go; the data directory stays."""
        unit = self.unit()
        if unit is not None:
            unit.remove(self.env_path)
        self.session.check(["rm", "-f", "--", self.config_path, self.mark_path,
                            self.unit_record, self.env_path], 30,
                           what=f"removing {self.dir}")
        self._unit, self._unit_known = None, True
        self.session.run(["rmdir", "--", self.dir], 30)  # only when empty

    def prepare(self) -> None:
        """What must exist before the process starts: a database's cluster; a viewer's
        nginx and OHIF build (:func:`ship_ohif`)."""
        super().prepare()
        if self.spec.kind == "viewer":
            need_nginx(self.session)
            ship_ohif(self.session, self.spec.config)

    # -- which init keeps it running --------------------------------------------------------
    def wants_systemd(self) -> bool:
        """Whether this deploy makes the service a systemd unit (asked of the host once)."""
        if self.database is not None or self.init == "supervisor":
            return False
        probe = self.session.init_probe()
        if self.init == "systemd":
            host = self.session.settings.describe()
            if not probe.systemd:
                raise DeployError(f"{self.spec.name}: init is systemd, but PID 1 on {host} is "
                                  "not systemd (no /run/systemd/system); use init: auto or "
                                  "supervisor")
            if not probe.root:
                raise DeployError(f"{self.spec.name}: init is systemd, which installs system "
                                  f"units, but pacsinfra does not log in to {host} as root")
            return True
        return probe.systemd and probe.root

    def unit(self) -> sd.SystemdUnit | None:
        """The systemd unit that runs the service (its record on the host), if any."""
        if not self._unit_known:
            text = (self.session.read_text(self.unit_record) or "").strip()
            self._unit = (sd.SystemdUnit(_LazyTransport(self.session), self.spec.service, text)
                          if text else None)
            self._unit_known = True
        return self._unit

    def render_unit(self, *, with_secrets: bool) -> str:
        """The unit file for this service on this host."""
        host = self.session.settings
        kind: sd.Service
        if self.spec.kind in ("archive", "router", "viewer"):
            kind = self.spec.kind  # type: ignore[assignment]  # narrowed by the test
        else:
            raise DeployError(f"{self.spec.name}: no systemd unit for a {self.spec.kind} service")
        rw = self.writable()
        for path in (host.root, *rw):
            if any(path == h or path.startswith(h + "/") for h in _HIDDEN):
                raise DeployError(
                    f"{self.spec.name}: {path} is hidden from a hardened systemd unit "
                    "(PrivateTmp, ProtectHome): put the host's root and the service's data "
                    "elsewhere, or set init: supervisor")
        aet, _, port = health.endpoint(self.spec.config)
        return sd.render_unit(sd.UnitSpec(
            service=kind, ae_title=aet or kind, port=port, venv=host.venv,
            config_path=self.config_path, rw_paths=rw, user=host.runs_as, group=None,
            site=host.machine, environment_file=self.env_path if with_secrets else None,
            exec_start=common.serve_argv(host.venv_python, self.spec, self.config_path),
            name=unit_name(host, self.spec.service)))

    # -- process ----------------------------------------------------------------------
    def status(self) -> supervisor.ServiceStatus:
        unit = self.unit()
        if unit is not None:
            return unit.status()
        if not self.session.has_venv():
            return supervisor.ServiceStatus(name=self.spec.service, active=False, state="stopped")
        return self._supervised.status()

    def _supervisor_start(self, wait: float) -> supervisor.ServiceStatus:
        """(Re)start it: as a systemd unit, or under the supervisor; moves it from one to
        the other when the host or the ``init`` setting changed."""
        if self.wants_systemd():
            return self._start_unit()
        unit = self.unit()
        if unit is not None:  # it ran as a unit: hand it back to the supervisor
            unit.remove(self.env_path)
            self.session.check(["rm", "-f", "--", self.unit_record], 30, what="removing the unit record")
            self._unit = None
        base = replace(self._supervised.spec, env=common.env_secrets(self.spec.config))
        self._supervised.spec = (self.database.supervised(base) if self.database is not None
                                 else base)
        return self._supervised.start(wait)

    def _start_unit(self) -> supervisor.ServiceStatus:
        host = self.session.settings
        env = common.env_secrets(self.spec.config)
        text = self.render_unit(with_secrets=bool(env))
        if self.session.transport.exists(f"{host.run_dir}/{self.spec.service}.pid"):
            # it ran under the supervisor: one listener per port, so that one goes first
            self._supervised.stop()
        unit = sd.SystemdUnit(_LazyTransport(self.session), self.spec.service,
                              unit_name(host, self.spec.service))
        # the record first: a deploy killed half-way leaves a unit that is found and removed
        self.session.write_text(self.unit_record, unit.unit + "\n", 0o644)
        self._unit, self._unit_known = unit, True
        unit.install(text, self.env_path, env)
        return unit.restart()

    def restart(self, wait: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop, then start with the current config (one ``systemctl restart`` for a unit)."""
        if self.wants_systemd():
            self.start(wait)
        else:
            super().restart(wait)

    def stop(self) -> None:
        unit = self.unit()
        if unit is not None:
            unit.stop()
        elif self.session.has_venv():
            self._supervised.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            unit = self.unit()
            text = unit.logs(lines) if unit is not None else self._supervised.logs(lines)
            return health.indent_log(text)
        except Exception as exc:  # noqa: BLE001 - a log we cannot read must not hide the failure
            return f"  (log not readable: {exc})"

    def python(self) -> str:
        return self.session.settings.venv_python

    def config_location(self) -> str:
        return self.config_path

    def run_check(self, argv: list[str], timeout: float,
                  input: bytes | None = None) -> tuple[int, str, str]:
        res = self.session.run(argv, timeout, input=input)
        return res.rc, res.stdout, res.stderr

    def run_as_service(self, argv: list[str], timeout: float,
                       input: bytes | None = None) -> tuple[int, str, str]:
        host = self.session.settings
        prefix = ([] if not host.hands_over else
                  ["setpriv", f"--reuid={host.runs_as}", f"--regid={host.runs_as}",
                   "--init-groups", "--"])
        return self.run_check([*prefix, *argv], timeout, input)

    # -- health -----------------------------------------------------------------------
    def endpoint(self) -> tuple[str, str, int]:
        """(AE title, host, port) of the DICOM listener, as reached from the pacsinfra machine."""
        return health.endpoint(self.spec.config, host=self.session.settings.address)

    def check_health(self, timeout: float = 60.0) -> float:
        if self.spec.kind == "viewer":
            return self.check_viewer(timeout)
        host = self.session.settings
        unit = self.unit()
        log_where = (f"{host.machine}: journalctl -u {unit.unit}" if unit is not None
                     else f"{host.machine}:{host.run_dir}/{self.spec.service}.log")
        if self.database is not None:
            return self.database.wait_healthy(self.status, self.log_tail, log_where=log_where,
                                              timeout=timeout)
        return health.wait_healthy(
            self.spec.name, self.endpoint(), self.status, self.log_tail,
            log_where=log_where, timeout=timeout)


def remove_units(session: HostSession) -> None:
    """Stop, disable and delete the systemd unit of every service under the host's root."""
    services = session.settings.services_dir
    res = session.run(["sh", "-c", 'for f in "$1"/*/' + UNIT_RECORD
                       + '; do [ -f "$f" ] && cat -- "$f"; done; exit 0', "sh", services], 30)
    for name in res.stdout.split():
        sd.SystemdUnit(session.transport, name, name).remove()


class _LazyTransport:
    """The session's transport, connected on first use (so building a service costs nothing)."""

    def __init__(self, session: HostSession) -> None:
        self._session = session
        self.name = session.name

    def run(self, cmd: Any, timeout: float = 60.0, *, input: bytes | None = None) -> Any:
        return self._session.transport.run(cmd, timeout, input=input)

    def put(self, local: Any, remote: str, mode: int = 0o644) -> None:
        self._session.transport.put(local, remote, mode)

    def get(self, remote: str, local: Any) -> None:
        self._session.transport.get(remote, local)

    def exists(self, remote: str) -> bool:
        return self._session.transport.exists(remote)

    def close(self) -> None:
        self._session.close()


def drop_privileges(host: HostSettings, spec: ServiceSpec) -> list[str]:
    """The prefix that runs a service as the service account under the supervisor (which
    runs as the login user): ``setpriv`` execs, so the supervisor's child *is* the service.
    A listener below port 1024 keeps only CAP_NET_BIND_SERVICE. PostgreSQL drops to its
    own account itself."""
    if not host.hands_over or spec.kind == "database":
        return []
    user = host.runs_as
    argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--no-new-privs"]
    if int(spec.config.get("port") or 0) < 1024 or int(
            (spec.config.get("dicomweb") or {}).get("port") or 1024) < 1024:
        argv += ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    return [*argv, "--"]


def need_nginx(session: HostSession) -> None:
    """DeployError unless the host has nginx (the viewer serves OHIF through it)."""
    res = session.run("command -v nginx || ls /usr/sbin/nginx", 30)
    if res.rc != 0:
        raise DeployError(f"{session.name}: nginx is not installed, and the viewer runs in it: "
                          "install it first (Debian: apt-get install nginx-light)")


def ship_ohif(session: HostSession, config: Mapping[str, Any]) -> None:
    """Copy the OHIF tarball the viewer's config names to the host, unless the host holds
    that very file already (same SHA-512): hosts need no access to the npm registry.

    Only tarballs under ``<root>/cache`` are pacsinfra's to ship; one the blueprint names
    elsewhere is the admin's to stage (and the viewer verifies it as it unpacks).
    """
    import base64

    from pacsinfra.viewer import ohif
    from pacsinfra.viewer.config import OhifPackage

    pkg = OhifPackage.model_validate(config.get("ohif") or {})
    cache = f"{session.settings.root.rstrip('/')}/cache"
    if not pkg.tarball or not pkg.tarball.startswith(cache + "/"):
        return
    local, integrity = ohif.tarball(pkg.model_copy(update={"tarball": None, "cache_dir": None}))
    want = base64.b64decode(integrity.removeprefix("sha512-")).hex()
    res = session.run(["sha512sum", "--", pkg.tarball], 120)
    if res.rc == 0 and res.stdout.split()[:1] == [want]:
        return
    session.check(["mkdir", "-p", "-m", "0755", "--", cache], 30, what=f"creating {cache}")
    session.transport.put(str(local), pkg.tarball, 0o644)
