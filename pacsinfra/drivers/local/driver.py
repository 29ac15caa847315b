"""The ``local`` driver: the machine running pacsinfra is the single host.

- Networks and storage classes are no-ops, recorded as marks (``networks/<name>.json``,
  ``storage/<name>.json``) so they show in plans and state like on any hypervisor.
- A machine is a directory ``machines/<name>/`` whose ``machine.json`` carries the
  ownership mark and the spec as recorded; adoption and orphan deletion work as with
  the other drivers. Changing a machine field only rewrites the record (in place).
- A service (:class:`ServiceSpec`) is a config file under the machine directory plus a
  supervised process (:mod:`pacsinfra.drivers.local.process`). Create = write config,
  start, C-ECHO health check; a config change restarts that service only; delete =
  stop and remove config and mark, keeping the data. What is observed is the config
  file as it is on disk and whether a supervisor runs the service, so a hand-edited
  config or a dead process shows in the plan.

Layout and root directory: :mod:`pacsinfra.drivers.local.paths`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

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
from pacsinfra.drivers.local import paths
from pacsinfra.drivers.local.marks import read_mark, write_mark
from pacsinfra.drivers.local.process import ServiceProcess
from pacsinfra.errors import DeployError


class LocalDriver(Driver):
    """Machines are directories on this box; services run under the pacsinfra supervisor."""

    name: ClassVar[str] = "local"

    def __init__(self, config: Any, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self.root = paths.local_root(config)
        self.health_timeout = 60.0
        # machine address -> name, learnt from the specs seen (services live in their machine dir)
        self._machine_names: dict[str, str] = {}

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> None:
        """Nothing to connect to; the root directory is created on first write."""

    def close(self) -> None:
        """Nothing to release."""

    # -- paths --------------------------------------------------------------------------
    def _site(self, owner_or_site: Ownership | str) -> str:
        return owner_or_site.site if isinstance(owner_or_site, Ownership) else owner_or_site

    def _mark_path(self, site: str, spec: Spec) -> Path:
        base = paths.site_dir(self.root, site)
        if isinstance(spec, NetworkSpec):
            return base / "networks" / f"{spec.name}.json"
        if isinstance(spec, StorageSpec):
            return base / "storage" / f"{spec.name}.json"
        if isinstance(spec, MachineSpec):
            return paths.machine_dir(self.root, site, spec.name) / "machine.json"
        return self._process(site, spec).mark_path

    def _machine_name(self, spec: ServiceSpec) -> str:
        return common.machine_name_of(spec, self._machine_names)

    def _process(self, site: str, spec: ServiceSpec) -> ServiceProcess:
        return ServiceProcess(self.root, site, self._machine_name(spec), spec)

    def _sites_of(self, spec: Spec) -> list[str]:
        """Site directories that hold a mark for ``spec`` (read has no site argument)."""
        if not self.root.is_dir():
            return []
        return [d.name.replace("--", "/") for d in sorted(self.root.iterdir()) if d.is_dir()]

    # -- reading ------------------------------------------------------------------------
    def _observe(self, site: str, path: Path) -> Observed | None:
        found = read_mark(path)
        if found is None:
            return None
        spec, owner = found
        if isinstance(spec, ServiceSpec):
            proc = self._process(site, spec)
            on_disk = proc.read_config()
            running = proc.running()
            spec = common.observed_service(spec, on_disk, running)
            power = PowerState.ON if running else PowerState.OFF
        else:
            power = PowerState.ON
        return Observed(spec=spec, id=str(path.parent if isinstance(spec, MachineSpec | ServiceSpec)
                                          else path), owner=owner, power=power)

    def list_owned(self, site: str) -> list[Observed]:
        """Every mark under the site's directory."""
        base = paths.site_dir(self.root, site)
        found: list[Path] = []
        for sub in ("networks", "storage"):
            found += sorted((base / sub).glob("*.json"))
        for mdir in sorted((base / "machines").glob("*")):
            found.append(mdir / "machine.json")
            found += sorted((mdir / "services").glob("*/service.json"))
        out = []
        for path in found:
            obs = self._observe(site, path)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        return out

    def read(self, spec: Spec) -> Observed | None:
        """The marked object at the place ``spec`` would live, in any site directory."""
        for site in self._sites_of(spec):
            obs = self._observe(site, self._mark_path(site, spec))
            if obs is not None:
                return obs
        return None

    # -- planning -----------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The mark file (and for a service, its config) ``create`` would write."""
        import json

        params: dict[str, Any] = {"path": str(self._mark_path(owner.site, spec))}
        if isinstance(spec, ServiceSpec):
            params["config_path"] = str(self._process(owner.site, spec).config_path)
        return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1), params)

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        """Records and configs change in place; a service's identity forces a replace."""
        return common.classify(spec, field_name)

    def check(self, spec: Spec) -> list[str]:
        """Only archive and router services can run on the local provider today."""
        return common.check_runnable(spec, "local")

    # -- acting -------------------------------------------------------------------------
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Write the mark; for a service also config + start + health check (undone on failure)."""
        site = owner.site
        path = self._mark_path(site, spec)
        if isinstance(spec, MachineSpec):
            mdir = path.parent
            for sub in ("data", "run", "services"):
                (mdir / sub).mkdir(parents=True, exist_ok=True)
        if isinstance(spec, ServiceSpec):
            proc = self._process(site, spec)
            if not proc.cwd.is_dir():
                raise DeployError(f"{spec.address}: machine directory {proc.cwd} does not exist")
            # The mark first: a create killed after this is adopted (and fixed) by the next plan.
            write_mark(path, spec, owner)
            try:
                proc.deploy(restart=True, health_timeout=self.health_timeout)
            except BaseException:
                with contextlib.suppress(OSError):
                    proc.config_path.unlink()
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
        else:
            write_mark(path, spec, owner)
        obs = self._observe(site, path)
        assert obs is not None
        return obs

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Rewrite the record; a service gets its new config and is restarted (only it)."""
        owner = observed.owner
        assert owner is not None, "the engine only updates marked objects"
        site = owner.site
        path = self._mark_path(site, spec)
        write_mark(path, spec, owner)
        if isinstance(spec, ServiceSpec):
            self._process(site, spec).deploy(restart=True, health_timeout=self.health_timeout)
        obs = self._observe(site, path)
        assert obs is not None
        return obs

    def delete(self, observed: Observed) -> None:
        """Remove the object: a service is stopped and loses config and mark (data kept);
        a machine directory goes with everything in it (its services are stopped first)."""
        spec = observed.spec
        site = observed.owner.site if observed.owner else ""
        if not site:
            return
        path = self._mark_path(site, spec)
        if isinstance(spec, ServiceSpec):
            proc = self._process(site, spec)
            proc.stop()
            with contextlib.suppress(FileNotFoundError):
                proc.config_path.unlink()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):
                proc.dir.rmdir()
            return
        if isinstance(spec, MachineSpec):
            mdir = path.parent
            run = mdir / "run"
            if run.is_dir():
                from pacsinfra.deploy import supervisor

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
            with contextlib.suppress(OSError):
                mdir.rmdir()
            self._prune(site, mdir.parent)
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._prune(site, path.parent)

    def _prune(self, site: str, directory: Path) -> None:
        """Remove ``directory`` and then the site directory when they became empty."""
        for d in (directory, paths.site_dir(self.root, site)):
            with contextlib.suppress(OSError):
                d.rmdir()

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """Every local machine is this box."""
        return "127.0.0.1"
