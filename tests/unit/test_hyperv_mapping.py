"""Pure parts of the Hyper-V driver: settings, unit conversions, marks, the change table."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from conftest import need_module

need_module("winrm")

from pacsinfra.drivers.hyperv import vm as mach  # noqa: E402
from pacsinfra.drivers.hyperv.config import read_settings  # noqa: E402
from pacsinfra.drivers.hyperv.driver import HypervDriver  # noqa: E402
from pacsinfra.drivers.hyperv.marks import make_mark, parse_mark  # noqa: E402
from pacsinfra.errors import UsageError  # noqa: E402
from pacsinfra.providers import provider_class  # noqa: E402
from pacsinfra.secrets import SecretRef  # noqa: E402
from pacsinfra.specs import (  # noqa: E402
    ChangeKind,
    DiskSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Observed,
    Ownership,
    StorageSpec,
    changed_fields,
)

CTX = mach.HostContext(host_mhz=2600, storage_root="D:\\PACS")
OWNER = Ownership("st-mary", "machine.archive[0]", "lin")


def spec(**kw: object) -> MachineSpec:
    base = MachineSpec(address="machine.archive[0]", name="st-mary-archive-1", role="archive", index=0,
                       image={"vhdx": "C:\\Images\\d.vhdx"}, cpu_count=4, memory_mib=8192,
                       disks=(DiskSpec("os", 40960, "flash"),), nics=(NicSpec("PACS", vlan=110),))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_registry_finds_the_driver() -> None:
    assert provider_class("hyperv") is HypervDriver


def test_settings_from_object_or_mapping() -> None:
    s = read_settings({"host": "hv01", "user": "u", "password": {"env": "X"}})
    assert (s.port, s.transport, s.ssl, s.verify_ssl, s.endpoint) == (5986, "ntlm", True, True, "https://hv01:5986/wsman")
    assert isinstance(s.password_ref(), SecretRef)
    o = read_settings(SimpleNamespace(host="hv02", port=None, transport="kerberos", ssl=False, user="u",
                                      password=SecretRef(env="X"), verify_ssl=None, ca_file=None))
    assert (o.port, o.endpoint) == (5985, "http://hv02:5985/wsman")
    with pytest.raises(UsageError, match="transport must be one of"):
        read_settings({"host": "h", "transport": "telnet"})
    with pytest.raises(UsageError, match="host is required"):
        read_settings({})
    with pytest.raises(UsageError, match="secret reference"):
        read_settings({"host": "h", "password": "plain-text"}).password_ref()


def test_driver_construction_does_no_io_and_keeps_the_secret_unresolved() -> None:
    d = HypervDriver({"host": "hv01", "user": "u", "password": {"env": "PACSINFRA_UNSET_VAR_1234"}})
    assert d.host.facts == {} and d.settings.password == {"env": "PACSINFRA_UNSET_VAR_1234"}


@pytest.mark.parametrize(("mhz", "count", "reserve"), [(4000, 4, 39), (10400, 4, 100), (1, 8, 1), (None, 2, 0)])
def test_reserve_percent(mhz: int | None, count: int, reserve: int) -> None:
    assert mach.reserve_percent(mhz, count, 2600) == reserve


def test_weight_from_shares() -> None:
    assert [mach.weight(s, 2) for s in (1000, 2000, 4000, None)] == [50, 100, 200, 100]
    assert mach.weight(10**9, 1) == 10000


def test_memory_static_or_dynamic() -> None:
    assert mach.memory_section(spec())["dynamic"] is False
    dyn = mach.memory_section(spec(memory_reservation_mib=2048))
    assert dyn == {"dynamic": True, "startup_mib": 8192, "minimum_mib": 2048, "maximum_mib": 8192}
    assert mach.memory_section(spec(memory_reservation_mib=2048, memory_lock=True))["dynamic"] is False


def test_paths_and_macs() -> None:
    assert mach.storage_dir("flash", CTX) == "D:\\PACS\\flash"
    assert mach.storage_dir("E:\\Fast\\", CTX) == "E:\\Fast"
    assert mach.storage_dir("\\\\nas\\share", CTX) == "\\\\nas\\share"
    assert mach.disk_path("vm", DiskSpec("os", 1, "flash"), CTX) == "D:\\PACS\\flash\\vm-os.vhdx"
    assert mach.hyperv_mac("00:15:5d:aa:bb:01") == "00155DAABB01"
    assert mach.normal_mac("00155DAABB01") == "00:15:5d:aa:bb:01"
    assert mach.normal_mac("000000000000") is None


def test_mark_round_trip_and_garbage() -> None:
    line = make_mark(OWNER, {"role": "archive"})
    assert line.startswith("pacsinfra:{") and "\n" not in line
    assert parse_mark(line) == (OWNER, {"role": "archive"})
    for bad in (None, "", "hello", "pacsinfra:{not json", 'pacsinfra:{"owner":{}}', 42):
        assert parse_mark(bad) is None


def facts_for(s: MachineSpec, **proc: int) -> dict[str, object]:
    """What get-vm would report right after new-vm for ``s``."""
    p = mach.new_vm_parameters(s, OWNER, CTX)
    return {
        "id": "vm-1", "name": s.name, "state": "Running", "notes": p["notes"],
        "processor": {**p["processor"], **proc}, "memory": p["memory"],
        "disks": [{"path": d["path"], "size_mib": d["size_mib"], "type": d["type"], "parent": None,
                   "maximum_iops": d["maximum_iops"]} for d in p["disks"]],
        "adapters": [{"name": a["name"], "switch": a["switch"], "mac": "00155D0A0001", "vlan": a["vlan"],
                      "addresses": ["10.0.0.5", "fe80::1"]} for a in p["adapters"]],
        "gpus": [], "secure_boot": p["secure_boot"],
    }


@pytest.mark.parametrize("s", [
    spec(),
    spec(cpu_reservation_mhz=4000, cpu_limit_mhz=5000, cpu_shares=3333, memory_reservation_mib=8192),
    spec(memory_reservation_mib=1024, hostname="h", ssh_authorized_keys=("k",), holds_data=True),
])
def test_parse_round_trips_with_and_without_the_desired_spec(s: MachineSpec) -> None:
    for desired in (s, None):
        got, owner, _, addresses = mach.parse_vm(facts_for(s), desired, CTX)
        obs = Observed(spec=got, id="vm-1", owner=owner)
        assert changed_fields(s, obs) == [] and owner == OWNER and addresses == ("10.0.0.5",)


def test_a_percentage_changed_behind_our_back_is_drift() -> None:
    s = spec(cpu_reservation_mhz=4000)
    got, *_ = mach.parse_vm(facts_for(s, reserve=50), None, CTX)
    assert got.cpu_reservation_mhz == 5200
    got2, *_ = mach.parse_vm(facts_for(s, weight=300), s, CTX)
    assert got2.cpu_shares == 300 * 10 * 4


def obs_of(s: MachineSpec) -> Observed:
    return Observed(spec=s, id="x", owner=OWNER)


def test_change_table() -> None:
    d = HypervDriver({"host": "h"})
    s = spec()
    assert d.classify(s, "cpu_count") is ChangeKind.NEEDS_POWER_OFF
    assert d.classify(s, "memory_mib") is ChangeKind.NEEDS_POWER_OFF
    for f in ("cpu_shares", "cpu_reservation_mhz", "cpu_limit_mhz", "power_on", "hostname"):
        assert d.classify(s, f) is ChangeKind.IN_PLACE
    assert d.classify(s, "image") is ChangeKind.REPLACE and d.classify(s, "name") is ChangeKind.REPLACE
    assert d.classify(s, "no_such_field") is ChangeKind.REPLACE
    # NICs: VLAN / switch live; adapter count or pinned MAC with the VM off
    vlan = spec(nics=(NicSpec("PACS", vlan=120),))
    assert d.classify_change(vlan, obs_of(s), "nics") is ChangeKind.IN_PLACE
    assert d.classify_change(spec(nics=(NicSpec("OTHER", vlan=110),)), obs_of(s), "nics") is ChangeKind.IN_PLACE
    assert d.classify_change(spec(nics=()), obs_of(s), "nics") is ChangeKind.NEEDS_POWER_OFF
    assert d.classify_change(spec(nics=(NicSpec("PACS", vlan=110, mac="00:15:5d:00:00:01"),)), obs_of(s),
                             "nics") is ChangeKind.NEEDS_POWER_OFF
    # disks: grow live, shrink replace, add with the VM off, move replace
    grow = spec(disks=(DiskSpec("os", 81920, "flash"),))
    assert d.classify_change(grow, obs_of(s), "disks") is ChangeKind.IN_PLACE
    assert d.classify_change(s, obs_of(grow), "disks") is ChangeKind.REPLACE
    more = spec(disks=(DiskSpec("os", 40960, "flash"), DiskSpec("data", 1, "flash")))
    assert d.classify_change(more, obs_of(s), "disks") is ChangeKind.NEEDS_POWER_OFF
    assert d.classify_change(spec(disks=(DiskSpec("os", 40960, "slow"),)), obs_of(s), "disks") is ChangeKind.REPLACE
    # a reservation on static memory is only a record
    assert d.classify_change(spec(memory_reservation_mib=8192), obs_of(s), "memory_reservation_mib") is ChangeKind.IN_PLACE
    assert d.classify_change(spec(memory_reservation_mib=1024), obs_of(s), "memory_reservation_mib") is ChangeKind.NEEDS_POWER_OFF
    net = NetworkSpec(address="network.a", name="A", purpose="dicom")
    assert d.classify(net, "settings") is ChangeKind.REPLACE and d.classify(net, "vlan") is ChangeKind.IN_PLACE
    st = StorageSpec(address="storage.a", name="D:\\A", tier="performance")
    assert d.classify(st, "name") is ChangeKind.REPLACE and d.classify(st, "tier") is ChangeKind.IN_PLACE


def test_check_reports_what_hyperv_cannot_do() -> None:
    d = HypervDriver({"host": "h", "host_mhz": 2000})
    bad = spec(cpu_reservation_mhz=9000, image={"mode": "linked"}, disks=())
    problems = d.check(bad)
    assert any("exceeds 4 vCPUs x 2000MHz" in p for p in problems)
    assert any("vhdx path" in p for p in problems) and any("copy or differencing" in p for p in problems)
    assert any("needs a disk" in p for p in problems)
    assert d.check(spec()) == []
    assert d.check(spec(hugepages=True)) == []  # recorded: validate warns it is ignored
    assert any("generation 2" in p for p in d.check(spec(image={"vhdx": "C:\\a.vhdx", "generation": 1})))
    assert any("generation 2" in p for p in HypervDriver({"host": "h", "generation": 1}).check(spec()))
    ext = NetworkSpec(address="network.a", name="A", purpose="dicom", settings={"type": "external"})
    assert d.check(ext) == ["network.a: an external switch needs settings.adapter (a host NIC)"]
