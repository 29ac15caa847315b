"""HypervDriver: pacsinfra's driver contract over WinRM + PowerShell scripts.

The session and the host's facts are :class:`~.host.HypervHost`; each kind of object has
its handler (:mod:`.networks`, :mod:`.storage`, :mod:`.machines`), to which the driver
hands every spec (:class:`~pacsinfra.drivers.handlers.HandlerDriver`); the mapping
between specs and the scripts' JSON is :mod:`.vm` and :mod:`.infra`, the change table
:mod:`.classify`. The services layer finds and reaches the VMs through
:meth:`HypervDriver.machine_port` (:mod:`.port`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pacsinfra.drivers.base import Capability
from pacsinfra.drivers.handlers import HandlerDriver, Handlers
from pacsinfra.drivers.hyperv import vm as mach
from pacsinfra.drivers.hyperv.client import HypervClient
from pacsinfra.drivers.hyperv.declaration import DECLARATION
from pacsinfra.drivers.hyperv.host import HypervHost
from pacsinfra.drivers.hyperv.machines import Machines
from pacsinfra.drivers.hyperv.networks import Networks
from pacsinfra.drivers.hyperv.port import HypervPort
from pacsinfra.drivers.hyperv.storage import Storage
from pacsinfra.errors import CapabilityError, TaskFailed
from pacsinfra.specs import Observed


class HypervDriver(HandlerDriver):
    """The Hyper-V driver (pywinrm; PowerShell scripts rendered from templates/hyperv)."""

    name: ClassVar[str] = "hyperv"
    capabilities: ClassVar[frozenset[Capability]] = DECLARATION.capabilities
    STATE_MAP = mach.STATE_MAP

    def __init__(self, config: Any, *, client: Any = None) -> None:
        """``config``: provider.hyperv (object or mapping); ``client``: a winrm.Session-like object."""
        super().__init__(config, client=client)
        self.host = HypervHost(config, client)
        self.machines = Machines(self.host)
        self.storage = Storage(self.host, self.machines)
        self._handlers = Handlers(networks=Networks(self.host), storage=self.storage,
                                  machines=self.machines)

    @property
    def handlers(self) -> Handlers:
        return self._handlers

    @property
    def settings(self) -> Any:
        return self.host.settings

    def connect(self) -> None:
        self.host.connect()

    def close(self) -> None:
        self.host.close()

    @property
    def hc(self) -> HypervClient:
        return self.host.hc

    def run(self, name: str, parameters: dict[str, Any]) -> Any:
        """Render and run one script; its JSON result."""
        return self.host.run(name, parameters)

    def list_owned(self, site: str) -> list[Observed]:
        """Switches, directories and VMs marked for ``site`` (the VMs listed once: the
        directories are found through their disks)."""
        machines = self.machines.list_owned(site)
        return [*self.handlers.networks.list_owned(site),
                *self.storage.list_owned(site, machines), *machines]

    def machine_port(self) -> HypervPort:
        """The VMs, for the services layer."""
        return HypervPort(self.host.run, self.machines.observe)

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """A static address at once; else the first IPv4 the integration services report."""
        try:
            return super().wait_for_address(observed, timeout=0)
        except CapabilityError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            got = self.read(observed.spec)
            if got is not None and got.addresses:
                return got.addresses[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TaskFailed(f"hyperv: no address for {observed.spec.name} within "
                                 f"{timeout:.0f}s (are the guest's integration services running?)")
            time.sleep(min(2.0, left))
