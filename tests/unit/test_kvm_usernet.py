"""KVM rendering of direct kernel boot, user-mode NICs with port forwards and the console log."""

from __future__ import annotations

import pytest

from pacsinfra.blueprint.model import KvmImage
from pacsinfra.drivers.kvm import domain as dom
from pacsinfra.drivers.kvm import usernet
from pacsinfra.drivers.kvm.machines import check_machine
from pacsinfra.errors import CapabilityError
from pacsinfra.specs import DiskSpec, MachineSpec, NicSpec, Ownership

FWD = "user:hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:11112-:11112"
CTX = dom.DomainContext(domain_type="qemu", uses_files=True, pool_paths={"p": "/pools/p"},
                        console_log="/var/log/pi")


def _spec(*nics: NicSpec, image: dict[str, str] | None = None) -> MachineSpec:
    return MachineSpec(
        address="machine.g[0]", name="ci-g-1", role="g", index=0,
        image=image if image is not None else {
            "path": "/img/root.raw", "format": "raw", "kernel": "/img/vmlinuz",
            "initrd": "/img/initrd", "cmdline": "console=ttyS0"},
        cpu_count=1, memory_mib=256, disks=(DiskSpec("os", 1024, "p"),), nics=nics)


def _round_trip(spec: MachineSpec) -> tuple[str, MachineSpec]:
    xml = dom.render_domain(spec, Ownership("ci", spec.address, "l"), CTX)
    back = dom.parse_domain(dom.domain_facts(xml), capacities_mib={"vda": 1024},
                            pool_of_path={"/pools/p": "p"}, host_mhz=None, running=True)
    return xml, back


def test_kernel_boot_user_nic_and_console_log_render_and_read_back() -> None:
    spec = _spec(NicSpec("bridge:br0"), NicSpec(FWD), NicSpec("bridge:br1"))
    xml, back = _round_trip(spec)
    assert "<kernel>/img/vmlinuz</kernel>" in xml and "<boot dev='hd'/>" not in xml
    assert "<initrd>/img/initrd</initrd>" in xml and "<cmdline>console=ttyS0</cmdline>" in xml
    assert "<log file='/var/log/pi/ci-g-1.console.log' append='off'/>" in xml
    assert "user,id=pinet1,hostfwd=tcp:127.0.0.1:2222-:22" in xml
    assert "bus=pcie.0,addr=0x19" in xml
    # the user NIC keeps its place between the bridges; MACs as rendered
    assert [n.network for n in back.nics] == ["bridge:br0", FWD, "bridge:br1"]
    assert [n.mac for n in back.nics] == dom.nic_macs(spec)
    assert back.image == spec.image


def test_without_user_nics_no_qemu_namespace() -> None:
    xml, _ = _round_trip(_spec(NicSpec("bridge:br0"), image={"path": "/img/x.qcow2"}))
    assert "qemu:commandline" not in xml and "<boot dev='hd'/>" in xml


@pytest.mark.parametrize("bad", [
    "user:guestfwd=tcp:10.0.2.100:80-cmd:nc x 80",  # runs a host command
    "user:id=x",
    "user:hostfwd=tcp:127.0.0.1:22",  # no guest side
    "user:smb=/etc",
])
def test_user_options_refused(bad: str) -> None:
    with pytest.raises(CapabilityError):
        usernet.options(bad)
    assert any("not allowed" in p or "hostfwd" in p or "unexpected" in p
               for p in check_machine(_spec(NicSpec(bad)), embed=True))


def test_user_nic_allowed_on_embed_and_initrd_needs_kernel() -> None:
    assert check_machine(_spec(NicSpec(FWD)), embed=True) == []
    with pytest.raises(CapabilityError, match="need a kernel"):
        dom.domain_inputs(_spec(image={"path": "/x", "initrd": "/i"}), CTX)
    assert KvmImage(kernel="/k", initrd="/i").kernel == "/k"  # a kernel alone is an image
    with pytest.raises(ValueError, match="needs its 'kernel'"):
        KvmImage(path="/x", cmdline="quiet")
