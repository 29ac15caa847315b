"""The engine (plan / apply / destroy) on the vSphere driver against vcsim, and kill -9 convergence.

The site is built as a LoadedBlueprint-shaped object (the engine reads attributes
and mappings); vcsim runs in its own process, so an apply killed with SIGKILL
leaves the simulator exactly as a real vCenter would be left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import pytest
from vsphere_sim import Vcsim, vcsim, vcsim_binary  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
PASSWORD_ENV = "PACSINFRA_TEST_VC_PASSWORD_ENGINE"


def provider(sim: Vcsim) -> dict[str, Any]:
    return {
        "server": sim.server,
        "user": sim.user,
        "password": {"env": PASSWORD_ENV},
        "ca_file": str(sim.ca_file),
        "datacenter": "DC0",
        "cluster": "DC0_C0",
    }


def site(name: str, vsphere: dict[str, Any], archives: int = 2, workers: int = 0) -> Any:
    """A PACS site: one VLAN port group, one storage policy, archives (anti-affine), workers."""
    vs = dict(vsphere)
    nets = {
        "dicom": NS(purpose="dicom", vlan=110, cidr="10.10.110.0/24", gateway="10.10.110.1", mtu=1500,
                    qos=None, vsphere={"portgroup": f"{name}-dicom"}),
    }
    storage = {
        "flash": NS(tier="performance", encrypted=False, provisioning="thin", iops_limit=None,
                    iops_reservation=None, vsphere={"policy": f"{name} Gold"}),
    }
    archive = NS(
        count=archives, image="debian12",
        cpu=NS(count=2, reservation=1000, shares="high", limit=None),
        memory=NS(size=2048, reservation=2048, lock=False, hugepages=False),
        disks=[NS(name="os", size=4096, storage="flash", mount=None)],
        nics=[NS(network="dicom", addresses=[f"10.10.110.{11 + i}" for i in range(archives)])],
        gpu=None, placement=NS(anti_affinity=True, hosts=[], cluster=None), services=["archive"], holds_data=None,
    )
    machines = {"archive": archive}
    if workers:
        machines["worker"] = NS(
            count=workers, image="debian12", cpu=NS(count=1, reservation=None, shares="low", limit=None),
            memory=NS(size=512, reservation=None, lock=False, hugepages=False), disks=[],
            nics=[NS(network="dicom", addresses=[])], gpu=None, placement=None, services=[], holds_data=None,
        )
    return NS(
        metadata=NS(name=name),
        provider=NS(driver="vsphere", vsphere=vs, model_dump=lambda **kw: {"driver": "vsphere", "vsphere": vs}),
        images={"debian12": NS(vsphere={"guest_id": "debian10_64Guest"})},
        networks=nets, storage=storage, machines=machines,
        services={"archive": NS(kind="archive", config={})},
    )


def blueprint(tmp: Path, s: Any) -> Any:
    path = tmp / "site.yaml"
    path.write_text("# built in the test\n")
    return NS(site=s, path=path, site_name=None, warnings=[])


def engine(tmp: Path, s: Any) -> Any:
    from pacsinfra.apply.engine import Engine

    return Engine(blueprint(tmp, s), tmp / "state.json", lock_timeout=30)


def _vm_names(sim: Vcsim, prefix: str) -> list[str]:
    from pacsinfra.drivers.vsphere.driver import VsphereDriver

    with VsphereDriver(provider(sim)) as d:
        return sorted(p["name"] for _, p in d.machines.all_vms(["name"]) if str(p["name"]).startswith(prefix))


@pytest.fixture
def sim(vcsim: Vcsim) -> Vcsim:  # noqa: F811
    os.environ[PASSWORD_ENV] = vcsim.password
    return vcsim


def test_plan_apply_empty_plan_drift_destroy(sim: Vcsim, tmp_path: Path) -> None:
    from pyVmomi import vim

    from pacsinfra.drivers.vsphere.driver import VsphereDriver

    s = site("eng1", provider(sim), archives=2, workers=2)
    eng = engine(tmp_path, s)
    plan = eng.plan()
    assert {st.action.value for st in plan.changes} == {"create"} and len(plan.changes) == 6
    result = eng.apply(plan, parallelism=4)
    assert result.ok
    again = eng.plan()
    assert not again.has_changes, [(st.key, st.action.value) for st in again.changes]
    assert _vm_names(sim, "eng1-") == ["eng1-archive-1", "eng1-archive-2", "eng1-worker-1", "eng1-worker-2"]

    # drift: memory reservation lowered by hand is planned as an in-place update, then fixed
    with VsphereDriver(provider(sim)) as d:
        vm = d.machines.find("eng1-archive-2")
        d.client.run("by hand", vm.ReconfigVM_Task, spec=vim.vm.ConfigSpec(
            memoryAllocation=vim.ResourceAllocationInfo(reservation=0)))
        assert d.machines.rule_members("eng1-archive") == ["eng1-archive-1", "eng1-archive-2"]
    drift = eng.plan()
    changed = {st.key: st.action.value for st in drift.changes}
    assert changed == {"machine.archive[1]": "update"}, changed
    eng.apply(drift)
    assert not eng.plan().has_changes

    # adoption: the state file is lost, nothing is created twice
    (tmp_path / "state.json").unlink()
    adopt = eng.plan()
    assert {st.action.value for st in adopt.steps} <= {"adopt", "noop"}
    eng.apply(adopt)
    assert not eng.plan().has_changes
    eng.destroy()
    assert _vm_names(sim, "eng1-") == []
    eng.close()


RUNNER = r"""
import json, os, sys
sys.path[:0] = [{here!r}]
from pathlib import Path
import test_vsphere_engine as t
args = json.loads(sys.argv[1])
eng = t.engine(Path(args["tmp"]), t.site(args["name"], args["provider"], archives=args["archives"], workers=args["workers"]))
plan = None if args["destroy"] else eng.plan()
print("started", flush=True)
if args["destroy"]:
    eng.destroy(parallelism=4)
else:
    eng.apply(plan, parallelism=4)
print("finished", flush=True)
"""


# vCenter-like latency, so a kill lands in the middle of creates, power-ons and destroys.
SLOW = "CreateVM_Task=120,PowerOnVM_Task=40,CustomizeVM_Task=40,Destroy_Task=80,PowerOffVM_Task=40"


@pytest.fixture
def slow_sim(vcsim_binary: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]  # noqa: F811
    from vsphere_sim import start

    s = start(vcsim_binary, tmp_path_factory.mktemp("vcsim-slow"), extra=("-method-delay", SLOW))
    os.environ[PASSWORD_ENV] = s.password
    try:
        yield s
    finally:
        s.stop()


def test_kill_9_during_apply_converges(slow_sim: Vcsim, tmp_path: Path) -> None:
    """SIGKILL an apply (or destroy) at random moments; every rerun converges with no duplicates."""
    sim = slow_sim
    rng = random.Random(int(os.environ.get("PACSINFRA_CRASH_SEED", "6")))
    name = "crash"
    expected = sorted([f"{name}-archive-{i}" for i in (1, 2)] + [f"{name}-worker-{i}" for i in range(1, 9)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    killed = 0
    trials = 8
    for trial in range(trials):
        destroy = trial % 2 == 1  # odd trials kill a destroy of the converged site
        if not destroy and trial:
            eng = engine(tmp_path, site(name, provider(sim), archives=2, workers=8))
            eng.destroy(parallelism=4)  # even trials kill an apply that starts from nothing
            eng.close()
        args = {"tmp": str(tmp_path), "name": name, "provider": provider(sim), "archives": 2, "workers": 8,
                "destroy": destroy}
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER.format(here=str(HERE)), json.dumps(args)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("started"), proc.stderr.read() if proc.stderr else line
        time.sleep(rng.uniform(0.05, 0.6))  # the whole apply takes ~1 s with SLOW
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        out, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
        # Requests already sent keep running in vCenter after the client dies (here: at most
        # one delayed call per worker thread); let them land, as an operator's rerun would.
        time.sleep(0.5)
        # converge in a fresh engine: apply, then the plan is empty and the inventory exact
        eng = engine(tmp_path, site(name, provider(sim), archives=2, workers=8))
        eng.apply(eng.plan(), parallelism=4)
        left = eng.plan()
        assert not left.has_changes, [(c.key, c.action.value, c.reason, [(f.name, f.before, f.after) for f in c.fields]) for c in left.changes]
        eng.close()
        assert _vm_names(sim, f"{name}-") == expected, f"trial {trial}"
    assert killed >= trials // 2, f"only {killed} of {trials} kills landed before the run finished"
    eng = engine(tmp_path, site(name, provider(sim), archives=2, workers=8))
    eng.destroy()
    eng.close()
    assert _vm_names(sim, f"{name}-") == []


BLUEPRINT = """\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: cli-site}}
provider:
  driver: vsphere
  vsphere:
    server: "{server}"
    user: "{user}"
    password: {{env: {env}}}
    ca_file: "{ca}"
    datacenter: DC0
    cluster: DC0_C0
    vgpu_profiles: [grid_a40-8q]
images:
  debian12:
    vsphere: {{template: cli-tpl, guest_id: debian10_64Guest}}
networks:
  dicom:
    purpose: dicom
    vlan: 110
    cidr: 10.10.110.0/24
    gateway: 10.10.110.1
    vsphere: {{portgroup: CLI-DICOM}}
storage:
  flash:
    tier: performance
    encrypted: true
    provisioning: thin
    iops_limit: 20000
    vsphere: {{policy: CLI Gold}}
machines:
  archive:
    count: 2
    image: debian12
    cpu: {{count: 2, reservation: 2GHz, shares: high}}
    memory: {{size: 4GiB, reservation: 4GiB}}
    disks:
      - {{name: os, size: 8GiB, storage: flash}}
    nics:
      - {{network: dicom, addresses: [10.10.110.11, 10.10.110.12]}}
    placement: {{anti_affinity: true}}
    services: [archive]
  viewer:
    count: 1
    image: debian12
    cpu: {{count: 4}}
    memory: {{size: 8GiB, reservation: 8GiB}}
    nics:
      - {{network: dicom}}
    gpu: {{mode: vgpu, profile: grid_a40-8q, count: 1}}
services:
  archive: {{kind: archive, config: {{ae_title: ARCHIVE}}}}
"""


def _template(sim: Vcsim, name: str) -> None:
    """A template VM with a 4 GiB disk and one NIC, as an admin would have prepared it."""
    from pacsinfra.drivers.vsphere.driver import VsphereDriver
    from pacsinfra.specs import DiskSpec, MachineSpec, NicSpec, Ownership

    with VsphereDriver(provider(sim)) as d:
        spec = MachineSpec(address="machine.tpl[0]", name=name, role="tpl", index=0, image={}, cpu_count=1,
                           memory_mib=1024, disks=(DiskSpec("os", 4096, "LocalDS_0"),),
                           nics=(NicSpec("VM Network"),), power_on=False)
        vm = d.machines.vm_of(d.create(spec, Ownership(site="templates", address=spec.address, lineage="t")))
        d.client.call("test: mark as template", vm.MarkAsTemplate)


def test_cli_plan_apply_plan_with_a_yaml_blueprint(sim: Vcsim, tmp_path: Path) -> None:
    """The real loader and CLI, in a subprocess, against vcsim: apply, then the plan is empty."""
    _template(sim, "cli-tpl")
    bp = tmp_path / "site.yaml"
    bp.write_text(BLUEPRINT.format(server=sim.server, user=sim.user, env=PASSWORD_ENV, ca=sim.ca_file))
    state = tmp_path / "state.json"
    env = {**os.environ, PASSWORD_ENV: sim.password}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=env, capture_output=True,
                              text=True, timeout=300)

    first = cli("plan", str(bp), "--state", str(state), "--detailed-exitcode")
    assert first.returncode == 2, first.stdout + first.stderr
    assert "machine.viewer[0]" in first.stdout and sim.password not in first.stdout + first.stderr
    applied = cli("apply", str(bp), "--state", str(state), "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    again = cli("plan", str(bp), "--state", str(state), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sim.password not in state.read_text()
    assert _vm_names(sim, "cli-site-") == ["cli-site-archive-1", "cli-site-archive-2", "cli-site-viewer-1"]
    gone = cli("destroy", str(bp), "--state", str(state), "--auto-approve")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert _vm_names(sim, "cli-site-") == []
