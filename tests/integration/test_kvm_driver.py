"""KvmDriver against libvirt's test:///default driver (in-process, real libvirt code).

test:///default keeps one state per process, so every test uses its own names (a
random suffix) and cleans up. What test:///default cannot do (live scheduler tuning,
volume resize, volume upload) is asserted as the translated error it produces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import need_module

from pacsinfra.errors import (
    AlreadyExists,
    CapabilityError,
    ConnectError,
    DriverError,
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
    Ownership,
    PowerState,
    StorageSpec,
    changed_fields,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def libvirt() -> Any:
    need_module("libvirt")
    import libvirt as lv

    return lv


@pytest.fixture
def conn(libvirt: Any) -> Iterator[Any]:
    c = libvirt.open("test:///default")
    yield c
    c.close()


@pytest.fixture
def site() -> str:
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def driver(conn: Any) -> Iterator[Any]:
    from pacsinfra.drivers.kvm.driver import KvmDriver

    d = KvmDriver({"uri": "test:///default", "shutdown_timeout": 2}, client=conn)
    d.connect()
    yield d
    d.close()


def owner(site: str, address: str) -> Ownership:
    return Ownership(site=site, address=address, lineage="lineage-" + site)


def pool_spec(site: str) -> StorageSpec:
    return StorageSpec(
        address="storage.flash",
        name=f"{site}-flash",
        tier="performance",
        settings={"path": f"/pools/{site}/flash"},
    )


def net_spec(site: str) -> NetworkSpec:
    return NetworkSpec(
        address="network.dicom",
        name=f"{site}-dicom",
        purpose="dicom",
        vlan=110,
        cidr="10.10.110.0/24",
        gateway="10.10.110.1",
        mtu=9000,
        settings={"forward": "nat", "dhcp": True},
    )


def machine_spec(site: str, index: int = 0, **changes: Any) -> MachineSpec:
    spec = MachineSpec(
        address=f"machine.archive[{index}]",
        name=f"{site}-archive-{index + 1}",
        role="archive",
        index=index,
        image={},
        cpu_count=2,
        memory_mib=2048,
        cpu_shares=2000,
        cpu_limit_mhz=1000,
        memory_lock=True,
        hugepages=True,
        disks=(
            DiskSpec("os", 1024, f"{site}-flash"),
            DiskSpec(
                "data", 4096, f"{site}-flash", provisioning="thick", mount="/data", iops_limit=500
            ),
        ),
        nics=(
            NicSpec(
                f"{site}-dicom",
                address=f"10.10.110.{11 + index}",
                prefix=24,
                gateway="10.10.110.1",
                vlan=110,
            ),
        ),
        gpu=GpuSpec("vgpu", profile="nvidia-35", count=1),
        hostname=f"archive{index + 1}",
        ssh_authorized_keys=("ssh-ed25519 AAAAexample admin@example",),
        holds_data=True,
    )
    return dataclasses.replace(spec, **changes)


@pytest.fixture
def infra(driver: Any, site: str) -> Iterator[tuple[StorageSpec, NetworkSpec]]:
    """A pool and a network owned by ``site``, removed afterwards with everything in them."""
    ps, ns = pool_spec(site), net_spec(site)
    driver.create(ps, owner(site, ps.address))
    driver.create(ns, owner(site, ns.address))
    yield ps, ns
    for obs in driver.list_owned(site):
        if isinstance(obs.spec, MachineSpec):
            driver.delete(obs)
    for obs in driver.list_owned(site):
        driver.delete(obs)


def volumes(conn: Any, pool: str) -> list[str]:
    return sorted(conn.storagePoolLookupByName(pool).listVolumes())


def test_config_as_object_or_mapping(conn: Any) -> None:
    from pacsinfra.drivers.kvm.driver import KvmDriver
    from pacsinfra.providers import make_provider

    assert KvmDriver(SimpleNamespace(uri="test:///default")).uri == "test:///default"
    assert KvmDriver({"uri": "qemu:///embed?root=/x"}).host.domain_type() == "qemu"
    assert KvmDriver({"uri": "qemu:///system"}).host.domain_type() == "kvm"
    assert KvmDriver({"uri": "qemu:///system", "domain_type": "qemu"}).host.domain_type() == "qemu"
    assert isinstance(make_provider("kvm", {"uri": "test:///default"}, client=conn), KvmDriver)


def test_lifecycle_create_read_update_delete(driver: Any, conn: Any, site: str, infra: Any) -> None:
    ps, ns = infra
    spec = machine_spec(site)
    mark = owner(site, spec.address)

    created = driver.create(spec, mark)
    assert created.owner == mark
    assert created.power == PowerState.ON
    assert changed_fields(spec, created) == []
    assert changed_fields(spec, driver.read(spec)) == []
    # the MAC the blueprint left open is reported as the domain has it (stable per name/index)
    from pacsinfra.drivers.kvm.domain import default_mac

    assert created.spec.nics[0].mac == default_mac(spec.name, 0)
    assert changed_fields(ns, driver.read(ns)) == []
    assert changed_fields(ps, driver.read(ps)) == []
    assert volumes(conn, ps.name) == sorted(
        [
            f"{spec.name}-os.qcow2",
            f"{spec.name}-data.qcow2",
            f"{spec.name}-seed.iso",
            driver.render(ps, owner(site, ps.address)).parameters["marker"],
        ]
    )
    # thick = preallocated: allocation == capacity; thin starts empty
    data = conn.storagePoolLookupByName(ps.name).storageVolLookupByName(f"{spec.name}-data.qcow2")
    assert data.info()[1] == 4096 * 1024 * 1024
    # the domain carries the ownership mark as a metadata element
    xml = conn.lookupByName(spec.name).XMLDesc(0)
    assert "https://pacsinfra.dev/xmlns/owner/1" in xml and f'site="{site}"' in xml.replace(
        "'", '"'
    )

    # idempotent create: the same object back, nothing new
    again = driver.create(spec, mark)
    assert again.id == created.id

    # memory needs power-off: the running domain is restarted with the new size
    bigger = dataclasses.replace(spec, memory_mib=4096)
    fields = changed_fields(bigger, driver.read(bigger))
    assert fields == ["memory_mib"]
    assert driver.classify(bigger, "memory_mib") == ChangeKind.NEEDS_POWER_OFF
    updated = driver.update(bigger, driver.read(bigger), fields)
    assert updated.power == PowerState.ON
    assert updated.spec.memory_mib == 4096
    assert changed_fields(bigger, updated) == []
    assert updated.id == created.id

    # NIC change (network / VLAN) also restarts, and keeps the plan empty afterwards
    retagged = dataclasses.replace(
        bigger, nics=(dataclasses.replace(bigger.nics[0], vlan=111, mtu=9000),)
    )
    fields = changed_fields(retagged, driver.read(retagged))
    assert fields == ["nics"]
    assert changed_fields(retagged, driver.update(retagged, driver.read(retagged), fields)) == []

    # delete removes domain, volumes and seed; a second delete is a no-op
    observed = driver.read(retagged)
    driver.delete(observed)
    assert driver.read(retagged) is None
    assert [v for v in volumes(conn, ps.name) if v.startswith(spec.name)] == []
    driver.delete(observed)


def test_disk_growth_translates_unsupported_resize(
    driver: Any, site: str, infra: Any, libvirt: Any
) -> None:
    spec = machine_spec(site, power_on=False)
    driver.create(spec, owner(site, spec.address))
    grown = dataclasses.replace(
        spec, disks=(dataclasses.replace(spec.disks[0], size_mib=2048), spec.disks[1])
    )
    observed = driver.read(grown)
    assert driver.classify_change(grown, observed, "disks") == ChangeKind.IN_PLACE
    with pytest.raises(CapabilityError) as info:
        driver.update(grown, observed, ["disks"])
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
    assert info.value.__cause__.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
    shrunk = dataclasses.replace(
        spec, disks=(dataclasses.replace(spec.disks[0], size_mib=512), spec.disks[1])
    )
    assert driver.classify_change(shrunk, observed, "disks") == ChangeKind.REPLACE
    with pytest.raises(CapabilityError, match="replace"):
        driver.update(shrunk, driver.read(shrunk), ["disks"])


def test_add_and_remove_a_disk(driver: Any, conn: Any, site: str, infra: Any) -> None:
    spec = machine_spec(site, power_on=False)
    driver.create(spec, owner(site, spec.address))
    more = dataclasses.replace(spec, disks=(*spec.disks, DiskSpec("wal", 512, f"{site}-flash")))
    after = driver.update(more, driver.read(more), ["disks"])
    assert changed_fields(more, after) == []
    assert f"{spec.name}-wal.qcow2" in volumes(conn, f"{site}-flash")
    fewer = dataclasses.replace(spec, disks=spec.disks[:1])
    after = driver.update(fewer, driver.read(fewer), ["disks"])
    assert changed_fields(fewer, after) == []
    names = volumes(conn, f"{site}-flash")
    assert f"{spec.name}-data.qcow2" not in names and f"{spec.name}-wal.qcow2" not in names


def test_name_owned_by_another_address(driver: Any, site: str, infra: Any) -> None:
    spec = machine_spec(site)
    driver.create(spec, owner(site, spec.address))
    with pytest.raises(AlreadyExists, match="owned by"):
        driver.create(spec, owner(site, "machine.other[0]"))


def test_missing_references_create_nothing(driver: Any, conn: Any, site: str, infra: Any) -> None:
    spec = machine_spec(site, nics=(NicSpec("no-such-network"),))
    before = volumes(conn, f"{site}-flash")
    with pytest.raises(NotFound, match="network no-such-network"):
        driver.create(spec, owner(site, spec.address))
    assert volumes(conn, f"{site}-flash") == before
    spec = machine_spec(site, disks=(DiskSpec("os", 1024, "no-such-pool"),))
    with pytest.raises(NotFound, match="storage pool no-such-pool"):
        driver.create(spec, owner(site, spec.address))
    spec = machine_spec(site, image={"volume": "nope.qcow2", "pool": f"{site}-flash"})
    with pytest.raises(NotFound, match="image volume"):
        driver.create(spec, owner(site, spec.address))
    assert driver.read(spec) is None


class FailingDefine:
    """The real connection, except that defineXML is sent an XML libvirt really rejects."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def defineXML(self, xml: str) -> Any:  # noqa: N802 - libvirt's name
        return self._conn.defineXML(
            xml.replace("<vcpu ", "<vcpu bogus-attr='1' ", 1).replace("hvm<", "nosuchos<")
        )


def test_failed_create_removes_what_it_made(conn: Any, site: str, infra: Any, libvirt: Any) -> None:
    from pacsinfra.drivers.kvm.driver import KvmDriver

    broken = KvmDriver({"uri": "test:///default"}, client=FailingDefine(conn))
    spec = machine_spec(site)
    before = volumes(conn, f"{site}-flash")
    with pytest.raises(DriverError) as info:
        broken.create(spec, owner(site, spec.address))
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
    assert volumes(conn, f"{site}-flash") == before  # disks and seed removed again
    assert broken.read(spec) is None


def test_failed_update_starts_the_machine_again(
    driver: Any, conn: Any, site: str, infra: Any, libvirt: Any
) -> None:
    from pacsinfra.drivers.kvm.driver import KvmDriver

    spec = machine_spec(site)
    driver.create(spec, owner(site, spec.address))
    broken = KvmDriver(
        {"uri": "test:///default", "shutdown_timeout": 1}, client=FailingDefine(conn)
    )
    bigger = dataclasses.replace(spec, memory_mib=4096)
    with pytest.raises(DriverError) as info:
        broken.update(bigger, broken.read(bigger), ["memory_mib"])
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
    assert any("started again" in note for note in getattr(info.value, "__notes__", []))
    after = driver.read(spec)
    assert after is not None and after.power == PowerState.ON
    assert changed_fields(spec, after) == []  # still the old definition


def test_clone_from_image_volume(driver: Any, conn: Any, site: str, infra: Any) -> None:
    pool = conn.storagePoolLookupByName(f"{site}-flash")
    pool.createXML(
        "<volume><name>golden.qcow2</name><capacity unit='MiB'>512</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    spec = machine_spec(site, image={"volume": "golden.qcow2", "pool": f"{site}-flash"})
    created = driver.create(spec, owner(site, spec.address))
    assert changed_fields(spec, created) == []
    assert created.spec.disks[0].size_mib == 1024
    driver.delete(created)
    assert "golden.qcow2" in volumes(conn, f"{site}-flash")  # the image is never deleted
    # from another pool (the usual layout: images in their own pool)
    conn.storagePoolLookupByName("default-pool").createXML(
        f"<volume><name>{site}-img.qcow2</name><capacity unit='MiB'>256</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    other = machine_spec(site, 1, image={"volume": f"{site}-img.qcow2", "pool": "default-pool"})
    created = driver.create(other, owner(site, other.address))
    assert changed_fields(other, created) == []
    driver.delete(created)
    conn.storagePoolLookupByName("default-pool").storageVolLookupByName(f"{site}-img.qcow2").delete(
        0
    )
    pool.storageVolLookupByName("golden.qcow2").delete(0)


def test_check_reports_impossible_asks(driver: Any, site: str) -> None:
    good = machine_spec(site)
    assert driver.check(good) == []
    bad = [
        machine_spec(site, nics=(NicSpec("bridge:br0", vlan=5),)),  # VLAN on a Linux bridge
        machine_spec(site, gpu=GpuSpec("passthrough", device="nonsense")),
        machine_spec(site, gpu=GpuSpec("vgpu", profile=None)),
        machine_spec(site, gpu=GpuSpec("teleport")),
        machine_spec(site, image={"url": "http://example.invalid/x.qcow2"}),
        machine_spec(site, disks=(DiskSpec("os", 1, "p"), DiskSpec("os", 1, "p"))),
    ]
    for spec in bad:
        assert driver.check(spec), spec
    assert driver.check(dataclasses.replace(net_spec(site), settings={"forward": "warp"}))
    assert driver.check(dataclasses.replace(net_spec(site), cidr=None, settings={"forward": "nat"}))
    from pacsinfra.drivers.kvm.driver import KvmDriver

    embed = KvmDriver({"uri": "qemu:///embed?root=/nonexistent"})
    assert embed.check(net_spec(site))  # no network driver there; no connection needed
    unconnected = KvmDriver({"uri": "qemu:///system"})
    assert unconnected.check(machine_spec(site, cpu_limit_mhz=1000))  # no host clock known


def test_wait_for_address(driver: Any, site: str, infra: Any) -> None:
    static = machine_spec(site)
    created = driver.create(static, owner(site, static.address))
    assert driver.wait_for_address(created, timeout=1) == "10.10.110.11"
    dhcp = machine_spec(site, 1, nics=(NicSpec(f"{site}-dicom"),))
    created = driver.create(dhcp, owner(site, dhcp.address))
    address = driver.wait_for_address(created, timeout=5)  # test:///default invents a lease
    assert address.count(".") == 3


def test_passthrough_gpu_and_ovs_bridge(driver: Any, site: str, infra: Any) -> None:
    spec = machine_spec(
        site,
        gpu=GpuSpec("passthrough", device="0000:65:00.0"),
        nics=(NicSpec("ovs:br-pacs", vlan=120), NicSpec(f"{site}-dicom", mac="52:54:00:12:34:56")),
    )
    created = driver.create(spec, owner(site, spec.address))
    assert changed_fields(spec, created) == []
    assert driver.check(dataclasses.replace(spec, nics=(NicSpec("bridge:br0", vlan=5),)))


def test_network_update_and_pool_guards(driver: Any, conn: Any, site: str, infra: Any) -> None:
    ps, ns = infra
    jumbo = dataclasses.replace(ns, mtu=1500, purpose="dicom-primary")
    fields = sorted(changed_fields(jumbo, driver.read(jumbo)))
    assert fields == ["mtu", "purpose"]
    after = driver.update(jumbo, driver.read(jumbo), fields)
    assert changed_fields(jumbo, after) == []
    assert after.power == PowerState.ON
    # a pool that still holds a machine's disks is not deleted
    spec = machine_spec(site, power_on=False)
    driver.create(spec, owner(site, spec.address))
    with pytest.raises(TaskFailed, match="still holds"):
        driver.delete(driver.read(ps))
    # a foreign pool is never touched
    foreign = StorageSpec(address="storage.x", name="default-pool", tier="x")
    observed = driver.read(foreign)
    assert observed is not None and observed.owner is None
    with pytest.raises(AlreadyExists):
        driver.delete(observed)
    with pytest.raises(AlreadyExists, match="not created by pacsinfra"):
        driver.create(foreign, owner(site, "storage.x"))


def test_concurrent_creates_on_one_connection(driver: Any, site: str, infra: Any) -> None:
    specs = [machine_spec(site, i) for i in range(4)]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def make(spec: MachineSpec) -> str:
        try:
            return str(driver.create(spec, owner(site, spec.address)).id)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            raise

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(make, specs))
    assert errors == []
    assert len(set(ids)) == 4
    machines = [o for o in driver.list_owned(site) if isinstance(o.spec, MachineSpec)]
    assert len(machines) == 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(driver.delete, machines))
    assert [o for o in driver.list_owned(site) if isinstance(o.spec, MachineSpec)] == []


def test_connect_failure_is_translated(libvirt: Any, tmp_path: Any) -> None:
    from pacsinfra.drivers.kvm.driver import KvmDriver

    d = KvmDriver({"uri": f"test+unix:///default?socket={tmp_path}/no-such.sock"})
    with pytest.raises(ConnectError) as info:
        d.connect()
    assert isinstance(info.value.__cause__, libvirt.libvirtError)


def test_error_codes_map_most_specific_first(libvirt: Any) -> None:
    from pacsinfra.drivers.kvm.client import error_class

    assert error_class(libvirt.VIR_ERR_NO_DOMAIN) is NotFound
    assert error_class(libvirt.VIR_ERR_NO_STORAGE_VOL) is NotFound
    assert error_class(libvirt.VIR_ERR_DOM_EXIST) is AlreadyExists
    assert error_class(libvirt.VIR_ERR_NO_SUPPORT) is CapabilityError
    assert error_class(libvirt.VIR_ERR_AUTH_FAILED) is error_class(
        libvirt.VIR_ERR_AUTH_FAILED, connecting=True
    )
    assert error_class(libvirt.VIR_ERR_AUTH_FAILED).__name__ == "AuthError"
    assert error_class(libvirt.VIR_ERR_NO_DOMAIN, connecting=True) is ConnectError
    assert error_class(libvirt.VIR_ERR_OPERATION_FAILED) is TaskFailed


def test_engine_plan_apply_replan_destroy(conn: Any, tmp_path: Any) -> None:
    """The engine's own plan/apply over this driver: a second plan is empty (no drift)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from memdriver import fake_blueprint, fake_site

    from pacsinfra.apply.engine import Engine
    from pacsinfra.drivers.kvm.driver import KvmDriver
    from pacsinfra.plan.plan import Action

    name = "e" + uuid.uuid4().hex[:8]
    site = fake_site(name)
    site.provider.driver = "kvm"
    image = f"{name}-base.qcow2"
    site.images["debian12"].kvm = {"volume": image, "pool": "default-pool"}
    site.storage["flash"].kvm = {"path": f"/pools/{name}"}
    conn.storagePoolLookupByName("default-pool").createXML(
        f"<volume><name>{image}</name><capacity unit='MiB'>256</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    driver = KvmDriver({"uri": "test:///default", "shutdown_timeout": 2}, client=conn)
    state = tmp_path / "state.json"
    try:
        engine = Engine(fake_blueprint(tmp_path, site), state, driver)
        first = engine.plan()
        assert {s.action for s in first.steps} == {Action.CREATE}
        assert all(r.status == "done" for r in engine.apply(first).results)
        assert {s.action for s in engine.plan().steps} == {Action.NOOP}

        site.machines["archive"].memory.size = 8192
        engine = Engine(fake_blueprint(tmp_path, site), state, driver)
        change = engine.plan()
        updates = [s for s in change.steps if s.action is Action.UPDATE]
        assert [s.address for s in updates] == ["machine.archive[0]", "machine.archive[1]"]
        assert {s.kind for s in updates} == {ChangeKind.NEEDS_POWER_OFF}
        engine.apply(change)
        assert {s.action for s in engine.plan().steps} == {Action.NOOP}
        desired = updates[0].desired
        assert isinstance(desired, MachineSpec)
        observed = driver.read(desired)
        assert observed is not None and isinstance(observed.spec, MachineSpec)
        assert observed.spec.memory_mib == 8192

        engine.destroy()
        assert driver.list_owned(engine.site) == []
    finally:
        conn.storagePoolLookupByName("default-pool").storageVolLookupByName(image).delete(0)


# -- what a kill -9 leaves behind (no cleanup ran): the next create or plan must converge ------


def _raw_volume(conn: Any, pool: str, name: str) -> None:
    """A volume made outside the driver, as a create killed after making it leaves it."""
    from pacsinfra.drivers.kvm.pool import render_volume

    xml = render_volume(name=name, capacity=1 << 20, allocation=0, fmt="qcow2")
    conn.storagePoolLookupByName(pool).createXML(xml, 0)


FOREIGN_DOMAIN = """<domain type='test'><name>{name}</name><memory>1024</memory>
<os><type>hvm</type></os><devices><disk type='volume' device='disk'>
<source pool='{pool}' volume='{volume}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


def test_leftover_volumes_of_a_killed_create_are_replaced(
    driver: Any, conn: Any, site: str, infra: Any
) -> None:
    ps, _ns = infra
    spec = machine_spec(site)
    # killed after the disks and the seed, before the domain was defined
    for vol in (f"{spec.name}-os.qcow2", f"{spec.name}-data.qcow2", f"{spec.name}-seed.iso"):
        _raw_volume(conn, ps.name, vol)
    created = driver.create(spec, owner(site, spec.address))
    assert changed_fields(spec, created) == []
    data = conn.storagePoolLookupByName(ps.name).storageVolLookupByName(f"{spec.name}-data.qcow2")
    assert data.info()[1] == 4096 * 1024 * 1024  # made anew at the spec's size, not the 1 MiB left


def test_leftover_named_volume_in_use_or_in_a_foreign_pool_is_never_touched(
    driver: Any, conn: Any, site: str, infra: Any
) -> None:
    ps, _ns = infra
    spec = machine_spec(site, disks=(DiskSpec("os", 1024, ps.name),))
    vol = f"{spec.name}-os.qcow2"
    _raw_volume(conn, ps.name, vol)
    # another domain uses the volume that carries this machine's name: refused, kept
    other = conn.defineXML(FOREIGN_DOMAIN.format(name=f"{site}-other", pool=ps.name, volume=vol))
    try:
        with pytest.raises(AlreadyExists, match=f"domain {site}-other uses it"):
            driver.create(spec, owner(site, spec.address))
        assert vol in volumes(conn, ps.name)
        assert driver.read(spec) is None
    finally:
        other.undefine()
    conn.storagePoolLookupByName(ps.name).storageVolLookupByName(vol).delete(0)

    # a pool without this site's mark: its volumes are not pacsinfra's to replace
    foreign = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{site}-theirs</name><target><path>/pools/{site}/theirs</path>"
        "</target></pool>",
        0,
    )
    foreign.create(0)
    try:
        elsewhere = machine_spec(site, disks=(DiskSpec("os", 1024, f"{site}-theirs"),))
        _raw_volume(conn, f"{site}-theirs", vol)
        with pytest.raises(AlreadyExists, match="pool this site does not own"):
            driver.create(elsewhere, owner(site, spec.address))
        assert volumes(conn, f"{site}-theirs") == [vol]
        assert driver.read(elsewhere) is None
    finally:
        for v in foreign.listAllVolumes(0):
            v.delete(0)
        foreign.destroy()
        foreign.undefine()


def test_machine_delete_killed_before_undefine_converges(
    driver: Any, conn: Any, site: str, infra: Any
) -> None:
    ps, _ns = infra
    spec = machine_spec(site, power_on=False)
    driver.create(spec, owner(site, spec.address))
    # a stopped pool hides its volumes: that is not a disk gone
    conn.storagePoolLookupByName(ps.name).destroy()
    assert len(driver.read(spec).spec.disks) == 2
    conn.storagePoolLookupByName(ps.name).create(0)
    # killed after the volumes went, before the undefine: a marked domain without its disks
    for vol in (f"{spec.name}-os.qcow2", f"{spec.name}-data.qcow2", f"{spec.name}-seed.iso"):
        conn.storagePoolLookupByName(ps.name).storageVolLookupByName(vol).delete(0)
    observed = driver.read(spec)
    assert observed is not None and observed.owner is not None
    assert observed.spec.disks == ()  # gone disks are not reported as disks of size 0
    fields = changed_fields(spec, observed)
    assert fields == ["disks"]
    assert driver.classify_change(spec, observed, "disks") == ChangeKind.NEEDS_POWER_OFF
    after = driver.update(spec, observed, fields)  # the re-apply: disks made again
    assert changed_fields(spec, after) == []
    made = {f"{spec.name}-os.qcow2", f"{spec.name}-data.qcow2", f"{spec.name}-seed.iso"}
    assert made <= set(volumes(conn, ps.name))  # the seed too: the domain must be able to start


def test_half_done_pool_and_network_are_completed(driver: Any, conn: Any, site: str) -> None:
    ps, ns = pool_spec(site), net_spec(site)
    pmark, nmark = owner(site, ps.address), owner(site, ns.address)
    # a pool create killed after the definition, before its marker volume
    rendered = driver.render(ps, pmark)
    pool = conn.storagePoolDefineXML(rendered.text, 0)
    assert pool.UUIDString() == rendered.parameters["uuid"]
    pool.build(0)
    pool.create(0)
    # a network create killed after the definition (which carries the mark), before the start
    conn.networkDefineXML(driver.render(ns, nmark).text)
    try:
        assert driver.read(ps) is None  # not there yet: a plan creates it, nothing collides
        assert all(o.spec.address != ps.address for o in driver.list_owned(site))
        made = driver.create(ps, pmark)
        assert made.owner == pmark and made.id == rendered.parameters["uuid"]
        assert volumes(conn, ps.name) == [rendered.parameters["marker"]]
        net = driver.create(ns, nmark)
        assert net.owner == nmark and net.power == PowerState.ON
        # an empty pool of that name that pacsinfra did not define stays someone else's
        driver.delete(made)
        conn.storagePoolDefineXML(
            f"<pool type='dir'><name>{ps.name}</name><target><path>/pools/{site}/x</path>"
            "</target></pool>",
            0,
        ).create(0)
        theirs = driver.read(ps)
        assert theirs is not None and theirs.owner is None
        with pytest.raises(AlreadyExists, match="not created by pacsinfra"):
            driver.create(ps, pmark)
    finally:
        for obs in driver.list_owned(site):
            driver.delete(obs)
        with contextlib.suppress(Exception):
            p = conn.storagePoolLookupByName(ps.name)
            p.destroy()
            p.undefine()
    assert driver.list_owned(site) == []
