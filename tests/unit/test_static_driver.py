"""The static driver's settings, the configs rendered for remote hosts, and its plan-time checks
(no SSH here: tests/integration/test_static_site.py deploys onto real sshd hosts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pacsinfra.apply.engine import site_driver
from pacsinfra.blueprint import load_blueprint
from pacsinfra.errors import BlueprintError, PlanError
from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.plan.desired import desired_site
from pacsinfra.providers import provider_class
from pacsinfra.services.settings import DeployConfig
from pacsinfra.services.static.hosts import StaticHosts, StaticSource, static_hosts
from pacsinfra.specs import ChangeKind, MachineSpec, ServiceSpec, spec_from_dict, spec_to_dict
from pacsinfra.verify.site import site_endpoints

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "static-site.yaml"


def test_registered_and_hosts_take_the_deploy_login() -> None:
    assert provider_class("static") is StaticHosts
    deploy = DeployConfig.parse({"user": "pacs", "key_file": "~/.ssh/id", "root": "/srv/px"})
    hosts = static_hosts({
        "hosts": {"a": {"address": "10.0.0.5", "host_keys": ["ssh-ed25519 AAAA"]},
                  "b": {"address": "10.0.0.6", "key": {"env": "K"}, "root": "/opt/x",
                        "known_hosts": "/etc/kh"}}}, deploy)
    a, b = hosts["a"], hosts["b"]
    assert (a.user, a.key_file, a.key, a.root, a.port) == ("pacs", "~/.ssh/id", None, "/srv/px", 22)
    assert a.data_dir("archive") == "/srv/px/data/archive" and a.venv == "/srv/px/venv"
    # a host's own key replaces the default key_file (a reference, never a value)
    assert (b.key_file, dict(b.key or {}), b.root) == (None, {"env": "K"}, "/opt/x")


def test_example_renders_remote_configs() -> None:
    d = desired_site(load_blueprint(str(EXAMPLE)).site)
    services = {a: r.spec for a, r in d.resources.items() if a.startswith("service.")}
    assert set(services) == {"service.router[0]", "service.archive-a[0]", "service.archive-b[0]"}
    rtr = services["service.router[0]"]
    assert isinstance(rtr, ServiceSpec) and rtr.host == "192.0.2.10"
    cfg = rtr.config
    assert cfg["bind"] == "192.0.2.10" and cfg["spool_dir"] == "/opt/pacsinfra/data/router"
    dests = {n: (x["host"], x["port"]) for n, x in cfg["destinations"].items()}
    assert dests == {"a": ("192.0.2.11", 11112), "b": ("192.0.2.12", 11112)}
    arc = services["service.archive-a[0]"]
    assert arc.config["data_dir"] == "/opt/pacsinfra/data/archive-a"
    # DICOMweb stays on loopback unless the blueprint opens it (with a login)
    assert arc.config["dicomweb"]["bind"] == "127.0.0.1"
    # the router starts after both archives; the spec survives the state's JSON round trip
    assert {"service.archive-a[0]", "service.archive-b[0]"} <= set(
        d.resources["service.router[0]"].depends_on)
    assert spec_from_dict(spec_to_dict(rtr)) == rtr
    # machines need no image on existing hosts
    assert all(r.spec.image == {} for a, r in d.resources.items() if a.startswith("machine."))
    # verify reaches each service at its host's address
    entries = [(a, s.kind, s.config, s.host) for a, s in services.items()]
    ep = site_endpoints(entries)
    assert (ep.entry.host, ep.entry.port) == ("192.0.2.10", 11104)
    assert sorted(p.host for p in ep.archives) == ["192.0.2.11", "192.0.2.12"]


def _two_node_archive(tmp_path: Path, data: dict) -> str:
    data["machines"]["archive-a"]["count"] = 2
    data["provider"]["static"]["hosts"]["st-demo-archive-a-2"] = {
        "address": "192.0.2.13", "host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB"]}
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(data))
    return str(bp)


def test_a_destination_on_a_service_with_several_hosts_fans_out_to_its_nodes(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    router = data["services"]["router"]["config"]
    router["groups"] = {"all": {"members": ["a", "b"], "strategy": "least_outstanding"}}
    router["rules"].append({"name": "via-group", "forward": ["all"]})
    d = desired_site(load_blueprint(_two_node_archive(tmp_path, data)).site)
    cfg = d.resources["service.router[0]"].spec.config
    nodes = ["a@st-demo-archive-a-1", "a@st-demo-archive-a-2"]
    assert {n: cfg["destinations"][n]["host"] for n in nodes} == {
        "a@st-demo-archive-a-1": "192.0.2.11", "a@st-demo-archive-a-2": "192.0.2.13"}
    assert "a" not in cfg["destinations"] and cfg["destinations"]["b"]["host"] == "192.0.2.12"
    # a rule naming the destination now names a group of its nodes; a group lists them
    assert cfg["groups"]["a"]["members"] == nodes
    assert cfg["groups"]["all"]["members"] == [*nodes, "b"]
    assert cfg["groups"]["all"]["strategy"] == "least_outstanding"
    # the router reads the rendered file
    parsed = RouterConfig.model_validate(cfg)
    assert parsed.rules[0].forward == ["a", "b"]
    # the router starts after every node
    assert {"service.archive-a[0]", "service.archive-a[1]"} <= set(
        d.resources["service.router[0]"].depends_on)


def test_a_fanned_out_destination_must_not_clash_with_a_group(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["services"]["router"]["config"]["groups"] = {"a": {"members": ["b"]}}
    with pytest.raises(PlanError, match=r"destinations\.a: .* a group 'a' exists already"):
        desired_site(load_blueprint(_two_node_archive(tmp_path, data)).site)


def test_missing_hosts_are_named(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    del data["provider"]["static"]["hosts"]["st-demo-archive-b-1"]
    data["machines"]["router"]["count"] = 2
    bp = tmp_path / "site.yaml"
    bp.write_text(yaml.safe_dump(data))
    with pytest.raises(BlueprintError) as err:
        load_blueprint(str(bp))
    text = str(err.value)
    assert "no host for machine st-demo-router-2" in text
    assert "no host for machine st-demo-archive-b-1" in text


def test_check_and_classify() -> None:
    drv = site_driver("static", {"hosts": {"s-pacs-1": {"address": "10.0.0.5",
                                                         "host_keys": ["k"]}}})
    m = MachineSpec(address="machine.pacs[0]", name="s-pacs-1", role="pacs", index=0, image={},
                    cpu_count=1, memory_mib=512)
    assert drv.check(m) == []
    other = MachineSpec(**{**m.__dict__, "name": "s-pacs-2", "address": "machine.pacs[1]"})
    assert "no host in provider.static.hosts" in drv.check(other)[0]
    viewer = ServiceSpec(address="service.v[0]", name="s-pacs-1-v", service="v", kind="viewer",
                         machine="machine.pacs[0]")
    assert drv.check(viewer) == []
    db = ServiceSpec(address="service.db[0]", name="s-pacs-1-db", service="db", kind="database",
                     machine="machine.pacs[0]")
    assert "needs a password" in drv.check(db)[0]
    svc = ServiceSpec(address="service.a[0]", name="s-pacs-1-a", service="a", kind="archive",
                      machine="machine.pacs[0]", host="10.0.0.5")
    assert drv.classify(svc, "config") == ChangeKind.IN_PLACE
    assert drv.classify(svc, "host") == ChangeKind.IN_PLACE
    assert drv.classify(svc, "kind") == ChangeKind.REPLACE
    assert drv.render(svc, _owner()).parameters["config_path"] == "/opt/pacsinfra/services/a/config.yaml"


def _owner():  # type: ignore[no-untyped-def]
    from pacsinfra.specs import Ownership

    return Ownership(site="s", address="service.a[0]", lineage="l")


def test_deploy_engine_auto_takes_ansible_above_the_threshold(tmp_path: Path) -> None:
    hosts = {f"h{i}": {"address": f"10.0.0.{i}", "host_keys": ["ssh-ed25519 AAAA"]}
             for i in range(1, 4)}

    def engine(**deploy: object) -> str:
        config = DeployConfig.parse(deploy)
        return StaticSource(static_hosts({"hosts": hosts}, config), config).engine

    assert engine() == "ssh"  # 3 <= 10
    assert engine(ansible_threshold=2) == "ansible"
    assert engine(ansible_threshold=3) == "ssh"
    assert engine(engine="ansible") == "ansible"
    assert engine(engine="ssh", ansible_threshold=0) == "ssh"
    # deploy.engine reaches the provider, and a saved plan keeps it (the plan's deploy
    # section: the provider is built from the plan alone)
    text = EXAMPLE.read_text().replace("deploy:\n", "deploy:\n  ansible_threshold: 1\n")
    (tmp_path / "site.yaml").write_text(text)
    loaded = load_blueprint(tmp_path / "site.yaml")
    from pacsinfra.apply.engine import deploy_settings
    from pacsinfra.plan.plan import Plan

    plan = Plan(site="st-demo", name="st-demo", overlay=None, driver="static", provider={},
                deploy=deploy_settings(loaded.site), state_lineage=None, state_serial=None)
    again = Plan.from_dict(plan.to_dict())
    drv = site_driver("static", loaded.site.provider.static, deploy=again.deploy)
    assert drv.provider.source.engine == "ansible"  # type: ignore[attr-defined]  # 3 hosts > 1


def test_data_directories_go_to_the_disks_the_blueprint_mounts(tmp_path: Path) -> None:
    """Defaults follow disks[].mount: an archive tier with a storage class onto the disk
    of that class, the rest of a service's data onto the default tier's disk, else the
    first mounted disk; explicit paths and the local provider's root are left alone."""
    bp = yaml.safe_load(EXAMPLE.read_text())
    bp["storage"] = {"flash": {"tier": "performance"}, "slow": {"tier": "capacity"}}
    bp["machines"]["archive-a"]["disks"] = [
        {"name": "os", "size": "20GiB", "storage": "flash"},  # no mount: not used for data
        {"name": "nl", "size": "4TiB", "storage": "slow", "mount": "/srv/nearline"},
        {"name": "fast", "size": "1TiB", "storage": "flash", "mount": "/srv/flash"},
    ]
    bp["services"]["archive-a"]["config"]["tiers"] = [
        {"name": "hot", "storage_class": "flash"},
        {"name": "cold", "storage_class": "slow"},
        {"name": "pinned", "storage_class": "slow", "path": "/mnt/elsewhere"},
    ]
    bp["machines"]["router"]["disks"] = [
        {"name": "spool", "size": "200GiB", "storage": "flash", "mount": "/var/spool/pacs"}]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(bp))
    d = desired_site(load_blueprint(str(path)).site)
    arc = d.resources["service.archive-a[0]"].spec
    assert isinstance(arc, ServiceSpec)
    # the default tier (hot) is on flash: the index and data_dir go there
    assert arc.config["data_dir"] == "/srv/flash/archive-a"
    tiers = {t["name"]: t.get("path") for t in arc.config["tiers"]}
    assert tiers == {"hot": "/srv/flash/archive-a/hot", "cold": "/srv/nearline/archive-a/cold",
                     "pinned": "/mnt/elsewhere"}
    rtr = d.resources["service.router[0]"].spec
    assert isinstance(rtr, ServiceSpec) and rtr.config["spool_dir"] == "/var/spool/pacs/router"
    # a machine without mounted disks keeps the root's data directory
    other = d.resources["service.archive-b[0]"].spec
    assert isinstance(other, ServiceSpec)
    assert other.config["data_dir"] == "/opt/pacsinfra/data/archive-b"
