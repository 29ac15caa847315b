"""PACS services on the VMs the vSphere driver makes (``provider.vsphere.ssh``).

The steps are the shared guest-services code (:mod:`pacsinfra.drivers.guest_services`:
the static driver's remote-host code, one per VM, over SSH at the VM's first static NIC
address, with host keys pinned in the blueprint). What is vSphere's own is only how a VM
is found: by name in the datacenter (templates excluded), read back with its intent, so
its static addresses are those pacsinfra gave it (``extraConfig["pacsinfra.intent"]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsinfra.drivers.base import Observed
from pacsinfra.drivers.guest_services import GuestServices

if TYPE_CHECKING:
    from pacsinfra.drivers.vsphere.driver import VsphereDriver


class VsphereGuests(GuestServices):
    """The ServiceSpec steps of a VsphereDriver, carried out over SSH in its powered-on VMs."""

    provider = "vsphere"

    def __init__(self, driver: VsphereDriver) -> None:
        super().__init__(driver.config)
        self.driver = driver

    def machine(self, name: str) -> Observed | None:
        vm = self.driver.machines.find(name)
        return self.driver.machines.read_vm(vm) if vm is not None else None

    def owned_machines(self, site: str) -> list[Observed]:
        return self.driver.machines.list_owned(site)
