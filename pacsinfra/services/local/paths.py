"""Where the ``local`` provider keeps a site: one directory per machine, state under a user dir.

Layout (``<root>`` is ``$PACSINFRA_LOCAL_ROOT``, else ``provider.local.root``, else
``$XDG_DATA_HOME/pacsinfra`` or ``~/.local/share/pacsinfra``)::

    <root>/<site>/                     one site (an overlay's "/" becomes "--")
      networks/<name>.json             ownership mark of a (no-op) network
      storage/<name>.json              ownership mark of a (no-op) storage class
      machines/<machine>/machine.json  ownership mark + the machine spec as recorded
      machines/<machine>/services/<svc>/service.json   mark + spec of one service
      machines/<machine>/services/<svc>/config.yaml    the file the service reads
      machines/<machine>/data/<svc>/   the service's data (kept when the service is removed)
      machines/<machine>/run/          supervisor files: <svc>.lock/.state.json/.log

This module is pure (no I/O except reading the environment): the planner renders
configs with these paths before anything exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT_ENV = "PACSINFRA_LOCAL_ROOT"


def local_root(settings: Any = None) -> Path:
    """The directory holding every local site (absolute, ``~`` expanded)."""
    env = os.environ.get(ROOT_ENV)
    root = None
    if settings is not None:
        root = settings.get("root") if isinstance(settings, dict) else getattr(settings, "root", None)
    if env:
        chosen = env
    elif root:
        chosen = str(root)
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        chosen = os.path.join(xdg, "pacsinfra")
    return Path(os.path.abspath(os.path.expanduser(chosen)))


def site_dir(root: Path, site: str) -> Path:
    """``<root>/<site>``; an overlay's ``name/overlay`` becomes ``name--overlay``."""
    return root / site.replace("/", "--")


def machine_dir(root: Path, site: str, machine: str) -> Path:
    """The directory that is machine ``machine`` (its hostname, ``<site>-<role>-<n>``)."""
    return site_dir(root, site) / "machines" / machine


def service_dir(root: Path, site: str, machine: str, service: str) -> Path:
    """Config and mark of one service on one machine."""
    return machine_dir(root, site, machine) / "services" / service


def data_dir(root: Path, site: str, machine: str, service: str) -> Path:
    """Where a service keeps its data on a machine."""
    return machine_dir(root, site, machine) / "data" / service


def run_dir(root: Path, site: str, machine: str) -> Path:
    """Supervisor files of a machine's services."""
    return machine_dir(root, site, machine) / "run"


class LocalLayout:
    """Where the services' files go on this box (plan time): under the machine's directory,
    reached on loopback."""

    uses_mounts = False  # the root holds everything: the blueprint's mounts are another box's

    def __init__(self, root: Path, site: str) -> None:
        self.root, self.site = root, site

    def base_dir(self, machine: str) -> Path:
        return machine_dir(self.root, self.site, machine)

    def data_dir(self, machine: str, service: str) -> Path:
        return data_dir(self.root, self.site, machine, service)

    def address(self, machine: str) -> str | None:
        return None

    def default_bind(self, machine: str) -> str:
        return "127.0.0.1"

    def cache_dir(self, machine: str) -> None:
        return None
