"""The ``local`` provider, declared: this machine is the one host of the site.

Pure: the blueprint model, ``validate`` and the docs read this;
:class:`~pacsinfra.services.local.hosts.LocalHosts` carries it out. Its machines are
directories under ``root`` and its services supervised processes here, so it makes no
machines, takes no images, and none of the hypervisor capabilities apply.
"""

from __future__ import annotations

from pydantic import Field

from pacsinfra.drivers.declaration import Declaration
from pacsinfra.types import Strict


class LocalSettings(Strict):
    """Everything on this one box (no hypervisor).

    Attributes:
        root: Where sites, machines, configs and data live (default: ``$PACSINFRA_LOCAL_ROOT``,
            else ``$XDG_DATA_HOME/pacsinfra``, i.e. ``~/.local/share/pacsinfra``; the
            environment variable wins over this key).
    """

    root: str | None = Field(
        None, description="the directory holding every local site ($PACSINFRA_LOCAL_ROOT, "
                          "else $XDG_DATA_HOME/pacsinfra)")


DECLARATION = Declaration(
    name="local",
    summary="this machine: the services run as supervised processes, data under a directory",
    implementation="pacsinfra.services.local.hosts:LocalHosts",
    settings=LocalSettings,
    makes_machines=False,
    data_on_disks=False,
)
