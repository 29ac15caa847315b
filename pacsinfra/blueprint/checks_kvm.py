"""Checks of KVM-only settings: user-mode networks, their forwards, services on kvm machines.

- ``nics[].forwards`` only on a network declared ``kvm: {user: true}`` (QEMU's own NAT),
  and a user-mode network only with NICs that say how they are reached (a NIC there
  without forwards is unreachable from outside: a warning);
- with ``provider.kvm.ssh`` (services on the machines the driver makes): a login key
  (``key_file`` or ``key``); ``host_keys`` naming machines or roles; every machine that
  runs services reachable at an address known before it boots (a forward to guest port
  22 on a user-mode network, or a static NIC address); on a user-mode network each
  service's port forwarded with the same host port (pacsinfra, the health check and
  verify reach it at ``127.0.0.1:<port>``), which only a role of one machine can have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacsinfra.blueprint.checks_guests import check_login

if TYPE_CHECKING:
    from pacsinfra.blueprint.checks import Reporter
    from pacsinfra.blueprint.model import Site

CODE = "kvm-services"


def _is_user(site: Site, network: str) -> bool:
    net = site.networks.get(network)
    return bool(net is not None and net.kvm is not None and net.kvm.user)


def check_kvm_nics(site: Site, r: Reporter) -> None:
    """Forwards only on user-mode networks (any driver: the blueprint means one thing)."""
    for role_name, role in site.machines.items():
        for i, nic in enumerate(role.nics):
            if nic.forwards and nic.network in site.networks and not _is_user(site, nic.network):
                r.add(("machines", role_name, "nics", i, "forwards"),
                      f"forwards need a user-mode network; {nic.network!r} is not one",
                      hint=f"set networks.{nic.network}.kvm.user: true (QEMU's NAT, test and "
                           "edge hosts), or drop forwards", code="kvm-user-net")


def check_kvm_services(site: Site, r: Reporter) -> None:
    """``provider.kvm.ssh``: login, pinned keys' targets, reachable service machines."""
    kvm = site.provider.kvm
    ssh = kvm.ssh if kvm is not None else None
    if ssh is None:
        return
    check_login(site, r, "kvm", ssh)
    for role_name, role in site.machines.items():
        if not role.services:
            continue
        where = ("machines", role_name)
        user_nics = [n for n in role.nics if _is_user(site, n.network)]
        ssh_fwd = any(f.guest == 22 and f.protocol == "tcp" for n in user_nics for f in n.forwards)
        static = any(n.addresses for n in role.nics if not _is_user(site, n.network))
        if not (ssh_fwd or static):
            r.add(where, f"role {role_name!r} runs services but its machines have no address "
                  "known before they boot",
                  hint="give a NIC static addresses (one per member), or put it on a user-mode "
                       "network with forwards: [{guest: 22, host: 2222}]; DHCP addresses are "
                       "not supported for services yet", code=CODE, key=True)
            continue
        if not ssh_fwd:
            continue
        if role.count > 1:
            r.add(where + ("count",), "a role on a user-mode network runs services on one "
                  "machine only (member k's forwards listen on host + k, so its services "
                  "are not at their own port)", hint="count: 1, or a libvirt network",
                  code=CODE)
        forwarded = {(f.guest, f.host) for n in user_nics for f in n.forwards
                     if f.protocol == "tcp"}
        for svc_name in role.services:
            svc = site.services.get(svc_name)
            port: Any = getattr(getattr(svc, "config", None), "port", None)
            if not isinstance(port, int):
                continue
            if (port, port) not in forwarded:
                r.add(where + ("nics",), f"service {svc_name!r} listens on port {port}, which "
                      "no forward reaches at the same host port",
                      hint=f"add forwards: [{{guest: {port}, host: {port}}}]", code=CODE,
                      key=True)
