"""A stand-in for a VM's operating system, for hypervisor simulators that have no guests.

vcsim and the Hyper-V model make VMs that boot nothing. To deploy services "into" such a
VM for real, the test gives the VM's NIC the address of an sshd running in its own
network namespace (:mod:`support.netns_hosts`): pacsinfra reaches the VM at that
address, exactly as it would reach a real guest, and everything it does there (venv,
config, supervisor, C-ECHO) really happens, inside that namespace. What the stand-in
cannot show: that the hypervisor delivered the address to a guest (customization, KVP),
and that the VM's deletion took the guest's disk with it (the stand-in's root directory
outlives the VM; the tests remove it).

Helpers here: the stand-in host fixture (also the existing host of a static-provider
test), the ``deploy`` login block and the services of a blueprint, a CLI runner, the
supervisor's view of the services under a root, and the checks every driver's
services test makes (step order, where the services run, no secret in state).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need

from support.netns_hosts import NetnsHost, NetnsLab, require_netns
from support.procs import netns_of, processes_under  # noqa: F401 - re-exported
from support.wheelhouse import wheelhouse

SYSTEM_PY = "/usr/bin/python3"  # the stand-in's interpreter (not this venv's)


@pytest.fixture(scope="module")
def standin() -> Iterator[NetnsHost]:
    """One sshd host in its own network namespace: the OS of the test's VM."""
    require_netns()
    root = Path(tempfile.mkdtemp(prefix="pacsinfra-standin-"))
    try:
        with NetnsLab(1, root) as lab:
            yield lab.hosts[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def house() -> Path:
    """pacsinfra's dependency wheels for the stand-in's python (cached, shared)."""
    need(Path(SYSTEM_PY).exists(), "no system python3 for the stand-in's venv")
    r = subprocess.run([SYSTEM_PY, "-c", "import sys; print(*sys.version_info[:2])"],
                       capture_output=True, text=True, check=True)
    major, minor = (int(x) for x in r.stdout.split())
    try:
        return wheelhouse((major, minor))
    except RuntimeError as exc:
        need(False, str(exc))
        raise


def deploy_block(host: NetnsHost, root: Path, house: Path, *, key_line: str | None = None) -> str:
    """``deploy:``: log in as root with the lab's key, pin the host's key for role
    ``pacs``, install from the wheelhouse into ``root``."""
    key = key_line or host.host_key_line
    return ("deploy:\n"
            "  user: root\n"
            f"  key_file: {host.key_file}\n"
            f"  python: {SYSTEM_PY}\n"
            f"  find_links: {house}\n"
            f"  root: {root}\n"
            "  boot_timeout: 30\n"
            f"  host_keys: {{pacs: [\"{key}\"]}}\n")


def services_block(host: NetnsHost, receiver: int, *, prefix: str, retries: int = 10) -> str:
    """An archive and a router in front of it, both on the machine of role ``pacs``; the
    archive moves verify's study to PXVERIFY on this machine's end of the host's link."""
    return f"""\
services:
  archive:
    kind: archive
    config:
      ae_title: {prefix}ARCH
      port: 11112
      dicomweb: {{enabled: false}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: {host.root_address}, port: {receiver}}}}}
  router:
    kind: router
    config:
      ae_title: {prefix}ROUTE
      port: 11104
      retry: {{max_attempts: {retries}}}
      destinations: {{a: {{ae_title: {prefix}ARCH, service: archive, port: 11112}}}}
      rules: [{{name: all, forward: [a]}}]
"""


class Cli:
    """``python -m pacsinfra`` in a subprocess, with the test's environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {k: v for k, v in {**os.environ, **env}.items() if k != "PACSINFRA_DEBUG"}
        self.times: dict[str, float] = {}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, label: str, *args: str) -> str:
        """Run, require exit 0, record the seconds under ``label``; stdout."""
        started = time.monotonic()
        r = self.run(*args)
        self.times[label] = self.times.get(label, 0.0) + time.monotonic() - started
        assert r.returncode == 0, f"pacsinfra {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
        return r.stdout

    def report(self) -> str:
        return ", ".join(f"{k} {v:.1f}s" for k, v in self.times.items())


def supervised(root: Path, service: str) -> dict[str, Any]:
    """The supervisor's state file of ``service`` under a stand-in root."""
    import json

    data = json.loads((root / "run" / f"{service}.state.json").read_text())
    assert isinstance(data, dict)
    return data


def pid_of(root: Path, service: str) -> int:
    st = supervised(root, service)
    assert st["state"] == "running", st
    return int(st["pid"])


def kill_under(root: Path) -> None:
    """What a failed test left running under ``root`` (only those processes)."""
    for pid in processes_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_deploy_order(order: list[str]) -> None:
    """Plan steps: the machine before the archive, the archive before the router."""
    assert order.index("machine.pacs[0]") < order.index("service.archive[0]") \
        < order.index("service.router[0]"), order


def assert_destroy_order(out: str) -> None:
    """``destroy`` output: the router, then the archive, then the machine."""
    done = [ln.split(":")[0] for ln in out.splitlines() if ln.endswith("deleting...")]
    assert done.index("service.router[0]") < done.index("service.archive[0]") \
        < done.index("machine.pacs[0]"), out


def assert_services_in(root: Path, host: NetnsHost) -> dict[str, int]:
    """The archive and router under ``root`` run in ``host``'s namespace; their pids."""
    pids = {svc: pid_of(root, svc) for svc in ("archive", "router")}
    for svc, pid in pids.items():
        assert netns_of(pid) == host.netns, (svc, pid)
    return pids


def assert_no_secrets(state: Path, password: str) -> None:
    """Neither ``password`` nor a private key anywhere in the state files under ``state``."""
    text = "".join(p.read_text() for p in state.glob("*.json"))
    assert password not in text and "PRIVATE KEY" not in text
