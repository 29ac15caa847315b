"""One service's life wherever it runs: write its config, (re)start it, check its health."""

from __future__ import annotations

import abc
import time
from typing import Any

from pacsinfra.errors import DeployError, ServiceCheckError
from pacsinfra.services.common import (
    check_argv,
    destinations_problem,
    is_running,
    viewer_check_argv,
    viewer_problem,
)
from pacsinfra.services.health import exit_text
from pacsinfra.services.postgres import PgServer
from pacsinfra.services.settings import DEFAULT_START_TIMEOUT
from pacsinfra.services.supervisor import ServiceStatus
from pacsinfra.specs import ServiceSpec


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
    def _supervisor_start(self, wait: float) -> ServiceStatus:
        """Start under the supervisor (idempotent for an unchanged spec), waiting up to
        ``wait`` seconds for it to report the process started."""

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
    def run_check(self, argv: list[str], timeout: float,
                  input: bytes | None = None) -> tuple[int, str, str]:
        """Run a pacsinfra command where the service runs: (exit code, stdout, stderr)."""

    @abc.abstractmethod
    def python(self) -> str:
        """The interpreter that runs pacsinfra where the service runs."""

    @abc.abstractmethod
    def config_location(self) -> str:
        """The service's config file, as a path where the service runs."""

    def run_as_service(self, argv: list[str], timeout: float,
                       input: bytes | None = None) -> tuple[int, str, str]:
        """Run a pacsinfra command where the service runs, as the account it runs as (a
        command that writes the service's data must not leave files it cannot change)."""
        return self.run_check(argv, timeout, input)

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

    def check_viewer(self, timeout: float = 60.0, poll: float = 1.0) -> float:
        """A viewer: ``viewer check`` where it runs (its page, its config, the archive
        through its proxy with a user's login, the refusal without one) until healthy;
        the seconds it took. A process that exits fails at once with the end of its log;
        ServiceCheckError names the probes that failed."""
        argv, stdin = viewer_check_argv(self.python(), self.config_location(), self.spec.config)
        started = time.monotonic()
        while True:
            st = self.status()
            if not st.active or st.state in ("failed", "exited", "stopped", "dead") \
                    or st.last_exit is not None:
                problem = (f"process exited at start ({exit_text(st.last_exit)})"
                           if st.last_exit is not None else f"process {st.state}")
                break
            found = viewer_problem(*self.run_check(argv, 60.0, input=stdin))
            if found is None:
                return time.monotonic() - started
            problem = found
            if time.monotonic() - started > timeout:
                break
            time.sleep(poll)
        raise ServiceCheckError(
            f"{self.spec.name}: health check failed after {time.monotonic() - started:.1f}s: "
            f"{problem}; end of its log:\n{self.log_tail()}")

    def running(self) -> bool:
        """A live supervisor runs (or is restarting) the service."""
        return is_running(self.status())

    def start(self, wait: float = DEFAULT_START_TIMEOUT) -> None:
        """Start; a process that exits at once fails with the end of its log."""
        st = self._supervisor_start(wait)
        if st.state in ("failed", "exited"):
            raise ServiceCheckError(
                f"{self.spec.name}: exited at start ({exit_text(st.last_exit or {})}); "
                f"end of its log:\n{self.log_tail()}")

    def restart(self, wait: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop, then start with the current config."""
        self.stop()
        self.start(wait)

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
                self.restart(health_timeout)
            else:
                self.start(health_timeout)
            self.check_health(health_timeout)
            self.check_destinations(min(health_timeout, 15.0))
        except DeployError:
            self.stop()
            raise
