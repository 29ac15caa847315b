"""The vSphere driver against govmomi's vcsim: machines, policies, standard port groups, faults.

One simulator per module (1 datacenter, 1 cluster of 3 hosts, 1 DVS port group
from the model). Distributed port groups live in test_vsphere_dvs.py with their
own simulator: vcsim crashes when a NIC goes on a new standard port group while
two DVS port groups exist.
"""

from __future__ import annotations

import base64
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from vsphere_sim import Vcsim, vcsim, vcsim_binary  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

SITE = "st-test"


def _cfg(sim: Vcsim, **over: Any) -> dict[str, Any]:
    os.environ["PACSINFRA_TEST_VC_PASSWORD"] = sim.password
    cfg: dict[str, Any] = {
        "server": sim.server,
        "user": sim.user,
        "password": {"env": "PACSINFRA_TEST_VC_PASSWORD"},
        "ca_file": str(sim.ca_file),
        "datacenter": "DC0",
        "cluster": "DC0_C0",
        "vgpu_profiles": ["grid_a40-8q", "grid_a40-4q"],
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def driver(vcsim: Vcsim):  # noqa: F811
    from pacsinfra.providers import make_provider

    d = make_provider("vsphere", _cfg(vcsim))
    d.connect()
    yield d
    d.close()


@pytest.fixture(scope="module")
def policy(driver):  # type: ignore[no-untyped-def]
    from pacsinfra.specs import StorageSpec

    spec = StorageSpec(address="storage.flash", name="PACS Gold (test)", tier="performance", iops_limit=20000)
    return driver.create(spec, _own(spec.address))


@pytest.fixture(scope="module")
def dicom_net(driver):  # type: ignore[no-untyped-def]
    from pacsinfra.specs import NetworkSpec

    spec = NetworkSpec(address="network.dicom", name="T-DICOM", purpose="dicom", vlan=110, cidr="10.10.110.0/24")
    return driver.create(spec, _own(spec.address))


def _own(address: str, site: str = SITE) -> Any:
    from pacsinfra.specs import Ownership

    return Ownership(site=site, address=address, lineage="lineage-1")


def _machine(name: str, **over: Any) -> Any:
    from pacsinfra.specs import MachineSpec

    base: dict[str, Any] = dict(
        address=f"machine.{name}[0]",
        name=name,
        role=name,
        index=0,
        image={},
        cpu_count=2,
        memory_mib=2048,
        hostname=name,
    )
    base.update(over)
    return MachineSpec(**base)


def _vm(driver: Any, name: str) -> Any:
    vm = driver.machines.find(name)
    assert vm is not None, f"{name} not in the inventory"
    return vm


def _raw(driver: Any, name: str) -> Any:
    """The VM's config as vSphere reports it (through pyVmomi, not the driver's parser)."""
    return driver.client.properties(_vm(driver, name), ["config", "runtime.powerState", "guest"])


# -- connection, TLS, faults --------------------------------------------------------------------
def test_tls_is_verified_by_default(vcsim: Vcsim) -> None:  # noqa: F811
    from pacsinfra.drivers.vsphere.driver import VsphereDriver
    from pacsinfra.errors import ConnectError

    cfg = _cfg(vcsim)
    del cfg["ca_file"]
    with pytest.raises(ConnectError, match="certificate not trusted") as info:
        VsphereDriver(cfg).connect()
    assert info.value.__cause__ is not None  # chained from the SSL error
    d = VsphereDriver({**cfg, "insecure": True})
    d.connect()
    d.close()


def test_bad_password_is_auth_error_without_the_secret(vcsim: Vcsim) -> None:  # noqa: F811
    from pacsinfra.drivers.vsphere.driver import VsphereDriver
    from pacsinfra.errors import AuthError

    os.environ["PACSINFRA_TEST_VC_WRONG"] = "not-the-password-xyz"
    cfg = _cfg(vcsim, password={"env": "PACSINFRA_TEST_VC_WRONG"})
    with pytest.raises(AuthError) as info:
        VsphereDriver(cfg).connect()
    assert "not-the-password-xyz" not in str(info.value)


def test_unreachable_server_is_connect_error() -> None:
    from conftest import free_port

    from pacsinfra.drivers.vsphere.driver import VsphereDriver
    from pacsinfra.errors import ConnectError

    d = VsphereDriver({"server": f"127.0.0.1:{free_port()}", "user": "u", "password": {"env": "HOME"}})
    with pytest.raises(ConnectError):
        d.connect()


def test_session_lost_logs_in_again(driver: Any) -> None:
    spec = _machine("relogin", power_on=False)
    driver.create(spec, _own(spec.address))
    driver.client.content.sessionManager.Logout()  # the session is gone behind the driver's back
    obs = driver.read(spec)
    assert obs is not None and obs.spec.name == "relogin"
    driver.delete(obs)


# -- machines ---------------------------------------------------------------------------------
def test_create_reads_back_as_specified(driver: Any, policy: Any, dicom_net: Any) -> None:
    from pacsinfra.specs import DiskSpec, NicSpec, PowerState, changed_fields

    spec = _machine(
        "archive-1",
        cpu_count=4,
        memory_mib=8192,
        cpu_reservation_mhz=4000,
        cpu_limit_mhz=8000,
        cpu_shares=8000,
        memory_reservation_mib=4096,
        disks=(
            DiskSpec("os", 16384, policy.spec.name),
            DiskSpec("data", 65536, policy.spec.name, provisioning="thick", mount="/var/lib/pacs", iops_limit=20000),
        ),
        nics=(NicSpec("T-DICOM", address="10.10.110.11", prefix=24, gateway="10.10.110.1", vlan=110),),
        holds_data=True,
        ssh_authorized_keys=("ssh-ed25519 AAAA test",),
    )
    obs = driver.create(spec, _own(spec.address))
    assert changed_fields(spec, obs) == []
    assert obs.power is PowerState.ON
    assert obs.addresses == ("10.10.110.11",)  # guest customization ran while off, then power on
    assert "disks.storage" in obs.unobservable  # PBM does not report the association back

    raw = _raw(driver, "archive-1")
    cfg = raw["config"]
    assert (cfg.hardware.numCPU, cfg.hardware.memoryMB) == (4, 8192)
    assert cfg.cpuAllocation.shares.level == "custom" and cfg.cpuAllocation.shares.shares == 8000
    assert (cfg.cpuAllocation.reservation, cfg.cpuAllocation.limit) == (4000, 8000)
    assert cfg.memoryAllocation.reservation == 4096
    extra = {o.key: o.value for o in cfg.extraConfig}
    assert json.loads(extra["pacsinfra.owner"])["address"] == spec.address
    user = base64.b64decode(extra["guestinfo.userdata"]).decode()
    assert "archive-1" in user and "ssh-ed25519 AAAA test" in user
    assert raw["guest"].hostName == "archive-1"
    # a plan right after apply is empty, through a fresh read too
    again = driver.read(spec)
    assert again is not None and changed_fields(spec, again) == []


def test_clone_from_template_grows_disk_and_adds_nic(driver: Any, dicom_net: Any) -> None:
    from pyVmomi import vim

    from pacsinfra.specs import DiskSpec, NicSpec, changed_fields

    # a template the way an admin would have one: a VM with a 4 GiB disk and one NIC, marked as template
    tpl = _machine(
        "tpl-src", disks=(DiskSpec("os", 4096, "LocalDS_0"),), nics=(NicSpec("VM Network"),), power_on=False
    )
    obs = driver.create(tpl, _own("machine.tpl-src[0]", site="templates"))
    vm = driver.machines.vm_of(obs)
    driver.client.call("test", vm.MarkAsTemplate)
    driver.client.run("test", vm.Rename_Task, newName="debian12-tpl")

    spec = _machine(
        "router-1",
        image={"template": "debian12-tpl"},
        disks=(DiskSpec("os", 8192, "LocalDS_0"), DiskSpec("queue", 2048, "LocalDS_0")),
        nics=(NicSpec("VM Network"), NicSpec("T-DICOM", vlan=110)),
    )
    got = driver.create(spec, _own(spec.address))
    assert changed_fields(spec, got) == []
    assert [d.size_mib for d in got.spec.disks] == [8192, 2048]
    # no guest_id asked for: the clone keeps the template's
    assert _raw(driver, "router-1")["config"].guestId == "otherLinux64Guest"
    named = _machine("router-2", image={"template": "debian12-tpl", "guest_id": "debian10_64Guest"},
                     nics=(NicSpec("VM Network"),))
    driver.create(named, _own(named.address))
    assert _raw(driver, "router-2")["config"].guestId == "debian10_64Guest"  # the image's (vcsim knows no newer Debian)
    assert [n.network for n in got.spec.nics] == ["VM Network", "T-DICOM"]
    src = driver.client.properties(vm, ["config.template", "config.hardware.device"])
    assert src["config.template"] is True
    assert [d.capacityInKB for d in src["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualDisk)] == [
        4096 * 1024
    ]


def test_clone_of_a_thin_template_onto_a_thick_class_converges(driver: Any) -> None:
    """A thick storage class on a disk cloned from a thin template: the clone's disk is
    thick (the locator on a real vCenter; an edit after the clone where the simulator
    ignores locators), and the next plan proposes nothing."""
    from pyVmomi import vim

    from pacsinfra.specs import DiskSpec, NicSpec, changed_fields

    spec = _machine("thick-1", image={"template": "debian12-tpl"},
                    disks=(DiskSpec("os", 8192, "LocalDS_0", provisioning="thick"),),
                    nics=(NicSpec("VM Network"),))
    got = driver.create(spec, _own(spec.address))
    assert [d.provisioning for d in got.spec.disks] == ["thick"]
    assert changed_fields(spec, got) == [] and changed_fields(spec, driver.read(spec)) == []
    disks = [d for d in _raw(driver, "thick-1")["config"].hardware.device
             if isinstance(d, vim.vm.device.VirtualDisk)]
    assert [(d.backing.thinProvisioned, d.backing.eagerlyScrub) for d in disks] == [(False, True)]
    driver.delete(got)


def test_clone_without_declared_disks_keeps_the_template_disk(driver: Any) -> None:
    from pyVmomi import vim

    from pacsinfra.specs import ChangeKind, DiskSpec, NicSpec, changed_fields

    spec = _machine("viewer-tpl-1", image={"template": "debian12-tpl"}, nics=(NicSpec("VM Network"),))
    obs = driver.create(spec, _own(spec.address))
    assert obs.spec.disks == () and changed_fields(spec, obs) == []
    devices = _raw(driver, "viewer-tpl-1")["config"].hardware.device
    assert len([d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]) == 1  # the OS disk stays
    more = replace(spec, disks=(DiskSpec("scratch", 1024, "LocalDS_0"),))
    assert driver.classify_change(more, obs, "disks") is ChangeKind.IN_PLACE
    obs = driver.update(more, obs, ["disks"])
    assert [d.size_mib for d in obs.spec.disks] == [1024] and changed_fields(more, obs) == []
    driver.delete(obs)
    again = driver.create(spec, _own(spec.address))  # the template's disk survived the clone's deletion
    assert changed_fields(spec, again) == []


def test_clone_failing_after_the_copy_leaves_nothing(driver: Any) -> None:
    from pacsinfra.errors import NotFound
    from pacsinfra.specs import NicSpec

    spec = _machine("half-done", image={"template": "debian12-tpl"}, nics=(NicSpec("no-such-portgroup"),))
    with pytest.raises(NotFound, match="no-such-portgroup"):
        driver.create(spec, _own(spec.address))
    assert driver.machines.find("half-done") is None


def test_reconfigure_in_place_and_with_power_off(driver: Any) -> None:
    from pacsinfra.specs import ChangeKind, PowerState, changed_fields

    spec = _machine("db-1", cpu_reservation_mhz=1000, memory_reservation_mib=512)
    obs = driver.create(spec, _own(spec.address))
    boot = _raw(driver, "db-1")
    want = replace(spec, cpu_reservation_mhz=2000, cpu_shares=4000, memory_reservation_mib=2048, memory_lock=True)
    fields = changed_fields(want, obs)
    assert set(fields) == {"cpu_reservation_mhz", "cpu_shares", "memory_reservation_mib", "memory_lock"}
    assert {driver.classify_change(want, obs, f) for f in fields} == {ChangeKind.IN_PLACE}
    obs = driver.update(want, obs, fields)
    assert changed_fields(want, obs) == [] and obs.power is PowerState.ON
    cfg = _raw(driver, "db-1")["config"]
    assert cfg.memoryReservationLockedToMax is True and cfg.cpuAllocation.shares.shares == 4000
    assert boot["runtime.powerState"] == "poweredOn"

    bigger = replace(want, memory_mib=4096, cpu_count=4)
    fields = changed_fields(bigger, obs)
    assert {driver.classify_change(bigger, obs, f) for f in fields} == {ChangeKind.NEEDS_POWER_OFF}
    obs = driver.update(bigger, obs, fields)
    assert changed_fields(bigger, obs) == [] and obs.power is PowerState.ON
    assert _raw(driver, "db-1")["config"].hardware.memoryMB == 4096


def test_hot_add_makes_growth_in_place(vcsim: Vcsim) -> None:  # noqa: F811
    from pacsinfra.drivers.vsphere.driver import VsphereDriver
    from pacsinfra.specs import ChangeKind, changed_fields

    with VsphereDriver(_cfg(vcsim, hot_add=True)) as d:
        spec = _machine("hot-1")
        obs = d.create(spec, _own(spec.address))
        more = replace(spec, cpu_count=4, memory_mib=4096)
        assert d.classify_change(more, obs, "cpu_count") is ChangeKind.IN_PLACE
        assert d.classify_change(more, obs, "memory_mib") is ChangeKind.IN_PLACE
        less = replace(spec, cpu_count=1)
        assert d.classify_change(less, obs, "cpu_count") is ChangeKind.NEEDS_POWER_OFF
        obs = d.update(more, obs, changed_fields(more, obs))
        assert (obs.spec.cpu_count, obs.spec.memory_mib) == (4, 4096)
        d.delete(obs)


def test_disk_growth_in_place_shrink_is_replace(driver: Any) -> None:
    from pacsinfra.errors import CapabilityError
    from pacsinfra.specs import ChangeKind, DiskSpec, changed_fields

    spec = _machine("disk-1", disks=(DiskSpec("os", 4096, "LocalDS_0"),))
    obs = driver.create(spec, _own(spec.address))
    grown = replace(spec, disks=(DiskSpec("os", 8192, "LocalDS_0"), DiskSpec("data", 1024, "LocalDS_0")))
    assert driver.classify_change(grown, obs, "disks") is ChangeKind.IN_PLACE
    obs = driver.update(grown, obs, changed_fields(grown, obs))
    assert [d.size_mib for d in obs.spec.disks] == [8192, 1024]
    shrunk = replace(spec, disks=(DiskSpec("os", 2048, "LocalDS_0"),))
    assert driver.classify_change(shrunk, obs, "disks") is ChangeKind.REPLACE
    with pytest.raises(CapabilityError, match="replace"):
        driver.update(shrunk, obs, ["disks"])


def test_nic_on_a_new_vlan_port_group(driver: Any) -> None:
    from pacsinfra.specs import ChangeKind, NetworkSpec, NicSpec, changed_fields

    net = NetworkSpec(address="network.mgmt", name="T-MGMT", purpose="management", vlan=120)
    nobs = driver.create(net, _own(net.address))
    assert nobs.spec.vlan == 120 and changed_fields(net, nobs) == []
    assert driver.read(net).spec.vlan == 120
    spec = _machine("viewer-1", nics=(NicSpec("VM Network"),))
    obs = driver.create(spec, _own(spec.address))
    more = replace(spec, nics=(NicSpec("VM Network"), NicSpec("T-MGMT", vlan=120)))
    assert driver.classify_change(more, obs, "nics") is ChangeKind.IN_PLACE
    obs = driver.update(more, obs, ["nics"])
    assert [n.network for n in obs.spec.nics] == ["VM Network", "T-MGMT"]
    assert all(n.mac for n in obs.spec.nics) and changed_fields(more, obs) == []
    moved = replace(spec, nics=(NicSpec("T-MGMT"),))
    obs = driver.update(moved, obs, ["nics"])
    assert [n.network for n in obs.spec.nics] == ["T-MGMT"]


def test_vgpu_device_reads_back_with_its_profile(driver: Any) -> None:
    from pyVmomi import vim

    from pacsinfra.specs import GpuSpec, changed_fields

    spec = _machine(
        "ai-1", memory_mib=16384, memory_reservation_mib=16384, gpu=GpuSpec(mode="vgpu", profile="grid_a40-8q")
    )
    assert driver.check(spec) == []
    obs = driver.create(spec, _own(spec.address))
    assert obs.spec.gpu == GpuSpec(mode="vgpu", profile="grid_a40-8q", count=1)
    assert changed_fields(spec, obs) == []
    devs = [d for d in _raw(driver, "ai-1")["config"].hardware.device if isinstance(d, vim.vm.device.VirtualPCIPassthrough)]
    assert [d.backing.vgpu for d in devs] == ["grid_a40-8q"]
    other = replace(spec, gpu=GpuSpec(mode="vgpu", profile="grid_a40-4q"))
    obs = driver.update(other, obs, ["gpu"])
    assert obs.spec.gpu.profile == "grid_a40-4q"


def test_vgpu_rules_checked_before_vsphere_is_called(driver: Any) -> None:
    from pacsinfra.errors import CapabilityError
    from pacsinfra.specs import GpuSpec

    unreserved = _machine("ai-2", memory_mib=8192, gpu=GpuSpec(mode="vgpu", profile="grid_a40-8q"))
    assert any("reserved" in p for p in driver.check(unreserved))
    with pytest.raises(CapabilityError):
        driver.create(unreserved, _own(unreserved.address))
    unknown = replace(unreserved, memory_reservation_mib=8192, gpu=GpuSpec(mode="vgpu", profile="grid_x-99q"))
    with pytest.raises(CapabilityError, match="grid_x-99q"):
        driver.create(unknown, _own(unknown.address))
    assert driver.machines.find("ai-2") is None


def test_storage_policy_created_and_found(driver: Any, policy: Any) -> None:
    from pacsinfra.drivers.vsphere.pbm import PolicyStore
    from pacsinfra.specs import StorageSpec, changed_fields

    found = PolicyStore(driver.client).find("PACS Gold (test)")
    assert found is not None and found.id == policy.id
    assert found.rules["iopsLimit"] == 20000
    spec = StorageSpec(address="storage.nearline", name="PACS Nearline (test)", tier="capacity", provisioning="thick")
    obs = driver.create(spec, _own(spec.address))
    assert obs.spec.provisioning == "thick" and changed_fields(spec, obs) == []
    assert changed_fields(spec, driver.read(spec)) == []
    names = {o.spec.name for o in driver.list_owned(SITE)}
    assert {"PACS Gold (test)", "PACS Nearline (test)"} <= names
    driver.delete(obs)
    assert driver.read(spec) is None and PolicyStore(driver.client).find(spec.name) is None


def test_drift_behind_pacsinfras_back(driver: Any) -> None:
    from pyVmomi import vim

    from pacsinfra.specs import changed_fields

    spec = _machine("drift-1", cpu_reservation_mhz=1000, cpu_shares=2000, memory_reservation_mib=1024)
    obs = driver.create(spec, _own(spec.address))
    assert changed_fields(spec, obs) == []
    vm = _vm(driver, "drift-1")
    hand = vim.vm.ConfigSpec(
        cpuAllocation=vim.ResourceAllocationInfo(reservation=500, shares=vim.SharesInfo(level="high", shares=0)),
        memoryAllocation=vim.ResourceAllocationInfo(reservation=0),
    )
    driver.client.run("by hand", vm.ReconfigVM_Task, spec=hand)
    driver.client.run("by hand", vm.PowerOffVM_Task)
    drifted = driver.read(spec)
    assert sorted(changed_fields(spec, drifted)) == [
        "cpu_reservation_mhz",
        "cpu_shares",
        "memory_reservation_mib",
        "power_on",
    ]
    assert drifted.spec.cpu_shares == 4000  # level high on 2 vCPUs, in the spec's scale
    fixed = driver.update(spec, drifted, changed_fields(spec, drifted))
    assert changed_fields(spec, fixed) == []


def test_anti_affinity_rule_follows_members(driver: Any) -> None:
    specs = [
        _machine(f"ha-{i}", index=i, address=f"machine.ha[{i}]", role="ha", anti_affinity_group="st-test-ha")
        for i in range(3)
    ]
    observed = [driver.create(s, _own(s.address)) for s in specs]
    assert driver.machines.rule_members("st-test-ha") == ["ha-0", "ha-1", "ha-2"]
    driver.delete(observed[0])
    assert driver.machines.rule_members("st-test-ha") == ["ha-1", "ha-2"]


def test_fifty_machines_in_parallel(vcsim: Vcsim) -> None:  # noqa: F811
    from pacsinfra.drivers.vsphere.driver import VsphereDriver
    from pacsinfra.specs import NicSpec, changed_fields

    with VsphereDriver(_cfg(vcsim)) as d:
        specs = [
            _machine(
                f"fleet-{i}",
                index=i,
                role="fleet",
                address=f"machine.fleet[{i}]",
                cpu_reservation_mhz=500,
                nics=(NicSpec("VM Network", address=f"10.20.0.{i + 10}", prefix=24),),
            )
            for i in range(50)
        ]
        t0 = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            made = list(pool.map(lambda s: d.create(s, _own(s.address, site="fleet")), specs))
        took = time.monotonic() - t0
        assert len({o.id for o in made}) == 50
        owned = {o.owner.address: o for o in d.list_owned("fleet")}
        assert len(owned) == 50
        assert all(changed_fields(s, owned[s.address]) == [] for s in specs)
        assert sorted(o.addresses[0] for o in owned.values()) == sorted(f"10.20.0.{i + 10}" for i in range(50))
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(d.delete, made))
        assert d.list_owned("fleet") == []
        print(f"50 machines created in parallel in {took:.2f}s")


def test_latency_sensitivity_when_asked(vcsim: Vcsim) -> None:  # noqa: F811
    from pacsinfra.drivers.vsphere.driver import VsphereDriver

    with VsphereDriver(_cfg(vcsim, latency_sensitivity={"rt": "high"})) as d:
        rt = _machine("rt-1", role="rt", cpu_reservation_mhz=4000, memory_reservation_mib=2048)
        other = _machine("calm-1")
        d.create(rt, _own(rt.address))
        d.create(other, _own(other.address))
        levels = {
            n: d.client.properties(_vm(d, n), ["config.latencySensitivity"]).get("config.latencySensitivity")
            for n in ("rt-1", "calm-1")
        }
        assert levels["rt-1"].level == "high"
        assert levels["calm-1"] is None or levels["calm-1"].level == "normal"


def test_passthrough_device_unknown_to_the_hosts_is_refused(driver: Any) -> None:
    from pacsinfra.errors import CapabilityError
    from pacsinfra.specs import GpuSpec

    spec = _machine("pt-1", memory_reservation_mib=2048, gpu=GpuSpec(mode="passthrough", device="0000:65:00.0"))
    assert driver.check(spec) == []
    with pytest.raises(CapabilityError, match="0000:65:00.0"):
        driver.create(spec, _own(spec.address))
    assert driver.machines.find("pt-1") is None
