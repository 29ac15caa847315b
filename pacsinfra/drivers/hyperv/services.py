"""PACS services on the VMs the Hyper-V driver makes (``provider.hyperv.ssh``).

The steps are the shared guest-services code (:mod:`pacsinfra.drivers.guest_services`:
the static driver's remote-host code, one per VM, over SSH at the VM's first static NIC
address, with host keys pinned in the blueprint). What is Hyper-V's own is only how a VM
is found: ``get-vm`` by name, the one carrying pacsinfra's mark in its Notes (Hyper-V
allows duplicate names), its static addresses read from the mark's record. Hyper-V does
not deliver those addresses to the guest (no seed yet): the image must configure them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsinfra.drivers.base import Observed
from pacsinfra.drivers.guest_services import GuestServices
from pacsinfra.drivers.hyperv.marks import MARK_PREFIX

if TYPE_CHECKING:
    from pacsinfra.drivers.hyperv.driver import HypervDriver


class HypervGuests(GuestServices):
    """The ServiceSpec steps of a HypervDriver, carried out over SSH in its running VMs."""

    provider = "hyperv"

    def __init__(self, driver: HypervDriver) -> None:
        super().__init__(driver.config)
        self.driver = driver

    def machine(self, name: str) -> Observed | None:
        facts = self.driver.run("get-vm", {"name": name, "mark_prefix": MARK_PREFIX})["vms"]
        found = [self.driver.observe_vm(f) for f in facts]
        marked = [o for o in found if o.owner is not None]
        pick = marked or found
        return pick[0] if pick else None

    def owned_machines(self, site: str) -> list[Observed]:
        facts = self.driver.run("get-vm", {"name": None, "mark_prefix": MARK_PREFIX})["vms"]
        found = [self.driver.observe_vm(f) for f in facts]
        return [o for o in found if o.owner is not None and o.owner.site == site]
