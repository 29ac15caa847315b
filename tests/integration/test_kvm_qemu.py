"""KvmDriver against real QEMU under libvirt, with no daemon: ``qemu:///embed?root=<tmpdir>``.

A tiny domain (TCG, 1 vCPU, no OS, a 16 MiB qcow2 disk and a real cloud-init seed
ISO) is created through the driver, seen running as a QEMU process, given more
memory (which needs the restart the driver does), seen with the new memory, and
deleted with its files. Needs: apt libvirt-daemon qemu-system-x86 qemu-utils
genisoimage; pip libvirt-python.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need, need_binary, need_module
from support.qemu_embed import QEMU_CONF, embed_root

from pacsinfra.errors import ConnectError
from pacsinfra.specs import (
    ChangeKind,
    DiskSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Ownership,
    PowerState,
    StorageSpec,
    changed_fields,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# one root for the process (support.qemu_embed): libvirt refuses a second embed root in
# the same process, so these tests and test_kvm_guest_e2e share it (each on its own site)
@pytest.fixture(scope="module")
def embed_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    need_module("libvirt")
    need_binary("qemu-system-x86_64", "qemu-img")
    need(bool(shutil.which("genisoimage") or shutil.which("xorriso")), "genisoimage or xorriso")
    need(os.geteuid() == 0, "qemu:///embed with user=root needs root")
    root = embed_root(tmp_path_factory)
    from pacsinfra.drivers.kvm.driver import KvmDriver

    driver = KvmDriver({"uri": f"qemu:///embed?root={root}", "shutdown_timeout": 1})
    driver.connect()
    yield driver, root
    # leave no QEMU of this module behind whatever happened
    for name in [n for n in driver.lc.domain_names() if n.startswith(("ci-", "cd-"))]:
        driver.lc.destroy_domain(name)
        driver.lc.undefine_domain(name)
    driver.close()


def qemu_pid(root: Path, name: str) -> int | None:
    for pidfile in root.rglob(f"{name}.pid"):
        text = pidfile.read_text().strip()
        if text:
            return int(text)
    return None


def test_tiny_domain_lifecycle_on_real_qemu(embed_driver: Any) -> None:
    driver, root = embed_driver
    site = "ci"
    pool = StorageSpec(address="storage.scratch", name="scratch", tier="test")
    driver.create(pool, Ownership(site, pool.address, "lin"))
    assert (root / "pools" / "scratch").is_dir()

    spec = MachineSpec(
        address="machine.tiny[0]",
        name="ci-tiny-1",
        role="tiny",
        index=0,
        image={},
        cpu_count=1,
        memory_mib=128,
        cpu_shares=1000,
        disks=(DiskSpec("os", 16, "scratch"),),
        hostname="tiny",
    )
    mark = Ownership(site, spec.address, "lin")
    assert "domain type='qemu'" in driver.render(spec, mark).text

    created = driver.create(spec, mark)
    assert created.power == PowerState.ON
    assert changed_fields(spec, created) == []
    conn = driver.lc.conn
    dom = conn.lookupByName(spec.name)
    first_id = dom.ID()
    assert dom.info()[1] == 128 * 1024  # max memory, KiB, as QEMU runs it
    pid = qemu_pid(root, spec.name)
    assert pid is not None and Path(f"/proc/{pid}").exists()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert b"accel=tcg" in cmdline or b"tcg" in cmdline
    seed = root / "pools" / "scratch" / f"{spec.name}-seed.iso"
    assert seed.read_bytes()[0x8028 : 0x8028 + 6] == b"cidata"
    assert str(seed).encode() in cmdline

    bigger = dataclasses.replace(spec, memory_mib=192)
    fields = changed_fields(bigger, driver.read(bigger))
    assert fields == ["memory_mib"]
    assert driver.classify(bigger, "memory_mib") == ChangeKind.NEEDS_POWER_OFF
    updated = driver.update(bigger, driver.read(bigger), fields)
    assert updated.power == PowerState.ON
    assert updated.spec.memory_mib == 192
    assert changed_fields(bigger, updated) == []
    dom = conn.lookupByName(spec.name)
    assert dom.ID() != first_id  # it really was restarted
    assert dom.info()[1] == 192 * 1024
    new_pid = qemu_pid(root, spec.name)
    assert new_pid is not None and new_pid != pid

    # CPU weight and limit change in place: live scheduler parameters, no restart
    host_mhz = driver.host_mhz()
    assert host_mhz
    tuned = dataclasses.replace(bigger, cpu_shares=500, cpu_limit_mhz=host_mhz // 2)
    fields = sorted(changed_fields(tuned, driver.read(tuned)))
    assert fields == ["cpu_limit_mhz", "cpu_shares"]
    after = driver.update(tuned, driver.read(tuned), fields)
    assert changed_fields(tuned, after) == []
    live = conn.lookupByName(spec.name).schedulerParameters()
    assert live["cpu_shares"] == 500
    # half the host's clock, in microseconds of each 100 ms period (an odd clock:
    # just under 50,000)
    assert live["global_period"] == 100_000
    assert live["global_quota"] == round((host_mhz // 2) * 100_000 / host_mhz)
    assert 49_900 <= live["global_quota"] <= 50_000
    assert conn.lookupByName(spec.name).ID() == dom.ID()

    # the disk grows in place, live (blockResize on the running QEMU)
    grown = dataclasses.replace(tuned, disks=(DiskSpec("os", 32, "scratch"),))
    observed = driver.read(grown)
    assert driver.classify_change(grown, observed, "disks") == ChangeKind.IN_PLACE
    after = driver.update(grown, observed, ["disks"])
    assert after.spec.disks[0].size_mib == 32
    assert conn.lookupByName(spec.name).ID() == dom.ID()  # no restart for that

    assert [o.spec.address for o in driver.list_owned(site)] == [
        "storage.scratch",
        "machine.tiny[0]",
    ]
    driver.delete(after)
    assert driver.read(grown) is None
    assert sorted(p.name for p in (root / "pools" / "scratch").iterdir()) == [
        driver.render(pool, Ownership(site, pool.address, "lin")).parameters["marker"]
    ]
    driver.delete(driver.read(pool))
    assert not (root / "pools" / "scratch").exists()


def test_directory_pools_listed_once_and_never_half_made(embed_driver: Any) -> None:
    """Embed pools are directories: one listing per pool, and a kill never leaves one unmarked."""
    from pacsinfra.drivers.kvm.volumes import STAGING_SUFFIX

    driver, root = embed_driver
    site = "cd"
    # kvm.path ending in another name than the pool's, under <root>/pools
    pool = StorageSpec(
        address="storage.flash",
        name="cd-flash",
        tier="test",
        settings={"path": str(root / "pools" / "flashdir")},
    )
    mark = Ownership(site, pool.address, "lin")
    marker = driver.render(pool, mark).parameters["marker"]
    # a create killed half-way left its staging directory (with a stale marker): invisible
    staging = root / "pools" / f".flashdir{STAGING_SUFFIX}"
    staging.mkdir(parents=True)
    (
        staging / driver.render(pool, Ownership(site, pool.address, "old")).parameters["marker"]
    ).touch()
    assert driver.list_owned(site) == []
    assert driver.read(pool) is None

    made = driver.create(pool, mark)
    assert not staging.exists()
    assert sorted(p.name for p in (root / "pools" / "flashdir").iterdir()) == [marker]
    owned = driver.list_owned(site)
    assert [(o.spec.name, o.id) for o in owned] == [("cd-flash", made.id)]
    assert changed_fields(pool, driver.read(pool)) == []
    assert driver.create(pool, mark).id == made.id  # idempotent

    # a lost index (pools.json): create finds its marked directory again, makes no second pool
    import json

    index = root / "pools.json"
    entries = json.loads(index.read_text())
    del entries["cd-flash"]
    index.write_text(json.dumps(entries))
    driver.create(pool, mark)
    assert [o.spec.name for o in driver.list_owned(site)] == ["cd-flash"]

    # delete: the directory goes away with its marker in one rename; nothing is left
    driver.delete(driver.read(pool))
    assert driver.read(pool) is None
    assert driver.list_owned(site) == []
    assert not (root / "pools" / "flashdir").exists() and not staging.exists()


# -- a system libvirtd (storage pools, networks with dnsmasq) in private namespaces ----------

START_LIBVIRTD = """\
set -e
D="$1"
mount --bind "$D/etc" /etc/libvirt
mount --bind "$D/lib" /var/lib/libvirt
mkdir -p /run/libvirt /var/cache/libvirt /var/log/libvirt
mount --bind "$D/run" /run/libvirt
mount --bind "$D/cache" /var/cache/libvirt
mount --bind "$D/log" /var/log/libvirt
ip link set lo up
exec libvirtd --pid-file "$D/libvirtd.pid" >"$D/libvirtd.log" 2>&1
"""

LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""


@pytest.fixture
def system_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """KvmDriver on a libvirtd of its own: private mount + network namespace, private state."""
    import subprocess
    import time

    need_module("libvirt")
    need_binary("libvirtd", "unshare", "qemu-system-x86_64", "qemu-img", "dnsmasq", "ip")
    need(bool(shutil.which("genisoimage") or shutil.which("xorriso")), "genisoimage or xorriso")
    need(os.geteuid() == 0, "a private libvirtd needs root (mount and network namespaces)")
    d = Path(tmp_path_factory.mktemp("lv"))
    for sub in ("etc", "lib", "run", "cache", "log"):
        (d / sub).mkdir()
    (d / "etc" / "qemu.conf").write_text(QEMU_CONF)
    (d / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    (d / "start.sh").write_text(START_LIBVIRTD)
    proc = subprocess.Popen(
        ["unshare", "-m", "-n", "--propagation", "private", "bash", str(d / "start.sh"), str(d)]
    )
    sock = d / "run" / "libvirt-sock"
    deadline = time.monotonic() + 60
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not sock.exists():
        proc.kill()
        log = (d / "libvirtd.log").read_text() if (d / "libvirtd.log").exists() else ""
        pytest.fail(f"libvirtd did not start: {log[-2000:]}")
    from pacsinfra.drivers.kvm.driver import KvmDriver

    driver = KvmDriver(
        {"uri": f"qemu+unix:///system?socket={sock}", "domain_type": "qemu", "shutdown_timeout": 1}
    )
    try:
        # the socket exists a moment before libvirtd accepts on it (longer on a busy machine)
        while True:
            try:
                driver.connect()
                break
            except ConnectError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield driver, d
    finally:
        # stop every QEMU and dnsmasq it started, then the daemon (its namespaces go with it)
        conn = driver._lc.conn if driver._lc is not None else None
        if conn is not None:
            for dom in conn.listAllDomains(0):
                if dom.isActive():
                    dom.destroy()
            for net in conn.listAllNetworks(0):
                if net.isActive():
                    net.destroy()
            driver.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_system_libvirtd_pools_networks_and_volumes(system_driver: Any) -> None:
    """What test:///default cannot show: real pools, dnsmasq networks, preallocation, upload."""
    import subprocess

    driver, d = system_driver
    conn = driver.lc.conn
    site = "sys"

    def mark(address: str) -> Ownership:
        return Ownership(site, address, "lin")

    pool = StorageSpec(
        address="storage.flash",
        name="sys-flash",
        tier="performance",
        settings={"path": str(d / "flash")},
    )
    driver.create(pool, mark(pool.address))
    net = NetworkSpec(
        address="network.dicom",
        name="sys-dicom",
        purpose="dicom",
        cidr="10.222.0.0/24",
        mtu=9000,
        settings={"forward": "nat", "dhcp": True},
    )
    created_net = driver.create(net, mark(net.address))
    assert created_net.power == PowerState.ON and changed_fields(net, created_net) == []
    base = d / "base.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(base), "32M"], check=True, capture_output=True
    )

    spec = MachineSpec(
        address="machine.archive[0]",
        name="sys-archive-1",
        role="archive",
        index=0,
        image={"path": str(base)},
        cpu_count=1,
        memory_mib=128,
        cpu_shares=1000,
        disks=(
            DiskSpec("os", 64, "sys-flash"),
            DiskSpec("data", 32, "sys-flash", provisioning="thick"),
        ),
        nics=(
            NicSpec("sys-dicom", address="10.222.0.11", prefix=24, gateway="10.222.0.1", mtu=9000),
        ),
        hostname="archive1",
    )
    created = driver.create(spec, mark(spec.address))
    assert created.power == PowerState.ON
    assert changed_fields(spec, created) == []
    vols = {v.name(): v for v in conn.storagePoolLookupByName("sys-flash").listAllVolumes(0)}
    # the OS disk is an overlay on the image; the thick disk is preallocated
    assert str(base) in vols["sys-archive-1-os.qcow2"].XMLDesc(0)
    assert vols["sys-archive-1-data.qcow2"].info()[2] >= 32 * 1024 * 1024
    assert vols["sys-archive-1-os.qcow2"].info()[2] < 8 * 1024 * 1024
    # the seed went through virStorageVolUpload
    seed = (d / "flash" / "sys-archive-1-seed.iso").read_bytes()
    assert seed[0x8028 : 0x8028 + 6] == b"cidata" and b"10.222.0.11/24" in seed

    grown = dataclasses.replace(spec, disks=(DiskSpec("os", 128, "sys-flash"), spec.disks[1]))
    dom_id = conn.lookupByName(spec.name).ID()
    after = driver.update(grown, driver.read(grown), ["disks"])
    assert changed_fields(grown, after) == [] and conn.lookupByName(spec.name).ID() == dom_id

    bigger = dataclasses.replace(grown, memory_mib=160, cpu_shares=700)
    fields = sorted(changed_fields(bigger, driver.read(bigger)))
    assert fields == ["cpu_shares", "memory_mib"]
    after = driver.update(bigger, driver.read(bigger), fields)
    assert changed_fields(bigger, after) == [] and after.power == PowerState.ON
    assert conn.lookupByName(spec.name).ID() != dom_id
    assert conn.lookupByName(spec.name).schedulerParameters()["cpu_shares"] == 700

    jumbo_off = dataclasses.replace(net, mtu=1500)
    after_net = driver.update(jumbo_off, driver.read(jumbo_off), ["mtu"])
    assert changed_fields(jumbo_off, after_net) == []

    assert sorted(o.spec.address for o in driver.list_owned(site)) == [
        "machine.archive[0]",
        "network.dicom",
        "storage.flash",
    ]
    driver.delete(after)
    driver.delete(driver.read(net))
    driver.delete(driver.read(pool))
    assert driver.list_owned(site) == []
    assert base.exists()  # the image is never deleted
