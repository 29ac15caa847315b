"""The ``static`` driver: machines are hosts that already exist (bare metal, pre-made VMs).

- The transport is paramiko (``deploy: {engine: ssh}``) or ansible-runner (``engine:
  ansible``); ``auto`` (the default) takes ansible for more than ``ansible_threshold``
  (10) hosts. Either way the same commands run and the same files are written: the
  engine is only the channel (:mod:`pacsinfra.drivers.static.remote`).
- A machine maps to its entry in ``provider.static.hosts`` (by machine name). Create =
  connect over SSH (host key verified, never trusted on first use), create the root
  directories, write the ownership mark ``<root>/machine.json`` and install pacsinfra
  into ``<root>/venv``; observe = read the mark. Nothing about the host itself is changed; delete stops what pacsinfra runs there
  and removes its files, **keeping** ``<root>/data``.
- Networks and storage classes are no-ops recorded as marks on the pacsinfra machine
  (:func:`~pacsinfra.drivers.static.layout.records_root`), so plans, state, adoption and
  orphan deletion work as with the hypervisor drivers.
- A service: create = install the pacsinfra wheel into ``<root>/venv`` (built once per
  run and reused, skipped when the venv already holds it), write the config (0640,
  atomically), start it as a systemd unit where the host's PID 1 is systemd, else under
  the supervisor (``deploy.init``; :mod:`pacsinfra.drivers.static.service`), C-ECHO it
  from here (60 s);
  an unhealthy service is stopped and the step fails with the end of its log. A config
  change restarts that service only. Delete = stop, remove config and mark, keep data.
  Observed: the config file as it is on the host and whether its unit or supervisor
  runs it.

Layout on a host: :mod:`pacsinfra.drivers.static.layout`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from pacsinfra.deploy import wheel as wheels
from pacsinfra.deploy.supervisor import ServiceSpec as SupervisorSpec
from pacsinfra.deploy.supervisor import ServiceStatus, Supervised
from pacsinfra.drivers import service_common as common
from pacsinfra.drivers.base import (
    ChangeKind,
    Driver,
    MachineSpec,
    NetworkSpec,
    Observed,
    Ownership,
    PowerState,
    Rendered,
    ServiceSpec,
    Spec,
    StorageSpec,
    spec_to_dict,
)
from pacsinfra.drivers.local.marks import decode_mark, encode_mark
from pacsinfra.drivers.static.layout import HostSettings, StaticSettings, records_root
from pacsinfra.drivers.static.remote import MARK_FORMAT, HostSession
from pacsinfra.drivers.static.service import RemoteService, init_choice, remove_units
from pacsinfra.errors import AlreadyExists, DeployError
from pacsinfra.fsutil import write_atomic


class StaticDriver(Driver):
    """Existing hosts over SSH; services run as systemd units or under the pacsinfra
    supervisor there."""

    name: ClassVar[str] = "static"

    def __init__(self, config: Any, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self.settings = StaticSettings.parse(config)
        self.init = init_choice(config)  # systemd units or the supervisor (auto: per host)
        self.records = records_root(self.settings)
        self.health_timeout = 60.0
        self._sessions: dict[str, HostSession] = {}
        self._lock = threading.Lock()
        self._wheel: wheels.BuiltWheel | None = None
        self._wheel_lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ansible_tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> None:
        """Nothing up front: each host is connected on first use."""

    def close(self) -> None:
        """Close every SSH connection and drop the wheel built for this run."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()
        if self._ansible_tmp is not None:
            self._ansible_tmp.cleanup()  # run files, and a key resolved from a secret
            self._ansible_tmp = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._wheel = None

    def _host(self, machine: str) -> HostSettings:
        host = self.settings.host(machine)
        if host is None:
            raise DeployError(f"machine {machine} has no host in provider.static.hosts")
        return host

    def _session(self, machine: str) -> HostSession:
        with self._lock:
            session = self._sessions.get(machine)
            if session is None:
                engine = self.settings.transport
                work: Path | None = None
                if engine == "ansible":
                    if self._ansible_tmp is None:
                        self._ansible_tmp = tempfile.TemporaryDirectory(prefix="pacsinfra-ans-")
                    work = Path(self._ansible_tmp.name)
                session = HostSession(self._host(machine), engine, work)
                self._sessions[machine] = session
            return session

    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> HostSession:
        """The session to ``machine``'s host, shared with this driver's own steps (one
        connection; it knows the venv a machine step installed). For work on a host
        between steps: ``dr rebuild`` restores an archive's data there after the
        machine step and before the service step. ``with_pacsinfra``: make sure
        ``<root>/venv`` holds this pacsinfra first (a no-op when it does)."""
        session = self._session(machine)
        if with_pacsinfra:
            self._ensure_installed(session)
        return session

    def _service(self, spec: ServiceSpec) -> RemoteService:
        return RemoteService(self._session(common.machine_name_of(spec)), spec, self.init)

    # -- the local record of no-op objects ------------------------------------------------
    def _record_path(self, site: str, spec: NetworkSpec | StorageSpec) -> Path:
        kind = "networks" if isinstance(spec, NetworkSpec) else "storage"
        return self.records / site.replace("/", "--") / kind / f"{spec.name}.json"

    def _read_record(self, path: Path) -> Observed | None:
        try:
            found = decode_mark(path.read_text(), MARK_FORMAT)
        except OSError:
            return None
        if found is None:
            return None
        spec, owner = found
        return Observed(spec=spec, id=str(path), owner=owner, power=PowerState.ON)

    # -- reading ------------------------------------------------------------------------
    def _observe_host(self, machine: str, snap: dict[str, Any]) -> list[Observed]:
        """The machine and its services as one snapshot of its host shows them."""
        host = self._host(machine)
        files: dict[str, str] = snap.get("files") or {}
        status: dict[str, Any] = snap.get("status") or {}
        out: list[Observed] = []
        text = files.get(host.machine_mark)
        found = decode_mark(text, MARK_FORMAT) if text is not None else None
        if found is None:
            return out
        mspec, owner = found
        out.append(Observed(spec=mspec, id=f"{host.address}:{host.root}", owner=owner,
                            power=PowerState.ON))
        for path, text in sorted(files.items()):
            if not path.endswith("/service.json"):
                continue
            got = decode_mark(text, MARK_FORMAT)
            if got is None:
                continue
            sspec, sowner = got
            if not isinstance(sspec, ServiceSpec):
                continue
            svc_dir = path[: -len("/service.json")]
            config = common.parse_config(files.get(f"{svc_dir}/config.yaml"))
            st = status.get(sspec.service) or {}
            running = common.is_running(ServiceStatus.from_dict(st)) if st else False
            out.append(Observed(
                spec=common.observed_service(sspec, config, running),
                id=f"{host.address}:{svc_dir}", owner=sowner,
                power=PowerState.ON if running else PowerState.OFF))
        return out

    def _observe_machine(self, machine: str) -> list[Observed]:
        return self._observe_host(machine, self._session(machine).snapshot())

    def list_owned(self, site: str) -> list[Observed]:
        """The site's records here, and the marks on every configured host (read in parallel)."""
        out: list[Observed] = []
        base = self.records / site.replace("/", "--")
        for sub in ("networks", "storage"):
            for path in sorted((base / sub).glob("*.json")):
                obs = self._read_record(path)
                if obs is not None:
                    out.append(obs)
        machines = sorted(self.settings.hosts)
        if machines:
            with ThreadPoolExecutor(max_workers=min(16, len(machines))) as pool:
                for found in pool.map(self._observe_machine, machines):
                    out.extend(found)
        return [o for o in out if o.owner is not None and o.owner.site == site]

    def read(self, spec: Spec) -> Observed | None:
        """The marked object where ``spec`` would live (any site)."""
        if isinstance(spec, NetworkSpec | StorageSpec):
            if not self.records.is_dir():
                return None
            for site_dir in sorted(self.records.iterdir()):
                obs = self._read_record(self._record_path(site_dir.name, spec))
                if obs is not None:
                    return obs
            return None
        machine = spec.name if isinstance(spec, MachineSpec) else common.machine_name_of(spec)
        if self.settings.host(machine) is None:
            return None
        for obs in self._observe_machine(machine):
            if type(obs.spec) is type(spec) and obs.spec.address == spec.address:
                return obs
        return None

    # -- planning -----------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The mark ``create`` would write, and where (host and path)."""
        params: dict[str, Any] = {}
        if isinstance(spec, NetworkSpec | StorageSpec):
            params["path"] = str(self._record_path(owner.site, spec))
        else:
            machine = spec.name if isinstance(spec, MachineSpec) else common.machine_name_of(spec)
            host = self._host(machine)
            params["host"] = host.describe()
            if isinstance(spec, ServiceSpec):
                params["path"] = f"{host.service_dir(spec.service)}/service.json"
                params["config_path"] = f"{host.service_dir(spec.service)}/config.yaml"
            else:
                params["path"] = host.machine_mark
        return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1), params)

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        """Records and configs change in place; a service's identity forces a replace."""
        return common.classify(spec, field_name)

    def check(self, spec: Spec) -> list[str]:
        """Every machine needs a host entry; only archive and router services run."""
        if isinstance(spec, MachineSpec) and self.settings.host(spec.name) is None:
            return [f"{spec.address}: machine {spec.name} has no host in provider.static.hosts"]
        return common.check_runnable(spec, "static")

    # -- acting -------------------------------------------------------------------------
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Record a no-op; mark a host; or install, configure, start and check a service."""
        if isinstance(spec, NetworkSpec | StorageSpec):
            path = self._record_path(owner.site, spec)
            write_atomic(path, encode_mark(spec, owner, MARK_FORMAT))
            obs = self._read_record(path)
        elif isinstance(spec, MachineSpec):
            obs = self._create_machine(spec, owner)
        else:
            obs = self._create_service(spec, owner)
        assert obs is not None
        return obs

    def _create_machine(self, spec: MachineSpec, owner: Ownership) -> Observed:
        session = self._session(spec.name)
        host = session.settings
        found = session.read_mark(host.machine_mark)
        if found is not None and found[1] is not None and (
                found[1].site, found[1].address) != (owner.site, owner.address):
            other = found[1]
            raise AlreadyExists(f"{host.describe()}: {host.root} already belongs to "
                                f"{other.address} of site {other.site}")
        self._check_mounts(session, spec)
        session.check(["mkdir", "-p", "-m", "0750", "--", host.root, f"{host.root}/data",
                       host.run_dir, host.services_dir], 30, what=f"creating {host.root}")
        session.write_mark(host.machine_mark, spec, owner)
        # Installed here too, not only before a service starts: machines are created in
        # parallel, so every host installs at once instead of one dependency layer at a time.
        self._ensure_installed(session)
        return self._find(spec)

    @staticmethod
    def _check_mounts(session: HostSession, spec: MachineSpec) -> None:
        """Every disk the blueprint mounts must be mounted on the host: the services' data
        goes there (deploy/services.py), and a missing mount would silently put it on
        the root file system instead."""
        mounted = [(d.name, d.mount) for d in spec.disks if d.mount]
        if not mounted:
            return
        probe = ("import os, sys\n"
                 "print('\\n'.join(p for p in sys.argv[1:] if not os.path.ismount(p)))")
        res = session.check([session.settings.python, "-c", probe,
                             *(m for _, m in mounted)], 30, what="looking at the disks' mounts")
        missing = {ln for ln in res.stdout.splitlines() if ln}
        if missing:
            names = ", ".join(f"disk {n!r} at {m}" for n, m in mounted if m in missing)
            raise DeployError(
                f"{session.settings.describe()}: nothing is mounted where the blueprint mounts "
                f"{names}; mount the disk there first (the services' data would otherwise land "
                "on the root file system), or leave out its mount:")

    def _find(self, spec: MachineSpec | ServiceSpec) -> Observed:
        obs = self.read(spec)
        if obs is None:
            raise DeployError(f"{spec.address}: its mark is not readable right after writing it")
        return obs

    def _create_service(self, spec: ServiceSpec, owner: Ownership) -> Observed:
        svc = self._service(spec)
        self._ensure_installed(svc.session)
        # The mark first: a create killed after this is adopted (and fixed) by the next plan.
        svc.session.check(["mkdir", "-p", "-m", "0750", "--", svc.dir], 30,
                          what=f"creating {svc.dir}")
        svc.session.write_mark(svc.mark_path, spec, owner)
        try:
            svc.deploy(restart=True, health_timeout=self.health_timeout)
        except BaseException:
            with contextlib.suppress(DeployError):
                svc.remove_files()
            raise
        return self._find(spec)

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Rewrite the record; a service gets its new config and is restarted (only it)."""
        owner = observed.owner
        assert owner is not None, "the engine only updates marked objects"
        if isinstance(spec, NetworkSpec | StorageSpec):
            return self.create(spec, owner)
        if isinstance(spec, MachineSpec):
            session = self._session(spec.name)
            self._check_mounts(session, spec)
            session.write_mark(session.settings.machine_mark, spec, owner)
            return self._find(spec)
        svc = self._service(spec)
        self._ensure_installed(svc.session)
        svc.session.write_mark(svc.mark_path, spec, owner)
        svc.deploy(restart=True, health_timeout=self.health_timeout)
        return self._find(spec)

    def delete(self, observed: Observed) -> None:
        """A service: stop, remove config and mark (data kept). A machine: stop everything
        pacsinfra runs on the host, remove its files except ``data/``. A record: remove it."""
        spec = observed.spec
        if isinstance(spec, NetworkSpec | StorageSpec):
            site = observed.owner.site if observed.owner else ""
            if not site:
                return
            path = self._record_path(site, spec)
            path.unlink(missing_ok=True)
            for d in (path.parent, path.parent.parent):
                with contextlib.suppress(OSError):
                    d.rmdir()
            return
        if isinstance(spec, ServiceSpec):
            svc = self._service(spec)
            svc.stop()
            svc.remove_files()
            return
        if self.settings.host(spec.name) is None:
            return  # the host entry is gone from the blueprint: nothing to reach
        self._delete_machine(self._session(spec.name))

    def _delete_machine(self, session: HostSession) -> None:
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

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """A static machine's address is its host's."""
        spec = observed.spec
        machine = spec.name if isinstance(spec, MachineSpec) else ""
        return self._host(machine).address

    # -- the pacsinfra wheel -------------------------------------------------------------
    def _built_wheel(self) -> wheels.BuiltWheel:
        """The wheel to install: ``provider.static.wheel``, else built once from this checkout."""
        with self._wheel_lock:
            if self._wheel is None:
                if self.settings.wheel:
                    self._wheel = wheels.inspect_wheel(Path(self.settings.wheel).expanduser())
                else:
                    import pacsinfra

                    checkout = Path(pacsinfra.__file__).resolve().parents[1]
                    if not (checkout / "pyproject.toml").exists():
                        raise DeployError(
                            "pacsinfra does not run from a checkout, so it cannot build the "
                            "wheel to install on the hosts; set provider.static.wheel to a "
                            "pacsinfra wheel file")
                    self._tmp = tempfile.TemporaryDirectory(prefix="pacsinfra-static-")
                    self._wheel = wheels.build_wheel(checkout, Path(self._tmp.name))
            return self._wheel

    def _ensure_installed(self, session: HostSession) -> None:
        """pacsinfra in ``<root>/venv`` on the host (a no-op when it holds this wheel already)."""
        built = self._built_wheel()
        host = session.settings
        with session.install_lock:
            if session.installed == built.content_hash:
                return
            wheels.install_wheel(
                session.transport, built, host.venv, python=host.python,
                no_deps=host.system_site_packages, find_links=host.find_links,
                system_site_packages=host.system_site_packages,
            )
            session.installed = built.content_hash
