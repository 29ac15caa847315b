"""Every reference blueprint and example plans every service it declares, on the right machine.

Each file in blueprints/ and examples/ (and each overlay site of multisite.yaml) is
planned against a real test target of its provider — libvirt's test:///default, the
vSphere simulator, the Hyper-V model behind a WS-Management endpoint, sshd hosts in
network namespaces, a local root — through an overlay that changes only where the
provider is (and the deploy login's key, for the hosts that need one). The plan must
hold one create step per (machine, service) the blueprint declares, on that machine.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import need_module
from support.netns_hosts import NetnsHost, netns_hosts  # noqa: F401 - fixture
from vsphere_sim import Vcsim, vcsim, vcsim_binary  # noqa: F401 - fixtures

from pacsinfra.apply.engine import Engine
from pacsinfra.blueprint import load_blueprint
from pacsinfra.blueprint.overlay import merge
from pacsinfra.plan.plan import Action
from pacsinfra.specs import ServiceSpec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FILES = sorted([*REPO.glob("blueprints/*.yaml"), *REPO.glob("examples/*.yaml")])
HV_ENV = "PACSINFRA_TEST_REF_HV_PASSWORD"
VS_ENV = "PACSINFRA_TEST_REF_VS_PASSWORD"


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` onto ``base`` as an overlay merges (null deletes a key)."""
    return merge(copy.deepcopy(base), None, over, None)[0]


def cases() -> list[tuple[Path, str | None]]:
    """(file, overlay site) for every file and every overlay it declares."""
    out: list[tuple[Path, str | None]] = []
    for f in FILES:
        out.append((f, None))
        for site in (yaml.safe_load(f.read_text()).get("sites") or {}):
            out.append((f, str(site)))
    return out


@pytest.fixture(scope="module")
def hyperv() -> Iterator[int]:
    need_module("winrm")
    from support.hyperv_model import HypervHost
    from support.wsman_server import PASSWORD, USER, WsmanServer

    host = HypervHost(mhz=2800, memory_mib=1 << 21)
    os.environ[HV_ENV] = PASSWORD
    with WsmanServer(host.run, USER, PASSWORD) as srv:
        yield srv.httpd.server_address[1]
    os.environ.pop(HV_ENV, None)


def _targets(driver: str, request: pytest.FixtureRequest, tmp: Path,
             machines: list[str]) -> dict[str, Any]:
    """The overlay that points ``driver`` at this machine's test target."""
    if driver == "kvm":
        need_module("libvirt")
        return {"provider": {"driver": "kvm",
                             "kvm": {"uri": "test:///default", "console_log": str(tmp)}}}
    if driver == "vsphere":
        sim: Vcsim = request.getfixturevalue("vcsim")
        os.environ[VS_ENV] = sim.password
        return {"provider": {"driver": "vsphere", "vsphere": {
            "server": sim.server, "user": sim.user, "password": {"env": VS_ENV},
            "ca_file": str(sim.ca_file), "datacenter": "DC0", "cluster": "DC0_C0",
            "resource_pool": None, "folder": None, "datastore": None}}}
    if driver == "hyperv":
        from support.wsman_server import USER

        port = request.getfixturevalue("hyperv")
        return {"provider": {"driver": "hyperv", "hyperv": {
            "host": "127.0.0.1", "port": port, "transport": "basic", "user": USER,
            "password": {"env": HV_ENV}, "ssl": False}}}
    if driver == "static":
        hosts: list[NetnsHost] = request.getfixturevalue("netns_hosts")
        entries = {m: {"address": h.address, "host_keys": [h.host_key_line]}
                   for m, h in zip(machines, hosts, strict=False)}
        return {"provider": {"driver": "static", "static": {"hosts": entries,
                                                            "records": str(tmp / "records")}},
                "deploy": {"key_file": str(hosts[0].key_file)}}
    if driver == "local":
        return {"provider": {"driver": "local", "local": {"root": str(tmp / "root")}}}
    raise AssertionError(f"no test target for {driver}")


@pytest.mark.parametrize(("path", "site"), cases(),
                         ids=[f"{p.name}:{s}" if s else p.name for p, s in cases()])
def test_every_declared_service_is_planned_on_its_machine(
        path: Path, site: str | None, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    base = load_blueprint(path, site=site).site  # the site as its admin wrote it
    data = yaml.safe_load(path.read_text())
    sites = dict(data.get("sites") or {})
    overlay = sites.get(site) if site else {}
    if isinstance(overlay, str):  # an overlay kept in its own file
        overlay = yaml.safe_load((path.parent / overlay).read_text())
    merged_name = deep_merge(data.get("metadata") or {}, (overlay or {}).get("metadata") or {})["name"]
    driver = str(base.provider.driver)
    machines = [f"{merged_name}-{role}-{n}" for role, r in base.machines.items()
                for n in range(1, r.count + 1)]
    testbed = deep_merge(overlay or {}, _targets(driver, request, tmp_path, machines))
    # overlays kept in files stay where they are; the copy lives in the test's directory
    sites = {k: str(path.parent / v) if isinstance(v, str) else v for k, v in sites.items()}
    data["sites"] = {**sites, "testbed": testbed}
    copy_path = tmp_path / path.name
    copy_path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = load_blueprint(copy_path, site="testbed")
    with Engine(loaded, tmp_path / "state.json") as engine:
        plan = engine.plan()
    services = {s.address: s.desired for s in plan.steps if isinstance(s.desired, ServiceSpec)}
    assert all(s.action is Action.CREATE for s in plan.steps if s.address in services)
    expected = set()
    for role_name, role in base.machines.items():
        for i in range(role.count):
            for svc in role.services:
                expected.add((svc, f"machine.{role_name}[{i}]"))
    found = {(s.service, s.machine) for s in services.values() if s is not None}
    assert found == expected, f"{path.name} {site or ''}: planned {sorted(found)}"
    # each service's config is the file its service reads, rendered for this machine
    for spec in services.values():
        assert spec is not None and (spec.kind == "viewer" or spec.config.get("ae_title")
                                     or spec.kind == "database")
