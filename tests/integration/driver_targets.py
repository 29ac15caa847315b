"""The four targets of the driver contract suite, each behind one small adapter.

A :class:`Target` holds a connected driver (built by :func:`pacsinfra.providers.make_provider`
from its declaration) and knows what only its hypervisor knows: how its specs look (a
libvirt pool needs a directory, a Hyper-V machine an image VHDX), what object already
exists there without pacsinfra's mark, what an interrupted create leaves behind, and how
to tell that a machine was started again. The contract itself
(tests/integration/test_driver_contract.py) is written once against this interface.

- ``kvm``: libvirt's test:///default (in-process, real libvirt code);
- ``vsphere``: govmomi's vcsim (tools/vcsim), one per test module and worker;
- ``hyperv``: pywinrm over HTTP to tests/support/wsman_server.py, in front of the
  Hyper-V model tests/support/hyperv_model.py;
- ``fake``: the in-memory driver shipped in the package.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pacsinfra.drivers.base import Driver
from pacsinfra.errors import CapabilityError
from pacsinfra.providers import make_provider
from pacsinfra.specs import (
    DiskSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Observed,
    Ownership,
    Spec,
    StorageSpec,
)

NAMES = ("kvm", "vsphere", "hyperv", "fake")


def new_site() -> str:
    """A site name no other test (or worker) uses."""
    return "c" + uuid.uuid4().hex[:7]


class Target:
    """One driver on one test target, and the target-specific knowledge the contract needs."""

    name: ClassVar[str]
    #: changes (named as in the contract's CHANGES) this target cannot carry out, with the
    #: error class the driver raises for them: a limit of the target, not of the driver
    limits: ClassVar[dict[str, type[Exception]]] = {}
    #: a vGPU profile the target offers
    vgpu_profile: ClassVar[str | None] = None

    def __init__(self, driver: Driver, site: str, secrets: tuple[str, ...] = ()) -> None:
        self.driver = driver
        self.site = site
        #: values that must never appear in what the driver renders (passwords)
        self.secrets = secrets

    @contextmanager
    def held(self) -> Iterator[Any]:
        """This target for one test; after it, its objects are removed and the driver closed."""
        try:
            yield self
        finally:
            self.cleanup()
            self.driver.close()

    # -- specs -------------------------------------------------------------------------
    def owner(self, spec: Spec, site: str | None = None) -> Ownership:
        """The mark of ``spec`` for this target's site (or ``site``)."""
        site = site or self.site
        return Ownership(site=site, address=spec.address, lineage="lineage-" + site)

    def network(self, site: str | None = None) -> NetworkSpec:
        """A network of ``site`` (this target's by default) the target can make."""
        site = site or self.site
        return NetworkSpec(address="network.dicom", name=f"{site}-dicom", purpose="dicom",
                           vlan=110, cidr="10.10.110.0/24", gateway="10.10.110.1",
                           settings=self.network_settings(f"{site}-dicom"))

    def network_settings(self, name: str) -> dict[str, Any]:
        return {}

    def storage(self, site: str | None = None) -> StorageSpec:
        """A storage class of ``site`` the target can make."""
        site = site or self.site
        return StorageSpec(address="storage.flash", name=f"{site}-flash", tier="performance",
                           settings=self.storage_settings(site))

    def storage_settings(self, site: str) -> dict[str, Any]:
        return {}

    def image(self) -> dict[str, Any]:
        return {}

    def other_image(self) -> dict[str, Any]:
        """An image other than :meth:`image` (a change of image replaces the machine)."""
        return {"template": "other"}

    def machine(self, index: int = 0, site: str | None = None, **changes: Any) -> MachineSpec:
        """Machine ``index`` of role ``pacs`` on :meth:`network` and :meth:`storage`."""
        site = site or self.site
        net, store = self.network(site), self.storage(site)
        spec = MachineSpec(
            address=f"machine.pacs[{index}]", name=f"{site}-pacs-{index + 1}", role="pacs",
            index=index, image=self.image(), cpu_count=2, memory_mib=2048,
            disks=(DiskSpec("os", 4096, store.name),),
            nics=(NicSpec(net.name, address=f"10.10.110.{11 + index}", prefix=24,
                          gateway="10.10.110.1", vlan=110),),
            hostname=f"pacs{index + 1}", ssh_authorized_keys=("ssh-ed25519 AAAAcontract admin@x",),
        )
        return dataclasses.replace(spec, **changes)

    def infra(self, site: str | None = None) -> tuple[Observed, Observed]:
        """Create ``site``'s network and storage (what its machines need)."""
        net, store = self.network(site), self.storage(site)
        return (self.driver.create(net, self.owner(net, site)),
                self.driver.create(store, self.owner(store, site)))

    # -- what only the target knows ---------------------------------------------------------
    def fresh(self) -> Driver:
        """Another driver on the same target, as a new process with no state would make."""
        raise NotImplementedError

    def starts(self, name: str) -> int:
        """A number that grows each time machine ``name`` is started (a start count, the
        id libvirt gives a running domain, the key of the latest power-on event)."""
        raise NotImplementedError

    def foreign(self, kind: str) -> Spec:
        """A spec naming an object of ``kind`` (network, storage, machine) that exists on the
        target without pacsinfra's mark (made here if the target has none)."""
        raise NotImplementedError

    def leave_leftover(self, spec: MachineSpec | NetworkSpec | StorageSpec,
                       owner: Ownership) -> bool:
        """Leave what a create of ``spec`` killed half-way leaves; False where the driver
        leaves nothing it could list (its creates are one step, or it cannot tell)."""
        return False

    def cleanup(self) -> None:
        """Remove everything this target's sites made (best effort, marked objects only)."""
        for site in {self.site, self.site + "-b"}:
            owned = self.driver.list_owned(site)
            for obs in [o for o in owned if isinstance(o.spec, MachineSpec)] + \
                       [o for o in owned if not isinstance(o.spec, MachineSpec)]:
                try:
                    self.driver.delete(obs)
                except Exception:  # noqa: BLE001 - a failed test may leave odd states
                    pass


# -- kvm: libvirt's test:///default ---------------------------------------------------------
class KvmTarget(Target):
    name = "kvm"
    # test:///default tunes no running domain's CPU and resizes no volume
    limits: ClassVar[dict[str, type[Exception]]] = {
        "cpu_shares": CapabilityError, "cpu_limit_mhz": CapabilityError,
        "cpu_reservation_mhz": CapabilityError, "disks.grow": CapabilityError}
    vgpu_profile = "nvidia-35"

    def __init__(self, driver: Driver, site: str, conn: Any) -> None:
        super().__init__(driver, site)
        self.conn = conn

    def network_settings(self, name: str) -> dict[str, Any]:
        return {"forward": "nat", "dhcp": True}

    def storage_settings(self, site: str) -> dict[str, Any]:
        return {"path": f"/pools/{site}/flash"}

    def other_image(self) -> dict[str, Any]:
        return {"volume": "other.qcow2", "pool": "default-pool"}

    def fresh(self) -> Driver:
        # test:///default's state lives in this process: a new connection sees it
        return make_provider("kvm", {"uri": "test:///default"}, client=self.conn)

    def starts(self, name: str) -> int:
        # test:///default gives a domain a new id at each start (-1 while it is off)
        dom = self.conn.lookupByName(name)
        return int(dom.ID()) if dom.isActive() else -1

    def foreign(self, kind: str) -> Spec:
        # test:///default ships a domain "test", a network "default", a pool "default-pool"
        if kind == "network":
            return dataclasses.replace(self.network(), name="default")
        if kind == "storage":
            return dataclasses.replace(self.storage(), name="default-pool")
        return self.machine(name="test")

    def leave_leftover(self, spec: MachineSpec | NetworkSpec | StorageSpec,
                       owner: Ownership) -> bool:
        if not isinstance(spec, MachineSpec):
            return False  # a pool or network is defined with its mark in one call
        from pacsinfra.drivers.kvm import pool

        # killed after the making marker and the first volume, before the domain
        target = self.conn.storagePoolLookupByName(spec.disks[0].storage)
        for name, capacity in ((pool.making_name(owner, spec.name), 0),
                               (f"{spec.name}-{spec.disks[0].name}.qcow2", 1 << 20)):
            target.createXML(pool.render_volume(name=name, capacity=capacity, allocation=0,
                                                fmt="qcow2"), 0)
        return True


@contextmanager
def kvm_target(site: str) -> Iterator[KvmTarget]:
    """The kvm driver on its own connection to test:///default."""
    import libvirt

    conn = libvirt.open("test:///default")
    driver = make_provider("kvm", {"uri": "test:///default", "shutdown_timeout": 2}, client=conn)
    driver.connect()
    try:
        with KvmTarget(driver, site, conn).held() as target:
            yield target
    finally:
        conn.close()


# -- vsphere: govmomi's vcsim ------------------------------------------------------------
class VsphereTarget(Target):
    name = "vsphere"
    vgpu_profile = "grid_a40-8q"

    def __init__(self, driver: Driver, site: str, sim: Any) -> None:
        super().__init__(driver, site, secrets=(sim.password,))
        self.sim = sim

    def fresh(self) -> Driver:
        return make_provider("vsphere", vsphere_settings(self.sim))  # logs in on first use

    def other_image(self) -> dict[str, Any]:
        return {"template": "no-such-template"}

    def starts(self, name: str) -> int:
        # the key of the VM's latest power-on event (event keys only grow)
        from pyVmomi import vim

        vm = self.driver.machines.find(name)  # type: ignore[attr-defined]
        assert vm is not None, name
        client = self.driver.client  # type: ignore[attr-defined]
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self"),
            eventTypeId=["VmPoweredOnEvent"], maxCount=1000)
        events = client.content.eventManager.QueryEvents(spec)
        return max((e.key for e in events if isinstance(e, vim.event.VmPoweredOnEvent)),
                   default=0)

    def foreign(self, kind: str) -> Spec:
        if kind == "network":
            return NetworkSpec(address="network.dicom", name="VM Network", purpose="dicom")
        if kind == "storage":
            from pacsinfra.drivers.vsphere.pbm import PolicyStore

            theirs = [p for p in PolicyStore(self.driver.client).all()  # type: ignore[attr-defined]
                      if not p.name.startswith("c")]
            assert theirs, "vcsim ships storage policies"
            return dataclasses.replace(self.storage(), name=theirs[0].name)
        from pyVmomi import vim

        name = f"{self.site}-theirs"
        if self.driver.machines.find(name) is None:  # type: ignore[attr-defined]
            inv = self.driver.machines.inv  # type: ignore[attr-defined]
            cfg = vim.vm.ConfigSpec(name=name, guestId="otherGuest",
                                    files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"))
            self.driver.client.run("test", inv.folder.CreateVM_Task,  # type: ignore[attr-defined]
                                   config=cfg, pool=inv.pool)
        return self.machine(name=name)

    def leave_leftover(self, spec: MachineSpec | NetworkSpec | StorageSpec,
                       owner: Ownership) -> bool:
        # networks and storage: the mark is written before the port group / policy
        if isinstance(spec, MachineSpec):
            return False  # a VM is made with its mark in one task
        from pacsinfra.drivers.vsphere import networks, storage

        module: Any = networks if isinstance(spec, NetworkSpec) else storage
        self.driver.client.write_mark(module.MARK_KIND, spec.name,  # type: ignore[attr-defined]
                                      module.mark_of(spec, owner))
        return True

    def cleanup(self) -> None:
        super().cleanup()
        theirs = self.driver.machines.find(f"{self.site}-theirs")  # type: ignore[attr-defined]
        if theirs is not None:
            self.driver.client.run("test", theirs.Destroy_Task)  # type: ignore[attr-defined]


def vsphere_settings(sim: Any) -> dict[str, Any]:
    """provider.vsphere for a running vcsim (the password through the environment)."""
    os.environ["PACSINFRA_CONTRACT_VC_PASSWORD"] = sim.password
    return {"server": sim.server, "user": sim.user,
            "password": {"env": "PACSINFRA_CONTRACT_VC_PASSWORD"}, "ca_file": str(sim.ca_file),
            "datacenter": "DC0", "cluster": "DC0_C0", "vgpu_profiles": ["grid_a40-8q"]}


@contextmanager
def vsphere_target(site: str, sim: Any) -> Iterator[VsphereTarget]:
    """The vsphere driver logged in to ``sim``."""
    driver = make_provider("vsphere", vsphere_settings(sim))
    driver.connect()
    with VsphereTarget(driver, site, sim).held() as target:
        yield target


# -- hyperv: the Hyper-V model behind a loopback WS-Management endpoint -----------------------
HYPERV_IMAGE = "C:\\Images\\debian12.vhdx"
HYPERV_ROOT = "D:\\PACS"


class HypervTarget(Target):
    name = "hyperv"

    def __init__(self, driver: Driver, site: str, host: Any, url: str) -> None:
        from support.wsman_server import PASSWORD

        super().__init__(driver, site, secrets=(PASSWORD,))
        self.host = host
        self.url = url

    def fresh(self) -> Driver:
        from support.wsman_server import basic_session

        return make_provider("hyperv", hyperv_settings(), client=basic_session(self.url))

    def network_settings(self, name: str) -> dict[str, Any]:
        return {"switch": name, "type": "internal"}

    def image(self) -> dict[str, Any]:
        return {"vhdx": HYPERV_IMAGE, "mode": "differencing"}

    def other_image(self) -> dict[str, Any]:
        return {"vhdx": "C:\\Images\\other.vhdx", "mode": "differencing"}

    def starts(self, name: str) -> int:
        return int(self.host.vm(name).starts)

    def foreign(self, kind: str) -> Spec:
        from support.hyperv_model import Switch, Vm

        if kind == "network":
            self.host.switches["theirs"] = Switch(id=str(uuid.uuid4()), name="theirs",
                                                  type="internal")
            return dataclasses.replace(self.network(), name="theirs",
                                       settings=self.network_settings("theirs"))
        if kind == "storage":
            self.host.mkdir(HYPERV_ROOT + "\\theirs")
            return dataclasses.replace(self.storage(), name="theirs")
        vm = Vm(id=str(uuid.uuid4()), name="theirs", path="D:\\VMs",
                memory={"dynamic": False, "startup_mib": 1024, "minimum_mib": 1024,
                        "maximum_mib": 1024})
        self.host.vms[vm.id] = vm
        return self.machine(name="theirs")


def hyperv_settings() -> dict[str, Any]:
    """provider.hyperv for the loopback endpoint (the password through the environment)."""
    from support.wsman_server import PASSWORD, USER

    os.environ["PACSINFRA_CONTRACT_HV_PASSWORD"] = PASSWORD
    return {"host": "127.0.0.1", "ssl": False, "transport": "basic", "user": USER,
            "password": {"env": "PACSINFRA_CONTRACT_HV_PASSWORD"}, "storage_root": HYPERV_ROOT}


@contextmanager
def hyperv_target(site: str) -> Iterator[HypervTarget]:
    """The hyperv driver over real pywinrm to a model host with one image."""
    from support.hyperv_model import HypervHost
    from support.wsman_server import PASSWORD, USER, WsmanServer, basic_session

    host = HypervHost(mhz=2600, memory_mib=65536)
    host.add_image(HYPERV_IMAGE, 4096)
    host.add_image("C:\\Images\\other.vhdx", 4096)
    with WsmanServer(host.run, USER, PASSWORD) as srv:
        driver = make_provider("hyperv", hyperv_settings(), client=basic_session(srv.url))
        driver.connect()
        target = HypervTarget(driver, site, host, srv.url)
        try:
            yield target
        finally:
            target.cleanup()
            driver.close()


# -- fake: the in-memory driver -----------------------------------------------------------
class FakeTarget(Target):
    name = "fake"
    vgpu_profile = "any"

    def fresh(self) -> Driver:
        return self.driver  # the hypervisor is the driver's own memory

    def starts(self, name: str) -> int:
        return self.driver.starts[name]  # type: ignore[attr-defined, no-any-return]

    def foreign(self, kind: str) -> Spec:
        spec: Spec = {"network": self.network, "storage": self.storage,
                      "machine": self.machine}[kind]()
        spec = dataclasses.replace(spec, name=f"{self.site}-theirs")  # type: ignore[arg-type]
        self.driver.put_unmarked(spec)  # type: ignore[attr-defined]
        return spec


@contextmanager
def fake_target(site: str) -> Iterator[FakeTarget]:
    """A new in-memory hypervisor."""
    driver = make_provider("fake", {})
    driver.connect()
    yield FakeTarget(driver, site)
