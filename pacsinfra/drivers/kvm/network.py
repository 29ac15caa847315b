"""NetworkSpec <-> libvirt network XML.

Settings read from ``NetworkSpec.settings`` (the blueprint's ``networks.<n>.kvm``):

- ``forward``: ``nat`` | ``route`` | ``open`` | ``bridge`` | ``none`` (isolated). Default:
  ``nat`` when the network has a CIDR, else isolated.
- ``bridge``: the bridge name (created by libvirt, or an existing host bridge for
  ``forward: bridge``). Default: ``pi-`` + 8 hex chars of the network name (15-char limit).
- ``openvswitch: true``: an OVS bridge (``<virtualport type='openvswitch'/>``); with
  ``vlan`` set, a default port group ``vlan-<id>`` tags guest traffic.
- ``dhcp: true``: a DHCP range over the upper half of the subnet.

The ownership mark is a ``<metadata>`` element, which libvirt keeps for networks
(checked on test:///default and libvirt 9.0); the other fields pacsinfra records
(purpose, qos, settings) travel in its intent JSON.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any
from xml.etree import ElementTree as ET

from pacsinfra.drivers.kvm import templating
from pacsinfra.drivers.kvm.xmlutil import intent_json, intent_of, owner_of
from pacsinfra.errors import CapabilityError
from pacsinfra.specs import NetworkSpec, Ownership

FORWARD_MODES = frozenset({"nat", "route", "open", "bridge", "none"})


def bridge_name(spec: NetworkSpec) -> str:
    """The bridge device for ``spec`` (explicit, or a stable 11-char default)."""
    explicit = spec.settings.get("bridge")
    if explicit:
        return str(explicit)
    return "pi-" + hashlib.sha256(spec.name.encode()).hexdigest()[:8]


def forward_mode(spec: NetworkSpec) -> str:
    """The libvirt forward mode for ``spec`` ("none" = isolated)."""
    mode = spec.settings.get("forward")
    if mode is None:
        return "nat" if spec.cidr else "none"
    mode = str(mode)
    if mode not in FORWARD_MODES:
        raise CapabilityError(
            f"{spec.address}: forward mode {mode!r} not supported (use one of {sorted(FORWARD_MODES)})"
        )
    return mode


def network_inputs(spec: NetworkSpec) -> dict[str, Any]:
    """The values ``network.xml.j2`` renders (pure)."""
    mode = forward_mode(spec)
    ovs = bool(spec.settings.get("openvswitch"))
    ip = None
    if spec.cidr and mode != "bridge":
        net = ipaddress.ip_network(spec.cidr, strict=False)
        gateway = spec.gateway or str(next(net.hosts()))
        dhcp = None
        if spec.settings.get("dhcp"):
            hosts = list(net.hosts()) if net.num_addresses <= 65536 else []
            if len(hosts) >= 4:
                dhcp = {"start": str(hosts[len(hosts) // 2]), "end": str(hosts[-1])}
        ip = {"address": gateway, "prefix": net.prefixlen, "dhcp": dhcp}
    if mode in ("nat", "route") and ip is None:
        raise CapabilityError(f"{spec.address}: forward mode {mode} needs a cidr")
    if mode == "bridge" and not spec.settings.get("bridge"):
        raise CapabilityError(
            f"{spec.address}: forward mode bridge needs settings.bridge (a host bridge)"
        )
    portgroups = []
    if spec.vlan is not None and ovs:
        portgroups.append({"name": f"vlan-{spec.vlan}", "vlan": spec.vlan, "default": True})
    intent: dict[str, Any] = {
        "purpose": spec.purpose,
        "qos": spec.qos,
        "settings": dict(spec.settings),
        "cidr": spec.cidr,  # for bridge mode, where libvirt holds no IP
        "gateway": spec.gateway,  # None = the first host address was used
    }
    if spec.vlan is not None and not ovs:
        intent["vlan"] = spec.vlan  # a tag libvirt cannot carry without OVS: recorded only
    if mode == "bridge":
        intent["mtu"] = spec.mtu  # a host bridge's MTU is the host's business: recorded only
    return {
        "name": spec.name,
        "intent": intent_json(intent),
        "forward": None if mode == "none" else mode,
        "bridge": bridge_name(spec),
        "mtu": spec.mtu if spec.mtu and spec.mtu != 1500 and mode != "bridge" else None,
        "ovs": ovs,
        "portgroups": portgroups,
        "ip": ip,
    }


def render_network(spec: NetworkSpec, owner: Ownership, *, uuid: str | None = None) -> str:
    """The network XML for ``spec`` (pure); ``uuid`` when redefining an existing network."""
    inputs = network_inputs(spec)
    inputs["uuid"] = uuid
    return templating.render("network.xml.j2", n=inputs, owner=owner)


def parse_network(xml: str, *, address: str | None = None) -> tuple[NetworkSpec, Ownership | None]:
    """Read a libvirt network back into a NetworkSpec, with its ownership mark."""
    root = ET.fromstring(xml)
    owner = owner_of(root)
    intent = intent_of(root)
    mtu_el = root.find("mtu")
    cidr = gateway = None
    ip_el = root.find("ip")
    if ip_el is not None and ip_el.get("address"):
        prefix = ip_el.get("prefix")
        if prefix is None and ip_el.get("netmask"):
            prefix = str(ipaddress.ip_network(f"0.0.0.0/{ip_el.get('netmask')}").prefixlen)
        iface = ipaddress.ip_interface(f"{ip_el.get('address')}/{prefix or 32}")
        cidr, gateway = str(iface.network), str(iface.ip)
        if (
            "gateway" in intent
            and intent["gateway"] is None
            and gateway == str(next(iface.network.hosts()))
        ):
            gateway = None  # rendered from the default, not asked for
    else:
        cidr, gateway = intent.get("cidr"), intent.get("gateway")
    vlan = intent.get("vlan")
    default_pg = root.find("portgroup[@default='yes']/vlan/tag")
    if default_pg is not None:
        vlan = int(default_pg.get("id", "0"))
    settings = dict(intent.get("settings") or {})
    fwd = root.find("forward")
    observed_mode = fwd.get("mode", "nat") if fwd is not None else "none"
    default_mode = "nat" if cidr and ip_el is not None else "none"
    if settings.get("forward") is not None or observed_mode != default_mode:
        settings["forward"] = observed_mode
    br = root.find("bridge")
    if br is not None and ("bridge" in settings and settings["bridge"] is not None):
        settings["bridge"] = br.get("name")
    vport = root.find("virtualport")
    if vport is not None and vport.get("type") == "openvswitch":
        settings["openvswitch"] = True
    elif settings.get("openvswitch"):
        settings["openvswitch"] = False
    if "dhcp" in settings or root.find("ip/dhcp") is not None:
        settings["dhcp"] = root.find("ip/dhcp") is not None
    spec = NetworkSpec(
        address=address or (owner.address if owner else ""),
        name=root.findtext("name") or "",
        purpose=intent.get("purpose", ""),
        vlan=vlan,
        cidr=cidr,
        gateway=gateway,
        mtu=int(mtu_el.get("size", "1500")) if mtu_el is not None else int(intent.get("mtu", 1500)),
        qos=intent.get("qos"),
        settings=settings,
    )
    return spec, owner
