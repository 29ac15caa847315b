"""PACS services on the machines the KVM driver makes (``provider.kvm.ssh``).

Once a domain has booted it is, for its services, an existing host reached over SSH:
this module hands every :class:`~pacsinfra.drivers.base.ServiceSpec` step to the
``static`` driver's remote-host code (:class:`~pacsinfra.drivers.static.StaticDriver`,
one per machine, built for that one host: wheel -> ``<root>/venv``, config 0640,
a systemd unit where the guest's PID 1 is systemd (else the supervisor; ``ssh.init``),
C-ECHO; marks ``<root>/machine.json`` and ``<root>/services/<svc>/``), so both
providers run a service the same way.

What is KVM's own:

- **where the machine is reached, at plan time** (:func:`ssh_endpoint`): the host side
  of a user-mode NIC's forward to guest port 22 (``127.0.0.1:<port>``), else the first
  static NIC address (port ``provider.kvm.ssh.port``, 22). A machine with neither (DHCP
  only) cannot run services yet: its address is known only after it boots, and the plan
  engine has no "known after apply" values. :class:`KvmLayout` renders the configs from it.
- **host keys, never trusted on first use** (:meth:`GuestServices.host_keys`): pinned in
  ``provider.kvm.ssh.host_keys`` (machine or role), or a ``known_hosts`` file; else
  learnt from the machine's serial console log (``console_log``), where cloud-init (or
  any init doing the same) prints them between ``-----BEGIN SSH HOST KEY KEYS-----``
  markers, and then recorded in the domain's metadata (namespace :data:`HOSTKEYS_NS`):
  later runs use the recorded key, so a different key on a later boot is a mismatch,
  not a new trust.
- **a service's life follows its machine**: no running domain, no service (read is
  None, delete is a no-op: the VM's deletion takes the service with it).
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from pacsinfra.deploy.ssh import host_keys_from_console
from pacsinfra.drivers import service_common as common
from pacsinfra.drivers.base import MachineSpec, Observed, Ownership, PowerState, ServiceSpec
from pacsinfra.drivers.kvm import usernet
from pacsinfra.errors import DeployError, PlanError

if TYPE_CHECKING:
    from pacsinfra.drivers.kvm.driver import KvmDriver
    from pacsinfra.drivers.static import StaticDriver

DEFAULT_ROOT = "/opt/pacsinfra"
DEFAULT_BOOT_TIMEOUT = 300.0
HOSTKEYS_NS = "https://pacsinfra.dev/xmlns/hostkeys/1"
HOSTKEYS_KEY = "pihk"
#: the login fields a static host entry takes (provider.kvm.ssh has the same names)
LOGIN_FIELDS = ("user", "key_file", "key", "known_hosts", "python", "root", "find_links",
                "system_site_packages")
_HOSTFWD = re.compile(r"tcp:([0-9.]*):(\d+)-([0-9.]*):(\d+)")
_RECORDED = re.compile(r"<hostkeys[^>]*>(.*)</hostkeys>", re.S)


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "model_dump"):
        data = value.model_dump(mode="json", exclude_none=True, by_alias=True)
        assert isinstance(data, dict)
        return data
    return {k: v for k, v in dict(value).items() if v is not None}


def _setting(config: Any, key: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


@dataclasses.dataclass(frozen=True)
class GuestLogin:
    """``provider.kvm.ssh``: how pacsinfra logs in to its machines to run their services."""

    login: Mapping[str, Any]  # LOGIN_FIELDS that were given
    port: int = 22  # for static NIC addresses (a user-mode forward brings its own)
    host_keys: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    wheel: str | None = None
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    init: str = "auto"  # systemd units where the guest's PID 1 is systemd, else the supervisor

    @classmethod
    def parse(cls, kvm_settings: Any) -> GuestLogin | None:
        """From ``provider.kvm`` (model or its JSON dump); None when ``ssh`` is not set."""
        raw = _as_dict(_setting(kvm_settings, "ssh"))
        if not raw and _setting(kvm_settings, "ssh") is None:
            return None
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
    user_mode: bool


def user_forwards(spec: MachineSpec) -> list[tuple[str, int, int]]:
    """``(host address, host port, guest port)`` of every TCP forward of the user-mode NICs."""
    out = []
    for nic in spec.nics:
        if not usernet.is_user(nic.network):
            continue
        for item in nic.network[len(usernet.PREFIX):].split(","):
            key, _, value = item.partition("=")
            m = _HOSTFWD.fullmatch(value) if key == "hostfwd" else None
            if m:
                out.append((m[1] or "127.0.0.1", int(m[2]), int(m[4])))
    return out


def ssh_endpoint(spec: MachineSpec, port: int = 22) -> Endpoint | None:
    """The machine's SSH endpoint as the blueprint fixes it (None: known only after boot)."""
    for haddr, hport, gport in user_forwards(spec):
        if gport == 22:
            return Endpoint(haddr, hport, True)
    for nic in spec.nics:
        if nic.address and not usernet.is_user(nic.network):
            return Endpoint(str(nic.address), port, False)
    return None


def endpoint_problem(spec: MachineSpec) -> str:
    return (f"machine {spec.name} runs services but has no address known before it boots: "
            "give one of its NICs a static address (nics[].addresses), or put it on a "
            "user-mode network (networks.<n>.kvm.user: true) with a forward to guest port 22")


class KvmLayout:
    """Where services' files go on a KVM machine and how it is reached (for plan-time rendering)."""

    def __init__(self, settings: Any, machines: Mapping[str, MachineSpec]) -> None:
        self.login = GuestLogin.parse(settings) or GuestLogin(login={})
        self.machines = machines

    def _endpoint(self, machine: str) -> Endpoint:
        spec = self.machines.get(machine)
        if spec is None:
            raise PlanError(f"machine {machine} is not in the plan")
        ep = ssh_endpoint(spec, self.login.port)
        if ep is None:
            raise PlanError(endpoint_problem(spec))
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


def _wait_for_banner(ep: Endpoint, deadline: float) -> None:
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


class GuestServices:
    """The ServiceSpec steps of a KvmDriver, carried out over SSH in its running domains."""

    def __init__(self, driver: KvmDriver) -> None:
        self.driver = driver
        self.login = GuestLogin.parse(driver.config)
        self._inner: dict[str, tuple[Any, StaticDriver]] = {}
        self._lock = threading.Lock()
        self._wheel_lock = threading.Lock()
        self._wheel: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def close(self) -> None:
        with self._lock:
            inner = [d for _, d in self._inner.values()]
            self._inner.clear()
        for d in inner:
            d.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def forget(self, machine: str) -> None:
        """Drop the session of a machine that was deleted (its next incarnation is another host)."""
        with self._lock:
            found = self._inner.pop(machine, None)
        if found is not None:
            found[1].close()

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pacsinfra-kvm-")
        return Path(self._tmp.name)

    # -- planning ---------------------------------------------------------------------
    def check(self, spec: ServiceSpec) -> list[str]:
        if self.login is None:
            return [f"{spec.address}: set provider.kvm.ssh (login, key) so the kvm driver "
                    "can run services on its machines"]
        return common.check_runnable(spec, "kvm")

    def render_params(self, spec: ServiceSpec) -> dict[str, Any]:
        root = self.login.root if self.login else DEFAULT_ROOT
        return {"host": spec.host, "machine": common.machine_name_of(spec),
                "path": f"{root}/services/{spec.service}/service.json",
                "config_path": f"{root}/services/{spec.service}/config.yaml"}

    # -- the machine under a service ------------------------------------------------------
    def _machine(self, spec: ServiceSpec) -> Observed | None:
        from pacsinfra.drivers.kvm.machines import read_machine

        obs = read_machine(self.driver, common.machine_name_of(spec), desired=None)
        if obs is None or obs.power != PowerState.ON:
            return None
        return obs

    def _console_path(self, machine: str) -> Path | None:
        from pacsinfra.drivers.kvm.driver import setting

        where = setting(self.driver.config, "console_log")
        return Path(str(where)) / f"{machine}.console.log" if where else None

    def _recorded(self, machine: str) -> tuple[str, ...]:
        xml = self.driver.lc.domain_metadata(machine, HOSTKEYS_NS)
        m = _RECORDED.search(xml or "")
        if not m:
            return ()
        from xml.sax.saxutils import unescape

        try:
            keys = json.loads(unescape(m[1]))
        except ValueError:
            return ()
        return tuple(str(k) for k in keys) if isinstance(keys, list) else ()

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
        recorded = self._recorded(machine.name)
        if recorded:
            return recorded
        console = self._console_path(machine.name)
        if console is None:
            if wait <= 0:
                return None
            raise DeployError(
                f"{machine.name}: no pinned SSH host key and no console log to learn it from; "
                "pin it (provider.kvm.ssh.host_keys or known_hosts) or set "
                "provider.kvm.console_log (pacsinfra never trusts a key on first use)")
        deadline = time.monotonic() + wait
        while True:
            try:
                text = console.read_text(errors="replace")
            except OSError:
                text = ""
            # only whole lines that look like keys (a console may interleave kernel messages)
            keys = tuple(k for k in host_keys_from_console(text)
                         if re.match(r"^(ssh-|ecdsa-)\S+ [A-Za-z0-9+/=]+", k))
            if keys:
                self._record(machine.name, keys)
                return keys
            if time.monotonic() >= deadline:
                if wait <= 0:
                    return None
                raise DeployError(
                    f"{machine.name}: no SSH host keys on its console within {wait:.0f}s "
                    f"(between -----BEGIN SSH HOST KEY KEYS----- markers, as cloud-init prints "
                    f"them); end of {console}:\n{common.indent_log(text[-2000:])}")
            time.sleep(1.0)

    def _record(self, machine: str, keys: tuple[str, ...]) -> None:
        payload = escape(json.dumps(list(keys)))
        self.driver.lc.set_domain_metadata(
            machine, HOSTKEYS_NS, HOSTKEYS_KEY, f"<hostkeys>{payload}</hostkeys>")

    def _static(self, machine: MachineSpec, *, wait: float,
                install: bool = False) -> tuple[StaticDriver, Endpoint] | None:
        """The static driver for this one machine, or None when its host key is not known."""
        from pacsinfra.drivers.static import StaticDriver

        assert self.login is not None
        ep = ssh_endpoint(machine, self.login.port)
        if ep is None:
            raise DeployError(endpoint_problem(machine))
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
        """``provider.kvm.ssh.wheel``, else a wheel of this checkout built once per run."""
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
                        "to install on the machines; set provider.kvm.ssh.wheel")
                out = self._tmpdir() / "wheel"
                out.mkdir(exist_ok=True)
                self._wheel = str(wheels.build_wheel(checkout, out).path)
            return self._wheel

    # -- the steps ------------------------------------------------------------------------
    def read(self, spec: ServiceSpec) -> Observed | None:
        mobs = self._machine(spec)
        if mobs is None or self.login is None:
            return None
        assert isinstance(mobs.spec, MachineSpec)
        found = self._static(mobs.spec, wait=0)
        return found[0].read(spec) if found is not None else None

    def list_owned(self, site: str) -> list[Observed]:
        """Services of ``site`` on every running domain of it whose host key is known."""
        if self.login is None:
            return []
        from pacsinfra.drivers.kvm.machines import read_machine

        out: list[Observed] = []
        for name in self.driver.lc.domain_names():
            mobs = read_machine(self.driver, name, desired=None)
            if (mobs is None or mobs.owner is None or mobs.owner.site != site
                    or mobs.power != PowerState.ON or not isinstance(mobs.spec, MachineSpec)
                    or ssh_endpoint(mobs.spec, self.login.port) is None):
                continue
            found = self._static(mobs.spec, wait=0)
            if found is None:
                continue
            out += [o for o in found[0].list_owned(site) if isinstance(o.spec, ServiceSpec)]
        return out

    def _ready(self, spec: ServiceSpec, owner: Ownership) -> StaticDriver:
        """The machine's static driver with sshd answering, pacsinfra's root marked and the
        wheel installed (first boot: waits for the console's host keys and sshd)."""
        assert self.login is not None
        mobs = self._machine(spec)
        if mobs is None:
            raise DeployError(f"{spec.address}: its machine {common.machine_name_of(spec)} "
                              "is not running")
        assert isinstance(mobs.spec, MachineSpec)
        deadline = time.monotonic() + self.login.boot_timeout
        found = self._static(mobs.spec, wait=self.login.boot_timeout, install=True)
        assert found is not None
        inner, ep = found
        _wait_for_banner(ep, deadline)
        mspec = dataclasses.replace(mobs.spec, address=spec.machine)
        inner.create(mspec, Ownership(owner.site, spec.machine, owner.lineage))
        return inner

    def create(self, spec: ServiceSpec, owner: Ownership) -> Observed:
        return self._ready(spec, owner).create(spec, owner)

    def running(self, machine: str) -> bool:
        """Whether domain ``machine`` exists and runs (a new one has nothing on its disks)."""
        from pacsinfra.drivers.kvm.machines import read_machine

        obs = read_machine(self.driver, machine, desired=None)
        return obs is not None and obs.power == PowerState.ON

    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> Any:
        """The SSH session to running domain ``machine`` (waits for its host keys and
        sshd as a service step does); ``with_pacsinfra``: this pacsinfra installed in its
        venv. For work between the machine and service steps (``dr rebuild``)."""
        from pacsinfra.drivers.kvm.machines import read_machine

        if self.login is None:
            raise DeployError("provider.kvm.ssh is not set: pacsinfra cannot log in to "
                              f"{machine}")
        obs = read_machine(self.driver, machine, desired=None)
        if obs is None or obs.power != PowerState.ON or not isinstance(obs.spec, MachineSpec):
            raise DeployError(f"{machine} is not running")
        deadline = time.monotonic() + self.login.boot_timeout
        found = self._static(obs.spec, wait=self.login.boot_timeout, install=with_pacsinfra)
        assert found is not None
        inner, ep = found
        _wait_for_banner(ep, deadline)
        return inner.host_session(machine, with_pacsinfra=with_pacsinfra)

    def update(self, spec: ServiceSpec, observed: Observed, fields: Any) -> Observed:
        assert observed.owner is not None
        return self._ready(spec, observed.owner).update(spec, observed, fields)

    def delete(self, observed: Observed) -> None:
        spec = observed.spec
        assert isinstance(spec, ServiceSpec)
        mobs = self._machine(spec)
        if mobs is None or self.login is None:
            return  # no running machine: the service went (or goes) with it
        assert isinstance(mobs.spec, MachineSpec)
        found = self._static(mobs.spec, wait=0)
        if found is None:
            return  # never reachable: nothing of ours can run there
        found[0].delete(observed)
