"""The Hyper-V driver through real pywinrm over HTTP to a loopback WS-Management endpoint.

Behind the endpoint is tests/support/hyperv_model.py: an in-memory Hyper-V host that runs
each script by its JSON contract. What these tests prove is the driver's side of every
contract (and pywinrm's protocol handling); the scripts themselves on a real host are
checked by scripts/check-hyperv-contracts.py (manual).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import need_module

need_module("winrm")

from support.hyperv_model import HypervHost, ModelError  # noqa: E402
from support.wsman_server import PASSWORD, USER, WsmanServer, basic_session  # noqa: E402

from pacsinfra.drivers.hyperv.client import PowerShellFailed  # noqa: E402
from pacsinfra.drivers.hyperv.driver import HypervDriver  # noqa: E402
from pacsinfra.errors import AlreadyExists, TaskFailed  # noqa: E402
from pacsinfra.specs import (  # noqa: E402
    ChangeKind,
    DiskSpec,
    GpuSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Ownership,
    PowerState,
    StorageSpec,
    changed_fields,
)

pytestmark = pytest.mark.integration

IMAGE = "C:\\Images\\debian12.vhdx"
FLASH = "D:\\PACS\\Flash"


def owner(addr: str, lineage: str = "lin-1") -> Ownership:
    return Ownership(site="st-mary", address=addr, lineage=lineage)


NET = NetworkSpec(address="network.dicom", name="PACS-DICOM", purpose="dicom", vlan=110,
                  cidr="10.10.110.0/24", gateway="10.10.110.1", mtu=9000, qos="high",
                  settings={"switch": "PACS-DICOM", "type": "internal"})
MGMT = NetworkSpec(address="network.management", name="PACS-MGMT", purpose="management",
                   settings={"switch": "PACS-MGMT"})
STORE = StorageSpec(address="storage.flash", name=FLASH, tier="performance", encrypted=True,
                    iops_limit=20000, settings={"path": FLASH})


def archive(i: int = 0, **kw: Any) -> MachineSpec:
    base = MachineSpec(
        address=f"machine.archive[{i}]", name=f"st-mary-archive-{i + 1}", role="archive", index=i,
        image={"vhdx": IMAGE, "mode": "differencing"}, cpu_count=4, memory_mib=8192,
        cpu_reservation_mhz=4000, cpu_limit_mhz=8000, cpu_shares=8000,
        disks=(DiskSpec("os", 40960, FLASH), DiskSpec("data", 102400, FLASH, provisioning="thick",
                                                      mount="/var/lib/pacsinfra", iops_limit=5000)),
        nics=(NicSpec("PACS-DICOM", address=f"10.10.110.{11 + i}", prefix=24, gateway="10.10.110.1",
                      vlan=110, mtu=9000), NicSpec("PACS-MGMT")),
        holds_data=True, hostname=f"st-mary-archive-{i + 1}",
    )
    return dataclasses.replace(base, **kw)


@pytest.fixture
def host() -> HypervHost:
    h = HypervHost(mhz=2600, memory_mib=65536)
    h.add_image(IMAGE, 4096)
    return h


@pytest.fixture
def endpoint(host: HypervHost) -> Iterator[WsmanServer]:
    with WsmanServer(host.run, USER, PASSWORD) as srv:
        yield srv


def make_provider(srv: WsmanServer, **cfg: Any) -> HypervDriver:
    config = {"host": "127.0.0.1", "ssl": False, "transport": "basic", **cfg}
    return HypervDriver(config, client=basic_session(srv.url))


@pytest.fixture
def drv(endpoint: WsmanServer) -> HypervDriver:
    d = make_provider(endpoint)
    d.connect()
    return d


def build(drv: HypervDriver) -> None:
    for spec in (NET, MGMT, STORE):
        drv.create(spec, owner(spec.address))


def test_one_script_is_one_winrm_shell_round_trip(drv: HypervDriver, endpoint: WsmanServer) -> None:
    # connect ran host-info: Create, Command, Receive (Running), Receive (Done), Signal, Delete
    assert endpoint.actions == ["Create", "Command", "Receive", "Receive", "Signal", "Delete"]
    assert drv.host.facts["mhz"] == 2600 and drv.host.context().host_mhz == 2600
    assert endpoint.shells == {}  # every shell deleted


def test_create_read_round_trip(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive()
    obs = drv.create(spec, owner(spec.address))
    assert changed_fields(spec, obs) == []
    assert obs.power is PowerState.ON and obs.owner == owner(spec.address)
    again = drv.read(spec)
    assert again is not None and again.id == obs.id and changed_fields(spec, again) == []
    vm = host.vm("st-mary-archive-1")
    # what Hyper-V was told, in its own units
    assert vm.processor == {"count": 4, "reserve": 39, "maximum": 77, "weight": 200}
    assert vm.memory["dynamic"] is False and vm.memory["startup_mib"] == 8192
    assert [(a.name, a.switch, a.vlan) for a in vm.adapters] == [
        ("nic0", "PACS-DICOM", 110), ("nic1", "PACS-MGMT", None)]
    assert vm.secure_boot == {"enabled": True, "template": "MicrosoftUEFICertificateAuthority"}
    assert vm.notes.startswith("pacsinfra:{") and "\n" not in vm.notes
    os_disk = host.files[(FLASH + "\\st-mary-archive-1-os.vhdx").lower()]
    assert (os_disk.type, os_disk.parent, os_disk.size_mib) == ("Differencing", IMAGE, 40960)
    data = host.files[(FLASH + "\\st-mary-archive-1-data.vhdx").lower()]
    assert (data.type, data.size_mib) == ("Fixed", 102400)
    assert vm.drives[1]["maximum_iops"] == 5000
    # the MAC Hyper-V chose is reported, and is no drift
    assert obs.spec.nics[0].mac is not None and obs.spec.nics[0].mac.startswith("00:15:5d")


def test_dynamic_memory_gpu_and_static_mac(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive(memory_reservation_mib=4096, gpu=GpuSpec("partition", profile="a40-8q", count=2),
                   nics=(NicSpec("PACS-DICOM", vlan=110, mac="00:15:5d:aa:bb:01"),))
    obs = drv.create(spec, owner(spec.address))
    assert changed_fields(spec, obs) == []
    vm = host.vm(spec.name)
    assert vm.memory == {"dynamic": True, "startup_mib": 8192, "minimum_mib": 4096, "maximum_mib": 8192}
    assert len(vm.gpus) == 2 and vm.adapters[0].mac == "00155DAABB01"


def test_drift_is_detected_classified_and_repaired(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive()
    drv.create(spec, owner(spec.address))
    vm = host.vm(spec.name)
    # behind pacsinfra's back: vCPUs, weight, reserve, a VLAN, and a grown-down disk record
    vm.state = "Off"
    vm.processor.update(count=2, weight=100, reserve=10)
    vm.adapters[0].vlan = 999
    vm.state = "Running"
    host.files[(FLASH + "\\st-mary-archive-1-data.vhdx").lower()].size_mib = 51200
    obs = drv.read(spec)
    assert obs is not None
    fields = changed_fields(spec, obs)
    # the limit is a percentage of the vCPUs: fewer vCPUs, fewer MHz
    assert fields == ["cpu_count", "cpu_reservation_mhz", "cpu_limit_mhz", "cpu_shares", "disks", "nics"]
    kinds = {f: drv.classify_change(spec, obs, f) for f in fields}
    assert kinds == {"cpu_count": ChangeKind.NEEDS_POWER_OFF, "cpu_reservation_mhz": ChangeKind.IN_PLACE,
                     "cpu_limit_mhz": ChangeKind.IN_PLACE,
                     "cpu_shares": ChangeKind.IN_PLACE, "disks": ChangeKind.IN_PLACE,
                     "nics": ChangeKind.IN_PLACE}
    assert obs.spec.cpu_reservation_mhz == 520  # 10% of 2 vCPUs x 2600 MHz, converted back
    # the model refuses a vCPU change on a running VM: success proves the driver stopped it
    done = drv.update(spec, obs, fields)
    assert changed_fields(spec, done) == [] and done.power is PowerState.ON
    assert host.vm(spec.name).adapters[0].vlan == 110


def test_live_changes_do_not_stop_the_vm(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive()
    obs = drv.create(spec, owner(spec.address))
    grown = archive(disks=(DiskSpec("os", 40960, FLASH), DiskSpec("data", 204800, FLASH, provisioning="thick",
                                                                  mount="/srv", iops_limit=8000)),
                    nics=(dataclasses.replace(spec.nics[0], vlan=120), spec.nics[1]), cpu_shares=4000)
    fields = changed_fields(grown, obs)
    assert fields == ["cpu_shares", "disks", "nics"]
    assert max(drv.classify_change(grown, obs, f) for f in fields) is ChangeKind.IN_PLACE
    host.calls.clear()
    done = drv.update(grown, obs, fields)
    assert changed_fields(grown, done) == []
    assert host.calls[-1][0] == "set-vm" and host.calls[-1][1]["stop_first"] is False
    assert host.vm(spec.name).state == "Running"
    assert host.files[(FLASH + "\\st-mary-archive-1-data.vhdx").lower()].size_mib == 204800
    # shrinking is never done in place
    shrunk = archive(disks=(DiskSpec("os", 20480, FLASH), grown.disks[1]))
    assert drv.classify_change(shrunk, done, "disks") is ChangeKind.REPLACE
    assert drv.classify_change(archive(image={"vhdx": "C:\\Images\\other.vhdx"}), done, "image") is ChangeKind.REPLACE


def test_too_little_memory_fails_with_cmdlet_and_line_and_cleans_up(endpoint: WsmanServer) -> None:
    small = HypervHost(memory_mib=4096)
    small.add_image(IMAGE, 4096)
    with WsmanServer(small.run, USER, PASSWORD) as srv:
        d = make_provider(srv)
        build(d)
        spec = archive()
        with pytest.raises(PowerShellFailed) as info:
            d.create(spec, owner(spec.address))
        err = info.value
        assert isinstance(err, TaskFailed)
        assert err.cmdlet == "Start-VM" and err.category == "ResourceUnavailable"
        sent = next(text for name, text in _scripts(srv, small) if name == "new-vm")
        assert "Start-VM -VM" in sent.splitlines()[err.line - 1]
        assert f"line {err.line}" in str(err) and "not enough memory" in str(err)
        # the half-created VM and its disks are gone
        assert small.vms == {} and small.vhd_files() == [IMAGE]


def _scripts(srv: WsmanServer, host: HypervHost) -> list[tuple[str, str]]:
    from pacsinfra.drivers.hyperv import scripts
    return [(n, scripts.render(n, p).text) for n, p in host.calls]


def test_duplicate_name_race_reports_the_failing_line(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive()
    # another admin creates the name between pacsinfra's read and its New-VM
    host.fail_next["new-vm"] = ModelError(
        "Write-Error", "a virtual machine named 'st-mary-archive-1' already exists", "ResourceExists",
        type_="Microsoft.PowerShell.Commands.WriteErrorException",
        anchor="Write-Error -Category ResourceExists")
    with pytest.raises(PowerShellFailed) as info:
        drv.create(spec, owner(spec.address))
    assert info.value.cmdlet == "Write-Error" and info.value.category == "ResourceExists"
    assert info.value.line > 0 and host.vms == {}


def test_missing_switch_and_missing_image(drv: HypervDriver, host: HypervHost) -> None:
    drv.create(STORE, owner(STORE.address))
    spec = archive()
    with pytest.raises(PowerShellFailed) as info:
        drv.create(spec, owner(spec.address))
    assert info.value.cmdlet == "Add-VMNetworkAdapter" and "PACS-DICOM" in str(info.value)
    assert host.vms == {}
    build(drv)
    bad = archive(image={"vhdx": "C:\\Images\\nope.vhdx", "mode": "copy"})
    with pytest.raises(PowerShellFailed) as info2:
        drv.create(bad, owner(bad.address))
    assert info2.value.cmdlet == "Copy-Item" and host.vms == {} and host.vhd_files() == [IMAGE]


def test_leftover_disk_of_a_killed_create_is_replaced(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive()
    from support.hyperv_model import Vhd
    left = FLASH + "\\st-mary-archive-1-data.vhdx"
    host.files[left.lower()] = Vhd(path=left, size_mib=1, type="Dynamic")
    obs = drv.create(spec, owner(spec.address))
    assert changed_fields(spec, obs) == []


def test_delete_parts_first_absent_is_success_unowned_refused(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive()
    obs = drv.create(spec, owner(spec.address))
    drv.delete(obs)
    drv.delete(obs)  # absent: success
    assert host.vms == {} and host.vhd_files() == [IMAGE]
    for s in (NET, MGMT, STORE):
        o = drv.read(s)
        assert o is not None
        drv.delete(o)
        assert drv.read(s) is None
    foreign = dataclasses.replace(obs, owner=None)
    with pytest.raises(AlreadyExists, match="not owned"):
        drv.delete(foreign)


def test_storage_directory_with_foreign_files_is_kept(drv: HypervDriver, host: HypervHost) -> None:
    obs = drv.create(STORE, owner(STORE.address))
    from support.hyperv_model import Vhd
    other = FLASH + "\\not-ours.vhdx"
    host.files[other.lower()] = Vhd(path=other, size_mib=10, type="Dynamic")
    drv.delete(obs)
    assert FLASH.lower() in host.dirs and host.vhd_files() == sorted([IMAGE, other])
    assert drv.read(STORE) is not None and drv.read(STORE).owner is None  # type: ignore[union-attr]


def test_hostile_names_travel_as_data(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    evil = "x'; Remove-VM -Name all -Force; '$(Stop-Computer)"
    spec = archive(name=evil)
    assert drv.check(spec) == []
    assert "Windows file names" in drv.check(archive(name='a"b'))[0]
    assert "wildcard" in drv.check(archive(name="a[1]`"))[0]
    obs = drv.create(spec, owner(spec.address))
    assert host.vm(evil).name == evil and changed_fields(spec, obs) == []
    assert (FLASH + "\\" + evil + "-os.vhdx").lower() in host.files


def test_network_settings_and_notes_round_trip(drv: HypervDriver, host: HypervHost) -> None:
    ext = NetworkSpec(address="network.uplink", name="PACS-UPLINK", purpose="uplink",
                      settings={"switch": "PACS-UPLINK", "type": "external", "adapter": "Ethernet 2"})
    obs = drv.create(ext, owner(ext.address))
    assert changed_fields(ext, obs) == [] and host.switches["pacs-uplink"].adapter == "Ethernet 2"
    moved = dataclasses.replace(ext, mtu=9000, purpose="dicom")
    got = drv.read(moved)
    assert got is not None and changed_fields(moved, got) == ["purpose", "mtu"]
    assert all(drv.classify_change(moved, got, f) is ChangeKind.IN_PLACE for f in ("purpose", "mtu"))
    assert changed_fields(moved, drv.update(moved, got, ["purpose", "mtu"])) == []
    retyped = dataclasses.replace(moved, settings={"switch": "PACS-UPLINK", "type": "internal"})
    got2 = drv.read(retyped)
    assert got2 is not None and changed_fields(retyped, got2) == ["settings"]
    assert drv.classify_change(retyped, got2, "settings") is ChangeKind.REPLACE
    with pytest.raises(PowerShellFailed, match="already bound"):
        drv.create(dataclasses.replace(ext, address="network.b", name="B", settings={"switch": "B", "adapter": "Ethernet 2"}),
                   owner("network.b"))


def test_wait_for_address_static_or_reported(drv: HypervDriver, host: HypervHost) -> None:
    build(drv)
    spec = archive()
    obs = drv.create(spec, owner(spec.address))
    assert drv.wait_for_address(obs, timeout=0) == "10.10.110.11"  # static: no wait
    dhcp = archive(1, nics=(NicSpec("PACS-MGMT"),))
    got = drv.create(dhcp, owner(dhcp.address))
    with pytest.raises(TaskFailed, match="no address for st-mary-archive-2 within 0s"):
        drv.wait_for_address(got, timeout=0)
    host.vm(dhcp.name).adapters[0].addresses = ["fe80::5", "10.10.1.23"]
    assert drv.wait_for_address(got, timeout=5) == "10.10.1.23"
