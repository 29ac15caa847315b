"""Network checks: segments, VLANs, CIDRs, static addresses, and where DICOM may flow."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from pacsinfra.blueprint.overlay import did_you_mean
from pacsinfra.blueprint.services import DICOM_KINDS
from pacsinfra.drivers.base import Capability
from pacsinfra.providers import DECLARATIONS

if TYPE_CHECKING:
    from pacsinfra.blueprint.model import Site
    from pacsinfra.blueprint.report import Reporter

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(site: Site) -> dict[str, Net]:
    out: dict[str, Net] = {}
    for name, n in site.networks.items():
        if n.cidr:
            out[name] = ipaddress.ip_network(n.cidr)
    return out


def _can(driver: str, capability: Capability) -> bool:
    """Whether ``driver`` carries out ``capability`` (an unknown driver is reported elsewhere)."""
    decl = DECLARATIONS.get(driver)
    return decl is None or decl.can(capability)


def check_networks(site: Site, r: Reporter) -> None:
    drv = site.provider.driver
    nets = _nets(site)
    vlans: dict[int, str] = {}
    for name, n in site.networks.items():
        base = ("networks", name)
        if n.vlan is not None:
            if n.vlan in vlans:
                r.add(base + ("vlan",), f"VLAN {n.vlan} is also used by network {vlans[n.vlan]!r}",
                      hint="each segment needs its own VLAN", code="duplicate")
            vlans.setdefault(n.vlan, name)
            if not _can(drv, Capability.VLAN):
                r.warn(base + ("vlan",), f"the {drv} driver cannot apply {Capability.VLAN.text}; "
                       "it will be ignored", code="capability")
        if n.mtu and n.mtu > 1500 and not _can(drv, Capability.JUMBO_FRAMES):
            r.warn(base + ("mtu",), f"the {drv} driver cannot apply "
                   f"{Capability.JUMBO_FRAMES.text}; it will be ignored", code="capability")
        net = nets.get(name)
        if n.gateway is not None:
            gw = ipaddress.ip_address(n.gateway)
            if net is None:
                r.add(base + ("gateway",), "a gateway without a cidr",
                      hint="add the network's cidr", code="gateway")
            elif gw not in net:
                r.add(base + ("gateway",), f"gateway {gw} is outside {net}",
                      hint=f"pick an address inside {net}, e.g. {_first_host(net)}", code="gateway")
            elif net.num_addresses > 2 and gw in (net.network_address, net.broadcast_address):
                r.add(base + ("gateway",), f"gateway {gw} is the network or broadcast address",
                      hint=f"e.g. {_first_host(net)}", code="gateway")
        for i, src in enumerate(n.allow_from):
            if src not in site.networks:
                r.add(base + ("allow_from", i), f"unknown network {src!r}",
                      hint=did_you_mean(src, site.networks, "networks"), code="unknown-ref",
                      ref=("networks", src))
        for i, rule in enumerate(n.allow):
            if rule.from_ not in site.networks:
                r.add(base + ("allow", i, "from"), f"unknown network {rule.from_!r}",
                      hint=did_you_mean(rule.from_, site.networks, "networks"), code="unknown-ref",
                      ref=("networks", rule.from_))
            for j, port in enumerate(rule.ports):
                if not 1 <= port <= 65535:
                    r.add(base + ("allow", i, "ports", j), f"port {port} out of range 1-65535",
                          code="range")
    names = list(nets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            na, nb = nets[a], nets[b]
            if na.version == nb.version and na.overlaps(nb):
                r.add(("networks", b, "cidr"), f"{nb} overlaps {na} of network {a!r}",
                      hint="segments need disjoint address ranges", code="overlap")


def _first_host(net: Net) -> str:
    if net.num_addresses <= 2:
        return str(net.network_address)
    return str(net.network_address + 1)


def check_addresses(site: Site, r: Reporter) -> None:
    """Static addresses: one per member, inside the CIDR, not special, unique site-wide."""
    nets = _nets(site)
    used: dict[str, str] = {}
    for name, n in site.networks.items():
        if n.gateway:
            used[str(ipaddress.ip_address(n.gateway))] = f"the gateway of network {name!r}"
    macs: dict[str, str] = {}
    for role_name, role in site.machines.items():
        for i, nic in enumerate(role.nics):
            base = ("machines", role_name, "nics", i)
            if nic.mac:
                mac = nic.mac.lower()
                if role.count > 1:
                    r.add(base + ("mac",), f"one MAC address for {role.count} machines",
                          hint="leave mac out (the hypervisor assigns one) or use count: 1",
                          code="mac")
                elif mac in macs:
                    r.add(base + ("mac",), f"MAC address {mac} is also used by {macs[mac]}",
                          code="mac")
                macs.setdefault(mac, f"machines.{role_name}.nics[{i}]")
            if not nic.addresses:
                continue
            if len(nic.addresses) != role.count:
                r.add(base + ("addresses",),
                      f"{len(nic.addresses)} address(es) for {role.count} machine(s)",
                      hint="give one address per member (addresses[k] is member k+1's), or "
                           "use pool: dhcp", code="address-count")
            net = nets.get(nic.network)
            netcfg = site.networks.get(nic.network)
            if netcfg is not None and net is None:
                r.add(base + ("addresses",), f"network {nic.network!r} has no cidr for static "
                      "addresses", hint=f"add networks.{nic.network}.cidr", code="address")
            for k, text in enumerate(nic.addresses):
                ip = ipaddress.ip_address(text)
                where = base + ("addresses", k)
                if net is not None:
                    if ip.version != net.version or ip not in net:
                        r.add(where, f"{ip} is outside {net} (network {nic.network!r})",
                              hint=f"use an address inside {net}", code="address")
                        continue
                    if net.num_addresses > 2 and ip in (net.network_address, net.broadcast_address):
                        r.add(where, f"{ip} is the network or broadcast address of {net}",
                              code="address")
                        continue
                key = str(ip)
                owner = f"machines.{role_name}.nics[{i}].addresses[{k}]"
                if key in used:
                    r.add(where, f"{ip} is already {used[key]}",
                          hint="every static address must be unique", code="address-conflict")
                else:
                    used[key] = f"used by {owner}"
    _check_dicom_segments(site, r)


def _check_dicom_segments(site: Site, r: Reporter) -> None:
    """DICOM must not travel on a management segment."""
    for role_name, role in site.machines.items():
        kinds = {site.services[s].kind for s in role.services if s in site.services}
        dicom = kinds & DICOM_KINDS
        purposes = {
            nic.network: site.networks[nic.network].purpose
            for nic in role.nics
            if nic.network in site.networks
        }
        for i, nic in enumerate(role.nics):
            purpose = purposes.get(nic.network)
            if nic.traffic and "dicom" in nic.traffic and purpose == "management":
                r.add(("machines", role_name, "nics", i, "traffic"),
                      f"DICOM traffic on management network {nic.network!r}",
                      hint="carry DICOM on a dicom-purpose network", code="dicom-on-management")
        if dicom and purposes and "dicom" not in purposes.values():
            mgmt = [i for i, nic in enumerate(role.nics) if purposes.get(nic.network) == "management"]
            if mgmt:
                r.add(("machines", role_name, "nics", mgmt[0]),
                      f"role {role_name!r} runs {'/'.join(sorted(dicom))} but its only path for "
                      "DICOM is the management network "
                      f"{role.nics[mgmt[0]].network!r}",
                      hint="add a NIC on a network with purpose: dicom", code="dicom-on-management")
        # a DICOM listener bound to an address of a management network
        for svc_name in role.services:
            svc = site.services.get(svc_name)
            if svc is None or svc.kind not in DICOM_KINDS:
                continue
            bind = _bind_ip(svc.config.bind)
            if bind is None:
                continue
            for net_name, n in site.networks.items():
                if n.purpose == "management" and n.cidr and bind in ipaddress.ip_network(n.cidr):
                    r.add(("services", svc_name, "config", "bind"),
                          f"DICOM listener bound to {bind}, on management network {net_name!r}",
                          hint="bind to the dicom network's address (or 0.0.0.0 with a dicom NIC)",
                          code="dicom-on-management")


def _bind_ip(text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(str(text))
    except ValueError:
        return None
    return None if ip.is_unspecified or ip.is_loopback else ip


__all__ = ["check_addresses", "check_networks"]
