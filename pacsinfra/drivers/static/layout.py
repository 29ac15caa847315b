"""The ``static`` provider's settings and where things live on a host (pure: no I/O).

Settings come from ``provider.static`` (the blueprint model, or its JSON dump in a
saved plan): defaults at the top, overridden per host. Secret references (``key``)
stay references; :mod:`pacsinfra.drivers.static.remote` resolves them when it connects.

Layout on a host (``<root>`` is the host's ``root``, default ``/opt/pacsinfra``)::

    <root>/machine.json                  ownership mark + the machine spec as recorded
    <root>/venv/                         pacsinfra (wheel), pacsinfra-wheel.json
    <root>/services/<svc>/service.json   mark + spec of one service
    <root>/services/<svc>/config.yaml    the file the service reads (0640)
    <root>/data/<svc>/                   the service's data (kept when the service goes)
    <root>/run/                          supervisor files: <svc>.lock/.state.json/.log

Networks and storage classes are no-ops; their marks are a small record on the
pacsinfra machine (``records``, default ``$XDG_DATA_HOME/pacsinfra/static``):
``<records>/<site>/{networks,storage}/<name>.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pacsinfra.drivers.settings import as_dict

DEFAULT_ROOT = "/opt/pacsinfra"
DEFAULT_USER = "root"
DEFAULT_PYTHON = "/usr/bin/python3"
DEFAULT_ANSIBLE_THRESHOLD = 10  # engine auto: ansible-runner for more hosts than this
LOGIN_FIELDS = ("port", "user", "key_file", "key", "known_hosts", "python", "root",
                 "find_links", "system_site_packages")




@dataclass(frozen=True)
class HostSettings:
    """How to reach one existing host and where pacsinfra lives on it."""

    machine: str  # the machine name it is (``<site>-<role>-<n>``)
    address: str
    port: int = 22
    user: str = DEFAULT_USER
    key_file: str | None = None
    key: Mapping[str, str] | None = None  # a secret reference ({"env": ...}), not a value
    known_hosts: str | None = None
    host_keys: Sequence[str] = ()
    python: str = DEFAULT_PYTHON
    root: str = DEFAULT_ROOT
    find_links: str | None = None
    system_site_packages: bool = False

    # -- paths on the host ---------------------------------------------------------------
    @property
    def base(self) -> PurePosixPath:
        return PurePosixPath(self.root)

    @property
    def machine_mark(self) -> str:
        return str(self.base / "machine.json")

    @property
    def venv(self) -> str:
        return str(self.base / "venv")

    @property
    def venv_python(self) -> str:
        return str(self.base / "venv" / "bin" / "python")

    @property
    def run_dir(self) -> str:
        return str(self.base / "run")

    @property
    def services_dir(self) -> str:
        return str(self.base / "services")

    def service_dir(self, service: str) -> str:
        return str(self.base / "services" / service)

    def data_dir(self, service: str) -> str:
        return str(self.base / "data" / service)

    def describe(self) -> str:
        """``machine (user@address:port)`` for messages."""
        return f"{self.machine} ({self.user}@{self.address}:{self.port})"


@dataclass(frozen=True)
class StaticSettings:
    """The whole ``provider.static`` section, with defaults applied to every host."""

    hosts: Mapping[str, HostSettings]
    wheel: str | None = None
    records: Path | None = None
    engine: str = "auto"  # ssh | ansible | auto
    ansible_threshold: int = DEFAULT_ANSIBLE_THRESHOLD

    @property
    def transport(self) -> str:
        """The engine in effect: ``ssh`` or ``ansible`` (auto decided by the number of hosts)."""
        if self.engine in ("ssh", "ansible"):
            return self.engine
        return "ansible" if len(self.hosts) > self.ansible_threshold else "ssh"

    @classmethod
    def parse(cls, config: Any) -> StaticSettings:
        """From the blueprint model or its JSON dump (unknown keys were refused by validation)."""
        raw = as_dict(config)
        defaults = {k: raw[k] for k in LOGIN_FIELDS if raw.get(k) is not None}
        hosts: dict[str, HostSettings] = {}
        for name, entry in (raw.get("hosts") or {}).items():
            own = {k: v for k, v in as_dict(entry).items() if v is not None}
            base = dict(defaults)
            if "key_file" in own or "key" in own:
                # a host's own key replaces the default, whichever form either is in
                base.pop("key_file", None)
                base.pop("key", None)
            merged = {**base, **own}
            merged["host_keys"] = tuple(merged.get("host_keys") or ())
            hosts[str(name)] = HostSettings(machine=str(name), **merged)
        records = raw.get("records")
        threshold = raw.get("ansible_threshold")
        return cls(hosts=hosts, wheel=raw.get("wheel"),
                   records=Path(os.path.expanduser(records)) if records else None,
                   engine=str(raw.get("engine") or "auto"),
                   ansible_threshold=DEFAULT_ANSIBLE_THRESHOLD if threshold is None
                   else int(threshold))

    def host(self, machine: str) -> HostSettings | None:
        return self.hosts.get(machine)


def records_root(settings: StaticSettings) -> Path:
    """Where the no-op network/storage marks are kept on the pacsinfra machine."""
    if settings.records is not None:
        return Path(os.path.abspath(settings.records))
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "pacsinfra" / "static"


class StaticLayout:
    """Where a service's files go and how it is reached, for config rendering at plan time."""

    def __init__(self, settings: StaticSettings) -> None:
        self.settings = settings

    def _host(self, machine: str) -> HostSettings:
        host = self.settings.host(machine)
        if host is None:
            from pacsinfra.errors import PlanError

            raise PlanError(f"machine {machine} has no host in provider.static.hosts")
        return host

    def base_dir(self, machine: str) -> PurePosixPath:
        return self._host(machine).base

    def data_dir(self, machine: str, service: str) -> PurePosixPath:
        return PurePosixPath(self._host(machine).data_dir(service))

    def address(self, machine: str) -> str | None:
        return self._host(machine).address

    def default_bind(self, machine: str) -> str:
        # the host's own address: reachable by the other hosts and by pacsinfra, and not
        # on interfaces nobody asked for (set bind: 0.0.0.0 for every interface)
        return self._host(machine).address
