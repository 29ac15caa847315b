"""What a provider is, declared once: its settings, its capabilities, how its machines are reached.

Every provider (the hypervisor drivers kvm, vsphere and hyperv; the ``local`` and
``static`` hosts of the services layer) states these facts in one pure module (no SDK
import), and everything else reads them from there (:mod:`pacsinfra.providers`):

- the blueprint model takes ``provider.<name>``, ``images.*.<name>``,
  ``networks.*.<name>`` and ``storage.*.<name>`` from :attr:`Declaration.settings`,
  :attr:`~Declaration.image`, :attr:`~Declaration.network`, :attr:`~Declaration.storage`
  (and so does the JSON Schema, and the generated field reference);
- ``validate`` checks a blueprint's features against :attr:`~Declaration.capabilities`,
  and the driver class exposes the same set;
- the planner names hypervisor objects with :attr:`~Declaration.network_name_key` /
  :attr:`~Declaration.storage_name_key`, and renders the services' configs with
  :attr:`~Declaration.reach` — where a machine's sshd is, known before it boots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from pacsinfra.drivers.base import Capability, Endpoint
from pacsinfra.specs import MachineSpec


@dataclass(frozen=True)
class Reach:
    """How pacsinfra reaches a machine of this provider over SSH, known at plan time."""

    #: the machine's sshd (``spec``, the SSH port from ``deploy.port``); None: not known
    #: before the machine boots (DHCP only)
    endpoint: Callable[[MachineSpec, int], Endpoint | None]
    #: why ``endpoint`` found nothing, with what would fix it
    problem: Callable[[MachineSpec], str]


@dataclass(frozen=True)
class Declaration:
    """One provider, as the rest of pacsinfra knows it."""

    name: str
    summary: str  # one line, for docs and ``--help``
    #: ``module:Class`` of the implementation, imported only when the provider is used
    implementation: str
    #: the blueprint's ``provider.<name>`` section
    settings: type[BaseModel]
    capabilities: frozenset[Capability] = frozenset()
    #: per-object settings: ``images.<i>.<name>``, ``networks.<n>.<name>``, ``storage.<s>.<name>``
    image: type[BaseModel] | None = None
    network: type[BaseModel] | None = None
    storage: type[BaseModel] | None = None
    #: False: its machines exist already (this box, hosts over SSH): no image, no NICs
    makes_machines: bool = True
    #: which key of ``networks.<n>.<name>`` / ``storage.<s>.<name>`` names the hypervisor object
    network_name_key: str | None = None
    storage_name_key: str | None = None
    #: how its machines are reached to run services (None: services run by other means)
    reach: Reach | None = None
    #: the provider setting that lets it learn new machines' SSH host keys out of band
    #: (kvm: ``console_log``); None: they must be pinned
    host_key_setting: str | None = None
    #: (module the SDK provides, pacsinfra extra that installs it), for the install hint
    sdk: tuple[str, str] | None = None
    #: False: a provider for tests only, which a blueprint cannot name (the fake driver)
    selectable: bool = True
    #: settings without which the provider cannot connect: (field, an example for the hint)
    required: tuple[tuple[str, str], ...] = ()
    #: whether the blueprint's disk mounts decide where services keep data (False: the
    #: provider keeps everything under its own directory, as ``local`` does)
    data_on_disks: bool = True

    def can(self, capability: Capability) -> bool:
        """Whether this provider carries out ``capability``."""
        return capability in self.capabilities

    @property
    def gpu_modes(self) -> frozenset[str]:
        """The ``gpu.mode`` values this provider takes."""
        return frozenset(c.value for c in self.capabilities if c.gpu_mode)


def static_endpoint(spec: MachineSpec, port: int = 22,
                    skip: Callable[[str], bool] = lambda network: False) -> Endpoint | None:
    """The first static NIC address (on a network ``skip`` does not exclude), at ``port``."""
    for nic in spec.nics:
        if nic.address and not skip(nic.network):
            return Endpoint(str(nic.address), port)
    return None


def no_address_problem(spec: MachineSpec) -> str:
    """Why a machine without a static address cannot run services."""
    return (f"machine {spec.name} runs services but has no address known before it boots: "
            "give one of its NICs a static address (nics[].addresses)")


#: machines reached at their first static NIC address (vSphere, Hyper-V)
STATIC_ADDRESS = Reach(endpoint=static_endpoint, problem=no_address_problem)
