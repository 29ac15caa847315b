"""The service steps on hosts reached over SSH, whoever provides the hosts.

The ``static`` provider's hosts and the machines a hypervisor driver makes run their
services the same way: :class:`RemoteServices` carries out every
:class:`~pacsinfra.specs.ServiceSpec` step on the host that is the service's machine —
pacsinfra's wheel in ``<root>/venv``, the mark ``<root>/services/<svc>/service.json``,
the config (0640), a systemd unit where the host's PID 1 is systemd (else the
supervisor; ``deploy.init``), a C-ECHO from here and a router's destinations checked
from there (:class:`~pacsinfra.services.remote.service.RemoteService`). Where the host
is and whether it is up is a :class:`HostSource`'s business.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from pacsinfra.errors import DeployError
from pacsinfra.services import common
from pacsinfra.services.remote.observe import observe_host
from pacsinfra.services.remote.service import RemoteService, init_choice
from pacsinfra.services.remote.session import HostSession
from pacsinfra.services.settings import DEFAULT_START_TIMEOUT
from pacsinfra.specs import (
    ChangeKind,
    Observed,
    Ownership,
    Rendered,
    ServiceSpec,
    Spec,
    spec_to_dict,
)


class HostSource(Protocol):
    """Where the hosts of a site are and how to get a session to one."""

    #: the provider's name, for messages and the config file's header
    provider: str

    def session(self, machine: str, *, wait: bool) -> HostSession | None:
        """The session to the host that is ``machine``; None when it is not reachable now
        (``wait`` False: not up, host key not known yet) or not there at all."""
        ...

    def prepare(self, machine: str, owner: Ownership, address: str) -> HostSession:
        """A session ready for a service step: the host up, pacsinfra's root marked as
        ``address`` of ``owner.site``, pacsinfra installed. Raises DeployError."""
        ...

    def scanned(self, site: str, machines: Sequence[Observed] | None) -> list[str]:
        """The machines whose hosts may hold ``site``'s services (``machines``: the site's
        machines as just listed, when the caller has them)."""
        ...

    def snapshot(self, machine: str, session: HostSession) -> dict[str, Any]:
        """The host's marks and service status (one round trip; cached while listing)."""
        ...

    def root(self, machine: str) -> str:
        """pacsinfra's directory on ``machine``'s host (known without connecting)."""
        ...

    def listing(self) -> contextlib.AbstractContextManager[None]:
        """A scope in which one snapshot per host serves every reader."""
        ...

    def forget(self, machine: str) -> None:
        """Drop the session of a machine that was deleted."""
        ...

    def close(self) -> None:
        """Close every session."""
        ...


class RemoteServices:
    """Every ServiceSpec step of a site whose machines are hosts reached over SSH."""

    def __init__(self, source: HostSource, init: str = "auto") -> None:
        self.source = source
        self.init = init_choice(init)
        self.health_timeout = DEFAULT_START_TIMEOUT  # deploy.start_timeout

    @property
    def provider(self) -> str:
        return self.source.provider

    @property
    def remote(self) -> bool:
        return True

    def close(self) -> None:
        self.source.close()

    def forget(self, machine: str) -> None:
        self.source.forget(machine)

    def listing(self) -> contextlib.AbstractContextManager[None]:
        return self.source.listing()

    # -- planning ----------------------------------------------------------------------
    def check(self, spec: ServiceSpec) -> list[str]:
        """Service kinds and settings these hosts cannot run (plan time, pure)."""
        return common.check_runnable(spec, self.provider)

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        return common.classify(spec, field_name)

    def render(self, spec: ServiceSpec, owner: Ownership) -> Rendered:
        """The mark ``create`` writes and where (host, paths under the host's root)."""
        machine = common.machine_name_of(spec)
        root = self.source.root(machine)
        params = {"host": spec.host, "machine": machine,
                  "path": f"{root}/services/{spec.service}/service.json",
                  "config_path": f"{root}/services/{spec.service}/config.yaml"}
        return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1), params)

    # -- reading -------------------------------------------------------------------------
    def _services_on(self, machine: str) -> list[Observed]:
        session = self.source.session(machine, wait=False)
        if session is None:
            return []
        _, services = observe_host(session.settings, self.source.snapshot(machine, session))
        return services

    def read(self, spec: ServiceSpec) -> Observed | None:
        for obs in self._services_on(common.machine_name_of(spec)):
            if obs.spec.address == spec.address:
                return obs
        return None

    def list_owned(self, site: str, machines: Sequence[Observed] | None = None) -> list[Observed]:
        """The site's services on every host that may hold them (hosts read one by one:
        a host that is down has nothing to report)."""
        out: list[Observed] = []
        for machine in self.source.scanned(site, machines):
            out += [o for o in self._services_on(machine)
                    if o.owner is not None and o.owner.site == site]
        return out

    # -- acting --------------------------------------------------------------------------
    def _service(self, spec: ServiceSpec, session: HostSession) -> RemoteService:
        return RemoteService(session, spec, self.init, self.provider)

    def runner(self, site: str, spec: ServiceSpec) -> RemoteService | None:
        """The deployed service, to run commands where it runs (None: its host is not
        reachable now)."""
        session = self.source.session(common.machine_name_of(spec), wait=False)
        return None if session is None else self._service(spec, session)

    def _find(self, spec: ServiceSpec) -> Observed:
        obs = self.read(spec)
        if obs is None:
            raise DeployError(f"{spec.address}: its mark is not readable right after writing it")
        return obs

    def create(self, spec: ServiceSpec, owner: Ownership) -> Observed:
        """Install, configure, start and check the service; undone when it fails."""
        session = self.source.prepare(common.machine_name_of(spec), owner, spec.machine)
        svc = self._service(spec, session)
        # The mark first: a create killed after this is adopted (and fixed) by the next plan.
        # (a host prepared by an older pacsinfra gets today's modes)
        session.hand_over([svc.dir])
        session.write_mark(svc.mark_path, spec, owner)
        try:
            svc.deploy(restart=True, health_timeout=self.health_timeout)
        except BaseException:
            with contextlib.suppress(DeployError):
                svc.remove_files()
            raise
        return self._find(spec)

    def update(self, spec: ServiceSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        """The new config, and a restart of this service only."""
        assert observed.owner is not None, "the engine only updates marked objects"
        session = self.source.prepare(common.machine_name_of(spec), observed.owner, spec.machine)
        svc = self._service(spec, session)
        session.write_mark(svc.mark_path, spec, observed.owner)
        svc.deploy(restart=True, health_timeout=self.health_timeout)
        return self._find(spec)

    def delete(self, observed: Observed) -> None:
        """Stop it, remove its config and mark; its data stays. A host that is gone (or
        down) took the service with it."""
        spec = observed.spec
        assert isinstance(spec, ServiceSpec)
        session = self.source.session(common.machine_name_of(spec), wait=False)
        if session is None:
            return
        svc = self._service(spec, session)
        svc.stop()
        svc.remove_files()


class Snapshots:
    """Host snapshots, each taken once while a listing is under way (a plan reads a host's
    machine and its services from the same snapshot), fresh otherwise."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, Any]] | None = None

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        outer = self._cache is not None
        if not outer:
            self._cache = {}
        try:
            yield
        finally:
            if not outer:
                self._cache = None

    def get(self, machine: str, session: HostSession) -> dict[str, Any]:
        cache = self._cache
        if cache is not None and machine in cache:
            return cache[machine]
        snap = session.snapshot()
        if cache is not None:
            cache[machine] = snap
        return snap
