"""The ``static`` provider, declared: the site's machines are hosts that exist already.

Pure: the blueprint model, ``validate`` and the docs read this;
:class:`~pacsinfra.services.static.hosts.StaticHosts` carries it out. Each machine of the
site (``<site>-<role>-<n>``) is an entry of ``provider.static.hosts``, reached over SSH
with the site's ``deploy`` login, which an entry may override for itself.
"""

from __future__ import annotations

from pydantic import Field

from pacsinfra.drivers.declaration import Declaration
from pacsinfra.services.settings import HostKey, Login
from pacsinfra.types import Strict

# an IPv4/IPv6 address or a DNS name
_HOST_ADDRESS = r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]+)$"


class StaticHost(Login):
    """One existing host (bare metal, a pre-made VM) that a machine of the site is.

    Its SSH host key is pinned here (``host_keys``) or in ``known_hosts``: pacsinfra never
    trusts a key on first use.

    Attributes:
        address: The host's IP address or DNS name.
        host_keys: The host's SSH public keys (``ssh-ed25519 AAAA...``), or use
            ``known_hosts``.
    """

    address: str = Field(pattern=_HOST_ADDRESS, description="where the host is reached")
    host_keys: list[HostKey] = Field(default_factory=list,
                                     description="the host's SSH public keys")


class StaticSettings(Strict):
    """Hosts that already exist, reached over SSH: machine name -> host.

    Attributes:
        hosts: Machine name (``<site>-<role>-<n>``) -> the existing host that is that machine.
    """

    hosts: dict[str, StaticHost] = Field(default_factory=dict)
    records: str | None = Field(
        None, description="where the no-op network/storage marks are kept, on this machine "
                          "($XDG_DATA_HOME/pacsinfra/static)")


DECLARATION = Declaration(
    name="static",
    summary="hosts that already exist (bare metal, pre-made VMs), reached over SSH",
    implementation="pacsinfra.services.static.hosts:StaticHosts",
    settings=StaticSettings,
    makes_machines=False,
)
