"""The engine against the real KVM driver on libvirt's test:///default.

test:///default keeps its objects only inside the process that opened it, so the
CLI runs in-process (``pacsinfra.cli.main``) and a fixture holds a connection open.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from conftest import need, need_binary, need_module

IMAGE = "/var/lib/libvirt/images/pacsinfra-test.qcow2"


def site_yaml(
    name: str,
    *,
    uri: str = "test:///default",
    archives: int = 2,
    viewers: int = 1,
    workers: int = 0,
    memory: str = "4GiB",
    extra_roles: str = "",
    provider_extra: str = "",
) -> str:
    """A small PACS site: two networks, one storage class, archives, viewers, optional workers."""
    addrs = ", ".join(f"10.10.110.{11 + i}" for i in range(archives))
    workers_yaml = (
        f"""
  worker:
    count: {workers}
    image: debian12
    cpu: {{count: 1, shares: low}}
    memory: {{size: 512MiB}}
    nics:
      - {{network: management}}
"""
        if workers
        else ""
    )
    viewers_yaml = (
        f"""
  viewer:
    count: {viewers}
    image: debian12
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    nics:
      - {{network: management}}
    services: [viewer]
"""
        if viewers
        else ""
    )
    viewer_service = "  viewer:\n    kind: viewer\n    config: {}\n" if viewers else ""
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata:
  name: {name}
provider:
  driver: kvm
  kvm:
    uri: "{uri}"
{provider_extra}
images:
  debian12:
    kvm: {{path: {IMAGE}}}
  broken:
    kvm: {{volume: no-such-image.qcow2, pool: default-pool}}
networks:
  dicom:
    purpose: dicom
    cidr: 10.10.110.0/24
    gateway: 10.10.110.1
    mtu: 9000
  management:
    purpose: management
    cidr: 10.10.1.0/24
storage:
  flash:
    tier: performance
    provisioning: thin
    encrypted: true
machines:
  archive:
    count: {archives}
    image: debian12
    cpu: {{count: 2, shares: high}}
    memory: {{size: {memory}}}
    disks:
      - {{name: os, size: 10GiB, storage: flash}}
    nics:
      - {{network: dicom, addresses: [{addrs}]}}
      - {{network: management}}
    services: [archive]
{viewers_yaml}{workers_yaml}{extra_roles}
services:
  archive:
    kind: archive
    config:
      ae_title: ARCHIVE
      dicomweb:
        bind: 0.0.0.0
        tokens: [{{name: viewer, scopes: [read], token: {{env: ENG_VIEWER_TOKEN}}}}]
{viewer_service}"""


def unique_site(prefix: str = "eng") -> str:
    """Site names are unique per test: test:///default is shared by everything in the process."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def write_blueprint(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(path: Path, **kw: Any) -> Any:
    from pacsinfra.blueprint import load_blueprint

    return load_blueprint(path, **kw)


@pytest.fixture
def conn() -> Any:
    """A connection to libvirt's test:///default, held for the test (keeps its state alive)."""
    need_module("libvirt")
    # the KVM driver builds a cloud-init seed ISO per machine (cloud_init defaults to on)
    need(bool(shutil.which("genisoimage") or shutil.which("xorriso")), "genisoimage or xorriso")
    import libvirt

    c = libvirt.open("test:///default")
    yield c
    c.close()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``pacsinfra ARGS`` in this process (test:///default is per process); (code, out, err)."""
    from pacsinfra.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def owned_domains(conn: Any, site: str) -> list[str]:
    """Names of the domains named for ``site`` (``<site>-...``)."""
    return sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(site + "-"))


pytestmark = pytest.mark.integration


@pytest.fixture
def site(tmp_path: Path, conn: Any) -> tuple[str, Path]:
    """A fresh site name and its blueprint file."""
    name = unique_site()
    return name, write_blueprint(tmp_path, site_yaml(name))


def _redefine(conn: Any, name: str, edit: Any) -> None:
    """Change a domain behind pacsinfra's back: power it off, edit its XML, define it again."""
    import libvirt

    dom = conn.lookupByName(name)
    if dom.isActive():
        dom.destroy()
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    conn.defineXML(edit(xml))


def _drop_management_nic(xml: str) -> str:
    root = ET.fromstring(xml)
    devices = root.find("devices")
    assert devices is not None
    for iface in devices.findall("interface"):
        src = iface.find("source")
        if src is not None and str(src.get("network", "")).endswith("-management"):
            devices.remove(iface)
    return ET.tostring(root, encoding="unicode")


def test_plan_apply_plan_is_empty_via_cli(site: tuple[str, Path], conn: Any, capsys: Any) -> None:
    name, bp = site
    code, out, err = run_cli(capsys, "plan", str(bp), "--detailed-exitcode")
    assert code == 2, err
    assert f"+ machine.archive[0] ({name}-archive-1): create" in out
    assert "Plan: 6 to add, 0 to change, 0 to destroy." in out
    # no terminal, no --auto-approve: refused, nothing created
    code, out, err = run_cli(capsys, "apply", str(bp))
    assert code == 2 and "--auto-approve" in err
    assert owned_domains(conn, name) == []
    code, out, err = run_cli(capsys, "apply", str(bp), "--auto-approve", "--parallelism", "1")
    assert code == 0, err
    assert "Apply complete: 6 done (6 create), 0 failed, 0 skipped" in out
    assert owned_domains(conn, name) == [
        f"{name}-archive-1",
        f"{name}-archive-2",
        f"{name}-viewer-1",
    ]
    code, out, err = run_cli(capsys, "plan", str(bp), "--detailed-exitcode")
    assert code == 0, out + err
    assert "No changes." in out
    state_file = bp.parent / ".pacsinfra" / f"{name}.state.json"
    assert state_file.exists()
    code, out, _ = run_cli(capsys, "show", str(bp), "--json")
    shown = json.loads(out)
    assert shown["serial"] == 6 and len(shown["resources"]) == 6
    code, out, _ = run_cli(capsys, "state", "list", "--state", str(state_file))
    assert out.split() == sorted(r["address"] for r in shown["resources"])


def test_drift_is_planned_and_repaired(site: tuple[str, Path], conn: Any, capsys: Any) -> None:
    name, bp = site
    assert run_cli(capsys, "apply", str(bp), "--auto-approve")[0] == 0
    _redefine(
        conn,
        f"{name}-archive-1",
        lambda x: re.sub(r"<(memory|currentMemory) unit='KiB'>\d+<", r"<\1 unit='KiB'>2097152<", x),
    )
    _redefine(conn, f"{name}-archive-2", _drop_management_nic)
    dom = conn.lookupByName(f"{name}-viewer-1")
    if dom.isActive():
        dom.destroy()
    dom.undefine()
    code, out, err = run_cli(capsys, "plan", str(bp), "--detailed-exitcode")
    assert code == 2, err
    assert f"~ machine.archive[0] ({name}-archive-1): update" in out
    assert "memory_mib: 2048 -> 4096" in out
    assert f"machine.archive[1] ({name}-archive-2)" in out and "nics" in out
    assert f"+ machine.viewer[0] ({name}-viewer-1): create" in out
    assert run_cli(capsys, "apply", str(bp), "--auto-approve")[0] == 0
    code, out, _ = run_cli(capsys, "plan", str(bp), "--detailed-exitcode")
    assert code == 0, out


def test_adoption_after_the_state_file_is_lost(
    site: tuple[str, Path], conn: Any, capsys: Any
) -> None:
    name, bp = site
    assert run_cli(capsys, "apply", str(bp), "--auto-approve")[0] == 0
    uuids = {d.name(): d.UUIDString() for d in conn.listAllDomains() if d.name().startswith(name)}
    (bp.parent / ".pacsinfra" / f"{name}.state.json").unlink()
    code, out, _ = run_cli(capsys, "plan", str(bp))
    assert "6 to adopt" in out and "to add" in out and "Plan: 0 to add" in out
    assert run_cli(capsys, "apply", str(bp), "--auto-approve")[0] == 0
    assert {
        d.name(): d.UUIDString() for d in conn.listAllDomains() if d.name().startswith(name)
    } == uuids
    assert run_cli(capsys, "plan", str(bp), "--detailed-exitcode")[0] == 0


def test_unmarked_object_with_a_desired_name_is_never_touched(
    tmp_path: Path, conn: Any, capsys: Any
) -> None:
    name = unique_site()
    bp = write_blueprint(tmp_path, site_yaml(name))
    conn.networkDefineXML(f"<network><name>{name}-dicom</name></network>")
    try:
        code, _, err = run_cli(capsys, "plan", str(bp))
        assert code == 1
        assert f"{name}-dicom" in err and "no pacsinfra mark" in err
    finally:
        conn.networkLookupByName(f"{name}-dicom").undefine()


def test_destroy_removes_everything_it_owns(site: tuple[str, Path], conn: Any, capsys: Any) -> None:
    name, bp = site
    assert run_cli(capsys, "apply", str(bp), "--auto-approve")[0] == 0
    code, out, err = run_cli(capsys, "destroy", str(bp), "--auto-approve")
    assert code == 0, err
    assert "Plan: 0 to add, 0 to change, 6 to destroy." in out
    assert owned_domains(conn, name) == []
    assert not [n.name() for n in conn.listAllNetworks() if n.name().startswith(name)]
    assert not [p.name() for p in conn.listAllStoragePools() if p.name().startswith(name)]
    code, out, _ = run_cli(capsys, "show", str(bp), "--json")
    assert json.loads(out)["resources"] == []


def test_a_failed_step_does_not_stop_independent_ones(
    tmp_path: Path, conn: Any, capsys: Any
) -> None:
    name = unique_site()
    broken = """
  broken:
    count: 1
    image: broken
    cpu: {count: 1}
    memory: {size: 512MiB}
    disks:
      - {name: os, size: 1GiB, storage: flash}
    nics:
      - {network: management}
"""
    bp = write_blueprint(tmp_path, site_yaml(name, extra_roles=broken))
    code, out, err = run_cli(capsys, "apply", str(bp), "--auto-approve", "--json")
    assert code == 1
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    fails = [e for e in events if e["event"] == "fail"]
    assert [e["address"] for e in fails] == ["machine.broken[0]"]
    assert "no-such-image.qcow2" in fails[0]["message"]
    assert "nothing left behind" in fails[0]["cleanup"]
    done = {e["address"] for e in events if e["event"] == "done"}
    assert len(done) == 6 and "machine.archive[1]" in done
    assert "1 failed" in err
    assert f"{name}-broken-1" not in owned_domains(conn, name)
    # fix the blueprint: the rerun converges without touching what completed
    bp.write_text(bp.read_text().replace("image: broken", "image: debian12"))
    code, out, err = run_cli(capsys, "apply", str(bp), "--auto-approve")
    assert code == 0, err
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in out
    assert run_cli(capsys, "plan", str(bp), "--detailed-exitcode")[0] == 0


def test_saved_plan_and_stale_plan(
    site: tuple[str, Path], conn: Any, capsys: Any, tmp_path: Path
) -> None:
    name, bp = site
    plan_file = tmp_path / "plan.json"
    assert run_cli(capsys, "plan", str(bp), "--out", str(plan_file))[0] == 0
    code, out, err = run_cli(capsys, "apply", str(plan_file))
    assert code == 0, err
    assert len(owned_domains(conn, name)) == 3
    code, out, err = run_cli(capsys, "apply", str(plan_file))
    assert code == 2 and "state changed since this plan was made" in err


def test_no_secret_reaches_plan_or_state(
    tmp_path: Path, conn: Any, capsys: Any, monkeypatch: Any
) -> None:
    name = unique_site()
    monkeypatch.setenv("ENGINE_TEST_VSPHERE_PW", "pw-must-not-leak-4711")
    extra = "  vsphere: {server: vc.example, user: admin, password: {env: ENGINE_TEST_VSPHERE_PW}}"
    bp = write_blueprint(tmp_path, site_yaml(name, provider_extra=extra))
    plan_file = tmp_path / "plan.json"
    assert run_cli(capsys, "plan", str(bp), "--out", str(plan_file))[0] == 0
    assert run_cli(capsys, "apply", str(plan_file))[0] == 0
    for f in (plan_file, bp.parent / ".pacsinfra" / f"{name}.state.json"):
        assert "pw-must-not-leak-4711" not in f.read_text()
    assert "ENGINE_TEST_VSPHERE_PW" in plan_file.read_text()  # the reference, not the value


def test_lock_held_by_another_process(site: tuple[str, Path], conn: Any, capsys: Any) -> None:
    name, bp = site
    state_file = bp.parent / ".pacsinfra" / f"{name}.state.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("locked")
        code, out, err = run_cli(
            capsys, "apply", str(bp), "--auto-approve", "--lock-timeout", "0.5"
        )
        assert code == 1
        assert f"pid {holder.pid}" in err and "operation apply" in err
        assert owned_domains(conn, name) == []
        lock_id = json.loads(state_file.with_name(state_file.name + ".lock").read_text())["id"]
        assert lock_id in err
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(capsys, "apply", str(bp), "--auto-approve", "--lock-timeout", "5")[0] == 0


HOLD_LOCK = """
import sys, time
from pacsinfra.state.local import LocalStateStore
with LocalStateStore(sys.argv[1]).lock("apply"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_parallel_apply_of_200_machines(tmp_path: Path, conn: Any) -> None:
    from pacsinfra.apply.engine import Engine
    from pacsinfra.drivers.kvm.driver import KvmDriver

    name = unique_site()
    bp = load(write_blueprint(tmp_path, site_yaml(name, archives=2, viewers=0, workers=198)))
    eng = Engine(bp, tmp_path / "state.json", KvmDriver({"uri": "test:///default"}, client=conn))
    plan = eng.plan()
    assert plan.counts()["add"] == 203
    t0 = time.monotonic()
    result = eng.apply(plan, parallelism=10)
    took = time.monotonic() - t0
    assert result.ok and len(result.by_status("done")) == 203
    assert len(owned_domains(conn, name)) == 200
    assert not eng.plan().has_changes
    assert took < 60, took
    eng.destroy(parallelism=10)
    assert owned_domains(conn, name) == []


def test_graph_formats(site: tuple[str, Path], capsys: Any, tmp_path: Path) -> None:
    name, bp = site
    code, out, _ = run_cli(capsys, "graph", str(bp), "--format", "dot")
    assert code == 0
    assert "machine_archive_0_ -> network_dicom" in out and "10.10.110.11" in out
    assert "external_modalities -> service_archive" in out
    code, out, _ = run_cli(capsys, "graph", str(bp), "--format", "mermaid")
    assert code == 0 and out.startswith("flowchart LR") and "==>" in out
    need_binary("dot")
    svg = tmp_path / "g.svg"
    assert run_cli(capsys, "graph", str(bp), "--format", "svg", "--out", str(svg))[0] == 0
    text = html.unescape(svg.read_text())
    assert "<svg" in text and f"{name}-archive-1" in text and "10.10.110.12" in text


def test_refresh_state_rm_and_force_unlock(site: tuple[str, Path], conn: Any, capsys: Any) -> None:
    name, bp = site
    state_file = bp.parent / ".pacsinfra" / f"{name}.state.json"
    assert run_cli(capsys, "apply", str(bp), "--auto-approve")[0] == 0
    dom = conn.lookupByName(f"{name}-viewer-1")
    dom.destroy()
    dom.undefine()
    code, out, err = run_cli(capsys, "refresh", str(bp))
    assert code == 0, err
    assert "machine.viewer[0]: gone from the hypervisor, removed from state" in out
    assert "machine.viewer[0]" not in run_cli(capsys, "state", "list", str(bp))[1]
    # state rm forgets a record; the object keeps its mark, so the next plan adopts it
    code, out, err = run_cli(
        capsys, "state", "rm", "machine.archive[1]", "--state", str(state_file)
    )
    assert code == 0, err
    code, out, _ = run_cli(capsys, "plan", str(bp))
    assert f"= machine.archive[1] ({name}-archive-2): adopt" in out
    assert f"+ machine.viewer[0] ({name}-viewer-1): create" in out
    # force-unlock: a lock whose holder hangs
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("locked")
        lock_id = json.loads(state_file.with_name(state_file.name + ".lock").read_text())["id"]
        code, _, err = run_cli(capsys, "force-unlock", "wrong-id", "--state", str(state_file))
        assert code == 1 and "does not match" in err
        code, out, err = run_cli(capsys, "force-unlock", lock_id, "--state", str(state_file))
        assert code == 0 and f"pid {holder.pid}" in out
        assert run_cli(capsys, "apply", str(bp), "--auto-approve")[0] == 0
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(capsys, "plan", str(bp), "--detailed-exitcode")[0] == 0


def test_confirmation_on_a_terminal(site: tuple[str, Path], conn: Any, monkeypatch: Any) -> None:
    from click.testing import CliRunner

    from pacsinfra.cli import cli, engine_cmds

    name, bp = site
    monkeypatch.setattr(engine_cmds, "_interactive", lambda: True)
    runner = CliRunner()
    res = runner.invoke(cli, ["apply", str(bp)], input="no\n")
    assert res.exit_code == 1 and "Only 'yes' will be accepted" in res.output
    assert owned_domains(conn, name) == []
    res = runner.invoke(cli, ["apply", str(bp)], input="yes\n")
    assert res.exit_code == 0, res.output
    assert len(owned_domains(conn, name)) == 3
    res = runner.invoke(cli, ["destroy", str(bp)], input="\n")
    assert res.exit_code == 1 and len(owned_domains(conn, name)) == 3
