"""The services layer as the engine sees it: one driver for a whole site.

The engine plans and applies resources of four kinds through one
:class:`~pacsinfra.drivers.base.Driver`. :class:`SiteDriver` is that driver: networks,
storage and machines go to the provider (a hypervisor driver, or the ``local`` /
``static`` hosts), services to the :class:`ServiceSteps` for that provider's machines:

- ``local``: supervised processes on this box;
- ``static``: remote services on the configured hosts, over the provider's sessions;
- kvm, vsphere, hyperv: remote services on the machines the driver makes, reached
  through its :class:`~pacsinfra.drivers.base.MachinePort` with the site's ``deploy``
  login — only when that login is given (else the site's machines are made and its
  services are not deployed; ``validate`` warns).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from pacsinfra.drivers.base import Driver
from pacsinfra.drivers.declaration import Declaration
from pacsinfra.errors import DeployError, UsageError
from pacsinfra.services.guest import GuestSource
from pacsinfra.services.remote.services import RemoteServices
from pacsinfra.services.remote.session import HostSession
from pacsinfra.services.runner import ServiceRunner
from pacsinfra.services.settings import DeployConfig
from pacsinfra.specs import (
    ChangeKind,
    MachineSpec,
    Observed,
    Ownership,
    Rendered,
    ServiceSpec,
    Spec,
)


class ServiceSteps(Protocol):
    """The ServiceSpec steps of one kind of host."""

    #: seconds a started service may take to answer its first health check
    health_timeout: float

    @property
    def provider(self) -> str: ...

    @property
    def remote(self) -> bool:
        """Whether the services run on other hosts, reached over SSH (not on this box)."""
        ...

    def check(self, spec: ServiceSpec) -> list[str]: ...
    def render(self, spec: ServiceSpec, owner: Ownership) -> Rendered: ...
    def classify(self, spec: Spec, field_name: str) -> ChangeKind: ...
    def read(self, spec: ServiceSpec) -> Observed | None: ...
    def list_owned(self, site: str, machines: Sequence[Observed] | None = None) -> list[Observed]: ...
    def create(self, spec: ServiceSpec, owner: Ownership) -> Observed: ...
    def update(self, spec: ServiceSpec, observed: Observed, fields: Sequence[str]) -> Observed: ...
    def delete(self, observed: Observed) -> None: ...
    def forget(self, machine: str) -> None: ...
    def runner(self, site: str, spec: ServiceSpec) -> ServiceRunner | None: ...
    def listing(self) -> contextlib.AbstractContextManager[None]: ...
    def close(self) -> None: ...


def service_steps(provider: Driver, decl: Declaration, deploy: DeployConfig, *,
                  expected_hosts: int = 1) -> ServiceSteps | None:
    """How services run on ``provider``'s machines; None when they cannot (no login)."""
    own = getattr(provider, "service_steps", None)
    steps: ServiceSteps
    if callable(own):  # the local and static hosts run their services themselves
        steps = own()
    else:
        port = provider.machine_port()
        if port is None or decl.reach is None or not deploy.has_key:
            return None
        source = GuestSource(decl.name, port, decl.reach, deploy, expected_hosts=expected_hosts)
        steps = RemoteServices(source, deploy.init)
    steps.health_timeout = deploy.start_timeout
    return steps


class SiteDriver(Driver):
    """A provider's infrastructure and the services on its machines, as one driver."""

    name: ClassVar[str] = "site"

    def __init__(self, provider: Driver, services: ServiceSteps | None, *,
                 owns_provider: bool = True) -> None:
        super().__init__(provider.config)
        self.provider = provider
        self.services = services
        self.owns_provider = owns_provider  # False: the caller connects and closes it
        self.name = provider.name  # type: ignore[misc]  # messages name the real provider
        self.capabilities = provider.capabilities  # type: ignore[misc]

    def _steps(self, spec: Spec) -> ServiceSteps:
        if self.services is None:
            raise DeployError(f"{spec.address}: the {self.provider.name} machines have no way "
                              "to run services (set deploy: user, key_file, host_keys)")
        return self.services

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> None:
        if self.owns_provider:
            self.provider.connect()

    def close(self) -> None:
        if self.services is not None:
            self.services.close()
        if self.owns_provider:
            self.provider.close()

    # -- reading ------------------------------------------------------------------------
    def list_owned(self, site: str) -> list[Observed]:
        if self.services is None:
            return self.provider.list_owned(site)
        with self.services.listing():
            found = self.provider.list_owned(site)
            machines = [o for o in found if isinstance(o.spec, MachineSpec)]
            return found + self.services.list_owned(site, machines)

    def read(self, spec: Spec) -> Observed | None:
        if isinstance(spec, ServiceSpec):
            return self._steps(spec).read(spec)
        return self.provider.read(spec)

    # -- planning -----------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        if isinstance(spec, ServiceSpec):
            return self._steps(spec).render(spec, owner)
        return self.provider.render(spec, owner)

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        if isinstance(spec, ServiceSpec):
            return self._steps(spec).classify(spec, field_name)
        return self.provider.classify(spec, field_name)

    def classify_change(self, spec: Spec, observed: Observed, field_name: str) -> ChangeKind:
        if isinstance(spec, ServiceSpec):
            return self._steps(spec).classify(spec, field_name)
        return self.provider.classify_change(spec, observed, field_name)

    def check(self, spec: Spec) -> list[str]:
        if isinstance(spec, ServiceSpec):
            if self.services is None:
                return [f"{spec.address}: the {self.provider.name} machines have no way to run "
                        "services: set deploy (user, key_file, host_keys or known_hosts)"]
            return self.services.check(spec)
        return self.provider.check(spec)

    # -- acting -------------------------------------------------------------------------
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        if isinstance(spec, ServiceSpec):
            return self._steps(spec).create(spec, owner)
        return self.provider.create(spec, owner)

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        if isinstance(spec, ServiceSpec):
            return self._steps(spec).update(spec, observed, fields)
        return self.provider.update(spec, observed, fields)

    def delete(self, observed: Observed) -> None:
        spec = observed.spec
        if isinstance(spec, ServiceSpec):
            self._steps(spec).delete(observed)
            return
        self.provider.delete(observed)
        if isinstance(spec, MachineSpec) and self.services is not None:
            self.services.forget(spec.name)

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        return self.provider.wait_for_address(observed, timeout=timeout)

    def machine_port(self) -> Any:
        return self.provider.machine_port()

    # -- hosts, for work between steps (dr rebuild) ---------------------------------------
    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> HostSession:
        """The SSH session to ``machine``'s host (a static host, or a running VM)."""
        own = getattr(self.provider, "host_session", None)
        if callable(own):
            session: HostSession = own(machine, with_pacsinfra=with_pacsinfra)
            return session
        source = getattr(self.services, "source", None)
        if isinstance(source, GuestSource):
            return source.host_session(machine, with_pacsinfra=with_pacsinfra)
        raise UsageError(f"provider {self.provider.name!r} gives no access to its hosts; "
                         "set deploy (user, key_file) so pacsinfra can log in to its machines")

    def service_runner(self, site: str, spec: ServiceSpec) -> ServiceRunner | None:
        """A deployed service, to run commands where it runs (None: it cannot be reached)."""
        return None if self.services is None else self.services.runner(site, spec)

    def machine_running(self, machine: str) -> bool:
        """Whether ``machine`` is there to look at (a static host always is; a VM once made
        and running, and a new one's disks are empty)."""
        source = getattr(self.services, "source", None)
        if isinstance(source, GuestSource):
            return source.running(machine) is not None
        return True
