"""Checks of KVM-only settings: user-mode networks and their forwards, VLANs, reaching machines.

- ``nics[].forwards`` only on a network declared ``kvm: {user: true}`` (QEMU's own NAT);
- a VLAN tag is applied on an Open vSwitch network (``kvm.openvswitch: true``) only: on
  a NAT, routed, isolated or Linux-bridge network the kvm driver records it (a warning);
- a machine that runs services is reached at an address known before it boots: a
  forward to guest port 22 on a user-mode network, or a static NIC address; on a
  user-mode network each service's port is forwarded with the same host port
  (pacsinfra, the health check and verify reach it at ``127.0.0.1:<port>``), which only
  a role of one machine can have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacsinfra.blueprint.model import MachineRole, Site
    from pacsinfra.blueprint.report import Reporter

CODE = "services-unreachable"


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


def check_kvm_vlans(site: Site, r: Reporter) -> None:
    """On kvm, a VLAN is tagged on Open vSwitch networks only."""
    if site.provider.driver != "kvm":
        return
    for name, net in site.networks.items():
        if net.vlan is None or _is_user(site, name):
            continue
        if net.kvm is None or not net.kvm.openvswitch:
            r.warn(("networks", name, "vlan"), f"VLAN {net.vlan} is recorded, not tagged: only "
                   "an Open vSwitch network tags its ports on kvm",
                   hint=f"set networks.{name}.kvm.openvswitch: true (with a bridge), or tag "
                        "the VLAN on the host's uplink", code="capability")


def check_kvm_reach(site: Site, r: Reporter, role_name: str, role: MachineRole) -> bool:
    """Whether the machines of ``role_name``, which run services, are reachable (kvm)."""
    where = ("machines", role_name)
    user_nics = [n for n in role.nics if _is_user(site, n.network)]
    ssh_fwd = any(f.guest == 22 and f.protocol == "tcp" for n in user_nics for f in n.forwards)
    static = any(n.addresses for n in role.nics if not _is_user(site, n.network))
    if not (ssh_fwd or static):
        r.add(where, f"role {role_name!r} runs services but its machines have no address "
              "known before they boot",
              hint="give a NIC static addresses (one per member), or put it on a user-mode "
                   "network with forwards: [{guest: 22, host: 2222}]; DHCP addresses are "
                   "known only after boot", code=CODE, key=True)
        return False
    if not ssh_fwd:
        return True
    if role.count > 1:
        r.add(where + ("count",), "a role on a user-mode network runs services on one "
              "machine only (member k's forwards listen on host + k, so its services "
              "are not at their own port)", hint="count: 1, or a libvirt network", code=CODE)
    forwarded = {(f.guest, f.host) for n in user_nics for f in n.forwards if f.protocol == "tcp"}
    for svc_name in role.services:
        svc = site.services.get(svc_name)
        port: Any = getattr(getattr(svc, "config", None), "port", None)
        if isinstance(port, int) and (port, port) not in forwarded:
            r.add(where + ("nics",), f"service {svc_name!r} listens on port {port}, which "
                  "no forward reaches at the same host port",
                  hint=f"add forwards: [{{guest: {port}, host: {port}}}]", code=CODE, key=True)
    return True
