"""The engine's scenarios on Hyper-V: a real blueprint, the real engine, the real driver,
real pywinrm over HTTP to the loopback WS-Management endpoint, the in-memory host behind it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module

need_module("winrm")

from support.hyperv_model import HypervHost  # noqa: E402
from support.wsman_server import PASSWORD, USER, WsmanServer  # noqa: E402

from pacsinfra.apply.engine import Engine  # noqa: E402
from pacsinfra.apply.executor import ApplyFailed  # noqa: E402
from pacsinfra.blueprint import load_blueprint  # noqa: E402
from pacsinfra.errors import AlreadyExists  # noqa: E402
from pacsinfra.plan.plan import Action  # noqa: E402

pytestmark = pytest.mark.integration

ENV = "PACSINFRA_TEST_HV_PASSWORD"


def site_yaml(port: int, *, memory: str = "8GiB", archives: int = 2, shares: str = "high",
              vlan: int = 110, os_size: str = "40GiB") -> str:
    addrs = ", ".join(f"10.10.110.{11 + i}" for i in range(archives))
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: st-mary}}
provider:
  driver: hyperv
  hyperv: {{host: 127.0.0.1, port: {port}, transport: basic, user: {USER}, password: {{env: {ENV}}}, ssl: false}}
images:
  debian12:
    hyperv: {{vhdx: 'C:\\Images\\debian12.vhdx'}}
networks:
  dicom: {{purpose: dicom, vlan: {vlan}, cidr: 10.10.110.0/24, gateway: 10.10.110.1, mtu: 9000, hyperv: {{switch: PACS-DICOM}}}}
  management: {{purpose: management, cidr: 10.10.1.0/24, hyperv: {{switch: PACS-MGMT}}}}
storage:
  flash: {{tier: performance, hyperv: {{path: 'D:\\PACS\\Flash'}}}}
machines:
  archive:
    count: {archives}
    image: debian12
    cpu: {{count: 4, reservation: 4000MHz, shares: {shares}}}
    memory: {{size: {memory}}}
    disks:
      - {{name: os, size: {os_size}, storage: flash}}
    nics:
      - {{network: dicom, addresses: [{addrs}]}}
      - {{network: management}}
    services: [archive]
  viewer:
    count: 1
    image: debian12
    cpu: {{count: 2}}
    memory: {{size: 4GiB, reservation: 2GiB}}
    disks:
      - {{name: os, size: 20GiB, storage: flash}}
    nics:
      - {{network: management}}
services:
  archive: {{kind: archive, config: {{ae_title: ARCHIVE}}}}
"""


@pytest.fixture
def host() -> HypervHost:
    h = HypervHost(mhz=2600, memory_mib=65536)
    h.add_image("C:\\Images\\debian12.vhdx", 4096)
    return h


@pytest.fixture
def endpoint(host: HypervHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[WsmanServer]:
    monkeypatch.setenv(ENV, PASSWORD)
    with WsmanServer(host.run, USER, PASSWORD) as srv:
        yield srv


def engine(tmp_path: Path, srv: WsmanServer, **kw: Any) -> Engine:
    """An engine that builds the driver itself from provider.hyperv (password from the env)."""
    port = int(srv.url.split(":")[2].split("/")[0])
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml(port, **kw))
    return Engine(load_blueprint(path), tmp_path / "state.json")


def test_plan_apply_then_plan_is_empty_then_destroy(tmp_path: Path, endpoint: WsmanServer, host: HypervHost) -> None:
    with engine(tmp_path, endpoint) as eng:
        plan = eng.plan()
        assert plan.summary() == "Plan: 6 to add, 0 to change, 0 to destroy."
        assert eng.apply(plan, parallelism=4).ok
        assert sorted(v.name for v in host.vms.values()) == [
            "st-mary-archive-1", "st-mary-archive-2", "st-mary-viewer-1"]
        assert all(v.state == "Running" for v in host.vms.values())
        viewer = host.vm("st-mary-viewer-1")
        assert viewer.memory == {"dynamic": True, "startup_mib": 4096, "minimum_mib": 2048, "maximum_mib": 4096}
        again = eng.plan()
        assert not again.has_changes, [(s.address, [f.name for f in s.fields]) for s in again.changes]
        eng.destroy()
        assert host.vms == {} and host.switches == {}
        assert host.vhd_files() == ["C:\\Images\\debian12.vhdx"]
        assert "d:\\pacs\\flash" not in host.dirs
        assert not eng.plan(destroy=True).has_changes


def test_drift_behind_the_drivers_back_is_planned_and_repaired(
    tmp_path: Path, endpoint: WsmanServer, host: HypervHost
) -> None:
    with engine(tmp_path, endpoint) as eng:
        eng.apply(eng.plan())
        a1 = host.vm("st-mary-archive-1")
        a1.adapters[0].vlan = 4000  # someone re-tagged the DICOM NIC
        a1.processor["weight"] = 100  # and reset the weight
        host.vm("st-mary-viewer-1").memory.update(dynamic=False, minimum_mib=4096, startup_mib=4096)
        plan = eng.plan()
        by = {s.address: s for s in plan.changes}
        assert set(by) == {"machine.archive[0]", "machine.viewer[0]"}
        assert by["machine.archive[0]"].action is Action.UPDATE
        assert [f.name for f in by["machine.archive[0]"].fields] == ["cpu_shares", "nics"]
        assert {f.name: f.kind.name for f in by["machine.viewer[0]"].fields} == {
            "memory_reservation_mib": "NEEDS_POWER_OFF"}
        eng.apply(plan)
        assert not eng.plan().has_changes
        assert host.vm("st-mary-archive-1").adapters[0].vlan == 110
        assert host.vm("st-mary-viewer-1").memory["dynamic"] is True


def test_blueprint_change_needing_power_off(tmp_path: Path, endpoint: WsmanServer, host: HypervHost) -> None:
    with engine(tmp_path, endpoint) as eng:
        eng.apply(eng.plan())
    ids = {v.name: v.id for v in host.vms.values()}
    with engine(tmp_path, endpoint, memory="12GiB", shares="low") as eng:
        plan = eng.plan()
        step = {s.address: s for s in plan.changes}["machine.archive[0]"]
        assert {f.name: f.kind.name for f in step.fields} == {
            "memory_mib": "NEEDS_POWER_OFF", "cpu_shares": "IN_PLACE"}
        eng.apply(plan)
        assert not eng.plan().has_changes
    a1 = host.vm("st-mary-archive-1")
    assert a1.id == ids["st-mary-archive-1"] and a1.state == "Running"
    assert a1.memory["startup_mib"] == 12288 and a1.processor["weight"] == 50


def test_adoption_after_state_loss(tmp_path: Path, endpoint: WsmanServer, host: HypervHost) -> None:
    with engine(tmp_path, endpoint) as eng:
        eng.apply(eng.plan())
    (tmp_path / "state.json").unlink()
    calls = len(host.calls)
    with engine(tmp_path, endpoint) as eng:
        plan = eng.plan()
        # nothing to create or change: every object is found by its mark and adopted
        assert plan.summary() == "Plan: 0 to add, 0 to change, 0 to destroy, 6 to adopt."
        assert {s.action for s in plan.changes} == {Action.ADOPT}
        eng.apply(plan)
        assert not eng.plan().has_changes
        state = eng.read_state()
        assert state is not None and len(state.resources) == 6
    assert not any(name.startswith("new-") for name, _ in host.calls[calls:])
    assert len(host.vms) == 3


def test_failure_injection_too_little_memory(tmp_path: Path, endpoint: WsmanServer, host: HypervHost) -> None:
    host.memory_mib = 16384  # room for the viewer and one archive, not for both archives
    with engine(tmp_path, endpoint) as eng:
        with pytest.raises(ApplyFailed) as info:
            eng.apply(eng.plan(), parallelism=1)
        msg = str(info.value)
        assert "Start-VM" in msg and "not enough memory" in msg
        names = sorted(v.name for v in host.vms.values())
        assert len(names) == 2  # the failed one was removed with its disks
        assert len(host.vhd_files()) == 1 + len(names)
        host.memory_mib = 65536
        assert eng.apply(eng.plan()).ok
        assert not eng.plan().has_changes and len(host.vms) == 3


def test_failure_injection_unowned_duplicate_name(tmp_path: Path, endpoint: WsmanServer, host: HypervHost) -> None:
    from support.hyperv_model import Vm

    host.vms["hand-made"] = Vm(id="hand-made", name="st-mary-archive-2", path="C:\\VMs",
                               memory={"dynamic": False, "startup_mib": 1024, "minimum_mib": 1024, "maximum_mib": 1024})
    # the engine's plan reads the name through the driver and refuses before acting
    with (
        engine(tmp_path, endpoint) as eng,
        pytest.raises(AlreadyExists, match="'st-mary-archive-2' already exists \\(id hand-made\\)"),
    ):
        eng.plan()
    assert len(host.vms) == 1 and host.switches == {}
    assert host.vms["hand-made"].notes == ""  # never touched


def test_create_killed_half_way_is_finished_by_the_next_apply(
    tmp_path: Path, endpoint: WsmanServer, host: HypervHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pacsinfra.drivers.hyperv.machines import Machines

    # kill -9 after New-VM: the driver's cleanup never runs, a marked, stopped VM stays
    host.memory_mib = 16384
    with monkeypatch.context() as m:
        m.setattr(Machines, "_cleanup", lambda self, spec, owner: None)
        with engine(tmp_path, endpoint) as eng, pytest.raises(ApplyFailed):
            eng.apply(eng.plan(), parallelism=1)
    stopped = [v for v in host.vms.values() if v.state == "Off"]
    assert len(stopped) == 1 and stopped[0].notes.startswith("pacsinfra:")
    host.memory_mib = 65536
    with engine(tmp_path, endpoint) as eng:
        plan = eng.plan()
        step = next(s for s in plan.changes if s.name == stopped[0].name)
        # found by its mark: finished in place, never created twice
        assert step.action is Action.UPDATE and [f.name for f in step.fields] == ["power_on"]
        eng.apply(plan)
        assert not eng.plan().has_changes
    assert len(host.vms) == 3 and all(v.state == "Running" for v in host.vms.values())


def test_vlan_and_disk_growth_apply_live(tmp_path: Path, endpoint: WsmanServer, host: HypervHost) -> None:
    with engine(tmp_path, endpoint) as eng:
        eng.apply(eng.plan())
    with engine(tmp_path, endpoint, vlan=120, os_size="60GiB") as eng:
        plan = eng.plan()
        kinds = {s.address: {f.name: f.kind.name for f in s.fields} for s in plan.changes}
        assert kinds == {
            "network.dicom": {"vlan": "IN_PLACE"},
            "machine.archive[0]": {"disks": "IN_PLACE", "nics": "IN_PLACE"},
            "machine.archive[1]": {"disks": "IN_PLACE", "nics": "IN_PLACE"},
        }
        host.calls.clear()
        eng.apply(plan)
        assert not eng.plan().has_changes
    assert all(p["stop_first"] is False for n, p in host.calls if n == "set-vm")
    for name in ("st-mary-archive-1", "st-mary-archive-2"):
        vm = host.vm(name)
        assert vm.state == "Running" and vm.adapters[0].vlan == 120
        assert host.files[vm.drives[0]["path"].lower()].size_mib == 61440
