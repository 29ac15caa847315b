"""What every driver that runs PACS services shares: identity, change kinds, config files, health.

The ``local`` driver (this box) and the ``static`` driver (existing hosts over SSH)
carry out a :class:`~pacsinfra.drivers.base.ServiceSpec` the same way — rendered
config file, the pacsinfra supervisor, a C-ECHO health check (for a ``database``:
PostgreSQL from the target's packages, :mod:`pacsinfra.deploy.postgres`, checked by
``SELECT 1``) — and differ only in where the files and processes live. The parts that
do not depend on *where* are here.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Callable
from typing import Any

import yaml

from pacsinfra.deploy.postgres import PgServer
from pacsinfra.deploy.supervisor import ServiceStatus
from pacsinfra.drivers.base import (
    ChangeKind,
    MachineSpec,
    NetworkSpec,
    ServiceSpec,
    Spec,
    StorageSpec,
)
from pacsinfra.errors import DeployError, ServiceCheckError

#: service kinds a driver can run today
RUNNABLE = ("archive", "router", "database")
#: fields that identify a service: changing them means another service, not a new config
SERVICE_IDENTITY = frozenset({"name", "service", "kind", "machine"})
VERIFICATION = "1.2.840.10008.1.1"
HEALTH_AE = "PXHEALTH"
#: states in which the supervisor keeps (or is about to keep) the service up
UP_STATES = ("running", "backoff", "starting")


def classify(spec: Spec, field_name: str) -> ChangeKind:
    """Records and configs change in place; a service's identity, any object's name, replace."""
    if isinstance(spec, ServiceSpec) and field_name in SERVICE_IDENTITY:
        return ChangeKind.REPLACE
    if isinstance(spec, MachineSpec | NetworkSpec | StorageSpec) and field_name == "name":
        return ChangeKind.REPLACE
    return ChangeKind.IN_PLACE


def check_runnable(spec: Spec, driver: str) -> list[str]:
    """Plan-time problems: a service kind the drivers cannot run yet, or a database setting
    they cannot carry out."""
    if not isinstance(spec, ServiceSpec):
        return []
    if spec.kind not in RUNNABLE:
        return [f"{spec.address}: the {driver} driver cannot run a {spec.kind} service yet "
                f"(it runs {', '.join(RUNNABLE)})"]
    if spec.kind == "database":
        return _check_database(spec, driver)
    return []


def _check_database(spec: ServiceSpec, driver: str) -> list[str]:
    cfg = spec.config
    where = f"{spec.address} (services.{spec.service}.config"
    out = []
    if not cfg.get("password"):
        out.append(f"{where}.password): the services' role needs a password to log in over "
                   "TCP (SCRAM-SHA-256): set password: {env: PACS_DB_PASSWORD} or {file: ...}")
    if (cfg.get("tls") or {}).get("enabled"):
        out.append(f"{where}.tls): TLS for PostgreSQL is not supported by the {driver} "
                   "driver yet; leave tls disabled")
    if cfg.get("replica_of"):
        out.append(f"{where}.replica_of): streaming replicas are not supported by the "
                   f"{driver} driver yet")
    return out


def machine_name_of(spec: ServiceSpec, fallback: dict[str, str] | None = None) -> str:
    """The machine a service runs on, by name (``ServiceSpec.name`` is ``<machine>-<service>``)."""
    suffix = f"-{spec.service}"
    if spec.name.endswith(suffix):
        return spec.name[: -len(suffix)]
    return (fallback or {}).get(spec.machine, spec.name)


def is_running(status: ServiceStatus) -> bool:
    """A live supervisor runs (or is restarting) the service."""
    return status.active and status.state in UP_STATES


def observed_service(recorded: ServiceSpec, config: dict[str, Any] | None,
                     running: bool) -> ServiceSpec:
    """The spec as found: the recorded identity, the config file's content, whether it runs."""
    return ServiceSpec(
        address=recorded.address, name=recorded.name, service=recorded.service,
        kind=recorded.kind, machine=recorded.machine, config=config if config is not None else {},
        running=running, host=recorded.host,
    )


# -- the config file ---------------------------------------------------------------------


def config_text(spec: ServiceSpec, provider: str) -> str:
    """The service's config file as written: a header saying who owns it, then YAML."""
    text = f"# written by pacsinfra ({provider} provider); changes are overwritten by apply\n"
    return text + yaml.safe_dump(dict(spec.config), sort_keys=True)


def parse_config(text: str | None) -> dict[str, Any] | None:
    """A config file's content as a mapping (None when missing, unreadable or not a mapping)."""
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def env_secrets(config: Any) -> dict[str, str]:
    """``{VAR: value}`` for every ``{"env": VAR}`` secret reference in a rendered config.

    For a process on another machine, which does not inherit the admin's environment:
    the values go only into the supervisor's spec (mode 0600), never into the config.
    """
    from pacsinfra.secrets import SecretRef

    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if set(node) == {"env"} and isinstance(node["env"], str):
                found[node["env"]] = SecretRef(env=node["env"]).resolve()
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dict(config))
    return found


def serve_argv(python: str, spec: ServiceSpec, config_path: str) -> list[str]:
    """The command the supervisor runs for a service."""
    return [python, "-m", "pacsinfra", spec.kind, "serve", "--config", config_path]


def check_argv(python: str, config_path: str) -> list[str]:
    """The command that C-ECHOes a router's destinations from the router's machine."""
    return [python, "-m", "pacsinfra", "router", "check", "--config", config_path, "--json"]


def destinations_problem(rc: int, stdout: str, stderr: str) -> str | None:
    """What ``router check --json`` found wrong (None: every destination answered)."""
    try:
        results = json.loads(stdout)["destinations"]
    except (ValueError, KeyError, TypeError):
        return f"router check failed (exit {rc}): {(stderr or stdout).strip()[-500:]}"
    bad = [d for d in results if not d.get("ok")]
    if rc == 0 and not bad:
        return None
    if not bad:
        return f"router check failed (exit {rc}): {stderr.strip()[-500:]}"
    return "; ".join(f"destination {d.get('name')}: {d.get('problem')}" for d in bad)


# -- health ------------------------------------------------------------------------------


def exit_text(info: dict[str, Any]) -> str:
    """A supervisor's ``last_exit`` in words."""
    if info.get("signal"):
        return f"signal {info['signal']}"
    if info.get("error"):
        return str(info["error"])
    return f"code {info.get('code')}"


def indent_log(text: str) -> str:
    """A log tail quoted for an error message."""
    return "\n".join("  | " + line for line in text.splitlines()) or "  (log empty)"


def endpoint(config: dict[str, Any] | Any, host: str | None = None) -> tuple[str, str, int]:
    """(AE title, host, port) to reach a service's DICOM listener from the pacsinfra machine.

    A specific ``bind`` address is used as is; a wildcard bind is reached at ``host``
    (the machine's address), else loopback.
    """
    bind = str(config.get("bind") or "")
    where = bind if bind not in ("", "0.0.0.0", "::") else (host or "127.0.0.1")
    return str(config.get("ae_title", "")), where, int(config.get("port", 11112))


def c_echo(aet: str, host: str, port: int) -> tuple[bool, str, int | None]:
    """One C-ECHO: (success, what happened, DICOM status)."""
    from pynetdicom import AE

    ae = AE(ae_title=HEALTH_AE)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate(host, port, ae_title=aet)
    if not assoc.is_established:
        return False, "association rejected" if assoc.is_rejected else "no answer", None
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    status = getattr(rsp, "Status", None)
    return status == 0, f"C-ECHO status {status}", status


def wait_healthy(
    name: str,
    target: tuple[str, str, int],
    status: Callable[[], ServiceStatus],
    log_tail: Callable[[], str],
    *,
    log_where: str,
    timeout: float = 60.0,
    poll: float = 0.25,
) -> float:
    """C-ECHO ``target`` until it answers; returns the seconds it took.

    ``status`` reports the supervisor's view: a process that exits at start fails at
    once (a deploy that crashes is a failed deploy, not something to wait out). On
    failure raises :class:`ServiceCheckError` with the end of the service's log.
    """
    aet, host, port = target
    started = time.monotonic()
    deadline = started + timeout
    last = "no answer"
    dicom_status: int | None = None
    while True:
        st = status()
        if not st.active or st.state in ("failed", "exited", "stopped", "dead"):
            last = f"process {st.state} (last exit {st.last_exit})"
            break
        if st.last_exit is not None:
            # it died since this start (the supervisor is backing off)
            last = f"process exited at start ({exit_text(st.last_exit)})"
            break
        ok, last, dicom_status = c_echo(aet, host, port)
        if ok:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            break
        time.sleep(poll)
    raise ServiceCheckError(
        f"{name}: health check failed: C-ECHO {aet}@{host}:{port}: {last} "
        f"after {time.monotonic() - started:.1f}s; end of its log ({log_where}):\n{log_tail()}",
        dicom_status,
    )


# -- one service's life: config, supervised process, health --------------------------------


class ServiceRunner(abc.ABC):
    """What the drivers do with one service, wherever it runs; subclasses say where."""

    spec: ServiceSpec
    #: a ``database`` service's PostgreSQL cluster (None for the DICOM services)
    database: PgServer | None = None

    @abc.abstractmethod
    def write_config(self) -> None:
        """Write the rendered config file atomically (0640)."""

    @abc.abstractmethod
    def read_config(self) -> dict[str, Any] | None:
        """The config file as it is on the machine (None when missing or unreadable)."""

    @abc.abstractmethod
    def status(self) -> ServiceStatus:
        """The supervisor's view of the service."""

    @abc.abstractmethod
    def _supervisor_start(self) -> ServiceStatus:
        """Start under the supervisor (idempotent for an unchanged spec)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the process (absent is success)."""

    @abc.abstractmethod
    def log_tail(self, lines: int = 20) -> str:
        """The end of the service's log, indented, for error messages."""

    @abc.abstractmethod
    def check_health(self, timeout: float = 60.0) -> float:
        """C-ECHO until it answers (seconds taken); raises ServiceCheckError."""

    @abc.abstractmethod
    def run_check(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """Run a pacsinfra command where the service runs: (exit code, stdout, stderr)."""

    @abc.abstractmethod
    def python(self) -> str:
        """The interpreter that runs pacsinfra where the service runs."""

    @abc.abstractmethod
    def config_location(self) -> str:
        """The service's config file, as a path where the service runs."""

    def check_destinations(self, timeout: float = 15.0, poll: float = 1.0) -> None:
        """A router: C-ECHO each destination from the router's machine until all answer
        or ``timeout`` passes; raises ServiceCheckError naming the ones that did not."""
        if self.spec.kind != "router":
            return
        argv = check_argv(self.python(), self.config_location())
        deadline = time.monotonic() + timeout
        while True:
            problem = destinations_problem(*self.run_check(argv, timeout + 30))
            if problem is None:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(poll)
        raise ServiceCheckError(
            f"{self.spec.name}: destinations unreachable from the router's machine: {problem}; "
            f"end of the router's log:\n{self.log_tail()}")

    def running(self) -> bool:
        """A live supervisor runs (or is restarting) the service."""
        return is_running(self.status())

    def start(self) -> None:
        """Start; a process that exits at once fails with the end of its log."""
        st = self._supervisor_start()
        if st.state in ("failed", "exited"):
            raise ServiceCheckError(
                f"{self.spec.name}: exited at start ({exit_text(st.last_exit or {})}); "
                f"end of its log:\n{self.log_tail()}")

    def restart(self) -> None:
        """Stop, then start with the current config."""
        self.stop()
        self.start()

    def prepare(self) -> None:
        """What must exist before the process starts (a database: binaries, cluster, conf)."""
        if self.database is not None:
            self.database.prepare()

    def deploy(self, *, restart: bool, health_timeout: float) -> None:
        """Write the config, (re)start the process, check its health; stop it if unhealthy."""
        self.write_config()
        try:
            self.prepare()
            if restart:
                self.restart()
            else:
                self.start()
            self.check_health(health_timeout)
            self.check_destinations(min(health_timeout, 15.0))
        except DeployError:
            self.stop()
            raise
