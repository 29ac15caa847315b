"""How the services layer finds the VMs the vsphere driver makes: by name in the datacenter
(templates excluded), read back with their intent, so their static addresses are those
pacsinfra gave them (``extraConfig["pacsinfra.intent"]``). vSphere has no channel to
learn a new VM's SSH host keys: they are pinned in the blueprint."""

from __future__ import annotations

from collections.abc import Callable

from pacsinfra.drivers.vsphere.machines import Machines
from pacsinfra.specs import MachineSpec, Observed


class VspherePort:
    """The vsphere driver's VMs, for the services layer."""

    def __init__(self, machines: Callable[[], Machines]) -> None:
        self._machines = machines  # the driver's handler, connected on first use

    def machine(self, name: str) -> Observed | None:
        machines = self._machines()
        vm = machines.find(name)
        return machines.read_vm(vm) if vm is not None else None

    def owned_machines(self, site: str) -> list[Observed]:
        return self._machines().list_owned(site)

    def learn_host_keys(self, spec: MachineSpec, wait: float) -> tuple[str, ...] | None:
        return None
