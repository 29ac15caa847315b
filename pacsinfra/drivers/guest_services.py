"""PACS services on the machines a hypervisor driver makes (``provider.<driver>.ssh``).

Once a machine has booted it is, for its services, an existing host reached over SSH:
:class:`GuestServices` hands every :class:`~pacsinfra.drivers.base.ServiceSpec` step to
the ``static`` driver's remote-host code (:class:`~pacsinfra.drivers.static.StaticDriver`,
one per machine, built for that one host: wheel -> ``<root>/venv``, config 0640, a
systemd unit where the guest's PID 1 is systemd (else the supervisor; ``ssh.init``),
C-ECHO, a router's destinations checked; marks ``<root>/machine.json`` and
``<root>/services/<svc>/``), so every provider runs a service the same way. The kvm,
vsphere and hyperv drivers each subclass it with what only the hypervisor knows:

- **the machine as the hypervisor reports it** (:meth:`GuestServices.machine`,
  :meth:`GuestServices.owned_machines`): a service lives in its machine, so no running
  machine means no service (read is None, delete is a no-op: the VM's deletion takes
  the service with it);
- **where the machine is reached, at plan time** (:meth:`GuestServices.endpoint`): by
  default the first static NIC address (``nics[].addresses``) on ``ssh.port`` (22). The
  plan engine has no "known after apply" values, so a machine with only DHCP addresses
  cannot run services (``validate`` refuses it). :class:`GuestLayout` renders the
  services' configs from the same endpoint;
- **host keys, never trusted on first use** (:meth:`GuestServices.host_keys`): pinned in
  ``ssh.host_keys`` (machine ``<site>-<role>-<n>``, else role) or in a ``known_hosts``
  file; a driver may learn them out of band (:meth:`GuestServices.learn_host_keys`: kvm
  reads the serial console), never from the connection itself.
"""

from __future__ import annotations

import abc
import dataclasses
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from pacsinfra.drivers import service_common as common
from pacsinfra.drivers.base import MachineSpec, Observed, Ownership, PowerState, ServiceSpec
from pacsinfra.drivers.settings import as_dict, setting
from pacsinfra.drivers.static.layout import DEFAULT_ROOT
from pacsinfra.drivers.static.layout import LOGIN_FIELDS as HOST_LOGIN_FIELDS
from pacsinfra.errors import DeployError, PlanError

if TYPE_CHECKING:
    from pacsinfra.drivers.static import StaticDriver
    from pacsinfra.drivers.static.remote import HostSession

DEFAULT_BOOT_TIMEOUT = 300.0
#: the login fields a static host entry takes (``provider.<driver>.ssh`` has the same names)
LOGIN_FIELDS = tuple(f for f in HOST_LOGIN_FIELDS if f != "port")


@dataclasses.dataclass(frozen=True)
class GuestLogin:
    """``provider.<driver>.ssh``: how pacsinfra logs in to its machines to run their services."""

    login: Mapping[str, Any]  # LOGIN_FIELDS that were given
    port: int = 22  # for static NIC addresses (a kvm user-mode forward brings its own)
    host_keys: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    wheel: str | None = None
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    init: str = "auto"  # systemd units where the guest's PID 1 is systemd, else the supervisor

    @classmethod
    def parse(cls, provider_settings: Any) -> GuestLogin | None:
        """From ``provider.<driver>`` (model or its JSON dump); None when ``ssh`` is not set."""
        given = setting(provider_settings, "ssh")
        if given is None:
            return None
        raw = as_dict(given)
        return cls(
            login={k: raw[k] for k in LOGIN_FIELDS if raw.get(k) is not None},
            port=int(raw.get("port") or 22),
            host_keys={str(k): tuple(v) for k, v in (raw.get("host_keys") or {}).items()},
            wheel=raw.get("wheel"),
            boot_timeout=float(raw.get("boot_timeout") or DEFAULT_BOOT_TIMEOUT),
            init=str(raw.get("init") or "auto"),
        )

    @property
    def root(self) -> str:
        return str(self.login.get("root") or DEFAULT_ROOT)

    def pinned(self, machine: MachineSpec) -> tuple[str, ...]:
        """Host keys the blueprint pins for the machine (by name, else by role)."""
        return tuple(self.host_keys.get(machine.name) or self.host_keys.get(machine.role) or ())


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where pacsinfra reaches a machine's sshd, and whether through a user-mode NAT."""

    address: str
    port: int
    user_mode: bool = False


def static_endpoint(spec: MachineSpec, port: int = 22,
                    skip: Callable[[str], bool] = lambda network: False) -> Endpoint | None:
    """The first static NIC address (on a network ``skip`` does not exclude), at ``port``."""
    for nic in spec.nics:
        if nic.address and not skip(nic.network):
            return Endpoint(str(nic.address), port)
    return None


def no_address_problem(spec: MachineSpec) -> str:
    """Why a machine without a static address cannot run services (a PlanError's text)."""
    return (f"machine {spec.name} runs services but has no address known before it boots: "
            "give one of its NICs a static address (nics[].addresses)")


EndpointOf = Callable[[MachineSpec, int], "Endpoint | None"]


class GuestLayout:
    """Where services' files go on a hypervisor's machine and how it is reached (plan time)."""

    def __init__(self, settings: Any, machines: Mapping[str, MachineSpec], *,
                 endpoint: EndpointOf = static_endpoint,
                 problem: Callable[[MachineSpec], str] = no_address_problem) -> None:
        self.login = GuestLogin.parse(settings) or GuestLogin(login={})
        self.machines = machines
        self._endpoint_of = endpoint
        self._problem = problem

    def _endpoint(self, machine: str) -> Endpoint:
        spec = self.machines.get(machine)
        if spec is None:
            raise PlanError(f"machine {machine} is not in the plan")
        ep = self._endpoint_of(spec, self.login.port)
        if ep is None:
            raise PlanError(self._problem(spec))
        return ep

    def base_dir(self, machine: str) -> PurePosixPath:
        return PurePosixPath(self.login.root)

    def data_dir(self, machine: str, service: str) -> PurePosixPath:
        return PurePosixPath(self.login.root) / "data" / service

    def address(self, machine: str) -> str | None:
        return self._endpoint(machine).address

    def default_bind(self, machine: str) -> str:
        ep = self._endpoint(machine)
        # behind QEMU's NAT the forwards arrive on the guest's own NIC (10.0.2.15), which
        # nothing but the forwards reaches: listen there. Else the machine's own address.
        return "0.0.0.0" if ep.user_mode else ep.address


def wait_for_banner(ep: Endpoint, deadline: float) -> None:
    """Until sshd sends its banner. (A user-mode forward accepts the TCP connection even
    while nothing listens in the guest, then closes it: a connect alone proves nothing.)"""
    last = "no answer"
    while True:
        try:
            with socket.create_connection((ep.address, ep.port), timeout=5) as s:
                s.settimeout(10)
                if s.recv(8).startswith(b"SSH-"):
                    return
                last = "connection closed before the SSH banner"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise DeployError(f"{ep.address}:{ep.port}: sshd did not answer ({last})")
        time.sleep(1.0)


class GuestServices(abc.ABC):
    """The ServiceSpec steps of a hypervisor driver, carried out over SSH in its machines."""

    #: the driver's name, for ``provider.<provider>.ssh`` in messages
    provider: ClassVar[str]

    def __init__(self, settings: Any) -> None:
        self.login = GuestLogin.parse(settings)
        self._inner: dict[str, tuple[Any, StaticDriver]] = {}
        self._lock = threading.Lock()
        self._wheel_lock = threading.Lock()
        self._wheel: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- what the hypervisor knows -----------------------------------------------------
    @abc.abstractmethod
    def machine(self, name: str) -> Observed | None:
        """Machine ``name`` as the hypervisor reports it (None when absent)."""

    @abc.abstractmethod
    def owned_machines(self, site: str) -> list[Observed]:
        """Every machine carrying ``site``'s mark."""

    def endpoint(self, spec: MachineSpec) -> Endpoint | None:
        """Where the machine's sshd is reached (None: not known before it boots)."""
        return static_endpoint(spec, self.login.port if self.login else 22)

    def endpoint_problem(self, spec: MachineSpec) -> str:
        """Why :meth:`endpoint` found nothing, with what would fix it."""
        return no_address_problem(spec)

    def learn_host_keys(self, machine: MachineSpec, wait: float) -> tuple[str, ...] | None:
        """Host keys learnt out of band when none are pinned (None: unknown, when
        ``wait`` is 0). This default knows no such source and never trusts on first use."""
        if wait <= 0:
            return None
        raise DeployError(
            f"{machine.name}: no pinned SSH host key; pin it in provider.{self.provider}.ssh."
            f"host_keys (the machine {machine.name} or its role {machine.role}) or in a "
            "known_hosts file (pacsinfra never trusts a key on first use)")

    # -- sessions ------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            inner = [d for _, d in self._inner.values()]
            self._inner.clear()
        for d in inner:
            d.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._wheel = None

    def forget(self, machine: str) -> None:
        """Drop the session of a machine that was deleted (its next incarnation is another host)."""
        with self._lock:
            found = self._inner.pop(machine, None)
        if found is not None:
            found[1].close()

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"pacsinfra-{self.provider}-")
        return Path(self._tmp.name)

    def _running(self, name: str) -> Observed | None:
        """Machine ``name`` when it runs and carries pacsinfra's mark (services go only
        into machines pacsinfra made)."""
        obs = self.machine(name)
        if (obs is None or obs.owner is None or obs.power != PowerState.ON
                or not isinstance(obs.spec, MachineSpec)):
            return None
        return obs

    # -- planning ----------------------------------------------------------------------
    def check(self, spec: ServiceSpec) -> list[str]:
        if self.login is None:
            return [f"{spec.address}: set provider.{self.provider}.ssh (login, key) so the "
                    f"{self.provider} driver can run services on its machines"]
        return common.check_runnable(spec, self.provider)

    def render_params(self, spec: ServiceSpec) -> dict[str, Any]:
        root = self.login.root if self.login else DEFAULT_ROOT
        return {"host": spec.host, "machine": common.machine_name_of(spec),
                "path": f"{root}/services/{spec.service}/service.json",
                "config_path": f"{root}/services/{spec.service}/config.yaml"}

    # -- the machine under a service -----------------------------------------------------
    def host_keys(self, machine: MachineSpec, *, wait: float) -> tuple[str, ...] | None:
        """The keys to pin for ``machine``; None when not known (yet), after ``wait`` seconds.

        ``()`` means the blueprint's ``known_hosts`` file holds them.
        """
        assert self.login is not None
        pinned = self.login.pinned(machine)
        if pinned:
            return pinned
        if self.login.login.get("known_hosts"):
            return ()
        return self.learn_host_keys(machine, wait)

    def _static(self, machine: MachineSpec, *, wait: float,
                install: bool = False) -> tuple[StaticDriver, Endpoint] | None:
        """The static driver for this one machine, or None when its host key is not known."""
        from pacsinfra.drivers.static import StaticDriver

        assert self.login is not None
        ep = self.endpoint(machine)
        if ep is None:
            raise DeployError(self.endpoint_problem(machine))
        keys = self.host_keys(machine, wait=wait)
        if keys is None:
            return None
        wheel = self._built_wheel() if install else None
        ident = (ep, keys)
        with self._lock:
            found = self._inner.get(machine.name)
            if found is not None and found[0] == ident:
                inner = found[1]
            else:
                if found is not None:
                    found[1].close()
                host = {**self.login.login, "address": ep.address, "port": ep.port,
                        "host_keys": list(keys)}
                inner = StaticDriver({"hosts": {machine.name: host},
                                      "records": str(self._tmpdir() / "records"),
                                      "init": self.login.init})
                self._inner[machine.name] = (ident, inner)
        if wheel is not None and inner.settings.wheel != wheel:
            inner.settings = dataclasses.replace(inner.settings, wheel=wheel)
        return inner, ep

    def _built_wheel(self) -> str:
        """``ssh.wheel``, else a wheel of this checkout built once per run."""
        assert self.login is not None
        if self.login.wheel:
            return str(Path(self.login.wheel).expanduser())
        with self._wheel_lock:
            if self._wheel is None:
                import pacsinfra
                from pacsinfra.deploy import wheel as wheels

                checkout = Path(pacsinfra.__file__).resolve().parents[1]
                if not (checkout / "pyproject.toml").exists():
                    raise DeployError(
                        "pacsinfra does not run from a checkout, so it cannot build the wheel "
                        f"to install on the machines; set provider.{self.provider}.ssh.wheel")
                out = self._tmpdir() / "wheel"
                out.mkdir(exist_ok=True)
                self._wheel = str(wheels.build_wheel(checkout, out).path)
            return self._wheel

    def _reachable(self, machine: MachineSpec, *, install: bool) -> StaticDriver:
        """The machine's static driver once its host keys are known and sshd answers
        (a machine that just booted: waits up to ``ssh.boot_timeout``)."""
        assert self.login is not None
        deadline = time.monotonic() + self.login.boot_timeout
        found = self._static(machine, wait=self.login.boot_timeout, install=install)
        assert found is not None
        inner, ep = found
        wait_for_banner(ep, deadline)
        return inner

    # -- the steps -----------------------------------------------------------------------
    def read(self, spec: ServiceSpec) -> Observed | None:
        mobs = self._running(common.machine_name_of(spec))
        if mobs is None or self.login is None:
            return None
        assert isinstance(mobs.spec, MachineSpec)
        found = self._static(mobs.spec, wait=0)
        return found[0].read(spec) if found is not None else None

    def list_owned(self, site: str, machines: Sequence[Observed] | None = None) -> list[Observed]:
        """Services of ``site`` on each of its running machines whose host key is known.

        ``machines``: the site's machines when the caller has just listed them."""
        if self.login is None:
            return []
        out: list[Observed] = []
        for mobs in self.owned_machines(site) if machines is None else machines:
            if (mobs.owner is None or mobs.owner.site != site
                    or mobs.power != PowerState.ON or not isinstance(mobs.spec, MachineSpec)
                    or self.endpoint(mobs.spec) is None):
                continue
            found = self._static(mobs.spec, wait=0)
            if found is None:
                continue
            out += [o for o in found[0].list_owned(site) if isinstance(o.spec, ServiceSpec)]
        return out

    def _ready(self, spec: ServiceSpec, owner: Ownership) -> StaticDriver:
        """The machine's static driver with sshd answering, pacsinfra's root marked and the
        wheel installed."""
        mobs = self._running(common.machine_name_of(spec))
        if mobs is None:
            raise DeployError(f"{spec.address}: its machine {common.machine_name_of(spec)} "
                              "is not running")
        assert isinstance(mobs.spec, MachineSpec)
        inner = self._reachable(mobs.spec, install=True)
        mspec = dataclasses.replace(mobs.spec, address=spec.machine)
        inner.create(mspec, Ownership(owner.site, spec.machine, owner.lineage))
        return inner

    def create(self, spec: ServiceSpec, owner: Ownership) -> Observed:
        return self._ready(spec, owner).create(spec, owner)

    def update(self, spec: ServiceSpec, observed: Observed, fields: Any) -> Observed:
        assert observed.owner is not None
        return self._ready(spec, observed.owner).update(spec, observed, fields)

    def delete(self, observed: Observed) -> None:
        spec = observed.spec
        assert isinstance(spec, ServiceSpec)
        mobs = self._running(common.machine_name_of(spec))
        if mobs is None or self.login is None:
            return  # no running machine: the service went (or goes) with it
        assert isinstance(mobs.spec, MachineSpec)
        found = self._static(mobs.spec, wait=0)
        if found is None:
            return  # never reachable: nothing of ours can run there
        found[0].delete(observed)

    # -- hosts, for work between steps (dr rebuild) ---------------------------------------
    def running(self, machine: str) -> bool:
        """Whether ``machine`` exists and runs (a new one has nothing on its disks)."""
        return self._running(machine) is not None

    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> HostSession:
        """The SSH session to running machine ``machine`` (waits for its host keys and
        sshd as a service step does); ``with_pacsinfra``: this pacsinfra installed in its
        venv. For work between the machine and service steps (``dr rebuild``)."""
        if self.login is None:
            raise DeployError(f"provider.{self.provider}.ssh is not set: pacsinfra cannot log "
                              f"in to {machine}")
        obs = self._running(machine)
        if obs is None:
            raise DeployError(f"{machine} is not running")
        assert isinstance(obs.spec, MachineSpec)
        inner = self._reachable(obs.spec, install=with_pacsinfra)
        return inner.host_session(machine, with_pacsinfra=with_pacsinfra)
