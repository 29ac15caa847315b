"""Run one PACS service on this machine: its config file, its supervised process, its health.

A service's process is ``python -m pacsinfra <kind> serve --config <config.yaml>``
under :mod:`pacsinfra.deploy.supervisor` (restart on failure, logs, a lock that tells
whether it runs). Health is a C-ECHO to the service's DICOM port, retried until a
deadline; a service that does not answer fails with the end of its log.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pacsinfra.deploy import supervisor
from pacsinfra.drivers.base import ServiceSpec
from pacsinfra.drivers.local import paths
from pacsinfra.errors import DeployError, ServiceCheckError
from pacsinfra.fsutil import write_atomic

VERIFICATION = "1.2.840.10008.1.1"
HEALTH_AE = "PXHEALTH"


def _exit_text(info: dict[str, Any]) -> str:
    if info.get("signal"):
        return f"signal {info['signal']}"
    if info.get("error"):
        return str(info["error"])
    return f"code {info.get('code')}"


class ServiceProcess:
    """Files and process of one ServiceSpec on the local box."""

    def __init__(self, root: Path, site: str, machine_name: str, spec: ServiceSpec) -> None:
        self.spec = spec
        self.dir = paths.service_dir(root, site, machine_name, spec.service)
        self.config_path = self.dir / "config.yaml"
        self.mark_path = self.dir / "service.json"
        self.run_dir = paths.run_dir(root, site, machine_name)
        self.cwd = paths.machine_dir(root, site, machine_name)

    # -- files ------------------------------------------------------------------------
    def write_config(self) -> None:
        """Write the rendered config (0640), atomically: the service reads old or new, never half."""
        text = "# written by pacsinfra (local provider); changes are overwritten by apply\n"
        text += yaml.safe_dump(dict(self.spec.config), sort_keys=True)
        write_atomic(self.config_path, text, mode=0o640)

    def read_config(self) -> dict[str, Any] | None:
        """The config file as it is on disk (None when missing or unreadable)."""
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    # -- process ----------------------------------------------------------------------
    def supervised(self) -> supervisor.ServiceSpec:
        """What the supervisor runs for this service."""
        return supervisor.ServiceSpec(
            name=self.spec.service,
            argv=[sys.executable, "-m", "pacsinfra", self.spec.kind, "serve",
                  "--config", str(self.config_path)],
            run_dir=str(self.run_dir),
            cwd=str(self.cwd),
            stop_timeout=30.0,
        )

    def status(self) -> supervisor.ServiceStatus:
        return supervisor.read_status(self.run_dir, self.spec.service)

    def running(self) -> bool:
        """A live supervisor runs (or is restarting) the service."""
        st = self.status()
        return st.active and st.state in ("running", "backoff", "starting")

    def start(self) -> None:
        """Start under the supervisor (idempotent for an unchanged spec)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        st = supervisor.start(self.supervised())
        if st.state in ("failed", "exited"):
            raise ServiceCheckError(
                f"{self.spec.name}: exited at start ({_exit_text(st.last_exit or {})}); "
                f"end of its log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process (absent is success)."""
        if self.run_dir.exists():
            supervisor.stop(self.run_dir, self.spec.service)

    def restart(self) -> None:
        """Stop, then start with the current config."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the service's log, indented, for error messages."""
        if not self.run_dir.exists():
            return "  (no log)"
        text = supervisor.tail(self.run_dir, self.spec.service, lines)
        return "\n".join("  | " + line for line in text.splitlines()) or "  (log empty)"

    # -- health -----------------------------------------------------------------------
    def endpoint(self) -> tuple[str, str, int]:
        """(AE title, host, port) to reach the service's DICOM listener."""
        cfg = self.spec.config
        bind = str(cfg.get("bind") or "127.0.0.1")
        host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
        return str(cfg.get("ae_title", "")), host, int(cfg.get("port", 11112))

    def check_health(self, timeout: float = 60.0) -> float:
        """C-ECHO until it succeeds; returns the seconds it took. Raises ServiceCheckError."""
        from pynetdicom import AE

        aet, host, port = self.endpoint()
        started = time.monotonic()
        deadline = started + timeout
        last = "no answer"
        status: int | None = None
        while True:
            st = self.status()
            if not st.active or st.state in ("failed", "exited", "stopped", "dead"):
                last = f"process {st.state} (last exit {st.last_exit})"
                break
            if st.last_exit is not None:
                # it died since this start (the supervisor is backing off): a deploy that
                # crashes at start is a failed deploy, not something to wait out
                last = f"process exited at start ({_exit_text(st.last_exit)})"
                break
            ae = AE(ae_title=HEALTH_AE)
            ae.add_requested_context(VERIFICATION)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
            assoc = ae.associate(host, port, ae_title=aet)
            if assoc.is_established:
                try:
                    rsp = assoc.send_c_echo()
                finally:
                    assoc.release()
                status = getattr(rsp, "Status", None)
                if status == 0:
                    return time.monotonic() - started
                last = f"C-ECHO status {status}"
            else:
                last = "association rejected" if assoc.is_rejected else "no answer"
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        raise ServiceCheckError(
            f"{self.spec.name}: health check failed: C-ECHO {aet}@{host}:{port}: {last} "
            f"after {time.monotonic() - started:.1f}s; end of its log "
            f"({self.run_dir / (self.spec.service + '.log')}):\n{self.log_tail()}",
            status,
        )

    def deploy(self, *, restart: bool, health_timeout: float) -> None:
        """Write the config, (re)start the process, check its health; stop it if unhealthy."""
        self.write_config()
        try:
            if restart:
                self.restart()
            else:
                self.start()
            self.check_health(health_timeout)
        except DeployError:
            self.stop()
            raise
