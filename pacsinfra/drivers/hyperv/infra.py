"""NetworkSpec <-> virtual switches and StorageSpec <-> directories (pure mapping, no I/O).

A network is a virtual switch: ``settings`` = ``{"switch": name, "type": "internal" |
"external" | "private", "adapter": <host NIC for external>}``. VLANs are set per VM adapter
(``NicSpec.vlan``, access mode), so the network's own vlan/cidr/gateway/mtu/qos are recorded
in the switch's Notes mark. A storage class is a directory holding VHDX files, marked by
``.pacsinfra-storage.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pacsinfra.drivers.hyperv.marks import make_mark, parse_mark
from pacsinfra.drivers.hyperv.vm import HostContext, storage_dir
from pacsinfra.specs import NetworkSpec, Ownership, StorageSpec

NETWORK_RECORDED = ("purpose", "vlan", "cidr", "gateway", "mtu", "qos")
STORAGE_RECORDED = ("tier", "encrypted", "provisioning", "iops_limit", "iops_reservation")
SWITCH_TYPES = ("internal", "external", "private")


def switch_type(settings: Mapping[str, Any]) -> str:
    """The switch type asked for: as given, else external when an uplink adapter is named."""
    given = settings.get("type")
    if given:
        return str(given).lower()
    return "external" if settings.get("adapter") else "internal"


def switch_parameters(spec: NetworkSpec, owner: Ownership) -> dict[str, Any]:
    """The new-switch script's parameters document."""
    rec = {f: getattr(spec, f) for f in NETWORK_RECORDED}
    rec["settings"] = dict(spec.settings)
    return {
        "name": spec.name,
        "type": switch_type(spec.settings),
        "adapter": spec.settings.get("adapter"),
        "notes": make_mark(owner, rec),
    }


def parse_switch(facts: Mapping[str, Any], desired: NetworkSpec | None,
                 ) -> tuple[NetworkSpec, Ownership | None]:
    """A switch's facts as a NetworkSpec (settings keyed like the desired ones)."""
    mark = parse_mark(facts.get("notes"))
    owner, rec = mark if mark else (None, {})
    actual = {"switch": facts["name"], "type": str(facts.get("type") or ""), "adapter": facts.get("adapter")}
    base = dict(desired.settings) if desired is not None else dict(rec.get("settings") or {})
    settings = {k: actual.get(k, v) if k in actual else v for k, v in base.items()}
    address = owner.address if owner else (desired.address if desired else f"network.{facts['name']}")
    spec = NetworkSpec(
        address=address,
        name=str(facts["name"]),
        purpose=str(rec.get("purpose", desired.purpose if desired else "")),
        vlan=rec.get("vlan"),
        cidr=rec.get("cidr"),
        gateway=rec.get("gateway"),
        mtu=int(rec.get("mtu") or 1500),
        qos=rec.get("qos"),
        settings=settings,
    )
    return spec, owner


def storage_marker(spec: StorageSpec, owner: Ownership) -> str:
    rec = {f: getattr(spec, f) for f in STORAGE_RECORDED}
    rec["settings"] = dict(spec.settings)
    return make_mark(owner, rec)


def storage_parameters(spec: StorageSpec, owner: Ownership, ctx: HostContext) -> dict[str, Any]:
    """The ensure-storage script's parameters document."""
    return {"path": storage_dir(spec.name, ctx), "marker": storage_marker(spec, owner)}


def parse_storage(facts: Mapping[str, Any], desired: StorageSpec | None, ctx: HostContext,
                  ) -> tuple[StorageSpec, Ownership | None]:
    """A marked directory as a StorageSpec."""
    mark = parse_mark(facts.get("marker"))
    owner, rec = mark if mark else (None, {})
    path = str(facts["path"])
    if desired is not None and storage_dir(desired.name, ctx).lower() == path.lower():
        name = desired.name
    else:
        prefix = ctx.storage_root + "\\"
        name = path[len(prefix) :] if path.lower().startswith(prefix.lower()) else path
    base = dict(desired.settings) if desired is not None else dict(rec.get("settings") or {})
    settings = {k: (path if k == "path" else v) for k, v in base.items()}
    address = owner.address if owner else (desired.address if desired else f"storage.{name}")
    spec = StorageSpec(
        address=address,
        name=name,
        tier=str(rec.get("tier", desired.tier if desired else "")),
        encrypted=bool(rec.get("encrypted", False)),
        provisioning=str(rec.get("provisioning") or "thin"),
        iops_limit=rec.get("iops_limit"),
        iops_reservation=rec.get("iops_reservation"),
        settings=settings,
    )
    return spec, owner
