"""One host reached over SSH: how to log in, and where pacsinfra lives on it (pure: no I/O).

A host is an entry of ``provider.static.hosts`` or a machine a hypervisor driver made;
either way its login is the site's ``deploy`` settings, overridden field by field where
the entry says so. Secret references (``key``) stay references;
:mod:`pacsinfra.services.remote.session` resolves them when it connects.

Layout on a host (``<root>`` is the host's ``root``, default ``/opt/pacsinfra``)::

    <root>/machine.json                  ownership mark + the machine spec as recorded
    <root>/venv/                         pacsinfra (wheel), pacsinfra-wheel.json
    <root>/services/<svc>/service.json   mark + spec of one service
    <root>/services/<svc>/config.yaml    the file the service reads (0640)
    <root>/data/<svc>/                   the service's data (kept when the service goes)
    <root>/run/                          supervisor files: <svc>.lock/.state.json/.log
    <root>/cache/                        downloads the services share (the viewer's OHIF)

Logged in as root, pacsinfra runs the services as ``service_user`` (``pacsinfra``, a
system account it creates when missing): the service directories are root's with that
account's group (it reads its config, cannot change it), the data directories its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pacsinfra.services.settings import (
    DEFAULT_PYTHON,
    DEFAULT_ROOT,
    DEFAULT_SERVICE_USER,
    DEFAULT_USER,
    LOGIN_FIELDS,
)


@dataclass(frozen=True)
class HostSettings:
    """How to reach one host and where pacsinfra lives on it."""

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
    service_user: str = DEFAULT_SERVICE_USER

    @classmethod
    def merge(cls, machine: str, address: str, defaults: Mapping[str, Any],
              own: Mapping[str, Any], host_keys: Sequence[str] = (),
              port: int | None = None) -> HostSettings:
        """The site's login ``defaults`` (``deploy``) overridden by a host's ``own`` fields.

        A host's own key replaces the default whichever form either is in (``key_file``
        or ``key``); ``port`` (a forwarded port) wins over both.
        """
        base = {k: v for k, v in defaults.items() if k in LOGIN_FIELDS and v is not None}
        mine = {k: v for k, v in own.items() if k in LOGIN_FIELDS and v is not None}
        if "key_file" in mine or "key" in mine:
            base.pop("key_file", None)
            base.pop("key", None)
        merged = {**base, **mine}
        if port is not None:
            merged["port"] = port
        if merged.get("key") is not None:
            merged["key"] = dict(merged["key"])
        return cls(machine=machine, address=address, host_keys=tuple(host_keys), **merged)

    @property
    def runs_as(self) -> str:
        """The account the services run as: the service user when pacsinfra logs in as
        root (root hands everything a service writes to it), else the login user."""
        return self.service_user if self.user == "root" else self.user

    @property
    def hands_over(self) -> bool:
        """Whether files a service writes must be given to another account than the login."""
        return self.runs_as != self.user

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
