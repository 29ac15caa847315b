"""Services on vSphere and Hyper-V machines at plan time (no hypervisor, no SSH).

The plan holds the services after their machines only with the ``deploy`` login; their
configs are rendered for the machine's first static address; the site driver hands
ServiceSpec to the services layer for check / render / classify; host keys come only
from the blueprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pacsinfra.apply.engine import site_driver
from pacsinfra.blueprint import load_blueprint, validate
from pacsinfra.drivers.declaration import STATIC_ADDRESS, static_endpoint
from pacsinfra.errors import DeployError, PlanError
from pacsinfra.plan.desired import desired_site
from pacsinfra.services.guest import GuestLayout, GuestSource
from pacsinfra.services.settings import DeployConfig
from pacsinfra.specs import ChangeKind, MachineSpec, NicSpec, Ownership, ServiceSpec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOSRUMZAS8AYTUJXksuSg6QmB6TuTIJ7XuEcK2byViEI"
DRIVERS = ("vsphere", "hyperv")


def _provider(driver: str) -> dict[str, Any]:
    section: dict[str, Any] = (
        {"server": "vc.example"} if driver == "vsphere"
        else {"host": "hv01.example", "password": {"env": "HV_PASSWORD"}})
    return {"driver": driver, driver: section}


def _data(driver: str, deploy: dict[str, Any] | None = None) -> dict[str, Any]:
    image = ({"vsphere": {"template": "debian12-tpl"}} if driver == "vsphere"
             else {"hyperv": {"vhdx": "C:\\Images\\debian12.vhdx"}})
    data: dict[str, Any] = {
        "apiVersion": "pacsinfra/v1", "kind": "Site", "metadata": {"name": "gs"},
        "provider": _provider(driver),
        "images": {"debian12": image},
        "networks": {"lan": {"purpose": "dicom", "cidr": "10.9.0.0/24"},
                     "mgmt": {"purpose": "management"}},
        "storage": {"flash": {"tier": "performance", "encrypted": True}},
        "machines": {"pacs": {
            "image": "debian12", "cpu": {"count": 1}, "memory": {"size": "1GiB"},
            "disks": [{"name": "os", "size": "8GiB", "storage": "flash"}],
            "nics": [{"network": "mgmt"}, {"network": "lan", "addresses": ["10.9.0.5"]}],
            "services": ["archive", "router"]}},
        "services": {
            "archive": {"kind": "archive", "config": {"ae_title": "ARCHIVE", "port": 11112}},
            "router": {"kind": "router", "config": {
                "ae_title": "ROUTER", "port": 11104,
                "destinations": {"a": {"ae_title": "ARCHIVE", "service": "archive",
                                       "port": 11112}}}}},
    }
    if deploy is not None:
        data["deploy"] = deploy
    return data


def _load(tmp_path: Path, driver: str, deploy: dict[str, Any] | None = None) -> Any:
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(_data(driver, deploy)))
    return load_blueprint(str(bp)).site


@pytest.mark.parametrize("driver", DRIVERS)
def test_services_follow_their_machine_at_its_static_address(tmp_path: Path, driver: str) -> None:
    site = _load(tmp_path, driver, {"key_file": "/k", "root": "/srv/px",
                                    "host_keys": {"pacs": [KEY]}})
    d = desired_site(site)
    archive, router = d.resources["service.archive[0]"], d.resources["service.router[0]"]
    assert isinstance(archive.spec, ServiceSpec) and isinstance(router.spec, ServiceSpec)
    assert archive.depends_on == ("machine.pacs[0]",)
    assert router.depends_on == ("machine.pacs[0]", "service.archive[0]")
    # the DHCP NIC comes first; the machine is reached at its first *static* address
    assert archive.spec.host == router.spec.host == "10.9.0.5"
    assert archive.spec.config["bind"] == "10.9.0.5"
    assert archive.spec.config["data_dir"] == "/srv/px/data/archive"
    assert router.spec.config["destinations"]["a"]["host"] == "10.9.0.5"
    assert router.spec.config["spool_dir"] == "/srv/px/data/router"


@pytest.mark.parametrize("driver", DRIVERS)
def test_without_a_login_the_plan_holds_machines_only_and_validate_says_so(
        tmp_path: Path, driver: str) -> None:
    d = desired_site(_load(tmp_path, driver, {"user": "root", "host_keys": {"pacs": [KEY]}}))
    assert "machine.pacs[0]" in d.resources
    assert not [a for a in d.resources if a.startswith("service.")]
    bp = tmp_path / "site.yaml"
    _, diags = validate(bp)
    (warning,) = [x for x in diags if x.code == "services-unreachable"]
    assert warning.severity == "warning" and warning.path == "machines.pacs.services"
    assert warning.line > 0 and "services are not deployed" in warning.message
    assert "key_file" in warning.hint


def test_deploy_settings_from_the_model_or_a_saved_plan(tmp_path: Path) -> None:
    site = _load(tmp_path, "hyperv", {"key_file": "/k", "init": "supervisor",
                                      "host_keys": {"pacs": [KEY]}})
    from pacsinfra.apply.engine import deploy_settings

    for given in (site.deploy, deploy_settings(site)):
        config = DeployConfig.parse(given)
        assert (config.init, config.has_key, config.root) == ("supervisor", True, "/opt/pacsinfra")


def _machine(*nics: NicSpec) -> MachineSpec:
    return MachineSpec(address="machine.pacs[0]", name="gs-pacs-1", role="pacs", index=0,
                       image={}, cpu_count=1, memory_mib=1024, nics=tuple(nics))


def test_endpoint_and_layout() -> None:
    m = _machine(NicSpec("mgmt"), NicSpec("lan", address="10.9.0.5"), NicSpec("b", address="10.8.0.5"))
    ep = static_endpoint(m, 2222)
    assert ep is not None and (ep.address, ep.port, ep.user_mode) == ("10.9.0.5", 2222, False)
    assert static_endpoint(_machine(NicSpec("mgmt"))) is None
    layout = GuestLayout(DeployConfig.parse({"root": "/srv/px"}), {"gs-pacs-1": m}, STATIC_ADDRESS)
    assert layout.address("gs-pacs-1") == layout.default_bind("gs-pacs-1") == "10.9.0.5"
    assert str(layout.data_dir("gs-pacs-1", "archive")) == "/srv/px/data/archive"
    dhcp = GuestLayout(DeployConfig(), {"gs-pacs-1": _machine(NicSpec("mgmt"))}, STATIC_ADDRESS)
    with pytest.raises(PlanError, match="no address known before it boots"):
        dhcp.address("gs-pacs-1")


def test_login_from_the_model_or_its_dump() -> None:
    empty = DeployConfig.parse(None)
    assert (empty.root, empty.has_key, dict(empty.login)) == ("/opt/pacsinfra", False, {})
    login = DeployConfig.parse({"user": "pacs", "key": {"env": "K"}, "port": 2022,
                                "host_keys": {"pacs": [KEY], "gs-pacs-2": ["ssh-rsa AAAA"]},
                                "boot_timeout": 12, "wheel": "/w.whl"})
    assert dict(login.login) == {"user": "pacs", "key": {"env": "K"}, "port": 2022}
    assert (login.boot_timeout, login.wheel, login.has_key) == (12.0, "/w.whl", True)
    assert login.pinned("gs-pacs-1", "pacs") == (KEY,)
    assert login.pinned("gs-pacs-2", "pacs") == ("ssh-rsa AAAA",)  # the machine's own entry wins


def _drivers(deploy: dict[str, Any] | None) -> list[Any]:
    return [site_driver(d, _provider(d)[d], deploy=deploy) for d in DRIVERS]


SPEC = ServiceSpec(address="service.archive[0]", name="gs-pacs-1-archive", service="archive",
                   kind="archive", machine="machine.pacs[0]", config={"ae_title": "A"},
                   host="10.9.0.5")


def test_drivers_dispatch_service_specs_without_touching_the_hypervisor() -> None:
    for drv in _drivers(None):
        (problem,) = drv.check(SPEC)
        assert "no way to run services: set deploy" in problem, problem
    for drv in _drivers({"key_file": "/k", "root": "/srv/px"}):
        assert drv.check(SPEC) == []
        db = ServiceSpec(address="service.db[0]", name="gs-pacs-1-db", service="db",
                         kind="database", machine="machine.pacs[0]", config={})
        assert any("password" in p for p in drv.check(db))
        out = drv.render(SPEC, Ownership("gs", SPEC.address, "l"))
        assert out.media_type == "application/json" and '"kind": "archive"' in out.text
        assert out.parameters == {"host": "10.9.0.5", "machine": "gs-pacs-1",
                                  "path": "/srv/px/services/archive/service.json",
                                  "config_path": "/srv/px/services/archive/config.yaml"}
        assert drv.classify(SPEC, "config") is ChangeKind.IN_PLACE
        assert drv.classify(SPEC, "machine") is ChangeKind.REPLACE


def test_host_keys_only_from_the_blueprint() -> None:
    m = _machine(NicSpec("lan", address="10.9.0.5"))

    def source(deploy: dict[str, Any], driver: int) -> GuestSource:
        found = _drivers(deploy)[driver].services.source
        assert isinstance(found, GuestSource)
        return found

    pinned = source({"key_file": "/k", "host_keys": {"pacs": [KEY]}}, 0)
    known = source({"key_file": "/k", "known_hosts": "/kh"}, 1)
    neither = source({"key_file": "/k"}, 0)
    assert pinned.host_keys(m, wait=0) == (KEY,)
    assert known.host_keys(m, wait=0) == ()  # the known_hosts file holds them
    assert neither.host_keys(m, wait=0) is None  # unknown: not contacted
    with pytest.raises(DeployError, match="no pinned SSH host key.*never trusts a key on first use"):
        neither.host_keys(m, wait=5)
