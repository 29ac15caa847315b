"""Services on KVM machines at plan time: user-mode networks, addresses, host keys (no VM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pacsinfra.apply.engine import site_driver
from pacsinfra.blueprint import load_blueprint
from pacsinfra.drivers.kvm.declaration import ssh_endpoint, user_forwards
from pacsinfra.drivers.kvm.port import KvmPort
from pacsinfra.plan.desired import desired_site
from pacsinfra.services.guest import GuestSource
from pacsinfra.services.settings import DeployConfig
from pacsinfra.specs import MachineSpec, NicSpec, ServiceSpec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOSRUMZAS8AYTUJXksuSg6QmB6TuTIJ7XuEcK2byViEI"


def _site(tmp_path: Path, *, ssh: bool = True, static: bool = False) -> dict[str, Any]:
    nic: dict[str, Any] = (
        {"network": "lan", "addresses": ["10.9.0.5"]} if static
        else {"network": "lab", "forwards": [{"guest": 22, "host": 2222},
                                             {"guest": 11112, "host": 11112}]})
    kvm: dict[str, Any] = {"uri": "test:///default", "console_log": str(tmp_path)}
    data: dict[str, Any] = {
        "apiVersion": "pacsinfra/v1", "kind": "Site", "metadata": {"name": "kq"},
        "provider": {"driver": "kvm", "kvm": kvm},
        "images": {"guest": {"kvm": {"path": "/images/guest.qcow2"}}},
        "networks": {"lab": {"purpose": "dicom", "kvm": {"user": True}},
                     "lan": {"purpose": "dicom", "cidr": "10.9.0.0/24", "gateway": "10.9.0.1"}},
        "machines": {"pacs": {"image": "guest", "cpu": {"count": 1}, "memory": {"size": "1GiB"},
                              "nics": [nic], "services": ["archive"]}},
        "services": {"archive": {"kind": "archive",
                                 "config": {"ae_title": "ARCHIVE", "port": 11112}}},
    }
    if ssh:
        data["deploy"] = {"user": "root", "key_file": "~/.ssh/id_ed25519"}
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(data))
    return {"desired": desired_site(load_blueprint(str(bp)).site)}


def test_user_network_is_no_object_and_the_service_is_reached_through_the_forward(
        tmp_path: Path) -> None:
    d = _site(tmp_path)["desired"]
    assert "network.lab" not in d.resources  # QEMU's NAT: nothing to create
    m = d.resources["machine.pacs[0]"]
    assert isinstance(m.spec, MachineSpec)
    assert m.spec.nics[0].network == ("user:hostfwd=tcp:127.0.0.1:2222-:22,"
                                      "hostfwd=tcp:127.0.0.1:11112-:11112")
    assert "network.lab" not in m.depends_on
    svc = d.resources["service.archive[0]"]
    assert isinstance(svc.spec, ServiceSpec)
    assert svc.spec.host == "127.0.0.1"
    assert svc.spec.config["bind"] == "0.0.0.0"  # the forwards arrive on the guest's NIC
    assert svc.spec.config["data_dir"] == "/opt/pacsinfra/data/archive"
    assert svc.depends_on == ("machine.pacs[0]",)


def test_static_address_is_the_service_host(tmp_path: Path) -> None:
    svc = _site(tmp_path, static=True)["desired"].resources["service.archive[0]"].spec
    assert svc.host == "10.9.0.5" and svc.config["bind"] == "10.9.0.5"


def test_without_ssh_settings_services_stay_out_of_the_plan(tmp_path: Path) -> None:
    d = _site(tmp_path, ssh=False)["desired"]
    assert not [a for a in d.resources if a.startswith("service.")]


def test_ssh_endpoint() -> None:
    spec = MachineSpec(address="machine.a[0]", name="a-1", role="a", index=0, image={},
                       cpu_count=1, memory_mib=512,
                       nics=(NicSpec("user:hostfwd=tcp:127.0.0.1:2200-:22,"
                                     "hostfwd=udp::5000-:5000"),))
    assert user_forwards(spec) == [("127.0.0.1", 2200, 22)]
    ep = ssh_endpoint(spec)
    assert ep is not None and (ep.address, ep.port, ep.user_mode) == ("127.0.0.1", 2200, True)
    assert ssh_endpoint(MachineSpec(address="machine.a[0]", name="a-1", role="a", index=0,
                                    image={}, cpu_count=1, memory_mib=512,
                                    nics=(NicSpec("net", address="10.0.0.9"),)),
                        port=2022).port == 2022  # type: ignore[union-attr]
    assert ssh_endpoint(MachineSpec(address="machine.a[0]", name="a-1", role="a", index=0,
                                    image={}, cpu_count=1, memory_mib=512,
                                    nics=(NicSpec("net"),))) is None


class _FakeLc:
    def __init__(self) -> None:
        self.meta: dict[str, str] = {}

    def domain_metadata(self, name: str, uri: str) -> str | None:
        return self.meta.get(name)

    def set_domain_metadata(self, name: str, uri: str, key: str, xml: str) -> None:
        self.meta[name] = xml


def _port(config: dict[str, Any], lc: _FakeLc) -> KvmPort:
    return KvmPort(config, lambda: lc, lambda name: None)  # type: ignore[arg-type,return-value]


def _source(port: KvmPort, deploy: dict[str, Any]) -> GuestSource:
    from pacsinfra.drivers.kvm.declaration import DECLARATION

    assert DECLARATION.reach is not None
    return GuestSource("kvm", port, DECLARATION.reach, DeployConfig.parse(deploy))


def test_host_keys_learnt_from_the_console_then_recorded(tmp_path: Path) -> None:
    console = tmp_path / "a-1.console.log"
    console.write_text("booting\n-----BEGIN SSH HOST KEY KEYS-----\n"
                       f"{KEY} root@guest\n-----END SSH HOST KEY KEYS-----\n")
    lc = _FakeLc()
    svc = _source(_port({"uri": "test:///default", "console_log": str(tmp_path)}, lc),
                  {"key_file": "/k"})
    m = MachineSpec(address="machine.a[0]", name="a-1", role="a", index=0, image={},
                    cpu_count=1, memory_mib=512)
    assert svc.host_keys(m, wait=0) == (f"{KEY} root@guest",)
    assert "hostkeys" in lc.meta["a-1"]
    # recorded: a console showing another key later does not replace it (no new trust)
    console.write_text("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAother\n"
                       "-----END SSH HOST KEY KEYS-----\n")
    assert svc.host_keys(m, wait=0) == (f"{KEY} root@guest",)


def test_pinned_keys_win_and_no_console_means_unknown(tmp_path: Path) -> None:
    m = MachineSpec(address="machine.a[0]", name="a-1", role="a", index=0, image={},
                    cpu_count=1, memory_mib=512)
    port = _port({"uri": "test:///default"}, _FakeLc())
    assert _source(port, {"key_file": "/k", "host_keys": {"a": [KEY]}}).host_keys(m, wait=0) \
        == (KEY,)
    assert _source(port, {"key_file": "/k"}).host_keys(m, wait=0) is None


def test_service_check_needs_the_deploy_login() -> None:
    spec = ServiceSpec(address="service.archive[0]", name="a-1-archive", service="archive",
                       kind="archive", machine="machine.a[0]")
    assert "set deploy" in site_driver("kvm", {"uri": "test:///default"}).check(spec)[0]
    assert site_driver("kvm", {"uri": "test:///default"},
                       deploy={"key_file": "/k"}).check(spec) == []
