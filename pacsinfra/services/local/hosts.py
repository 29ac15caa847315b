"""The ``local`` provider: the machine running pacsinfra is the single host.

- Networks and storage classes are no-op records (``networks/<name>.json``,
  ``storage/<name>.json`` under the site's directory), so they show in plans and state
  like on any hypervisor.
- A machine is a directory ``machines/<name>/`` whose ``machine.json`` carries the
  ownership mark and the spec as recorded; adoption and orphan deletion work as with
  the other providers. Changing a machine field only rewrites the record (in place).
- Its services are :class:`LocalServices` steps: a config file under the machine
  directory plus a supervised process (:mod:`pacsinfra.services.local.process`).
  Create = write config, start, C-ECHO health check; a config change restarts that
  service only; delete = stop and remove config and mark, keeping the data. What is
  observed is the config file as it is on disk and whether a supervisor runs the
  service, so a hand-edited config or a dead process shows in the plan.

Layout and root directory: :mod:`pacsinfra.services.local.paths`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pacsinfra.drivers.base import Driver
from pacsinfra.errors import DeployError
from pacsinfra.services import common, supervisor
from pacsinfra.services.local import paths
from pacsinfra.services.local.process import ServiceProcess
from pacsinfra.services.marks import MARK_FORMAT, read_mark, write_mark
from pacsinfra.services.records import Records
from pacsinfra.services.settings import DEFAULT_START_TIMEOUT
from pacsinfra.specs import (
    ChangeKind,
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


class LocalHosts(Driver):
    """Machines are directories on this box; networks and storage are records."""

    name: ClassVar[str] = "local"

    def __init__(self, config: Any, *, client: Any = None, deploy: Any = None) -> None:
        super().__init__(config, client=client)
        self.root = paths.local_root(config)
        self.records = Records(self.root, MARK_FORMAT)

    def connect(self) -> None:
        """Nothing to connect to; the root directory is created on first write."""

    def close(self) -> None:
        """Nothing to release."""

    @staticmethod
    def layout(settings: Any, deploy: Any, site: str) -> paths.LocalLayout:
        """Where the services' files go, for rendering their configs at plan time."""
        return paths.LocalLayout(paths.local_root(settings), site)

    def service_steps(self) -> LocalServices:
        """The service steps on this box."""
        return LocalServices(self.root)

    def _mark_path(self, site: str, spec: MachineSpec) -> Path:
        return paths.machine_dir(self.root, site, spec.name) / "machine.json"

    def _observe(self, path: Path) -> Observed | None:
        found = read_mark(path)
        if found is None:
            return None
        spec, owner = found
        return Observed(spec=spec, id=str(path.parent), owner=owner, power=PowerState.ON)

    # -- reading ------------------------------------------------------------------------
    def list_owned(self, site: str) -> list[Observed]:
        """Every record and machine mark under the site's directory."""
        out = self.records.list(site)
        for mdir in sorted((paths.site_dir(self.root, site) / "machines").glob("*")):
            obs = self._observe(mdir / "machine.json")
            if obs is not None:
                out.append(obs)
        return [o for o in out if o.owner is not None and o.owner.site == site]

    def read(self, spec: Spec) -> Observed | None:
        """The marked object at the place ``spec`` would live, in any site directory."""
        if isinstance(spec, NetworkSpec | StorageSpec):
            return self.records.find(spec)
        assert isinstance(spec, MachineSpec)
        for site in _sites(self.root):
            obs = self._observe(self._mark_path(site, spec))
            if obs is not None:
                return obs
        return None

    # -- planning -----------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The mark file ``create`` would write."""
        if isinstance(spec, NetworkSpec | StorageSpec):
            path = self.records.path(owner.site, spec)
        else:
            assert isinstance(spec, MachineSpec)
            path = self._mark_path(owner.site, spec)
        return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1),
                        {"path": str(path)})

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        """Records change in place; a name forces a replace."""
        return common.classify(spec, field_name)

    # -- acting -------------------------------------------------------------------------
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Write the record, or the machine's directory and mark."""
        if isinstance(spec, NetworkSpec | StorageSpec):
            return self.records.write(spec, owner)
        assert isinstance(spec, MachineSpec)
        path = self._mark_path(owner.site, spec)
        for sub in ("data", "run", "services"):
            (path.parent / sub).mkdir(parents=True, exist_ok=True)
        write_mark(path, spec, owner)
        obs = self._observe(path)
        assert obs is not None
        return obs

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Rewrite the record."""
        assert observed.owner is not None, "the engine only updates marked objects"
        return self.create(spec, observed.owner)

    def delete(self, observed: Observed) -> None:
        """A record goes; a machine directory goes with everything in it (its services are
        stopped first)."""
        spec = observed.spec
        site = observed.owner.site if observed.owner else ""
        if not site:
            return
        if isinstance(spec, NetworkSpec | StorageSpec):
            self.records.delete(site, spec)
            return
        assert isinstance(spec, MachineSpec)
        path = self._mark_path(site, spec)
        mdir = path.parent
        run = mdir / "run"
        if run.is_dir():
            for lock in run.glob("*.lock"):
                supervisor.stop(run, lock.name[: -len(".lock")])
        # the mark last: a delete killed half-way leaves a marked machine, deleted next time
        for child in sorted(mdir.iterdir()) if mdir.is_dir() else []:
            if child.name != "machine.json":
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for d in (mdir, mdir.parent, paths.site_dir(self.root, site)):
            with contextlib.suppress(OSError):
                d.rmdir()

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """Every local machine is this box."""
        return "127.0.0.1"


def _sites(root: Path) -> list[str]:
    """The sites with a directory under ``root``."""
    if not root.is_dir():
        return []
    return [d.name.replace("--", "/") for d in sorted(root.iterdir()) if d.is_dir()]


class LocalServices:
    """Every ServiceSpec step of a site on this box."""

    provider = "local"
    remote = False  # every service runs on this box

    def __init__(self, root: Path) -> None:
        self.root = root
        self.health_timeout = DEFAULT_START_TIMEOUT  # deploy.start_timeout

    def _process(self, site: str, spec: ServiceSpec) -> ServiceProcess:
        return ServiceProcess(self.root, site, common.machine_name_of(spec), spec)

    def runner(self, site: str, spec: ServiceSpec) -> ServiceProcess:
        """The deployed service, to run commands where it runs (this box)."""
        return self._process(site, spec)

    def _observe(self, site: str, path: Path) -> Observed | None:
        found = read_mark(path)
        if found is None or not isinstance(found[0], ServiceSpec):
            return None
        spec, owner = found
        assert isinstance(spec, ServiceSpec)
        proc = self._process(site, spec)
        running = proc.running()
        return Observed(spec=common.observed_service(spec, proc.read_config(), running),
                        id=str(path.parent), owner=owner,
                        power=PowerState.ON if running else PowerState.OFF)

    def close(self) -> None:
        """Nothing to release."""

    def forget(self, machine: str) -> None:
        """Nothing cached per machine."""

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        yield

    def check(self, spec: ServiceSpec) -> list[str]:
        return common.check_runnable(spec, "local")

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        return common.classify(spec, field_name)

    def render(self, spec: ServiceSpec, owner: Ownership) -> Rendered:
        """The mark and config ``create`` would write."""
        proc = self._process(owner.site, spec)
        return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1),
                        {"path": str(proc.mark_path), "config_path": str(proc.config_path)})

    def read(self, spec: ServiceSpec) -> Observed | None:
        for site in _sites(self.root):
            obs = self._observe(site, self._process(site, spec).mark_path)
            if obs is not None:
                return obs
        return None

    def list_owned(self, site: str, machines: Sequence[Observed] | None = None) -> list[Observed]:
        out = []
        for path in sorted((paths.site_dir(self.root, site) / "machines").glob(
                "*/services/*/service.json")):
            obs = self._observe(site, path)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        return out

    def create(self, spec: ServiceSpec, owner: Ownership) -> Observed:
        """Config + start + health check (undone on failure)."""
        proc = self._process(owner.site, spec)
        if not proc.cwd.is_dir():
            raise DeployError(f"{spec.address}: machine directory {proc.cwd} does not exist")
        # The mark first: a create killed after this is adopted (and fixed) by the next plan.
        write_mark(proc.mark_path, spec, owner)
        try:
            proc.deploy(restart=True, health_timeout=self.health_timeout)
        except BaseException:
            with contextlib.suppress(OSError):
                proc.config_path.unlink()
            with contextlib.suppress(OSError):
                proc.mark_path.unlink()
            raise
        obs = self._observe(owner.site, proc.mark_path)
        assert obs is not None
        return obs

    def update(self, spec: ServiceSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        """The new config, and a restart of this service only."""
        owner = observed.owner
        assert owner is not None, "the engine only updates marked objects"
        proc = self._process(owner.site, spec)
        write_mark(proc.mark_path, spec, owner)
        proc.deploy(restart=True, health_timeout=self.health_timeout)
        obs = self._observe(owner.site, proc.mark_path)
        assert obs is not None
        return obs

    def delete(self, observed: Observed) -> None:
        """Stop it and remove its config and mark; its data stays."""
        spec = observed.spec
        assert isinstance(spec, ServiceSpec)
        site = observed.owner.site if observed.owner else ""
        if not site:
            return
        proc = self._process(site, spec)
        proc.stop()
        for f in (proc.config_path, proc.mark_path):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        with contextlib.suppress(OSError):
            proc.dir.rmdir()
