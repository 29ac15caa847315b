"""Services on vSphere VMs (``provider.vsphere.ssh``), from one blueprint through the CLI.

The VM is real as far as vCenter goes: vcsim (govmomi's simulator) clones it from a
template, customizes its static address and powers it on. vcsim runs no guest, so the
VM's operating system is a **stand-in**: an sshd in its own network namespace whose
address the blueprint gives the VM's NIC (:mod:`support.standin`). pacsinfra reaches
"the VM" there, pins the stand-in's host key from the blueprint, installs its wheel into a
venv, writes the configs and starts an archive and a router in front of it, all inside
that namespace. What the stand-in cannot show: that a real guest got the address from
the customization, and that destroying the VM takes its disk (the stand-in's root stays).

Flow: validate -> plan (network, machine, then the two services after it) -> apply ->
processes run in the stand-in's namespace -> ``verify`` through the router -> empty plan
-> a router change is one in-place update that restarts the router alone -> destroy
(services stopped over SSH first, then the VM).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from support.host_root import host_root
from support.netns_hosts import NetnsHost
from support.standin import (  # noqa: F401 - fixtures
    Cli,
    assert_deploy_order,
    assert_destroy_order,
    assert_no_secrets,
    assert_services_in,
    deploy_block,
    house,
    kill_under,
    pid_of,
    processes_under,
    services_block,
    standin,
)
from vsphere_sim import Vcsim, vcsim, vcsim_binary  # noqa: F401 - fixtures

from pacsinfra.apply.engine import site_driver

pytestmark = pytest.mark.integration

SITE = "vss"
MACHINE = f"{SITE}-pacs-1"
TEMPLATE = "vss-tpl"
PASSWORD_ENV = "PACSINFRA_TEST_VC_PASSWORD_SERVICES"


def provider(sim: Vcsim) -> dict[str, Any]:
    return {"server": sim.server, "user": sim.user, "password": {"env": PASSWORD_ENV},
            "ca_file": str(sim.ca_file), "datacenter": "DC0", "cluster": "DC0_C0"}


def blueprint(sim: Vcsim, host: NetnsHost, root: Path, wheels: Path, receiver: int, *,
              retries: int = 10, key_line: str | None = None) -> str:
    subnet = host.address.rsplit(".", 1)[0] + f".{int(host.address.rsplit('.', 1)[1]) & ~3}"
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: {SITE}}}
provider:
  driver: vsphere
  vsphere:
    server: "{sim.server}"
    user: "{sim.user}"
    password: {{env: {PASSWORD_ENV}}}
    ca_file: "{sim.ca_file}"
    datacenter: DC0
    cluster: DC0_C0
{deploy_block(host, root, wheels, key_line=key_line)}\
images:
  debian12: {{vsphere: {{template: {TEMPLATE}, guest_id: debian10_64Guest}}}}
networks:
  lab: {{purpose: dicom, cidr: {subnet}/30, vsphere: {{portgroup: VSS-LAB}}}}
machines:
  pacs:
    image: debian12
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    nics: [{{network: lab, addresses: [{host.address}]}}]
    services: [archive, router]
{services_block(host, receiver, prefix="VS", retries=retries)}"""


def _template(sim: Vcsim) -> None:
    """A template VM (a 4 GiB disk, one NIC), as an admin would have prepared it."""
    from pacsinfra.drivers.vsphere.driver import VsphereDriver
    from pacsinfra.specs import DiskSpec, MachineSpec, NicSpec, Ownership

    with VsphereDriver(provider(sim)) as d:
        if d.machines.find(TEMPLATE) is not None:
            return
        spec = MachineSpec(address="machine.tpl[0]", name=TEMPLATE, role="tpl", index=0,
                           image={}, cpu_count=1, memory_mib=1024,
                           disks=(DiskSpec("os", 4096, "LocalDS_0"),),
                           nics=(NicSpec("VM Network"),), power_on=False)
        vm = d.machines.vm_of(d.create(spec, Ownership("templates", spec.address, "t")))
        d.client.call("test: mark as template", vm.MarkAsTemplate)


def _vm(sim: Vcsim) -> dict[str, Any] | None:
    """The test VM's name, power state and owner as vcsim reports them (None: absent)."""
    from pacsinfra.drivers.vsphere.driver import VsphereDriver

    with VsphereDriver(provider(sim)) as d:
        for obs in d.machines.list_owned(SITE):
            if obs.spec.name == MACHINE:
                return {"power": obs.power.value, "address": obs.spec.nics[0].address}
    return None


@pytest.fixture
def env(vcsim: Vcsim, standin: NetnsHost, house: Path,  # noqa: F811
        tmp_path: Path) -> Iterator[dict[str, Any]]:
    need_module("pynetdicom")
    os.environ[PASSWORD_ENV] = vcsim.password
    _template(vcsim)
    root = host_root(tmp_path / "guest-root")  # the stand-in's /opt/pacsinfra
    receiver = free_port()
    bp = tmp_path / "site.yaml"
    bp.write_text(blueprint(vcsim, standin, root, house, receiver))
    cli = Cli({PASSWORD_ENV: vcsim.password})
    try:
        yield {"sim": vcsim, "host": standin, "root": root, "house": house, "bp": bp,
               "cli": cli, "receiver": receiver, "state": tmp_path / ".pacsinfra"}
    finally:
        if _vm(vcsim) is not None or (root / "services").exists():
            cli.run("destroy", str(bp), "--auto-approve")
        kill_under(root)
        shutil.rmtree(root, ignore_errors=True)


def test_vsphere_vm_runs_its_services(env: dict[str, Any]) -> None:

    sim, host, root, cli = env["sim"], env["host"], env["root"], env["cli"]
    bp = str(env["bp"])
    started = time.monotonic()
    cli.ok("validate", "validate", "--strict", bp)

    plan = json.loads(cli.ok("plan", "plan", bp, "--json"))
    steps = {s["address"]: s for s in plan["steps"]}
    assert set(steps) == {"network.lab", "machine.pacs[0]", "service.archive[0]",
                          "service.router[0]"}, list(steps)
    assert {s["action"] for s in steps.values()} == {"create"}
    assert_deploy_order([s["address"] for s in plan["steps"]])

    out = cli.ok("apply", "apply", bp, "--auto-approve")
    assert "4 done (4 create)" in out, out
    assert _vm(sim) == {"power": "on", "address": host.address}
    # the services run in the stand-in's namespace, from the venv pacsinfra installed there
    for pid in assert_services_in(root, host).values():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[0].decode() == str(root / "venv" / "bin" / "python"), argv
    router_cfg = (root / "services" / "router" / "config.yaml").read_text()
    assert f"host: {host.address}" in router_cfg and f"bind: {host.address}" in router_cfg
    assert_no_secrets(env["state"], sim.password)

    # the hand-over for dr rebuild: the machine runs, a session reaches its OS
    with site_driver("vsphere", provider(sim), deploy=_deploy(host, root)) as d:
        assert d.machine_running(MACHINE) and not d.machine_running(f"{SITE}-nobody-1")
        res = d.host_session(MACHINE).run(["ip", "-o", "-4", "addr", "show"], 30)
        assert res.rc == 0 and host.address in res.stdout, res

    out = cli.ok("verify", "verify", bp)
    assert "smoke test PASSED" in out, out
    cli.ok("no-op plan", "plan", bp, "--detailed-exitcode")

    # a router setting changes: one in-place update, the archive is not restarted
    pids = {svc: pid_of(root, svc) for svc in ("archive", "router")}
    env["bp"].write_text(blueprint(sim, host, root, env["house"], env["receiver"], retries=4))
    plan = json.loads(cli.ok("plan", "plan", bp, "--json"))
    changing = [(s["address"], s["action"], s["kind"]) for s in plan["steps"]
                if s["action"] != "no-op"]
    assert changing == [("service.router[0]", "update", "IN_PLACE")], changing
    out = cli.ok("update", "apply", bp, "--auto-approve")
    assert "1 done (1 update)" in out, out
    assert pid_of(root, "archive") == pids["archive"]
    assert pid_of(root, "router") != pids["router"]
    cli.ok("no-op plan", "plan", bp, "--detailed-exitcode")

    out = cli.ok("destroy", "destroy", bp, "--auto-approve")
    assert "4 delete" in out, out
    assert_destroy_order(out)
    assert _vm(sim) is None
    assert processes_under(root) == []
    # the services' files are gone, their data kept; the rest of the root is what the VM's
    # disk would have taken with it (the stand-in outlives the VM)
    assert list((root / "services").iterdir()) == [] and (root / "data" / "archive").is_dir()
    print(f"\n{cli.report()}, test {time.monotonic() - started:.1f}s")


def _deploy(host: NetnsHost, root: Path) -> dict[str, Any]:
    """The blueprint's deploy settings, for a site driver of this test's own."""
    return {"user": "root", "key_file": str(host.key_file),
            "host_keys": {"pacs": [host.host_key_line]}, "root": str(root)}


def test_dr_rebuild_onto_a_vsphere_vm(env: dict[str, Any], tmp_path: Path) -> None:
    """``dr rebuild`` with the ``deploy`` login: the VM is made, the backup restored in
    its OS over SSH (the driver's ``host_session``), then the archive and router start.

    Site ``vss`` is applied and verified with ``--keep`` (the smoke study stays in the
    archive), backed up while it runs, destroyed; the stand-in's root is emptied (a new
    VM's disk holds nothing). ``dr rebuild --site dr`` builds ``vss-dr`` on a new VM and
    finds every study of the backup by C-FIND, then verifies."""
    sim, root, cli = env["sim"], env["root"], env["cli"]
    bp = str(env["bp"])
    env["bp"].write_text(env["bp"].read_text() + "sites:\n  dr: {metadata: {name: vss-dr}}\n")
    started = time.monotonic()
    cli.ok("apply", "apply", bp, "--auto-approve")
    cli.ok("verify", "verify", bp, "--keep")
    backup = tmp_path / "backups" / "b1"
    backup.parent.mkdir()
    cli.ok("backup", "backup", "--archive-config", str(root / "services/archive/config.yaml"),
           "--to", str(backup))
    cli.ok("destroy", "destroy", bp, "--auto-approve")
    assert processes_under(root) == []
    shutil.rmtree(root)

    out = cli.ok("dr rebuild", "dr", "rebuild", bp, "--site", "dr", "--from", str(backup),
                 "--auto-approve")
    assert "1/1 studies of the backup found by C-FIND" in out, out
    assert "smoke test PASSED" in out, out
    lines = out.splitlines()
    restored = next(i for i, ln in enumerate(lines) if ln.startswith("restored 1 studies"))
    assert restored < next(i for i, ln in enumerate(lines)
                           if ln.startswith("service.archive[0]: creating")), out
    from pacsinfra.drivers.vsphere.driver import VsphereDriver

    with site_driver("vsphere", provider(sim), deploy=_deploy(env["host"], root)) as d:
        assert d.machine_running("vss-dr-pacs-1")
    with VsphereDriver(provider(sim)) as v:
        assert v.machines.find("vss-dr-pacs-1") is not None
    cli.ok("destroy", "destroy", bp, "--site", "dr", "--auto-approve")
    with VsphereDriver(provider(sim)) as d:
        assert d.machines.find("vss-dr-pacs-1") is None
    assert processes_under(root) == []
    print(f"\n{cli.report()}, test {time.monotonic() - started:.1f}s")
