"""The local driver and the service resources, without starting any process."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsinfra.apply.engine import Engine, site_driver
from pacsinfra.blueprint import load_blueprint
from pacsinfra.plan.desired import desired_site
from pacsinfra.plan.plan import Action
from pacsinfra.providers import provider_class
from pacsinfra.services.local import paths
from pacsinfra.services.local.hosts import LocalHosts
from pacsinfra.services.local.process import ServiceProcess
from pacsinfra.specs import (
    ChangeKind,
    MachineSpec,
    Ownership,
    ServiceSpec,
    changed_fields,
    spec_from_dict,
    spec_to_dict,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quickstart.yaml"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "root"
    monkeypatch.setenv(paths.ROOT_ENV, str(r))
    return r


def test_registered() -> None:
    assert provider_class("local") is LocalHosts


def test_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.local_root(None) == tmp_path / "xdg" / "pacsinfra"
    assert paths.local_root({"root": str(tmp_path / "r")}) == tmp_path / "r"
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path / "env"))
    assert paths.local_root({"root": str(tmp_path / "r")}) == tmp_path / "env"


def test_services_become_resources_with_rendered_configs(root: Path) -> None:
    d = desired_site(load_blueprint(str(EXAMPLE)).site)
    arc, rtr = d.resources["service.archive[0]"], d.resources["service.router[0]"]
    assert isinstance(arc.spec, ServiceSpec) and isinstance(rtr.spec, ServiceSpec)
    assert arc.depends_on == ("machine.pacs[0]",)
    assert rtr.depends_on == ("machine.pacs[0]", "service.archive[0]")
    mdir = root / "local-demo" / "machines" / "local-demo-pacs-1"
    assert arc.spec.config["data_dir"] == str(mdir / "data" / "archive")
    assert arc.spec.config["bind"] == "127.0.0.1"
    dest = rtr.spec.config["destinations"]["archive"]
    assert (dest["host"], dest["port"], dest["ae_title"]) == ("127.0.0.1", 11112, "ARCHIVE")
    assert "service" not in dest
    assert rtr.spec.config["spool_dir"] == str(mdir / "data" / "router")
    # the rendered configs are what the services read
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.router.config import RouterConfig

    ArchiveConfig.model_validate(dict(arc.spec.config))
    RouterConfig.model_validate(dict(rtr.spec.config))
    assert spec_from_dict(spec_to_dict(rtr.spec)) == rtr.spec


def test_other_drivers_get_no_service_resources() -> None:
    d = desired_site(load_blueprint(str(REPO / "examples" / "kvm-quickstart.yaml")).site)
    assert not [a for a in d.resources if a.startswith("service.")]


def test_check_refuses_what_it_cannot_run(root: Path) -> None:
    drv = site_driver("local", None)
    for kind in ("archive", "router", "viewer"):
        assert drv.check(ServiceSpec(address=f"service.{kind}[0]", name=f"s-pacs-1-{kind}",
                                     service=kind, kind=kind, machine="machine.pacs[0]")) == []
    db = ServiceSpec(address="service.db[0]", name="s-pacs-1-db", service="db", kind="database",
                     machine="machine.pacs[0]", config={"password": {"env": "X"},
                                                        "tls": {"enabled": True}})
    assert "TLS for PostgreSQL is not supported" in drv.check(db)[0]
    other = ServiceSpec(address="service.w[0]", name="s-pacs-1-w", service="w", kind="worklist",
                        machine="machine.pacs[0]")
    assert "cannot run a worklist service" in drv.check(other)[0]


def test_plan_then_adopt_machine_after_state_loss(root: Path, tmp_path: Path) -> None:
    loaded = load_blueprint(str(EXAMPLE))
    with Engine(loaded, tmp_path / "s.json") as eng:
        plan = eng.plan()
    assert [(s.address, s.action) for s in plan.steps] == [
        ("storage.disk", Action.CREATE), ("machine.pacs[0]", Action.CREATE),
        ("service.archive[0]", Action.CREATE), ("service.router[0]", Action.CREATE),
        ("service.viewer[0]", Action.CREATE)]
    # a machine created by an earlier (lost) state is adopted, not created twice
    drv = site_driver("local", None)
    m = plan.steps[1].desired
    assert isinstance(m, MachineSpec)
    drv.create(m, Ownership("local-demo", m.address, "old-lineage"))
    assert [o.spec.address for o in drv.list_owned("local-demo")] == ["machine.pacs[0]"]
    with Engine(loaded, tmp_path / "s2.json") as eng:
        again = {s.address: s.action for s in eng.plan().steps}
    assert again["machine.pacs[0]"] is Action.ADOPT
    assert drv.classify(m, "memory_mib") is ChangeKind.IN_PLACE


def test_observed_service_shows_stopped_process_and_edited_config(root: Path) -> None:
    d = desired_site(load_blueprint(str(EXAMPLE)).site)
    drv = site_driver("local", None)
    m = d.resources["machine.pacs[0]"].spec
    s = d.resources["service.router[0]"].spec
    assert isinstance(s, ServiceSpec)
    drv.create(m, Ownership("local-demo", m.address, "L"))
    # the mark and config as a create killed before the start would leave them
    from pacsinfra.services.marks import write_mark

    proc = ServiceProcess(root, "local-demo", "local-demo-pacs-1", s)
    write_mark(proc.mark_path, s, Ownership("local-demo", s.address, "L"))
    proc.write_config()
    obs = drv.read(s)
    assert obs is not None and obs.owner is not None
    assert changed_fields(s, obs) == ["running"]  # not running: drift, fixed in place
    proc.config_path.write_text(proc.config_path.read_text().replace("port: 11104", "port: 1"))
    obs = drv.read(s)
    assert obs is not None and changed_fields(s, obs) == ["config", "running"]
    assert drv.classify_change(s, obs, "config") is ChangeKind.IN_PLACE
    assert drv.classify_change(s, obs, "machine") is ChangeKind.REPLACE
    drv.delete(obs)
    assert drv.read(s) is None
    assert (root / "local-demo" / "machines" / "local-demo-pacs-1").is_dir()
