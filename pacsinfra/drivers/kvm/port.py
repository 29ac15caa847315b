"""How the services layer finds and reaches the machines the kvm driver makes.

- **the machine** is the libvirt domain (:func:`~pacsinfra.drivers.kvm.machines.read_machine`);
- **where it is reached** is declared (:func:`pacsinfra.drivers.kvm.declaration.ssh_endpoint`);
- **host keys, never trusted on first use**: when none are pinned in the blueprint they
  are learnt from the machine's serial console log (``provider.kvm.console_log``), where
  cloud-init (or any init doing the same) prints them between ``-----BEGIN SSH HOST KEY
  KEYS-----`` markers, and then recorded in the domain's metadata (namespace
  :data:`HOSTKEYS_NS`): later runs use the recorded key, so a different key on a later
  boot is a mismatch, not a new trust.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, unescape

from pacsinfra.deploy.ssh import host_keys_from_console
from pacsinfra.drivers.kvm.client import LibvirtClient
from pacsinfra.drivers.settings import setting
from pacsinfra.errors import DeployError
from pacsinfra.specs import MachineSpec, Observed

HOSTKEYS_NS = "https://pacsinfra.dev/xmlns/hostkeys/1"
HOSTKEYS_KEY = "pihk"
_RECORDED = re.compile(r"<hostkeys[^>]*>(.*)</hostkeys>", re.S)
_KEY_LINE = re.compile(r"^(ssh-|ecdsa-)\S+ [A-Za-z0-9+/=]+")


def _tail(text: str) -> str:
    return "\n".join("  | " + line for line in text.splitlines()) or "  (empty)"


class KvmPort:
    """The kvm driver's machines, for the services layer."""

    def __init__(self, config: Any, lc: Callable[[], LibvirtClient],
                 read: Callable[[str], Observed | None]) -> None:
        self.config = config
        self._lc = lc  # the driver's connection, opened on first use
        self._read = read

    def machine(self, name: str) -> Observed | None:
        return self._read(name)

    def owned_machines(self, site: str) -> list[Observed]:
        out = []
        for name in self._lc().domain_names():
            obs = self.machine(name)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        return out

    # -- host keys from the console, recorded in the domain -----------------------------------
    def _console_path(self, machine: str) -> Path | None:
        where = setting(self.config, "console_log")
        return Path(str(where)) / f"{machine}.console.log" if where else None

    def _recorded(self, machine: str) -> tuple[str, ...]:
        xml = self._lc().domain_metadata(machine, HOSTKEYS_NS)
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
        self._lc().set_domain_metadata(
            machine, HOSTKEYS_NS, HOSTKEYS_KEY, f"<hostkeys>{payload}</hostkeys>")

    def learn_host_keys(self, spec: MachineSpec, wait: float) -> tuple[str, ...] | None:
        """Keys recorded in the domain, else read from its console log (then recorded)."""
        recorded = self._recorded(spec.name)
        if recorded:
            return recorded
        console = self._console_path(spec.name)
        if console is None:
            if wait <= 0:
                return None
            raise DeployError(
                f"{spec.name}: no pinned SSH host key and no console log to learn it from; "
                "pin it (deploy.host_keys or deploy.known_hosts) or set "
                "provider.kvm.console_log (pacsinfra never trusts a key on first use)")
        deadline = time.monotonic() + wait
        while True:
            try:
                text = console.read_text(errors="replace")
            except OSError:
                text = ""
            # only whole lines that look like keys (a console may interleave kernel messages)
            keys = tuple(k for k in host_keys_from_console(text) if _KEY_LINE.match(k))
            if keys:
                self._record(spec.name, keys)
                return keys
            if time.monotonic() >= deadline:
                if wait <= 0:
                    return None
                raise DeployError(
                    f"{spec.name}: no SSH host keys on its console within {wait:.0f}s "
                    f"(between -----BEGIN SSH HOST KEY KEYS----- markers, as cloud-init prints "
                    f"them); end of {console}:\n{_tail(text[-2000:])}")
            time.sleep(1.0)
