"""Golden rendering tests for the KVM driver: spec -> libvirt XML, and XML -> the same spec.

Each folder in tests/golden/kvm/ is one case: ``input.yaml`` (kind, owner, render
context, spec) and ``expected.xml``. Record them again after an intended template change
with ``PACSINFRA_RECORD=1 pytest tests/unit/test_kvm_render.py`` and review the diff.

When libvirt-python is installed, every rendered domain and network is also defined on
libvirt's test:///default driver and read back, so the XML is known to be acceptable to
libvirt's own parser and to survive its normalisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.record import check_text

from pacsinfra.drivers.kvm import classify, cloudinit, domain, network, pool, templating
from pacsinfra.errors import CapabilityError
from pacsinfra.specs import (
    ChangeKind,
    DiskSpec,
    GpuSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Observed,
    Ownership,
    StorageSpec,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "kvm"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").is_file())


def machine_spec(data: dict[str, Any]) -> MachineSpec:
    data = dict(data)
    data["disks"] = tuple(DiskSpec(**d) for d in data.get("disks", ()))
    data["nics"] = tuple(NicSpec(**n) for n in data.get("nics", ()))
    if data.get("gpu"):
        data["gpu"] = GpuSpec(**data["gpu"])
    data["ssh_authorized_keys"] = tuple(data.get("ssh_authorized_keys", ()))
    return MachineSpec(**data)


def load_case(name: str) -> tuple[dict[str, Any], Any, Ownership]:
    case = yaml.safe_load((GOLDEN / name / "input.yaml").read_text())
    owner = Ownership(**case["owner"])
    kind = case["kind"]
    if kind == "machine":
        spec: Any = machine_spec(case["spec"])
    elif kind == "network":
        spec = NetworkSpec(**case["spec"])
    elif kind == "pool":
        spec = StorageSpec(**case["spec"])
    else:
        raise AssertionError(f"{name}: unknown kind {kind}")
    return case, spec, owner


def render_case(case: dict[str, Any], spec: Any, owner: Ownership) -> str:
    if case["kind"] == "machine":
        return domain.render_domain(spec, owner, domain.DomainContext(**case.get("context", {})))
    if case["kind"] == "network":
        return network.render_network(spec, owner)
    return pool.render_pool(spec)


def parse_machine(xml: str, spec: MachineSpec, ctx: domain.DomainContext) -> MachineSpec:
    facts = domain.domain_facts(xml)
    caps = {ref.dev: d.size_mib for ref, d in zip(facts.disks, spec.disks, strict=True)}
    pool_of_path = {v: k for k, v in ctx.pool_paths.items()}
    parsed = domain.parse_domain(
        facts,
        capacities_mib=caps,
        pool_of_path=pool_of_path,
        host_mhz=ctx.host_mhz,
        running=spec.power_on,
        address=spec.address,
    )
    # a MAC the spec left open is the hypervisor's choice: not compared
    nics = tuple(
        dataclasses.replace(n, mac=None) if w.mac is None else n
        for n, w in zip(parsed.nics, spec.nics, strict=True)
    )
    return dataclasses.replace(parsed, nics=nics)


@pytest.mark.parametrize("name", CASES)
def test_golden_render(name: str) -> None:
    case, spec, owner = load_case(name)
    text = render_case(case, spec, owner)
    check_text(GOLDEN / name / "expected.xml", text, f"{name}: the rendering")


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("machine-")])
def test_golden_volumes(name: str) -> None:
    """The volumes of the machine's disks: qcow2, thin or preallocated, over the image."""
    _, spec, _ = load_case(name)
    text = "".join(
        pool.disk_volume(spec, d, from_image=i == 0).xml for i, d in enumerate(spec.disks)
    )
    check_text(GOLDEN / name / "volumes.xml", text, f"{name}: the volumes")


@pytest.mark.parametrize("name", CASES)
def test_golden_parse_round_trip(name: str) -> None:
    """Parsing the rendered XML yields the spec it came from (so a plan after apply is empty)."""
    case, spec, owner = load_case(name)
    text = (GOLDEN / name / "expected.xml").read_text()
    if case["kind"] == "machine":
        ctx = domain.DomainContext(**case.get("context", {}))
        assert parse_machine(text, spec, ctx) == spec
        assert domain.domain_facts(text).owner == owner
    elif case["kind"] == "network":
        parsed, parsed_owner = network.parse_network(text)
        assert parsed == spec
        assert parsed_owner == owner
    else:
        assert pool.parse_pool(spec.name, spec.settings["path"], owner, spec) == spec


@pytest.mark.parametrize("name", [c for c in CASES if not c.startswith("pool-")])
def test_golden_accepted_by_libvirt_test_driver(name: str) -> None:
    """libvirt's own parser takes the XML, and what it gives back parses to the same spec."""
    libvirt = pytest.importorskip("libvirt")
    case, spec, owner = load_case(name)
    text = (GOLDEN / name / "expected.xml").read_text()
    conn = libvirt.open("test:///default")  # one shared state per process: undefine after
    try:
        if case["kind"] == "machine":
            dom = conn.defineXML(text)
            try:
                back = dom.XMLDesc(0)
            finally:
                dom.undefine()
            ctx = domain.DomainContext(**case.get("context", {}))
            assert parse_machine(back, spec, ctx) == spec
            assert domain.domain_facts(back).owner == owner
        else:
            net = conn.networkDefineXML(text)
            try:
                back = net.XMLDesc(0)
            finally:
                net.undefine()
            parsed, parsed_owner = network.parse_network(back)
            assert parsed == spec
            assert parsed_owner == owner
    finally:
        conn.close()


def test_every_feature_has_a_golden_case() -> None:
    rendered = "".join((GOLDEN / c / "expected.xml").read_text() for c in CASES)
    for needle in (
        "<shares>",
        "<global_quota>",
        "<locked/>",
        "<hugepages/>",
        "type='mdev' model='vfio-pci'",
        "type='pci' managed='yes'",
        "<tag id=",
        "<virtualport type='openvswitch'/>",
        "device='cdrom'",
        "<iotune>",
        "domain type='qemu'",
        "<source file=",
        "cpuset=",
        "<portgroup",
        "<dhcp>",
    ):
        assert needle in rendered, needle


def test_strict_undefined_catches_a_missing_value() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError, match="path"):
        templating.render("pool.xml.j2", p={"name": "x"})


def test_limit_needs_host_clock() -> None:
    _, spec, owner = load_case("machine-cputune-shares-limit")
    with pytest.raises(CapabilityError, match="host clock"):
        domain.render_domain(spec, owner, domain.DomainContext(host_mhz=None))


def test_limit_round_trips_for_odd_host_clocks() -> None:
    _, spec, owner = load_case("machine-cputune-shares-limit")
    for host in (1400, 2596, 3333, 4999):
        for limit in (500, 1234, 2999, 7777):
            s = dataclasses.replace(spec, cpu_limit_mhz=limit)
            ctx = domain.DomainContext(host_mhz=host)
            xml = domain.render_domain(s, owner, ctx)
            assert parse_machine(xml, s, ctx).cpu_limit_mhz == limit


def test_units_and_machine_types_normalise() -> None:
    from xml.etree import ElementTree as ET

    from pacsinfra.drivers.kvm.xmlutil import size_mib

    assert size_mib(ET.fromstring("<memory unit='KiB'>4194304</memory>")) == 4096
    assert size_mib(ET.fromstring("<memory unit='MiB'>4096</memory>")) == 4096
    assert size_mib(ET.fromstring("<memory unit='GiB'>4</memory>")) == 4096
    assert size_mib(ET.fromstring("<memory>4194304</memory>")) == 4096
    assert domain.normalise_machine("pc-q35-7.2") == "q35"
    assert domain.normalise_machine("q35") == "q35"
    assert domain.normalise_machine("pc-i440fx-8.0") == "pc"


def test_pci_addresses() -> None:
    assert domain.parse_pci("0000:65:00.0") == {
        "domain": "0x0000",
        "bus": "0x65",
        "slot": "0x00",
        "function": "0x0",
    }
    assert domain.parse_pci("3b:00.1")["bus"] == "0x3b"
    with pytest.raises(CapabilityError):
        domain.parse_pci("not-a-device")


def test_pool_marker_round_trip() -> None:
    owner = Ownership(site="st-mary/dr", address="storage.flash", lineage="0b9f-lineage")
    name = pool.marker_name(owner)
    assert name.startswith(".pacsinfra-owner.") and "/" not in name
    assert pool.owner_from_marker(name) == owner
    assert pool.owner_from_marker("st-mary-archive-1-os.qcow2") is None
    assert pool.owner_from_marker(".pacsinfra-owner.!!!") is None


def test_seed_contents() -> None:
    _, spec, _ = load_case("machine-nic-vlan-network")
    seed = cloudinit.build_seed(
        dataclasses.replace(spec, ssh_authorized_keys=("ssh-ed25519 K a@b",))
    )
    meta = yaml.safe_load(seed.meta_data)
    assert meta["local-hostname"] == "st-mary-router-1"
    assert meta["instance-id"].startswith("st-mary-router-1-")
    assert seed.user_data.startswith("#cloud-config\n")
    assert yaml.safe_load(seed.user_data)["ssh_authorized_keys"] == ["ssh-ed25519 K a@b"]
    net = yaml.safe_load(seed.network_config)
    assert net["version"] == 2
    first, second = net["ethernets"]["nic0"], net["ethernets"]["nic1"]
    assert first["addresses"] == ["10.10.110.21/24"]
    assert first["routes"] == [{"to": "default", "via": "10.10.110.1"}]
    assert first["mtu"] == 9000
    assert first["match"]["macaddress"] == domain.default_mac("st-mary-router-1", 0)
    assert second["dhcp4"] is True
    # a changed seed is a new instance for cloud-init
    other = cloudinit.build_seed(dataclasses.replace(spec, hostname="elsewhere"))
    assert yaml.safe_load(other.meta_data)["instance-id"] != meta["instance-id"]


def test_seed_iso_is_a_cidata_volume() -> None:
    import shutil

    from conftest import need

    need(bool(shutil.which("genisoimage") or shutil.which("xorriso")), "genisoimage or xorriso")
    _, spec, _ = load_case("machine-basic")
    iso = cloudinit.build_iso(cloudinit.build_seed(spec))
    assert iso[0x8001:0x8006] == b"CD001"  # ISO 9660 primary volume descriptor
    assert iso[0x8028 : 0x8028 + 6] == b"cidata"
    for name in (b"meta-data", b"user-data", b"network-config"):
        assert name in iso
    assert b"archive1" in iso


def _observed(spec: MachineSpec) -> Observed:
    return Observed(spec=spec, id="x", owner=None)


def test_classify_table() -> None:
    _, spec, _ = load_case("machine-disks-thick-iops")
    assert classify.classify(spec, "memory_mib") == ChangeKind.NEEDS_POWER_OFF
    assert classify.classify(spec, "cpu_count") == ChangeKind.NEEDS_POWER_OFF
    assert classify.classify(spec, "cpu_shares") == ChangeKind.IN_PLACE
    assert classify.classify(spec, "cpu_limit_mhz") == ChangeKind.IN_PLACE
    assert classify.classify(spec, "image") == ChangeKind.REPLACE
    assert classify.classify(spec, "nics") == ChangeKind.NEEDS_POWER_OFF
    assert classify.classify(spec, "no_such_field") == ChangeKind.REPLACE
    grown = dataclasses.replace(
        spec,
        disks=(
            dataclasses.replace(spec.disks[0], size_mib=spec.disks[0].size_mib * 2),
            *spec.disks[1:],
        ),
    )
    shrunk = dataclasses.replace(
        spec, disks=(dataclasses.replace(spec.disks[0], size_mib=1024), *spec.disks[1:])
    )
    added = dataclasses.replace(spec, disks=(*spec.disks, DiskSpec("more", 1024, "pacs-flash")))
    moved = dataclasses.replace(
        spec,
        disks=(spec.disks[0], dataclasses.replace(spec.disks[1], storage="other"), spec.disks[2]),
    )
    assert classify.classify_change(grown, _observed(spec), "disks") == ChangeKind.IN_PLACE
    assert classify.classify_change(shrunk, _observed(spec), "disks") == ChangeKind.REPLACE
    assert classify.classify_change(added, _observed(spec), "disks") == ChangeKind.NEEDS_POWER_OFF
    assert classify.classify_change(moved, _observed(spec), "disks") == ChangeKind.REPLACE
    net = NetworkSpec(address="network.x", name="x", purpose="dicom")
    assert classify.classify(net, "purpose") == ChangeKind.IN_PLACE
    assert classify.classify(net, "mtu") == ChangeKind.NEEDS_POWER_OFF
    assert (
        classify.classify(StorageSpec(address="s", name="s", tier="t"), "settings")
        == ChangeKind.REPLACE
    )


def test_templates_are_found_from_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert any((d / "domain.xml.j2").is_file() for d in templating.template_dirs())
    monkeypatch.setenv("PACSINFRA_TEMPLATES", str(tmp_path))
    assert templating.template_dirs()[0] == tmp_path / "kvm"


def test_seed_formats_and_mounts_data_disks() -> None:
    """Disks with a mount point get an ext4 file system (never over an existing one) and
    an fstab line by label; disks without one are left alone."""
    case, spec, owner = load_case("machine-disks-thick-iops")
    mounted = [d for d in spec.disks if d.mount]
    assert mounted, "the case has a disk with a mount point"
    user = yaml.safe_load(cloudinit.build_seed(spec).user_data)
    assert [f["device"] for f in user["fs_setup"]] == [
        f"/dev/disk/by-id/virtio-{d.name[:20]}" for d in mounted]
    assert all(f["overwrite"] is False and f["filesystem"] == "ext4" for f in user["fs_setup"])
    assert [m[1] for m in user["mounts"]] == [d.mount for d in mounted]
    assert all("nofail" in m[3] for m in user["mounts"])
    # the serial the seed looks for is the one the domain XML gives the disk
    xml = render_case(case, spec, owner)
    for d in mounted:
        assert f"<serial>{d.name[:20]}</serial>" in xml
    bare = dataclasses.replace(spec, disks=tuple(dataclasses.replace(d, mount=None)
                                                  for d in spec.disks))
    assert "fs_setup" not in yaml.safe_load(cloudinit.build_seed(bare).user_data)
