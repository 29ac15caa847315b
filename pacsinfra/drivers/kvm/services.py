"""PACS services on the machines the KVM driver makes (``provider.kvm.ssh``).

The steps themselves are the shared guest-services code
(:mod:`pacsinfra.drivers.guest_services`: one ``static`` driver per booted machine,
wheel -> venv, config, systemd unit or supervisor, C-ECHO), as for vSphere and Hyper-V
machines. What is KVM's own:

- **where the machine is reached, at plan time** (:func:`ssh_endpoint`): the host side
  of a user-mode NIC's forward to guest port 22 (``127.0.0.1:<port>``), else the first
  static NIC address (port ``provider.kvm.ssh.port``, 22). A machine with neither (DHCP
  only) cannot run services yet: its address is known only after it boots, and the plan
  engine has no "known after apply" values. :class:`KvmLayout` renders the configs from it.
- **host keys, never trusted on first use** (:meth:`GuestServices.learn_host_keys`):
  pinned in ``provider.kvm.ssh.host_keys`` (machine or role), or a ``known_hosts`` file;
  else learnt from the machine's serial console log (``console_log``), where cloud-init
  (or any init doing the same) prints them between ``-----BEGIN SSH HOST KEY KEYS-----``
  markers, and then recorded in the domain's metadata (namespace :data:`HOSTKEYS_NS`):
  later runs use the recorded key, so a different key on a later boot is a mismatch,
  not a new trust.
- **the machine** is the libvirt domain (``read_machine``): no running domain, no service.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, unescape

from pacsinfra.deploy.ssh import host_keys_from_console
from pacsinfra.drivers import guest_services as guest
from pacsinfra.drivers import service_common as common
from pacsinfra.drivers.base import MachineSpec, Observed
from pacsinfra.drivers.guest_services import (  # noqa: F401 - kvm's names for them
    DEFAULT_BOOT_TIMEOUT,
    DEFAULT_ROOT,
    LOGIN_FIELDS,
    Endpoint,
    GuestLogin,
)
from pacsinfra.drivers.kvm import usernet
from pacsinfra.errors import DeployError

if TYPE_CHECKING:
    from pacsinfra.drivers.kvm.driver import KvmDriver

HOSTKEYS_NS = "https://pacsinfra.dev/xmlns/hostkeys/1"
HOSTKEYS_KEY = "pihk"
_HOSTFWD = re.compile(r"tcp:([0-9.]*):(\d+)-([0-9.]*):(\d+)")
_RECORDED = re.compile(r"<hostkeys[^>]*>(.*)</hostkeys>", re.S)


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
    return guest.static_endpoint(spec, port, skip=usernet.is_user)


def endpoint_problem(spec: MachineSpec) -> str:
    return (f"machine {spec.name} runs services but has no address known before it boots: "
            "give one of its NICs a static address (nics[].addresses), or put it on a "
            "user-mode network (networks.<n>.kvm.user: true) with a forward to guest port 22")


class KvmLayout(guest.GuestLayout):
    """Where services' files go on a KVM machine and how it is reached (for plan-time rendering)."""

    def __init__(self, settings: Any, machines: Mapping[str, MachineSpec]) -> None:
        super().__init__(settings, machines, endpoint=ssh_endpoint, problem=endpoint_problem)


class GuestServices(guest.GuestServices):
    """The ServiceSpec steps of a KvmDriver, carried out over SSH in its running domains."""

    provider = "kvm"

    def __init__(self, driver: KvmDriver) -> None:
        super().__init__(driver.config)
        self.driver = driver

    # -- the domains -----------------------------------------------------------------------
    def machine(self, name: str) -> Observed | None:
        from pacsinfra.drivers.kvm.machines import read_machine

        return read_machine(self.driver, name, desired=None)

    def owned_machines(self, site: str) -> list[Observed]:
        out = []
        for name in self.driver.lc.domain_names():
            obs = self.machine(name)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        return out

    def endpoint(self, spec: MachineSpec) -> Endpoint | None:
        return ssh_endpoint(spec, self.login.port if self.login else 22)

    def endpoint_problem(self, spec: MachineSpec) -> str:
        return endpoint_problem(spec)

    # -- host keys from the console, recorded in the domain -----------------------------------
    def _console_path(self, machine: str) -> Path | None:
        from pacsinfra.drivers.settings import setting

        where = setting(self.driver.config, "console_log")
        return Path(str(where)) / f"{machine}.console.log" if where else None

    def _recorded(self, machine: str) -> tuple[str, ...]:
        xml = self.driver.lc.domain_metadata(machine, HOSTKEYS_NS)
        m = _RECORDED.search(xml or "")
        if not m:
            return ()
        try:
            keys = json.loads(unescape(m[1]))
        except ValueError:
            return ()
        return tuple(str(k) for k in keys) if isinstance(keys, list) else ()

    def _record(self, machine: str, keys: tuple[str, ...]) -> None:
        payload = escape(json.dumps(list(keys)))
        self.driver.lc.set_domain_metadata(
            machine, HOSTKEYS_NS, HOSTKEYS_KEY, f"<hostkeys>{payload}</hostkeys>")

    def learn_host_keys(self, machine: MachineSpec, wait: float) -> tuple[str, ...] | None:
        """Keys recorded in the domain, else read from its console log (then recorded)."""
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
