"""The vSphere driver's pure parts: ConfigSpec building and parsing, classify, check, faults, TLS.

pyVmomi's data objects are real SDK types built in memory; what vcsim does not
verify (a vGPU profile against the hosts, a storage policy against the
datastore) is tested here with plain stand-in clients.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import replace
from typing import Any

import pytest

pytest.importorskip("pyVmomi")

from pyVmomi import pbm, vim, vmodl  # noqa: E402

from pacsinfra.drivers.vsphere import classify as cl  # noqa: E402
from pacsinfra.drivers.vsphere import spec as sp  # noqa: E402
from pacsinfra.drivers.vsphere.client import (  # noqa: E402
    Endpoint,
    PowerStateConflict,
    faults,
    translate,
)
from pacsinfra.drivers.vsphere.driver import VsphereDriver  # noqa: E402
from pacsinfra.drivers.vsphere.parse import parse_vm  # noqa: E402
from pacsinfra.drivers.vsphere.pbm import Policy, check_placement, rules_of  # noqa: E402
from pacsinfra.errors import (  # noqa: E402
    AlreadyExists,
    AuthError,
    CapabilityError,
    ConnectError,
    NotFound,
    TaskFailed,
)
from pacsinfra.specs import (
    ChangeKind,
    DiskSpec,
    GpuSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Observed,
    Ownership,
    PowerState,
    StorageSpec,
    changed_fields,
)

OWNER = Ownership(site="st-mary", address="machine.archive[0]", lineage="L1")


def machine(**over: Any) -> MachineSpec:
    base: dict[str, Any] = dict(
        address="machine.archive[0]",
        name="st-mary-archive-1",
        role="archive",
        index=0,
        image={"template": "debian12-tpl"},
        cpu_count=8,
        memory_mib=32768,
        cpu_reservation_mhz=8000,
        cpu_shares=16000,
        memory_reservation_mib=32768,
        disks=(DiskSpec("os", 40960, "PACS Gold"), DiskSpec("data", 409600, "PACS Silver", provisioning="thick", iops_limit=5000)),
        nics=(NicSpec("PACS-DICOM", address="10.10.110.11", prefix=24, gateway="10.10.110.1", vlan=110),),
        hostname="st-mary-archive-1",
    )
    base.update(over)
    return MachineSpec(**base)


class Names(sp.NameResolver):
    def policy_id(self, storage: str) -> str | None:
        return {"PACS Gold": "gold-id", "PACS Silver": "silver-id"}.get(storage)


def vm_props(spec: MachineSpec, power: str = "poweredOn") -> dict[str, Any]:
    """What vCenter would report for a VM created from ``spec`` (devices with real keys and MACs)."""
    cfg = sp.new_config(spec, sp.Extras(owner=OWNER), "ds1", Names())
    devices = []
    for i, change in enumerate(cfg.deviceChange):
        dev = change.device
        dev.key = 1000 + i
        if isinstance(dev, vim.vm.device.VirtualEthernetCard) and not dev.macAddress:
            dev.macAddress = f"00:50:56:00:00:{i:02x}"
        devices.append(dev)
    ctrl = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]
    for d in devices:
        if isinstance(d, vim.vm.device.VirtualDisk) and ctrl:
            d.controllerKey = ctrl[0].key
    info = vim.vm.ConfigInfo(
        name=spec.name,
        hardware=vim.vm.VirtualHardware(numCPU=cfg.numCPUs, memoryMB=cfg.memoryMB, device=devices),
        cpuAllocation=cfg.cpuAllocation,
        memoryAllocation=cfg.memoryAllocation,
        memoryReservationLockedToMax=cfg.memoryReservationLockedToMax,
        extraConfig=cfg.extraConfig,
        cpuHotAddEnabled=False,
        memoryHotAddEnabled=False,
    )
    return {"name": spec.name, "config": info, "runtime.powerState": power, "guest.net": []}


# -- building --------------------------------------------------------------------------------
def test_config_spec_carries_allocation_devices_policies_and_mark() -> None:
    spec = machine(cpu_limit_mhz=16000, memory_lock=True)
    cfg = sp.new_config(spec, sp.Extras(owner=OWNER, latency_sensitivity="high"), "ds1", Names())
    assert (cfg.numCPUs, cfg.memoryMB) == (8, 32768)
    assert cfg.cpuAllocation.shares.level == "custom" and cfg.cpuAllocation.shares.shares == 16000
    assert (cfg.cpuAllocation.reservation, cfg.cpuAllocation.limit) == (8000, 16000)
    assert cfg.memoryAllocation.reservation == 32768 and cfg.memoryReservationLockedToMax is True
    assert cfg.latencySensitivity.level == "high"
    assert [p.profileId for p in cfg.vmProfile] == ["gold-id"]  # VM home follows the first disk
    kinds = [type(c.device).__name__ for c in cfg.deviceChange]
    assert kinds == [
        "vim.vm.device.ParaVirtualSCSIController",
        "vim.vm.device.VirtualDisk",
        "vim.vm.device.VirtualDisk",
        "vim.vm.device.VirtualVmxnet3",
    ]
    os_disk, data_disk = cfg.deviceChange[1], cfg.deviceChange[2]
    assert os_disk.device.backing.thinProvisioned is True and data_disk.device.backing.thinProvisioned is False
    assert [p.profileId for p in data_disk.profile] == ["silver-id"]
    assert data_disk.device.storageIOAllocation.limit == 5000
    assert data_disk.device.capacityInKB == 409600 * 1024
    extra = {o.key: o.value for o in cfg.extraConfig}
    assert json.loads(extra["pacsinfra.owner"]) == OWNER.to_dict()
    assert "guestinfo.userdata" in extra and "guestinfo.metadata" in extra


def test_unset_allocation_is_vsphere_default() -> None:
    cfg = sp.new_config(machine(cpu_reservation_mhz=None, cpu_shares=None, memory_reservation_mib=None), sp.Extras(), "ds", Names())
    assert (cfg.cpuAllocation.reservation, cfg.cpuAllocation.limit) == (0, -1)
    assert cfg.cpuAllocation.shares.level == "normal"
    assert cfg.memoryAllocation.reservation == 0


def test_vgpu_device_uses_vmiop_backing_with_profile() -> None:
    spec = machine(gpu=GpuSpec(mode="vgpu", profile="grid_a40-8q", count=2))
    cfg = sp.new_config(spec, sp.Extras(), "ds", Names())
    gpus = [c.device for c in cfg.deviceChange if isinstance(c.device, vim.vm.device.VirtualPCIPassthrough)]
    assert [g.backing.vgpu for g in gpus] == ["grid_a40-8q", "grid_a40-8q"]
    assert all(isinstance(g.backing, vim.vm.device.VirtualPCIPassthrough.VmiopBackingInfo) for g in gpus)


def test_customization_sets_hostname_and_static_address() -> None:
    c = sp.customization(machine())
    assert c.identity.hostName.name == "st-mary-archive-1"
    ip = c.nicSettingMap[0].adapter
    assert (ip.ip.ipAddress, ip.subnetMask, list(ip.gateway)) == ("10.10.110.11", "255.255.255.0", ["10.10.110.1"])
    assert sp.customization(machine(nics=(NicSpec("PACS-DICOM"),))) is None  # DHCP only: nothing to customize


# -- parsing -----------------------------------------------------------------------------------
def test_parse_round_trips_to_an_empty_diff() -> None:
    spec = machine(cpu_limit_mhz=16000, gpu=GpuSpec(mode="vgpu", profile="grid_a40-8q"))
    parsed = parse_vm(vm_props(spec), {})
    assert parsed is not None and parsed.owner == OWNER and parsed.power is PowerState.ON
    obs = Observed(spec=parsed.spec, id="vm-1", owner=parsed.owner)
    assert changed_fields(spec, obs) == []
    assert parsed.spec.nics[0].mac == "00:50:56:00:00:03"  # assigned by vSphere, not drift


def test_parse_sees_changes_made_by_hand() -> None:
    spec = machine()
    props = vm_props(spec, power="poweredOff")
    cfg = props["config"]
    cfg.cpuAllocation.shares = vim.SharesInfo(level="high", shares=16000)
    cfg.memoryAllocation.reservation = 0
    cfg.hardware.numCPU = 4
    parsed = parse_vm(props, {})
    assert parsed is not None
    obs = Observed(spec=parsed.spec, id="vm-1", owner=parsed.owner)
    assert sorted(changed_fields(spec, obs)) == ["cpu_count", "cpu_shares", "memory_reservation_mib", "power_on"]
    assert parsed.spec.cpu_shares == 2000 * 4  # level high, per vCPU, in the spec's scale


def test_parse_distributed_nic_by_portgroup_key() -> None:
    spec = machine(nics=(NicSpec("D-DICOM"),))
    props = vm_props(spec)
    nic = [d for d in props["config"].hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)][0]
    nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(switchUuid="u", portgroupKey="dvportgroup-9")
    )
    parsed = parse_vm(props, {"dvportgroup-9": "D-DICOM"})
    assert parsed is not None and parsed.spec.nics[0].network == "D-DICOM"


def test_a_vm_without_the_mark_is_not_owned() -> None:
    props = vm_props(machine())
    props["config"].extraConfig = [o for o in props["config"].extraConfig if o.key != sp.OWNER_KEY]
    parsed = parse_vm(props, {})
    assert parsed is not None and parsed.owner is None


def test_device_changes_grow_edit_and_remove() -> None:
    spec = machine()
    devices = list(vm_props(spec)["config"].hardware.device)
    bigger = replace(spec, disks=(DiskSpec("os", 81920, "PACS Gold"), *spec.disks[1:]), nics=())
    changes = sp.device_changes(bigger, devices, Names())
    ops = [(c.operation, type(c.device).__name__.rsplit(".", 1)[-1]) for c in changes]
    assert ("edit", "VirtualDisk") in ops and ("remove", "VirtualVmxnet3") in ops
    grown = [c for c in changes if c.operation == "edit" and c.device.capacityInKB == 81920 * 1024]
    assert len(grown) == 1


# -- classify -----------------------------------------------------------------------------------
def _obs(spec: MachineSpec) -> Observed:
    return Observed(spec=spec, id="vm-1", owner=OWNER, power=PowerState.ON)


@pytest.mark.parametrize(
    ("field", "kind"),
    [
        ("cpu_reservation_mhz", ChangeKind.IN_PLACE),
        ("cpu_shares", ChangeKind.IN_PLACE),
        ("cpu_limit_mhz", ChangeKind.IN_PLACE),
        ("memory_reservation_mib", ChangeKind.IN_PLACE),
        ("memory_lock", ChangeKind.IN_PLACE),
        ("gpu", ChangeKind.NEEDS_POWER_OFF),
        ("hostname", ChangeKind.NEEDS_POWER_OFF),
        ("image", ChangeKind.REPLACE),
        ("no_such_field", ChangeKind.REPLACE),
    ],
)
def test_classify_table(field: str, kind: ChangeKind) -> None:
    assert cl.classify(machine(), field) is kind


def test_classify_knows_growth_shrink_and_hot_add() -> None:
    spec = machine()
    obs = _obs(spec)
    grown = replace(spec, disks=(DiskSpec("os", 81920, "PACS Gold"), *spec.disks[1:]))
    assert cl.classify_change(grown, obs, "disks") is ChangeKind.IN_PLACE
    shrunk = replace(spec, disks=(DiskSpec("os", 1024, "PACS Gold"), *spec.disks[1:]))
    assert cl.classify_change(shrunk, obs, "disks") is ChangeKind.REPLACE
    retyped = replace(spec, disks=(DiskSpec("os", 40960, "PACS Gold", provisioning="thick"), *spec.disks[1:]))
    assert cl.classify_change(retyped, obs, "disks") is ChangeKind.REPLACE
    assert cl.classify_change(replace(spec, disks=spec.disks[:1]), obs, "disks") is ChangeKind.REPLACE
    more = replace(spec, cpu_count=16, memory_mib=65536)
    assert cl.classify_change(more, obs, "cpu_count") is ChangeKind.NEEDS_POWER_OFF
    assert cl.classify_change(more, obs, "cpu_count", (True, True)) is ChangeKind.IN_PLACE
    assert cl.classify_change(more, obs, "memory_mib", (True, True)) is ChangeKind.IN_PLACE
    fewer = replace(spec, cpu_count=4)
    assert cl.classify_change(fewer, obs, "cpu_count", (True, True)) is ChangeKind.NEEDS_POWER_OFF
    moved = replace(spec, nics=(replace(spec.nics[0], network="PACS-MGMT"),))
    assert cl.classify_change(moved, obs, "nics") is ChangeKind.IN_PLACE
    readdressed = replace(spec, nics=(replace(spec.nics[0], address="10.10.110.99"),))
    assert cl.classify_change(readdressed, obs, "nics") is ChangeKind.NEEDS_POWER_OFF


# -- check (pure, before vSphere is called) ----------------------------------------------------------
def test_check_requires_full_memory_reservation_for_gpu() -> None:
    d = VsphereDriver({})
    ok = machine(gpu=GpuSpec(mode="vgpu", profile="grid_a40-8q"))
    assert d.check(ok) == []
    half = replace(ok, memory_reservation_mib=16384)
    assert any("memory reserved" in p for p in d.check(half))
    locked = replace(half, memory_lock=True)
    assert d.check(locked) == []
    assert any("profile" in p for p in d.check(replace(ok, gpu=GpuSpec(mode="vgpu"))))
    assert any("PCI address" in p for p in d.check(replace(ok, gpu=GpuSpec(mode="passthrough"))))
    many = replace(ok, disks=tuple(DiskSpec(f"d{i}", 1024, "x") for i in range(16)))
    assert any("SCSI controller" in p for p in d.check(many))
    assert d.check(NetworkSpec(address="network.x", name="x", purpose="x", vlan=5000))
    assert d.check(StorageSpec(address="storage.x", name="x", tier="t", provisioning="sparse"))


# -- what vcsim does not verify: vGPU profile vs host, policy vs datastore --------------------------
class FakeClient:
    """A plain stand-in for VsphereClient: properties() answers from a dict."""

    def __init__(self, props: dict[str, dict[str, Any]]) -> None:
        self.props = props

    def properties(self, obj: Any, names: Any) -> dict[str, Any]:
        return self.props[obj]


class FakeInv:
    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts


def _machines(config: dict[str, Any], host_types: dict[str, list[str]]) -> Any:
    from types import SimpleNamespace

    from pacsinfra.drivers.vsphere.machines import Machines

    client = FakeClient({h: {"config.sharedPassthruGpuTypes": t} for h, t in host_types.items()})
    host = SimpleNamespace(client=client, inventory=FakeInv(list(host_types)), config=config)
    return Machines(host)  # type: ignore[arg-type]


def test_vgpu_profile_must_be_offered_by_a_host() -> None:
    spec = machine(gpu=GpuSpec(mode="vgpu", profile="grid_a40-8q"))
    _machines({}, {"esx1": ["grid_a40-4q"], "esx2": ["grid_a40-8q", "grid_a40-2q"]}).check_gpu(spec)
    with pytest.raises(CapabilityError, match="grid_a40-8q.*offered: grid_a40-2q, grid_a40-4q"):
        _machines({}, {"esx1": ["grid_a40-4q"], "esx2": ["grid_a40-2q"]}).check_gpu(spec)
    with pytest.raises(CapabilityError, match="no vGPU host"):
        _machines({}, {"esx1": []}).check_gpu(spec)
    # declared profiles (hosts that do not report theirs) are taken as given
    _machines({"vgpu_profiles": ["grid_a40-8q"]}, {"esx1": []}).check_gpu(spec)


class FakeStore:
    def __init__(self, compatible: set[str]) -> None:
        self.compatible = compatible
        self.asked: list[tuple[str, list[str]]] = []

    def compatible_datastores(self, policy_id: str, datastores: list[str]) -> set[str]:
        self.asked.append((policy_id, datastores))
        return self.compatible & set(datastores)


def test_placement_is_checked_against_the_policy() -> None:
    gold = Policy(id="gold-id", name="PACS Gold", rules={"proportionalCapacity": 0})
    store = FakeStore({"datastore-1"})
    check_placement(store, gold, "datastore-1", "vsanDatastore")  # type: ignore[arg-type]
    assert store.asked == [("gold-id", ["datastore-1"])]
    with pytest.raises(CapabilityError, match="nfs01 does not satisfy storage policy 'PACS Gold'"):
        check_placement(store, gold, "datastore-2", "nfs01")  # type: ignore[arg-type]


def test_policy_rules_follow_the_storage_class() -> None:
    thin = StorageSpec(address="storage.a", name="A", tier="t", iops_limit=100)
    thick = StorageSpec(address="storage.b", name="B", tier="t", provisioning="thick")
    assert rules_of(thin) == {"proportionalCapacity": 0, "iopsLimit": 100}
    assert rules_of(thick) == {"proportionalCapacity": 100}


# -- faults, TLS, secrets ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (vim.fault.InvalidLogin(), AuthError),
        (vim.fault.NotAuthenticated(), AuthError),
        (vim.fault.InvalidPowerState(), PowerStateConflict),
        (vim.fault.DuplicateName(name="x"), AlreadyExists),
        (vmodl.fault.ManagedObjectNotFound(), NotFound),
        (vim.fault.FileNotFound(), TaskFailed),  # a FileFault, not vim.fault.NotFound
        (pbm.fault.DuplicateName(name="p"), AlreadyExists),
        (vim.fault.InsufficientResourcesFault(), TaskFailed),
        (ssl.SSLError(), ConnectError),
        (ConnectionRefusedError(), ConnectError),
    ],
)
def test_fault_mapping_by_class(fault: BaseException, error: type) -> None:
    got = translate(fault, "vsphere: act")
    assert type(got) is error
    assert PowerStateConflict.__mro__[1] is TaskFailed


def test_faults_chain_the_cause() -> None:
    with pytest.raises(NotFound) as info, faults("vsphere: read vm-9"):
        raise vmodl.fault.ManagedObjectNotFound(msg="gone")
    assert isinstance(info.value.__cause__, vmodl.fault.ManagedObjectNotFound)
    assert "vsphere: read vm-9" in str(info.value)


def test_tls_verified_unless_insecure(tmp_path: Any) -> None:
    assert Endpoint.parse("vc.example").ssl_context().verify_mode is ssl.CERT_REQUIRED
    ep = Endpoint.parse("https://vc.example:8443/sdk", insecure=True)
    assert (ep.host, ep.port) == ("vc.example", 8443)
    assert ep.ssl_context().verify_mode is ssl.CERT_NONE
    with pytest.raises(ConnectError, match="ca_file"):
        Endpoint.parse("vc", ca_file=str(tmp_path / "missing.pem")).ssl_context()


def test_render_is_pure_and_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VC_PW_UNIT", "hunter2-secret")
    d = VsphereDriver({"server": "vc.example", "user": "u", "password": {"env": "VC_PW_UNIT"}, "datastore": "ds1"})
    r = d.render(machine(gpu=GpuSpec(mode="vgpu", profile="grid_a40-8q")), OWNER)
    assert "hunter2-secret" not in r.text
    doc = json.loads(r.text)
    assert doc["method"] == "CloneVM_Task + ReconfigVM_Task" and doc["template"] == "debian12-tpl"
    assert "grid_a40-8q" in r.text and "10.10.110.11" in r.text
    net = d.render(NetworkSpec(address="network.d", name="D", purpose="dicom", vlan=110), OWNER)
    assert json.loads(net.text)["spec"]["vlanId"] == 110
    assert d.host._vc is None  # no connection was made


def test_settings_may_be_an_object_and_password_a_secret_ref() -> None:
    from types import SimpleNamespace

    from pacsinfra.drivers.vsphere.host import secret as _secret
    from pacsinfra.secrets import SecretRef

    cfg = SimpleNamespace(server="vc.example", user="u", password=SecretRef(env="X"), datastore="ds9", hot_add=True)
    d = VsphereDriver(cfg)
    doc = json.loads(d.render(machine(image={}), OWNER).text)
    assert doc["method"] == "CreateVM_Task" and doc["config"]["cpuHotAddEnabled"] is True
    assert "[ds9]" in json.dumps(doc)
    assert _secret({"env": "X"}) == SecretRef(env="X")
    from pacsinfra.errors import SecretError

    with pytest.raises(SecretError, match="secret reference") as info:
        _secret("plain-text-password")
    assert "plain-text-password" not in str(info.value)


class FakeTargetInv:
    """An Inventory stand-in whose hosts offer one PCI device for passthrough."""

    def config_target(self) -> Any:
        dev = vim.host.PciDevice(
            id="0000:65:00.0", deviceId=-8000, vendorId=0x10DE, deviceName="NVIDIA A40",
            classId=0x0302, subVendorId=0, subDeviceId=0, bus=0x65, slot=0, function=0, vendorName="NVIDIA",
        )
        return vim.vm.ConfigTarget(pciPassthrough=[vim.vm.PciPassthroughInfo(pciDevice=dev, systemId="sys-1", name="gpu")])

    def datastores(self) -> dict[str, Any]:
        return {}


def test_passthrough_backing_comes_from_the_host() -> None:
    from pacsinfra.drivers.vsphere.inventory import InventoryResolver

    r = InventoryResolver(FakeTargetInv())  # type: ignore[arg-type]
    b = r.passthrough("0000:65:00.0")
    assert (b.id, b.systemId, b.vendorId, b.deviceName) == ("0000:65:00.0", "sys-1", 0x10DE, "NVIDIA A40")
    assert b.deviceId == format(-8000 & 0xFFFF, "x")
    with pytest.raises(CapabilityError, match="0000:17:00.0"):
        r.passthrough("0000:17:00.0")


class RecordingClient:
    """Records PBM calls; answers PbmRetrieveContent with one profile."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, action: str, fn: Any, *args: Any, **kw: Any) -> Any:
        self.calls.append((fn.__name__ if hasattr(fn, "__name__") else str(fn), kw))
        return None


def test_policy_update_sends_pbm_update_with_the_new_rules() -> None:
    from types import SimpleNamespace

    from pacsinfra.drivers.vsphere.pbm import PolicyStore

    client = RecordingClient()
    pm = SimpleNamespace(PbmUpdate=lambda **kw: None)
    client.pbm_content = SimpleNamespace(profileManager=pm)  # type: ignore[attr-defined]
    spec = StorageSpec(address="storage.a", name="A", tier="t", provisioning="thick", iops_limit=300)
    PolicyStore(client).update(Policy(id="pid-1", name="A", rules={}), spec)
    (_, kw), = client.calls
    assert kw["profileId"].uniqueId == "pid-1"
    caps = kw["updateSpec"].constraints.subProfiles[0].capability
    got = {c.id.id: c.constraint[0].propertyInstance[0].value for c in caps}
    assert got == {"proportionalCapacity": 100, "iopsLimit": 300}


# -- task waits (WaitForUpdatesEx), with a plain stand-in collector ------------------------------
class FakeCollector:
    """Answers WaitForUpdatesEx with scripted updates; records what it was asked."""

    def __init__(self, updates: list[Any]) -> None:
        self.updates = updates
        self.waits: list[Any] = []
        self.destroyed = False

    def CreateFilter(self, spec: Any, partialUpdates: bool) -> None:  # noqa: N802, N803 - SDK names
        self.spec = spec

    def WaitForUpdatesEx(self, version: str, options: Any) -> Any:  # noqa: N802 - SDK name
        import time as _t

        self.waits.append((version, options.maxWaitSeconds))
        if self.updates:
            return self.updates.pop(0)
        _t.sleep(0.05)  # a real server holds the call up to maxWaitSeconds
        return None

    def DestroyPropertyCollector(self) -> None:  # noqa: N802 - SDK name
        self.destroyed = True


def _client_with(collector: FakeCollector) -> Any:
    from types import SimpleNamespace

    from pacsinfra.drivers.vsphere.client import VsphereClient

    c = VsphereClient(si=object())
    c._content = SimpleNamespace(propertyCollector=SimpleNamespace(CreatePropertyCollector=lambda: collector))
    return c


def _update(version: str, task: Any, **changes: Any) -> Any:
    from types import SimpleNamespace

    change_set = [SimpleNamespace(name=k.replace("_", "."), val=v) for k, v in changes.items()]
    return SimpleNamespace(
        version=version,
        filterSet=[SimpleNamespace(objectSet=[SimpleNamespace(obj=task, changeSet=change_set)])],
    )


def test_wait_returns_the_task_result() -> None:
    task = vim.Task("task-1")
    col = FakeCollector([_update("1", task, info_state="running"), _update("2", task, info_state="success", info_result="vm-9")])
    assert _client_with(col).wait(task, "vsphere: create") == "vm-9"
    assert [v for v, _ in col.waits] == ["", "1"] and col.destroyed


def test_a_failed_task_raises_its_translated_fault() -> None:
    task = vim.Task("task-2")
    fault = vim.fault.DuplicateName(name="vm-a")
    col = FakeCollector([_update("1", task, info_state="error", info_error=fault)])
    with pytest.raises(AlreadyExists) as info:
        _client_with(col).wait(task, "vsphere: create vm-a")
    assert info.value.__cause__ is fault and col.destroyed


def test_a_task_that_never_ends_times_out() -> None:
    task = vim.Task("task-3")
    col = FakeCollector([_update("1", task, info_state="running")])
    with pytest.raises(TaskFailed, match="timed out"):
        _client_with(col).wait(task, "vsphere: slow", timeout=0.3)
    assert col.destroyed and all(w >= 1 for _, w in col.waits)
