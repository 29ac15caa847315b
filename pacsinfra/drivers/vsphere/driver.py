"""VsphereDriver: pacsinfra's specs on vCenter (VMs, port groups, storage policies) via pyVmomi.

The connection and inventory are :class:`~.host.VsphereHost`; each kind of object has
its handler (:mod:`.networks`, :mod:`.storage`, :mod:`.machines`), to which the driver
hands every spec (:class:`~pacsinfra.drivers.handlers.HandlerDriver`). The services
layer finds and reaches the VMs through :meth:`VsphereDriver.machine_port` (:mod:`.port`).

Settings beyond the connection's (:mod:`.host`): ``hot_add`` (CPU/memory hot-add on new
VMs), ``latency_sensitivity`` (a level, or role -> level), ``guest_id``,
``shutdown_timeout``, ``cloud_init`` (guestinfo metadata/userdata, true),
``vgpu_profiles`` (declared profiles, for hosts that do not report theirs).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pacsinfra.drivers.base import Capability
from pacsinfra.drivers.handlers import HandlerDriver, Handlers
from pacsinfra.drivers.vsphere.client import VsphereClient
from pacsinfra.drivers.vsphere.declaration import DECLARATION
from pacsinfra.drivers.vsphere.host import VsphereHost
from pacsinfra.drivers.vsphere.machines import Machines
from pacsinfra.drivers.vsphere.networks import Networks
from pacsinfra.drivers.vsphere.port import VspherePort
from pacsinfra.drivers.vsphere.storage import Storage


class VsphereDriver(HandlerDriver):
    """The vSphere driver (pyVmomi), tested against govmomi's vcsim."""

    name: ClassVar[str] = "vsphere"
    capabilities: ClassVar[frozenset[Capability]] = DECLARATION.capabilities

    def __init__(self, config: Any, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self.host = VsphereHost(config, client)
        self.machines = Machines(self.host)
        self.networks = Networks(self.host)
        self._handlers = Handlers(networks=self.networks, storage=Storage(self.host),
                                  machines=self.machines)

    @property
    def handlers(self) -> Handlers:
        return self._handlers

    def connect(self) -> None:
        self.host.connect()

    def close(self) -> None:
        self.host.close()

    @property
    def client(self) -> VsphereClient:
        """The connected client (connecting on first use)."""
        return self.host.client

    def machine_port(self) -> VspherePort:
        """The VMs, for the services layer."""
        return VspherePort(lambda: self.machines)
