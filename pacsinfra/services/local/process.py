"""Run one PACS service on this machine: its config file, its supervised process, its health.

A service's process is ``python -m pacsinfra <kind> serve --config <config.yaml>``
under :mod:`pacsinfra.services.supervisor` (restart on failure, logs, a lock that tells
whether it runs). Health is a C-ECHO to the service's DICOM port, retried until a
deadline; a service that does not answer fails with the end of its log.

A ``database`` service is PostgreSQL from this machine's packages instead
(:class:`~pacsinfra.services.postgres.PgServer` through a local transport): the same
supervisor runs the postmaster, health is ``SELECT 1`` as the services' role.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from pacsinfra.deploy.local import LocalTransport
from pacsinfra.fsutil import write_atomic
from pacsinfra.services import common, health, supervisor
from pacsinfra.services.local import paths
from pacsinfra.services.postgres import PgServer
from pacsinfra.services.runner import ServiceRunner
from pacsinfra.specs import ServiceSpec


class ServiceProcess(ServiceRunner):
    """Files and process of one ServiceSpec on the local box."""

    def __init__(self, root: Path, site: str, machine_name: str, spec: ServiceSpec) -> None:
        self.spec = spec
        self.dir = paths.service_dir(root, site, machine_name, spec.service)
        self.config_path = self.dir / "config.yaml"
        self.mark_path = self.dir / "service.json"
        self.run_dir = paths.run_dir(root, site, machine_name)
        self.cwd = paths.machine_dir(root, site, machine_name)
        if spec.kind == "database":
            self.database = PgServer(LocalTransport(machine_name), spec.name, spec.config)

    # -- files ------------------------------------------------------------------------
    def write_config(self) -> None:
        """Write the rendered config (0640), atomically: the service reads old or new, never half."""
        write_atomic(self.config_path, common.config_text(self.spec, "local"), mode=0o640)

    def read_config(self) -> dict[str, Any] | None:
        """The config file as it is on disk (None when missing or unreadable)."""
        try:
            return common.parse_config(self.config_path.read_text())
        except OSError:
            return None

    # -- process ----------------------------------------------------------------------
    def supervised(self) -> supervisor.ServiceSpec:
        """What the supervisor runs for this service."""
        spec = supervisor.ServiceSpec(
            name=self.spec.service,
            argv=common.serve_argv(sys.executable, self.spec, str(self.config_path)),
            run_dir=str(self.run_dir),
            cwd=str(self.cwd),
            stop_timeout=30.0,
        )
        return self.database.supervised(spec) if self.database is not None else spec

    def status(self) -> supervisor.ServiceStatus:
        return supervisor.read_status(self.run_dir, self.spec.service)

    def _supervisor_start(self, wait: float) -> supervisor.ServiceStatus:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return supervisor.start(self.supervised(), wait)

    def stop(self) -> None:
        """Stop the process (absent is success)."""
        if self.run_dir.exists():
            supervisor.stop(self.run_dir, self.spec.service)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the service's log, indented, for error messages."""
        if not self.run_dir.exists():
            return "  (no log)"
        return health.indent_log(supervisor.tail(self.run_dir, self.spec.service, lines))

    def python(self) -> str:
        return sys.executable

    def config_location(self) -> str:
        return str(self.config_path)

    def run_check(self, argv: list[str], timeout: float,
                  input: bytes | None = None) -> tuple[int, str, str]:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               cwd=self.cwd, input=input.decode() if input else None)
        except subprocess.TimeoutExpired:
            return 124, "", f"{' '.join(argv[2:5])} did not finish in {timeout:.0f}s"
        return r.returncode, r.stdout, r.stderr

    # -- health -----------------------------------------------------------------------
    def endpoint(self) -> tuple[str, str, int]:
        """(AE title, host, port) to reach the service's DICOM listener."""
        return health.endpoint(self.spec.config)

    def check_health(self, timeout: float = 60.0) -> float:
        """C-ECHO (a database: SELECT 1) until it succeeds; returns the seconds it took.
        Raises ServiceCheckError."""
        if self.spec.kind == "viewer":
            return self.check_viewer(timeout)
        log_where = str(self.run_dir / (self.spec.service + ".log"))
        if self.database is not None:
            return self.database.wait_healthy(self.status, self.log_tail, log_where=log_where,
                                              timeout=timeout)
        return health.wait_healthy(
            self.spec.name, self.endpoint(), self.status, self.log_tail,
            log_where=log_where, timeout=timeout)
