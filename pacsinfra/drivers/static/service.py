"""One PACS service on an existing host: its config file, its supervised process, its health.

The process is ``<root>/venv/bin/python -m pacsinfra <kind> serve --config
<root>/services/<svc>/config.yaml`` under the pacsinfra supervisor on the host, driven
through the session's transport (SSH or ansible) (:class:`~pacsinfra.deploy.supervisor.Supervised`). Health is a C-ECHO from
the pacsinfra machine to the host's address and the service's port.

A ``database`` service is the host's own PostgreSQL
(:class:`~pacsinfra.deploy.postgres.PgServer`, its commands run over the same SSH
session), supervised the same way; health is ``SELECT 1`` from the pacsinfra machine.
Secrets named by ``env`` references in a rendered config are resolved here and handed
to the process in the supervisor's spec (0600 on the host, like a systemd
``EnvironmentFile``): the host's login shell does not have the admin's environment.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pacsinfra.deploy import supervisor
from pacsinfra.deploy.postgres import PgServer
from pacsinfra.drivers import service_common as common
from pacsinfra.drivers.base import ServiceSpec
from pacsinfra.drivers.static.remote import HostSession


class RemoteService(common.ServiceRunner):
    """Files and process of one ServiceSpec on one host."""

    def __init__(self, session: HostSession, spec: ServiceSpec) -> None:
        self.session = session
        self.spec = spec
        host = session.settings
        self.dir = host.service_dir(spec.service)
        self.config_path = f"{self.dir}/config.yaml"
        self.mark_path = f"{self.dir}/service.json"
        self.data_dir = host.data_dir(spec.service)
        self._supervised = supervisor.Supervised(
            _LazyTransport(session),
            supervisor.ServiceSpec(
                name=spec.service,
                argv=common.serve_argv(host.venv_python, spec, self.config_path),
                run_dir=host.run_dir,
                cwd=host.root,
                stop_timeout=30.0,
            ),
            python=host.venv_python,
        )
        if spec.kind == "database":
            self.database = PgServer(_LazyTransport(session), spec.name, spec.config,
                                     host=host.address)

    # -- files ------------------------------------------------------------------------
    def write_config(self) -> None:
        """The rendered config, 0640, replaced atomically (the service reads old or new)."""
        self.session.check(["mkdir", "-p", "-m", "0750", "--", self.dir, self.data_dir], 30,
                           what=f"creating {self.dir}")
        self.session.write_text(self.config_path, common.config_text(self.spec, "static"), 0o640)

    def read_config(self) -> dict[str, Any] | None:
        return common.parse_config(self.session.read_text(self.config_path))

    def remove_files(self) -> None:
        """Config and mark go; the data directory stays."""
        self.session.check(["rm", "-f", "--", self.config_path, self.mark_path], 30,
                           what=f"removing {self.dir}")
        self.session.run(["rmdir", "--", self.dir], 30)  # only when empty

    # -- process ----------------------------------------------------------------------
    def status(self) -> supervisor.ServiceStatus:
        if not self.session.has_venv():
            return supervisor.ServiceStatus(name=self.spec.service, active=False, state="stopped")
        return self._supervised.status()

    def _supervisor_start(self) -> supervisor.ServiceStatus:
        base = replace(self._supervised.spec, env=common.env_secrets(self.spec.config))
        self._supervised.spec = (self.database.supervised(base) if self.database is not None
                                 else base)
        return self._supervised.start()

    def stop(self) -> None:
        if self.session.has_venv():
            self._supervised.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return common.indent_log(self._supervised.logs(lines))
        except Exception as exc:  # noqa: BLE001 - a log we cannot read must not hide the failure
            return f"  (log not readable: {exc})"

    # -- health -----------------------------------------------------------------------
    def endpoint(self) -> tuple[str, str, int]:
        """(AE title, host, port) of the DICOM listener, as reached from the pacsinfra machine."""
        return common.endpoint(self.spec.config, host=self.session.settings.address)

    def check_health(self, timeout: float = 60.0) -> float:
        host = self.session.settings
        log_where = f"{host.machine}:{host.run_dir}/{self.spec.service}.log"
        if self.database is not None:
            return self.database.wait_healthy(self.status, self.log_tail, log_where=log_where,
                                              timeout=timeout)
        return common.wait_healthy(
            self.spec.name, self.endpoint(), self.status, self.log_tail,
            log_where=log_where, timeout=timeout)


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
