"""The ``static`` provider: the site's machines are hosts that already exist.

- A machine maps to its entry in ``provider.static.hosts`` (by machine name), reached
  with the site's ``deploy`` login (each entry may override it) over paramiko or
  ansible-runner (``deploy.engine``; ``auto`` takes ansible for more than
  ``deploy.ansible_threshold`` hosts). Either way the same commands run and the same
  files are written: the engine is only the channel.
- Create = connect (host key verified, never trusted on first use), check the disks the
  blueprint mounts are mounted, create the root directories, write the ownership mark
  ``<root>/machine.json`` and install pacsinfra into ``<root>/venv`` (here rather than
  before the first service, so every host installs at once). Observe = read the mark.
  Nothing about the host itself is changed; delete stops what pacsinfra runs there and
  removes its files, **keeping** ``<root>/data``.
- Networks and storage classes are no-op records on the pacsinfra machine
  (:mod:`pacsinfra.services.records`).
- The services on the hosts are :class:`~pacsinfra.services.remote.services.RemoteServices`
  steps (:meth:`StaticHosts.service_steps`), sharing this provider's sessions.

Layout on a host: :mod:`pacsinfra.services.remote.settings`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from pacsinfra.drivers.base import Driver
from pacsinfra.drivers.settings import as_dict
from pacsinfra.errors import AlreadyExists, DeployError, PlanError
from pacsinfra.services import common
from pacsinfra.services.records import Records
from pacsinfra.services.remote.observe import observe_host
from pacsinfra.services.remote.service import remove_units
from pacsinfra.services.remote.services import RemoteServices, Snapshots
from pacsinfra.services.remote.session import MARK_FORMAT, HostSession
from pacsinfra.services.remote.settings import HostSettings
from pacsinfra.services.settings import DeployConfig
from pacsinfra.services.supervisor import ServiceSpec as SupervisorSpec
from pacsinfra.services.supervisor import Supervised
from pacsinfra.services.wheel import WheelSource
from pacsinfra.specs import (
    ChangeKind,
    MachineSpec,
    NetworkSpec,
    Observed,
    Ownership,
    Rendered,
    Spec,
    StorageSpec,
    spec_to_dict,
)


def static_hosts(settings: Any, deploy: DeployConfig) -> dict[str, HostSettings]:
    """``provider.static.hosts`` with the site's ``deploy`` login applied to each entry."""
    raw = as_dict(settings)
    out = {}
    for name, entry in (raw.get("hosts") or {}).items():
        own = as_dict(entry)
        out[str(name)] = HostSettings.merge(str(name), str(own["address"]), deploy.login, own,
                                            host_keys=tuple(own.get("host_keys") or ()))
    return out


def records_root(settings: Any) -> Path:
    """Where the no-op network/storage records are kept on the pacsinfra machine."""
    given = as_dict(settings).get("records")
    if given:
        return Path(os.path.abspath(os.path.expanduser(str(given))))
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "pacsinfra" / "static"


class StaticLayout:
    """Where a service's files go on a host and how it is reached (plan time)."""

    uses_mounts = True

    def __init__(self, hosts: dict[str, HostSettings]) -> None:
        self.hosts = hosts

    def _host(self, machine: str) -> HostSettings:
        host = self.hosts.get(machine)
        if host is None:
            raise PlanError(f"machine {machine} has no host in provider.static.hosts")
        return host

    def base_dir(self, machine: str) -> PurePosixPath:
        return self._host(machine).base

    def data_dir(self, machine: str, service: str) -> PurePosixPath:
        return PurePosixPath(self._host(machine).data_dir(service))

    def address(self, machine: str) -> str | None:
        return self._host(machine).address

    def default_bind(self, machine: str) -> str:
        # the host's own address: reachable by the other hosts and by pacsinfra, and not
        # on interfaces nobody asked for (set bind: 0.0.0.0 for every interface)
        return self._host(machine).address

    def cache_dir(self, machine: str) -> PurePosixPath:
        return self._host(machine).base / "cache"


class StaticSource:
    """Sessions to the configured hosts: one connection per host, shared by every step."""

    provider = "static"

    def __init__(self, hosts: dict[str, HostSettings], deploy: DeployConfig) -> None:
        self.hosts = hosts
        self.engine = deploy.transport(len(hosts))
        self.wheels = WheelSource(deploy.wheel, deploy.extras)
        self._sessions: dict[str, HostSession] = {}
        self._lock = threading.Lock()
        self._ansible_tmp: tempfile.TemporaryDirectory[str] | None = None
        self._snaps = Snapshots()

    def host(self, machine: str) -> HostSettings:
        found = self.hosts.get(machine)
        if found is None:
            raise DeployError(f"machine {machine} has no host in provider.static.hosts")
        return found

    def connection(self, machine: str) -> HostSession:
        """The session to ``machine``'s host (DeployError when it has no entry)."""
        with self._lock:
            session = self._sessions.get(machine)
            if session is None:
                work: Path | None = None
                if self.engine == "ansible":
                    if self._ansible_tmp is None:
                        self._ansible_tmp = tempfile.TemporaryDirectory(prefix="pacsinfra-ans-")
                    work = Path(self._ansible_tmp.name)
                session = HostSession(self.host(machine), self.engine, work)
                self._sessions[machine] = session
            return session

    # -- HostSource --------------------------------------------------------------------
    def session(self, machine: str, *, wait: bool) -> HostSession | None:
        return self.connection(machine) if machine in self.hosts else None

    def prepare(self, machine: str, owner: Ownership, address: str) -> HostSession:
        # the machine step marked the host; a service step only needs pacsinfra there
        session = self.connection(machine)
        session.ensure_installed(self.wheels)
        return session

    def scanned(self, site: str, machines: Sequence[Observed] | None) -> list[str]:
        return sorted(self.hosts)

    def snapshot(self, machine: str, session: HostSession) -> dict[str, Any]:
        return self._snaps.get(machine, session)

    def listing(self) -> contextlib.AbstractContextManager[None]:
        return self._snaps.listing()

    def root(self, machine: str) -> str:
        return self.host(machine).root

    def forget(self, machine: str) -> None:
        """Nothing to forget: the host outlives its machine."""

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()
        if self._ansible_tmp is not None:
            self._ansible_tmp.cleanup()  # run files, and a key resolved from a secret
            self._ansible_tmp = None
        self.wheels.close()


class StaticHosts(Driver):
    """Machines that are existing hosts, marked over SSH; networks and storage as records."""

    name: ClassVar[str] = "static"

    def __init__(self, config: Any, *, client: Any = None, deploy: Any = None) -> None:
        super().__init__(config, client=client)
        self.deploy = deploy if isinstance(deploy, DeployConfig) else DeployConfig.parse(deploy)
        self.source = StaticSource(static_hosts(config, self.deploy), self.deploy)
        self.records = Records(records_root(config), MARK_FORMAT)

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> None:
        """Nothing up front: each host is connected on first use."""

    def close(self) -> None:
        """Close every SSH connection and drop the wheel built for this run."""
        self.source.close()

    @staticmethod
    def layout(settings: Any, deploy: Any, site: str) -> StaticLayout:
        """Where the services' files go, for rendering their configs at plan time."""
        return StaticLayout(static_hosts(settings, DeployConfig.parse(deploy)))

    def service_steps(self) -> RemoteServices:
        """The service steps on these hosts (sharing this provider's sessions)."""
        return RemoteServices(self.source, self.deploy.init)

    # -- reading ------------------------------------------------------------------------
    def _observe_machine(self, machine: str) -> Observed | None:
        session = self.source.connection(machine)
        found, _ = observe_host(session.settings, self.source.snapshot(machine, session))
        return found

    def list_owned(self, site: str) -> list[Observed]:
        """The site's records here, and the marks on every configured host (read in parallel)."""
        out = self.records.list(site)
        machines = sorted(self.source.hosts)
        if machines:
            with ThreadPoolExecutor(max_workers=min(16, len(machines))) as pool:
                out += [m for m in pool.map(self._observe_machine, machines) if m is not None]
        return [o for o in out if o.owner is not None and o.owner.site == site]

    def read(self, spec: Spec) -> Observed | None:
        """The marked object where ``spec`` would live (any site)."""
        if isinstance(spec, NetworkSpec | StorageSpec):
            return self.records.find(spec)
        if not isinstance(spec, MachineSpec) or spec.name not in self.source.hosts:
            return None
        found = self._observe_machine(spec.name)
        return found if found is not None and found.spec.address == spec.address else None

    # -- planning -----------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The mark ``create`` would write, and where (host and path)."""
        params: dict[str, Any] = {}
        if isinstance(spec, NetworkSpec | StorageSpec):
            params["path"] = str(self.records.path(owner.site, spec))
        else:
            host = self.source.host(spec.name)
            params["host"] = host.describe()
            params["path"] = host.machine_mark
        return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1), params)

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        """Records change in place; a name forces a replace."""
        return common.classify(spec, field_name)

    def check(self, spec: Spec) -> list[str]:
        """Every machine needs a host entry."""
        if isinstance(spec, MachineSpec) and spec.name not in self.source.hosts:
            return [f"{spec.address}: machine {spec.name} has no host in provider.static.hosts"]
        return []

    # -- acting -------------------------------------------------------------------------
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Record a no-op, or mark a host (and install pacsinfra there)."""
        if isinstance(spec, NetworkSpec | StorageSpec):
            return self.records.write(spec, owner)
        assert isinstance(spec, MachineSpec)
        session = self.source.connection(spec.name)
        host = session.settings
        found = session.read_mark(host.machine_mark)
        if found is not None and found[1] is not None and (
                found[1].site, found[1].address) != (owner.site, owner.address):
            other = found[1]
            raise AlreadyExists(f"{host.describe()}: {host.root} already belongs to "
                                f"{other.address} of site {other.site}")
        check_mounts(session, spec)
        session.make_root()
        session.write_mark(host.machine_mark, spec, owner)
        # Installed here too, not only before a service starts: machines are created in
        # parallel, so every host installs at once instead of one dependency layer at a time.
        session.ensure_installed(self.source.wheels)
        return self._found(spec)

    def _found(self, spec: MachineSpec) -> Observed:
        obs = self.read(spec)
        if obs is None:
            raise DeployError(f"{spec.address}: its mark is not readable right after writing it")
        return obs

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Rewrite the record or the host's mark."""
        owner = observed.owner
        assert owner is not None, "the engine only updates marked objects"
        if isinstance(spec, NetworkSpec | StorageSpec):
            return self.records.write(spec, owner)
        assert isinstance(spec, MachineSpec)
        session = self.source.connection(spec.name)
        check_mounts(session, spec)
        session.write_mark(session.settings.machine_mark, spec, owner)
        return self._found(spec)

    def delete(self, observed: Observed) -> None:
        """A record: remove it. A machine: stop everything pacsinfra runs on the host and
        remove its files except ``data/``."""
        spec = observed.spec
        if isinstance(spec, NetworkSpec | StorageSpec):
            if observed.owner is not None:
                self.records.delete(observed.owner.site, spec)
            return
        if spec.name not in self.source.hosts:
            return  # the host entry is gone from the blueprint: nothing to reach
        delete_host_files(self.source.connection(spec.name))

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """A static machine's address is its host's."""
        return self.source.host(observed.spec.name).address

    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> HostSession:
        """The session to ``machine``'s host, shared with the steps (one connection; it
        knows the venv a machine step installed): for work between steps (``dr rebuild``
        restores an archive's data after the machine step, before the service step)."""
        session = self.source.connection(machine)
        if with_pacsinfra:
            session.ensure_installed(self.source.wheels)
        return session


def check_mounts(session: HostSession, spec: MachineSpec) -> None:
    """Every disk the blueprint mounts must be mounted on the host: the services' data goes
    there (:mod:`pacsinfra.services.render`), and a missing mount would silently put it
    on the root file system instead."""
    mounted = [(d.name, d.mount) for d in spec.disks if d.mount]
    if not mounted:
        return
    probe = ("import os, sys\n"
             "print('\\n'.join(p for p in sys.argv[1:] if not os.path.ismount(p)))")
    res = session.check([session.settings.python, "-c", probe, *(m for _, m in mounted)], 30,
                        what="looking at the disks' mounts")
    missing = {ln for ln in res.stdout.splitlines() if ln}
    if missing:
        names = ", ".join(f"disk {n!r} at {m}" for n, m in mounted if m in missing)
        raise DeployError(
            f"{session.settings.describe()}: nothing is mounted where the blueprint mounts "
            f"{names}; mount the disk there first (the services' data would otherwise land "
            "on the root file system), or leave out its mount:")


def delete_host_files(session: HostSession) -> None:
    """Stop every service pacsinfra runs on the host and remove its files but ``data/``."""
    host = session.settings
    remove_units(session)
    if session.has_venv():
        res = session.run(["sh", "-c", 'cd "$1" 2>/dev/null && ls -1 -- *.lock 2>/dev/null',
                           "sh", host.run_dir], 30)
        for lock in res.stdout.split():
            name = lock[: -len(".lock")]
            spec = SupervisorSpec(name=name, argv=[], run_dir=host.run_dir)
            Supervised(session.transport, spec, python=host.venv_python).stop()
    # the mark last: a delete killed half-way leaves a marked machine, deleted next time
    session.check(["rm", "-rf", "--", host.services_dir, host.run_dir, host.venv], 120,
                  what=f"removing pacsinfra's files under {host.root}")
    session.check(["rm", "-f", "--", host.machine_mark], 30, what="removing the mark")
    session.run(["rmdir", "--", f"{host.root}/data", host.root], 30)  # only when empty
    session.installed = None
