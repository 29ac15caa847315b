"""Services on Hyper-V VMs (``provider.hyperv.ssh``), from one blueprint through the CLI.

The VM is made by the real driver through real pywinrm over HTTP to the loopback
WS-Management endpoint (``support.wsman_server``), behind which the in-memory Hyper-V
host (``support.hyperv_model``) runs the scripts' JSON contracts. The model runs no
guest, so the VM's operating system is a **stand-in**: an sshd in its own network
namespace whose address the blueprint gives the VM's NIC (:mod:`support.standin`).
pacsinfra reaches "the VM" there with the host key the blueprint pins and deploys an
archive and a router in front of it, inside that namespace. What the stand-in cannot
show: that a real guest configures the address (Hyper-V delivers no guest network
settings: the image must), and that removing the VM removes its disk (the stand-in's
root stays).

Flow: validate -> plan (storage, switch, VM, then the services) -> apply -> ``verify``
through the router -> empty plan -> destroy (services stopped first, then the VM). And a
VM whose pinned key is not the one its sshd presents: the service step fails with both
fingerprints, exit 1, no traceback, nothing deployed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
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
    processes_under,
    services_block,
    standin,
)

need_module("winrm")

from support.host_root import host_root  # noqa: E402
from support.hyperv_model import HypervHost  # noqa: E402
from support.wsman_server import PASSWORD, USER, WsmanServer  # noqa: E402

pytestmark = pytest.mark.integration

SITE = "hvs"
MACHINE = f"{SITE}-pacs-1"
ENV = "PACSINFRA_TEST_HV_PASSWORD_SERVICES"
IMAGE = "C:\\Images\\debian12.vhdx"


def blueprint(port: int, host: NetnsHost, root: Path, wheels: Path, receiver: int, *,
              key_line: str | None = None) -> str:
    last = int(host.address.rsplit(".", 1)[1])
    subnet = f"{host.address.rsplit('.', 1)[0]}.{last & ~3}/30"
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: {SITE}}}
provider:
  driver: hyperv
  hyperv:
    host: 127.0.0.1
    port: {port}
    transport: basic
    user: {USER}
    password: {{env: {ENV}}}
    ssl: false
{deploy_block(host, root, wheels, key_line=key_line)}\
images:
  debian12: {{hyperv: {{vhdx: '{IMAGE}'}}}}
networks:
  lab: {{purpose: dicom, cidr: {subnet}, hyperv: {{switch: HVS-LAB}}}}
storage:
  flash: {{tier: performance, encrypted: true, hyperv: {{path: 'D:\\PACS\\Flash'}}}}
machines:
  pacs:
    image: debian12
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    disks: [{{name: os, size: 8GiB, storage: flash}}]
    nics: [{{network: lab, addresses: [{host.address}]}}]
    services: [archive, router]
{services_block(host, receiver, prefix="HV")}"""


@pytest.fixture
def env(standin: NetnsHost, house: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    need_module("pynetdicom")
    hv = HypervHost(mhz=2600, memory_mib=65536)
    hv.add_image(IMAGE, 4096)
    root = host_root(tmp_path / "guest-root")  # the stand-in's /opt/pacsinfra
    receiver = free_port()
    cli = Cli({ENV: PASSWORD})
    bp = tmp_path / "site.yaml"
    with WsmanServer(hv.run, USER, PASSWORD) as srv:
        port = int(srv.url.split(":")[2].split("/")[0])

        def write(**kw: Any) -> None:
            bp.write_text(blueprint(port, standin, root, house, receiver, **kw))

        write()
        try:
            yield {"hv": hv, "host": standin, "root": root, "bp": bp, "cli": cli,
                   "write": write, "state": tmp_path / ".pacsinfra"}
        finally:
            if hv.vms or (root / "services").exists():
                write()
                cli.run("destroy", str(bp), "--auto-approve")
            kill_under(root)
            shutil.rmtree(root, ignore_errors=True)


def test_hyperv_vm_runs_its_services(env: dict[str, Any]) -> None:
    hv, host, root, cli = env["hv"], env["host"], env["root"], env["cli"]
    bp = str(env["bp"])
    started = time.monotonic()
    cli.ok("validate", "validate", "--strict", bp)
    plan = json.loads(cli.ok("plan", "plan", bp, "--json"))
    order = [s["address"] for s in plan["steps"]]
    assert sorted(order) == ["machine.pacs[0]", "network.lab", "service.archive[0]",
                             "service.router[0]", "storage.flash"], order
    assert_deploy_order(order)

    out = cli.ok("apply", "apply", bp, "--auto-approve")
    assert "5 done (5 create)" in out, out
    assert hv.vm(MACHINE).state == "Running"
    assert_services_in(root, host)
    cfg = (root / "services" / "archive" / "config.yaml").read_text()
    assert f"bind: {host.address}" in cfg and f"data_dir: {root / 'data' / 'archive'}" in cfg
    assert_no_secrets(env["state"], PASSWORD)

    assert "smoke test PASSED" in cli.ok("verify", "verify", bp)
    cli.ok("no-op plan", "plan", bp, "--detailed-exitcode")

    out = cli.ok("destroy", "destroy", bp, "--auto-approve")
    assert "5 delete" in out, out
    assert_destroy_order(out)
    assert hv.vms == {} and processes_under(root) == []
    assert list((root / "services").iterdir()) == []  # data/ kept, as on any host
    print(f"\n{cli.report()}, test {time.monotonic() - started:.1f}s")


def test_a_key_the_vm_does_not_have_is_refused(env: dict[str, Any], tmp_path: Path) -> None:
    """The blueprint pins a key that is not the stand-in's: the service step fails naming
    the machine and both fingerprints; nothing is installed, nothing runs."""
    import subprocess

    from pacsinfra.deploy.ssh import fingerprint, parse_public_key

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    env["write"](key_line=wrong)
    r = env["cli"].run("apply", str(env["bp"]), "--auto-approve")
    text = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in text, text
    assert "HOST KEY MISMATCH" in text and MACHINE in text, text
    assert fingerprint(parse_public_key(env["host"].host_key_line)) in text, text
    assert fingerprint(parse_public_key(wrong)) in text, text
    assert not (env["root"] / "venv").exists() and processes_under(env["root"]) == []
