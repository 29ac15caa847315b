"""The machines a hypervisor driver makes, as hosts for services.

Once a machine has booted it is, for its services, a host reached over SSH like a
``static`` one: :class:`GuestSource` gives :class:`~pacsinfra.services.remote.services.RemoteServices`
a session to it, built from what the driver's :class:`~pacsinfra.drivers.base.MachinePort`
and its declaration say, and the site's ``deploy`` login:

- **the machine as the hypervisor reports it**: a service lives in its machine, so no
  running, marked machine means no service (read is None, delete a no-op: the VM's
  deletion takes the service with it);
- **where it is reached, known at plan time**: the provider's
  :attr:`~pacsinfra.drivers.declaration.Declaration.reach` (the first static NIC
  address; kvm also a user-mode forward to port 22). The plan engine has no "known
  after apply" values, so a machine with only DHCP addresses cannot run services
  (``validate`` refuses it); :class:`GuestLayout` renders the configs from the same;
- **host keys, never trusted on first use**: pinned in ``deploy.host_keys`` (machine
  ``<site>-<role>-<n>``, else role) or a ``known_hosts`` file, else learnt out of band
  by the driver (:meth:`~pacsinfra.drivers.base.MachinePort.learn_host_keys`: kvm
  reads the serial console), never from the connection itself;
- **a new machine is waited for**: its sshd's banner, up to ``deploy.boot_timeout``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pacsinfra.drivers.base import Endpoint, MachinePort
from pacsinfra.drivers.declaration import Reach
from pacsinfra.errors import DeployError, PlanError
from pacsinfra.services.remote.services import Snapshots
from pacsinfra.services.remote.session import HostSession
from pacsinfra.services.remote.settings import HostSettings
from pacsinfra.services.settings import DeployConfig
from pacsinfra.services.wheel import WheelSource
from pacsinfra.specs import MachineSpec, Observed, Ownership, PowerState


class GuestLayout:
    """Where services' files go on a hypervisor's machine and how it is reached (plan time)."""

    uses_mounts = True

    def __init__(self, deploy: DeployConfig, machines: Mapping[str, MachineSpec],
                 reach: Reach) -> None:
        self.deploy = deploy
        self.machines = machines
        self.reach = reach

    def _endpoint(self, machine: str) -> Endpoint:
        spec = self.machines.get(machine)
        if spec is None:
            raise PlanError(f"machine {machine} is not in the plan")
        ep = self.reach.endpoint(spec, int(self.deploy.login.get("port") or 22))
        if ep is None:
            raise PlanError(self.reach.problem(spec))
        return ep

    def base_dir(self, machine: str) -> PurePosixPath:
        return PurePosixPath(self.deploy.root)

    def data_dir(self, machine: str, service: str) -> PurePosixPath:
        return PurePosixPath(self.deploy.root) / "data" / service

    def address(self, machine: str) -> str | None:
        return self._endpoint(machine).address

    def default_bind(self, machine: str) -> str:
        ep = self._endpoint(machine)
        # behind QEMU's NAT the forwards arrive on the guest's own NIC (10.0.2.15), which
        # nothing but the forwards reaches: listen there. Else the machine's own address.
        return "0.0.0.0" if ep.user_mode else ep.address

    def cache_dir(self, machine: str) -> PurePosixPath:
        return PurePosixPath(self.deploy.root) / "cache"


def wait_for_banner(ep: Endpoint, deadline: float) -> None:
    """Until sshd sends its banner. (A user-mode forward accepts the TCP connection even
    while nothing listens in the guest, then closes it: a connect alone proves nothing.)"""
    last = "no answer"
    while True:
        try:
            with socket.create_connection((ep.address, ep.port), timeout=5) as s:
                s.settimeout(10)
                if s.recv(8).startswith(b"SSH-"):
                    return
                last = "connection closed before the SSH banner"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise DeployError(f"{ep.address}:{ep.port}: sshd did not answer ({last})")
        time.sleep(1.0)


class GuestSource:
    """Sessions to a hypervisor driver's running machines (one per machine, reused)."""

    def __init__(self, provider: str, port: MachinePort, reach: Reach, deploy: DeployConfig,
                 *, expected_hosts: int = 1) -> None:
        self.provider = provider
        self.port = port
        self.reach = reach
        self.deploy = deploy
        self.engine = deploy.transport(expected_hosts)
        self.wheels = WheelSource(deploy.wheel, deploy.extras)
        self._sessions: dict[str, tuple[tuple[Endpoint, tuple[str, ...]], HostSession]] = {}
        self._lock = threading.Lock()
        self._snaps = Snapshots()
        self._work: tempfile.TemporaryDirectory[str] | None = None  # ansible run files

    # -- the machine under a service -----------------------------------------------------
    def running(self, name: str) -> Observed | None:
        """Machine ``name`` when it runs and carries pacsinfra's mark (services go only into
        machines pacsinfra made)."""
        obs = self.port.machine(name)
        if (obs is None or obs.owner is None or obs.power != PowerState.ON
                or not isinstance(obs.spec, MachineSpec)):
            return None
        return obs

    def _endpoint(self, spec: MachineSpec) -> Endpoint:
        ep = self.reach.endpoint(spec, int(self.deploy.login.get("port") or 22))
        if ep is None:
            raise DeployError(self.reach.problem(spec))
        return ep

    def host_keys(self, spec: MachineSpec, wait: float) -> tuple[str, ...] | None:
        """The keys to pin for ``spec``; ``()`` means the ``known_hosts`` file holds them;
        None: not known (yet), after ``wait`` seconds."""
        pinned = self.deploy.pinned(spec.name, spec.role)
        if pinned:
            return pinned
        if self.deploy.login.get("known_hosts"):
            return ()
        keys = self.port.learn_host_keys(spec, wait)
        if keys is None and wait > 0:
            raise DeployError(
                f"{spec.name}: no pinned SSH host key; pin it in deploy.host_keys (the machine "
                f"{spec.name} or its role {spec.role}) or in a known_hosts file (pacsinfra "
                "never trusts a key on first use)")
        return keys

    def _connect(self, spec: MachineSpec, wait: float) -> tuple[HostSession, Endpoint] | None:
        ep = self._endpoint(spec)
        keys = self.host_keys(spec, wait)
        if keys is None:
            return None
        ident = (ep, keys)
        with self._lock:
            found = self._sessions.get(spec.name)
            if found is not None and found[0] == ident:
                return found[1], ep
            if found is not None:
                found[1].close()
            host = HostSettings.merge(spec.name, ep.address, self.deploy.login, {},
                                      host_keys=keys, port=ep.port)
            session = HostSession(host, self.engine, self._work_dir())
            self._sessions[spec.name] = (ident, session)
            return session, ep

    def _work_dir(self) -> Path | None:
        if self.engine != "ansible":
            return None
        if self._work is None:
            self._work = tempfile.TemporaryDirectory(prefix=f"pacsinfra-{self.provider}-")
        return Path(self._work.name)

    def reachable(self, name: str) -> HostSession:
        """The session to running machine ``name`` once its host keys are known and sshd
        answers (a machine that just booted: waits up to ``deploy.boot_timeout``)."""
        obs = self.running(name)
        if obs is None:
            raise DeployError(f"{name} is not running")
        assert isinstance(obs.spec, MachineSpec)
        deadline = time.monotonic() + self.deploy.boot_timeout
        found = self._connect(obs.spec, self.deploy.boot_timeout)
        assert found is not None
        session, ep = found
        wait_for_banner(ep, deadline)
        return session

    # -- HostSource --------------------------------------------------------------------
    def session(self, machine: str, *, wait: bool) -> HostSession | None:
        if wait:
            return self.reachable(machine)
        obs = self.running(machine)
        if obs is None:
            return None
        assert isinstance(obs.spec, MachineSpec)
        if self.reach.endpoint(obs.spec, int(self.deploy.login.get("port") or 22)) is None:
            return None
        found = self._connect(obs.spec, 0)
        return found[0] if found is not None else None

    def prepare(self, machine: str, owner: Ownership, address: str) -> HostSession:
        """sshd answering, pacsinfra's root marked as the machine, the wheel installed."""
        obs = self.running(machine)
        if obs is None:
            raise DeployError(f"{address}: machine {machine} is not running")
        assert isinstance(obs.spec, MachineSpec)
        session = self.reachable(machine)
        host = session.settings
        mark = Ownership(owner.site, address, owner.lineage)
        found = session.read_mark(host.machine_mark)
        if found is None or found[1] != mark:
            session.make_root()
            spec = dataclasses.replace(obs.spec, address=address)
            session.write_mark(host.machine_mark, spec, mark)
        session.ensure_installed(self.wheels)
        return session

    def scanned(self, site: str, machines: Sequence[Observed] | None) -> list[str]:
        found = self.port.owned_machines(site) if machines is None else machines
        port = int(self.deploy.login.get("port") or 22)
        return [m.spec.name for m in found
                if m.owner is not None and m.owner.site == site and m.power == PowerState.ON
                and isinstance(m.spec, MachineSpec) and self.reach.endpoint(m.spec, port)]

    def snapshot(self, machine: str, session: HostSession) -> dict[str, Any]:
        return self._snaps.get(machine, session)

    def listing(self) -> contextlib.AbstractContextManager[None]:
        return self._snaps.listing()

    def root(self, machine: str) -> str:
        return self.deploy.root

    def forget(self, machine: str) -> None:
        """Drop the session of a deleted machine (its next incarnation is another host)."""
        with self._lock:
            found = self._sessions.pop(machine, None)
        if found is not None:
            found[1].close()

    def close(self) -> None:
        with self._lock:
            sessions = [s for _, s in self._sessions.values()]
            self._sessions.clear()
        for s in sessions:
            s.close()
        if self._work is not None:
            self._work.cleanup()
            self._work = None
        self.wheels.close()

    # -- hosts, for work between steps (dr rebuild) ---------------------------------------
    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> HostSession:
        """The session to running machine ``machine`` (waits for its host keys and sshd as
        a service step does); ``with_pacsinfra``: this pacsinfra installed in its venv."""
        session = self.reachable(machine)
        if with_pacsinfra:
            session.ensure_installed(self.wheels)
        return session
