"""Where things go: the configured datacenter, cluster, pool, folder, datastore, and name lookups.

Resolved once per connection and cached; network and policy lookups refresh
on a miss (pacsinfra may have just created the object).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from pacsinfra.drivers.settings import setting
from pacsinfra.drivers.vsphere import pbm as pbm_mod
from pacsinfra.drivers.vsphere.client import VsphereClient
from pacsinfra.errors import CapabilityError, NotFound
from pacsinfra.specs import DiskSpec


@dataclass
class Net:
    """A port group found by name: the network object and, for a DVS port group, its switch."""

    name: str
    ref: Any
    dvs_uuid: str | None = None
    key: str | None = None


class Inventory:
    """Cached lookups in the configured datacenter (thread-safe)."""

    def __init__(self, client: VsphereClient, config: Any) -> None:
        self.client = client
        self.config = config
        self._lock = threading.RLock()
        self._dc: Any = None
        self._cluster: Any = None
        self._pool: Any = None
        self._folder: Any = None
        self._folders: dict[str, Any] = {}
        self._datastores: dict[str, Any] | None = None
        self._nets: dict[str, Net] = {}
        self._pg_names: dict[str, str] = {}
        self._policies: dict[str, pbm_mod.Policy] = {}
        self.storage_datastore: dict[str, str] = {}  # storage class name -> datastore (from specs)

    # -- placement -----------------------------------------------------------------------
    @property
    def datacenter(self) -> Any:
        with self._lock:
            if self._dc is None:
                want = setting(self.config, "datacenter")
                found = self.client.retrieve(self.client.content.rootFolder, vim.Datacenter, ["name"])
                match = [o for o, p in found if want is None or p.get("name") == want]
                if not match:
                    raise NotFound(f"vsphere: datacenter {want or '(any)'} not found")
                self._dc = match[0]
            return self._dc

    def dc_folder(self, which: str) -> Any:
        """The datacenter's ``vmFolder`` / ``hostFolder`` / ``networkFolder`` / ``datastoreFolder``."""
        with self._lock:
            if not self._folders:
                self._folders = self.client.properties(
                    self.datacenter, ["vmFolder", "hostFolder", "networkFolder", "datastoreFolder"]
                )
            return self._folders[which]

    @property
    def cluster(self) -> Any:
        with self._lock:
            if self._cluster is None:
                want = setting(self.config, "cluster")
                found = self.client.retrieve(self.dc_folder("hostFolder"), vim.ComputeResource, ["name"])
                match = [o for o, p in found if want is None or p.get("name") == want]
                if not match:
                    raise NotFound(f"vsphere: cluster {want or '(any)'} not found in the datacenter")
                clusters = [o for o in match if isinstance(o, vim.ClusterComputeResource)]
                self._cluster = (clusters or match)[0]
            return self._cluster

    @property
    def pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                root = self.client.properties(self.cluster, ["resourcePool"])["resourcePool"]
                want = setting(self.config, "resource_pool")
                if want:
                    found = self.client.retrieve(root, vim.ResourcePool, ["name"])
                    match = [o for o, p in found if p.get("name") == want]
                    if not match:
                        raise NotFound(f"vsphere: resource pool {want} not found in the cluster")
                    root = match[0]
                self._pool = root
            return self._pool

    @property
    def folder(self) -> Any:
        with self._lock:
            if self._folder is None:
                folder = self.dc_folder("vmFolder")
                path = str(setting(self.config, "folder", "") or "").strip("/")
                for part in [p for p in path.split("/") if p]:
                    children = self.client.retrieve(folder, vim.Folder, ["name"], recursive=False)
                    match = [o for o, p in children if p.get("name") == part]
                    if match:
                        folder = match[0]
                    else:
                        folder = self.client.call(f"vsphere: create folder {part}", folder.CreateFolder, part)
                self._folder = folder
            return self._folder

    def config_target(self) -> Any:
        """What the cluster's hosts offer VMs (PCI passthrough devices among it)."""
        browser = self.client.properties(self.cluster, ["environmentBrowser"])["environmentBrowser"]
        return self.client.call("vsphere: query the config target", browser.QueryConfigTarget)

    @property
    def hosts(self) -> list[Any]:
        return list(self.client.properties(self.cluster, ["host"]).get("host") or [])

    def datastores(self) -> dict[str, Any]:
        """Datastores of the datacenter by name."""
        with self._lock:
            if self._datastores is None:
                found = self.client.retrieve(self.dc_folder("datastoreFolder"), vim.Datastore, ["name"])
                self._datastores = {str(p["name"]): o for o, p in found}
            return self._datastores

    @property
    def default_datastore(self) -> str:
        want = setting(self.config, "datastore")
        stores = self.datastores()
        if want:
            if want not in stores:
                raise NotFound(f"vsphere: datastore {want} not found in the datacenter")
            return str(want)
        cluster_ds = self.client.properties(self.cluster, ["datastore"]).get("datastore") or []
        for name, ref in stores.items():
            if any(ref._moId == d._moId for d in cluster_ds):
                return name
        if not stores:
            raise NotFound("vsphere: the datacenter has no datastore")
        return next(iter(stores))

    # -- networks --------------------------------------------------------------------------
    def refresh_networks(self) -> None:
        """Re-read every network of the datacenter (port groups of both kinds)."""
        found = self.client.retrieve(self.dc_folder("networkFolder"), vim.Network, ["name"])
        dvpgs = {
            o._moId: p
            for o, p in self.client.retrieve(
                self.dc_folder("networkFolder"),
                vim.dvs.DistributedVirtualPortgroup,
                ["key", "config.distributedVirtualSwitch"],
            )
        }
        switches: dict[str, str] = {}
        nets: dict[str, Net] = {}
        names: dict[str, str] = {}
        for obj, props in found:
            name = str(props.get("name"))
            d = dvpgs.get(obj._moId)
            if d is not None:
                sw = d.get("config.distributedVirtualSwitch")
                if sw is not None and sw._moId not in switches:
                    switches[sw._moId] = str(self.client.properties(sw, ["uuid"]).get("uuid"))
                uuid = switches.get(sw._moId) if sw is not None else None
                nets[name] = Net(name=name, ref=obj, dvs_uuid=uuid, key=str(d.get("key")))
                names[str(d.get("key"))] = name
            elif name not in nets:
                nets[name] = Net(name=name, ref=obj)
        with self._lock:
            self._nets, self._pg_names = nets, names

    def network(self, name: str) -> Net:
        """The port group called ``name`` (NotFound when absent)."""
        if name not in self._nets:
            self.refresh_networks()
        net = self._nets.get(name)
        if net is None:
            raise NotFound(f"vsphere: port group {name!r} not found in the datacenter")
        return net

    def portgroup_names(self) -> dict[str, str]:
        """Distributed port group key -> name."""
        if not self._nets:
            self.refresh_networks()
        return dict(self._pg_names)

    def forget_network(self, name: str) -> None:
        with self._lock:
            self._nets.pop(name, None)

    # -- storage policies ------------------------------------------------------------------
    def policy(self, name: str) -> pbm_mod.Policy | None:
        """The storage policy called ``name`` (cached; refreshed on a miss)."""
        if name in self._policies:
            return self._policies[name]
        found = {p.name: p for p in pbm_mod.PolicyStore(self.client).all()}
        with self._lock:
            self._policies = found
        return found.get(name)

    def remember_policy(self, policy: pbm_mod.Policy | None, name: str) -> None:
        with self._lock:
            if policy is None:
                self._policies.pop(name, None)
            else:
                self._policies[name] = policy


class InventoryResolver:
    """The real Resolver: port group backings, datastores and policy ids from the inventory."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv

    def nic_backing(self, network: str) -> Any:
        net = self.inv.network(network)
        if net.dvs_uuid:
            return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(switchUuid=net.dvs_uuid, portgroupKey=net.key)
            )
        return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=net.name, network=net.ref)

    def disk_datastore(self, disk: DiskSpec) -> str:
        if disk.storage in self.inv.datastores():
            return disk.storage
        return self.inv.storage_datastore.get(disk.storage) or self.inv.default_datastore

    def passthrough(self, device: str) -> Any:
        """The host's PCI device ``device`` as offered for passthrough (CapabilityError if none)."""
        for info in self.inv.config_target().pciPassthrough or ():
            pci = getattr(info, "pciDevice", None)
            if pci is not None and str(pci.id) == device:
                return vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
                    id=pci.id,
                    deviceId=format(pci.deviceId & 0xFFFF, "x"),
                    systemId=info.systemId,
                    vendorId=pci.vendorId,
                    deviceName=pci.deviceName or device,
                )
        raise CapabilityError(f"vsphere: no host of the cluster offers PCI device {device} for passthrough")

    def policy_id(self, storage: str) -> str | None:
        if not storage or storage in self.inv.datastores():
            return None  # a disk placed on a datastore by name carries no policy
        policy = self.inv.policy(storage)
        if policy is None:
            raise NotFound(f"vsphere: storage policy {storage!r} not found (is its storage class applied?)")
        return policy.id
