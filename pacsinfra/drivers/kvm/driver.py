"""KvmDriver: pacsinfra's specs on libvirt (domains, networks, directory pools).

The connection and host-wide settings are :class:`~.host.KvmHost`; each kind of object
has its handler (:mod:`.networks`, :mod:`.storage`, :mod:`.machines`), to which the
driver hands every spec (:class:`~pacsinfra.drivers.handlers.HandlerDriver`). The
services layer finds and reaches the domains through :meth:`KvmDriver.machine_port`
(:mod:`.port`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pacsinfra.drivers.base import Capability
from pacsinfra.drivers.handlers import HandlerDriver, Handlers
from pacsinfra.drivers.kvm.client import LibvirtClient
from pacsinfra.drivers.kvm.declaration import DECLARATION
from pacsinfra.drivers.kvm.host import DEFAULT_URI, KvmHost
from pacsinfra.drivers.kvm.machines import Machines
from pacsinfra.drivers.kvm.networks import Networks
from pacsinfra.drivers.kvm.port import KvmPort
from pacsinfra.drivers.kvm.storage import Storage
from pacsinfra.errors import CapabilityError, TaskFailed
from pacsinfra.specs import Observed, PowerState

__all__ = ["DEFAULT_URI", "KvmDriver"]


class KvmDriver(HandlerDriver):
    """The libvirt driver (libvirt-python)."""

    name: ClassVar[str] = "kvm"
    capabilities: ClassVar[frozenset[Capability]] = DECLARATION.capabilities
    STATE_MAP: ClassVar[dict[str, PowerState]] = KvmHost.STATE_MAP

    def __init__(self, config: Any, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self.host = KvmHost(config, client)
        networks = Networks(self.host)
        self._handlers = Handlers(networks=networks, storage=Storage(self.host),
                                  machines=Machines(self.host, networks))

    @property
    def handlers(self) -> Handlers:
        return self._handlers

    # -- connection ----------------------------------------------------------------
    def connect(self) -> None:
        """Open the libvirt connection (wraps the one passed as ``client=``)."""
        self.host.connect()

    def close(self) -> None:
        """Close the connection if this driver opened it."""
        self.host.close()

    @property
    def uri(self) -> str:
        return self.host.uri

    @property
    def lc(self) -> LibvirtClient:
        """The connected client (connecting on first use)."""
        return self.host.lc

    @property
    def _lc(self) -> LibvirtClient | None:
        return self.host.connected

    def host_mhz(self) -> int | None:
        """The host clock for CPU limits: configured, else libvirt's once connected."""
        return self.host.host_mhz()

    def machine_port(self) -> KvmPort:
        """The domains, for the services layer (find one, learn its host keys)."""
        machines = self._handlers.machines
        assert isinstance(machines, Machines)
        return KvmPort(self.config, lambda: self.lc, machines.read_name)

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """A static address at once; else the first DHCP lease libvirt reports."""
        try:
            return super().wait_for_address(observed, timeout=0)
        except CapabilityError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            addresses = self.lc.domain_addresses(observed.spec.name)
            if addresses:
                return addresses[0]
            if time.monotonic() >= deadline:
                raise TaskFailed(f"kvm: no address for {observed.spec.name} within {timeout:.0f}s")
            time.sleep(1.0)
