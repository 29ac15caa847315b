"""Port groups: standard (AddPortGroup on every host of the cluster) or distributed.

The ownership mark and the fields vSphere does not keep on a port group (purpose,
CIDR, gateway, MTU, QoS) live in a vCenter advanced setting
``config.pacsinfra.network.<name>``; the VLAN id and the kind of switch are read
from the port group itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pyVmomi import vim

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.vsphere import classify as classify_mod
from pacsinfra.drivers.vsphere.client import VsphereClient
from pacsinfra.drivers.vsphere.host import VsphereHost, refuse_unowned
from pacsinfra.drivers.vsphere.inventory import Inventory
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound
from pacsinfra.specs import (
    ChangeKind,
    NetworkSpec,
    Observed,
    Ownership,
    PowerState,
    Rendered,
    to_jsonable,
)

MARK_KIND = "network"
DEFAULT_SWITCH = "vSwitch0"


def is_distributed(spec: NetworkSpec) -> bool:
    return bool(spec.settings.get("distributed"))


def mark_of(spec: NetworkSpec, owner: Ownership) -> dict[str, Any]:
    """What the advanced setting holds: the owner and the unobservable fields."""
    return {
        "owner": owner.to_dict(),
        "address": spec.address,
        "purpose": spec.purpose,
        "cidr": spec.cidr,
        "gateway": spec.gateway,
        "mtu": spec.mtu,
        "qos": spec.qos,
        "settings": to_jsonable(spec.settings),
    }


def render(spec: NetworkSpec) -> dict[str, Any]:
    """The request create() would send, as JSON."""
    if is_distributed(spec):
        return {
            "method": "CreateDVPortgroup_Task",
            "switch": spec.settings.get("switch"),
            "spec": {"name": spec.name, "type": "earlyBinding", "numPorts": 128, "vlanId": spec.vlan or 0},
        }
    return {
        "method": "HostNetworkSystem.AddPortGroup (every host of the cluster)",
        "spec": {
            "name": spec.name,
            "vlanId": spec.vlan or 0,
            "vswitchName": spec.settings.get("switch") or DEFAULT_SWITCH,
        },
    }


class Networks(KindHandler[NetworkSpec]):
    """Port groups: standard (on every host's vSwitch) or distributed."""

    def __init__(self, host: VsphereHost) -> None:
        self.host = host

    @property
    def client(self) -> VsphereClient:
        return self.host.client

    @property
    def inv(self) -> Inventory:
        return self.host.inventory

    # -- planning --------------------------------------------------------------------
    def render(self, spec: NetworkSpec, owner: Ownership) -> Rendered:
        return Rendered("application/json", json.dumps(render(spec), indent=2, sort_keys=True))

    def classify(self, spec: NetworkSpec, field_name: str) -> ChangeKind:
        return classify_mod.classify(spec, field_name)

    def check(self, spec: NetworkSpec) -> list[str]:
        if spec.vlan is not None and not 0 <= spec.vlan <= 4094:
            return [f"{spec.address}: VLAN {spec.vlan} outside 0-4094"]
        return []

    def list_owned(self, site: str) -> list[Observed]:
        """The site's port groups, and its marks whose port group was never made (a create
        killed between the two: deleted, or replaced by the create)."""
        out = []
        for name, mark in sorted(self.client.read_marks(MARK_KIND).items()):
            if (mark.get("owner") or {}).get("site") != site:
                continue
            obs = self.read_name(name, mark)
            if obs is None:
                o = mark["owner"]
                owner = Ownership(site=str(o["site"]), address=str(o["address"]),
                                  lineage=str(o["lineage"]))
                spec = NetworkSpec(address=owner.address, name=name,
                                   purpose=str(mark.get("purpose", "")))
                obs = Observed(spec=spec, id=f"leftover:mark:{name}", owner=owner,
                               leftover="a mark whose port group was never made")
            out.append(obs)
        return out

    def _network_systems(self) -> list[Any]:
        return [
            self.client.properties(h, ["configManager.networkSystem"])["configManager.networkSystem"]
            for h in self.inv.hosts
        ]

    def _dvs(self, name: str | None) -> Any:
        found = self.client.retrieve(
            self.inv.dc_folder("networkFolder"), vim.DistributedVirtualSwitch, ["name"]
        )
        match = [o for o, p in found if name is None or p.get("name") == name]
        if not match:
            raise NotFound(f"vsphere: distributed switch {name or '(any)'} not found")
        return match[0]

    def _standard_vlans(self, name: str) -> list[int | None]:
        """VLAN of the port group on each host (None where the host lacks it)."""
        out: list[int | None] = []
        for ns in self._network_systems():
            info = self.client.properties(ns, ["networkInfo.portgroup"]).get("networkInfo.portgroup") or []
            match = [p for p in info if p.spec.name == name]
            out.append(int(match[0].spec.vlanId) if match else None)
        return out

    def _dvpg(self, name: str) -> Any | None:
        found = self.client.retrieve(
            self.inv.dc_folder("networkFolder"), vim.dvs.DistributedVirtualPortgroup, ["name"]
        )
        match = [o for o, p in found if p.get("name") == name]
        return match[0] if match else None

    def read(self, spec: NetworkSpec, marks: dict[str, dict[str, Any]] | None = None) -> Observed | None:
        """The port group of ``spec`` (either kind), parsed back."""
        marks = self.client.read_marks(MARK_KIND) if marks is None else marks
        return self.read_name(spec.name, marks.get(spec.name), fallback=spec)

    def read_name(self, name: str, mark: dict[str, Any] | None, fallback: NetworkSpec | None = None) -> Observed | None:
        pg = self._dvpg(name)
        distributed = pg is not None
        if pg is not None:
            cfg = self.client.properties(pg, ["config"])["config"]
            vlan_spec = getattr(cfg.defaultPortConfig, "vlan", None)
            vlan = getattr(vlan_spec, "vlanId", 0)
            vlan = int(vlan) if isinstance(vlan, int) else 0
            ident = pg._moId
        else:
            present = [v for v in self._standard_vlans(name) if v is not None]
            if not present:
                return None
            # Hosts disagreeing on the VLAN is drift: report -1, which matches no spec.
            vlan = present[0] if len(set(present)) == 1 else -1
            ident = f"portgroup:{name}"
        owner = None
        mk = mark or {}
        if mk.get("owner"):
            o = mk["owner"]
            owner = Ownership(site=str(o["site"]), address=str(o["address"]), lineage=str(o["lineage"]))
        if owner is not None:
            settings = dict(mk.get("settings") or {})
        else:
            settings = dict(fallback.settings) if fallback else {}
        if distributed != bool(settings.get("distributed")):
            settings["distributed"] = distributed  # the switch kind is observable: report it
        spec = NetworkSpec(
            address=str(mk.get("address") or (owner.address if owner else (fallback.address if fallback else ""))),
            name=name,
            purpose=str(mk.get("purpose", fallback.purpose if fallback else "")),
            vlan=vlan or None,
            cidr=mk.get("cidr"),
            gateway=mk.get("gateway"),
            mtu=int(mk.get("mtu") or 1500),
            qos=mk.get("qos"),
            settings=settings,
        )
        return Observed(spec=spec, id=ident, owner=owner, power=PowerState.UNKNOWN)

    def create(self, spec: NetworkSpec, owner: Ownership) -> Observed:
        """Create the port group and mark it (marked first, so a half-done create is adoptable)."""
        problems = self.check(spec)
        if problems:
            raise CapabilityError("; ".join(problems))
        existing = self.read(spec)
        if existing is not None and (existing.owner is None or existing.owner.address != owner.address or existing.owner.site != owner.site):
            raise AlreadyExists(f"vsphere: port group {spec.name} exists and is not pacsinfra's")
        self.client.write_mark(MARK_KIND, spec.name, mark_of(spec, owner))
        if is_distributed(spec):
            if self._dvpg(spec.name) is None:
                dvs = self._dvs(spec.settings.get("switch"))
                self.client.run(
                    f"vsphere: create port group {spec.name}",
                    dvs.AddDVPortgroup_Task,
                    spec=[self._dv_spec(spec)],
                )
        else:
            for ns in self._network_systems():
                try:
                    self.client.call(
                        f"vsphere: add port group {spec.name}", ns.AddPortGroup, portgrp=self._std_spec(spec)
                    )
                except AlreadyExists:
                    self._converge_host(ns, spec)
        self.inv.forget_network(spec.name)
        return self._found(spec)

    def _found(self, spec: NetworkSpec) -> Observed:
        obs = self.read(spec)
        if obs is None:
            raise NotFound(f"vsphere: port group {spec.name} is gone")
        return obs

    def _converge_host(self, ns: Any, spec: NetworkSpec) -> None:
        """AddPortGroup said DuplicateName: fix this host's VLAN if it has the port group.

        A host that does not list the port group got DuplicateName because a network of
        that name already exists in the inventory: that is how vcsim answers every host
        after the first (real vCenter adds the port group to each host).
        """
        info = self.client.properties(ns, ["networkInfo.portgroup"]).get("networkInfo.portgroup") or []
        match = [p for p in info if p.spec.name == spec.name]
        if match and int(match[0].spec.vlanId) != (spec.vlan or 0):
            self.client.call(
                f"vsphere: update port group {spec.name}",
                ns.UpdatePortGroup,
                pgName=spec.name,
                portgrp=self._std_spec(spec),
            )

    def update(self, spec: NetworkSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        """VLAN (and the unobservable fields) in place."""
        owner = observed.owner
        if owner is None:
            raise CapabilityError(f"vsphere: {spec.name} carries no pacsinfra mark; refusing to "
                                  "change it")
        problems = self.check(spec)
        if problems:
            raise CapabilityError("; ".join(problems))
        self._reconfigure(spec, owner)
        return self._found(spec)

    def _reconfigure(self, spec: NetworkSpec, owner: Ownership) -> None:
        self.client.write_mark(MARK_KIND, spec.name, mark_of(spec, owner))
        if is_distributed(spec):
            pg = self._dvpg(spec.name)
            if pg is None:
                raise NotFound(f"vsphere: port group {spec.name} is gone")
            version = self.client.properties(pg, ["config"])["config"].configVersion
            dv = self._dv_spec(spec)
            dv.configVersion = version
            self.client.run(f"vsphere: update port group {spec.name}", pg.ReconfigureDVPortgroup_Task, spec=dv)
            return
        for ns in self._network_systems():
            try:
                self.client.call(f"vsphere: add port group {spec.name}", ns.AddPortGroup, portgrp=self._std_spec(spec))
            except AlreadyExists:
                self._converge_host(ns, spec)

    def delete(self, observed: Observed) -> None:
        """Remove the port group (absent is success) and its mark."""
        refuse_unowned(observed, "delete")
        name = observed.spec.name
        pg = self._dvpg(name)
        if pg is not None:
            try:
                self.client.run(f"vsphere: delete port group {name}", pg.Destroy_Task)
            except NotFound:
                pass
        else:
            for ns in self._network_systems():
                try:
                    self.client.call(f"vsphere: remove port group {name}", ns.RemovePortGroup, pgName=name)
                except NotFound:
                    pass
        self.client.write_mark(MARK_KIND, name, None)
        self.inv.forget_network(name)

    @staticmethod
    def _std_spec(spec: NetworkSpec) -> Any:
        return vim.host.PortGroup.Specification(
            name=spec.name,
            vlanId=spec.vlan or 0,
            vswitchName=str(spec.settings.get("switch") or DEFAULT_SWITCH),
            policy=vim.host.NetworkPolicy(),
        )

    @staticmethod
    def _dv_spec(spec: NetworkSpec) -> Any:
        return vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=spec.name,
            type="earlyBinding",
            numPorts=128,
            description=f"pacsinfra {spec.address}",
            defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch.VmwarePortConfigPolicy(
                vlan=vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec(vlanId=spec.vlan or 0, inherited=False)
            ),
        )
