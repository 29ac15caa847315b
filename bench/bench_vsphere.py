"""Benchmark: 50 machines on vcsim, pacsinfra vs Ansible's community.vmware.vmware_guest, side by side.

    .venv/bin/python bench/bench_vsphere.py [--machines 50] [--parallelism 10] [--delay-ms 0]

One simulator (tools/vcsim, built on demand) serves both tools in one run, with
different VM names. Ansible runs first (so pacsinfra faces the larger
inventory), as one play over N inventory hosts with ``connection: local`` and
``forks`` = parallelism: the fastest idiomatic way to get N VMs from
vmware_guest. pacsinfra runs plan + apply through the engine with the same
parallelism. Then each tool's no-op run: pacsinfra's plan of the applied site,
and Ansible's second run of the same playbook. ``--delay-ms`` adds a per-call
SOAP latency (a remote vCenter) to both.

Needs: ``pip install -e '.[bench]'`` (the ``ansible`` package ships community.vmware);
``make bench`` installs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "tests")]

import vsphere_sim  # noqa: E402


def _site(n: int, vsphere: dict[str, object]) -> object:
    from types import SimpleNamespace as NS

    node = NS(
        count=n, image="linux", cpu=NS(count=2, reservation=None, shares=None, limit=None),
        memory=NS(size=2048, reservation=None, lock=False, hugepages=False),
        disks=[NS(name="os", size=4096, storage="local", mount=None)],
        nics=[NS(network="lan", addresses=[])], gpu=None, placement=None, services=[], holds_data=False,
    )
    return NS(
        metadata=NS(name="pi"),
        provider=NS(driver="vsphere", vsphere=vsphere, model_dump=lambda **kw: {"driver": "vsphere", "vsphere": vsphere}),
        images={"linux": NS(vsphere={"guest_id": "otherLinux64Guest"})},
        networks={"lan": NS(purpose="lan", vlan=10, cidr=None, gateway=None, mtu=1500, qos=None,
                            vsphere={"portgroup": "pi-lan"})},
        storage={},
        machines={"node": node},
        services={},
    )


def run_pacsinfra(sim: vsphere_sim.Vcsim, tmp: Path, n: int, parallelism: int) -> tuple[float, float, int]:
    """(apply wall time incl. plan, no-op plan time, VMs created)."""
    from types import SimpleNamespace as NS

    from pacsinfra.apply.engine import Engine

    os.environ["BENCH_VC_PASSWORD"] = sim.password
    vs = {"server": sim.server, "user": sim.user, "password": {"env": "BENCH_VC_PASSWORD"},
          "ca_file": str(sim.ca_file), "datacenter": "DC0", "cluster": "DC0_C0", "cloud_init": False}
    site = _site(n, vs)
    # the storage class "local" is the datastore itself (no policy): disks name it directly
    site.machines["node"].disks[0].storage = "local"  # type: ignore[attr-defined]
    site.storage = {"local": NS(tier="local", encrypted=False, provisioning="thin", iops_limit=None,  # type: ignore[attr-defined]
                                iops_reservation=None, vsphere={"policy": "pi-local"})}
    bp = tmp / "site.yaml"
    bp.write_text("# bench\n")
    t0 = time.perf_counter()
    with Engine(NS(site=site, path=bp, site_name=None, warnings=[]), tmp / "state.json") as eng:
        result = eng.apply(eng.plan(), parallelism=parallelism)
        took = time.perf_counter() - t0
        assert result.ok
        t1 = time.perf_counter()
        again = eng.plan()
        noop = time.perf_counter() - t1
        assert not again.has_changes, [c.key for c in again.changes]
        made = sum(1 for o in eng.driver.list_owned("pi") if o.spec.address.startswith("machine."))
    return took, noop, made


PLAYBOOK = """\
- hosts: vms
  connection: local
  gather_facts: false
  tasks:
    - name: the VM
      community.vmware.vmware_guest:
        hostname: "127.0.0.1"
        port: {port}
        username: "{user}"
        password: "{{{{ lookup('env', 'BENCH_VC_PASSWORD') }}}}"
        validate_certs: false
        datacenter: DC0
        cluster: DC0_C0
        folder: /DC0/vm
        name: "{{{{ inventory_hostname }}}}"
        state: poweredon
        guest_id: otherLinux64Guest
        hardware: {{num_cpus: 2, memory_mb: 2048}}
        disk: [{{size_mb: 4096, type: thin, datastore: LocalDS_0}}]
        networks: [{{name: "VM Network"}}]
"""


def run_ansible(sim: vsphere_sim.Vcsim, tmp: Path, n: int, forks: int) -> tuple[float, float, int]:
    """(first run wall time, second (no-op) run wall time, VMs reported changed on the first run)."""
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or shutil.which(
        "ansible-playbook"
    )
    if playbook is None:
        raise SystemExit("ansible-playbook not found: pip install ansible (ships community.vmware)")
    inv = tmp / "inventory.ini"
    inv.write_text("[vms]\n" + "".join(f"an-node-{i} ansible_python_interpreter={sys.executable}\n" for i in range(1, n + 1)))
    book = tmp / "play.yml"
    book.write_text(PLAYBOOK.format(port=sim.port, user=sim.user))
    env = {**os.environ, "BENCH_VC_PASSWORD": sim.password, "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ans-tmp"), "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_PYTHON_INTERPRETER": sys.executable}

    def once() -> tuple[float, str]:
        t0 = time.perf_counter()
        proc = subprocess.run([playbook, "-i", str(inv), "-f", str(forks), str(book)], env=env,
                              capture_output=True, text=True, timeout=3600)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"ansible-playbook failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
        return took, proc.stdout

    first, out = once()
    changed = out.count("changed: [an-node-")
    second, _ = once()
    return first, second, changed


def need_community_vmware() -> None:
    """Stop with what to install when the peer's Ansible collection is missing (a run
    without its peer is not this benchmark)."""
    galaxy = shutil.which("ansible-galaxy", path=str(Path(sys.executable).parent)) or shutil.which(
        "ansible-galaxy")
    found = ""
    if galaxy:
        found = subprocess.run([galaxy, "collection", "list", "community.vmware", "--format", "json"],
                               capture_output=True, text=True, timeout=120).stdout
    if "community.vmware" not in found:
        raise SystemExit("Ansible's community.vmware collection, the peer this benchmark compares "
                         "with, is not installed: make bench installs it (pip install -e '.[bench]')")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machines", type=int, default=50)
    ap.add_argument("--parallelism", type=int, default=10)
    ap.add_argument("--delay-ms", type=int, default=0, help="SOAP latency per call (a remote vCenter)")
    args = ap.parse_args()
    need_community_vmware()
    binary = vsphere_sim.build()
    with tempfile.TemporaryDirectory(prefix="bench-vsphere-") as d:
        tmp = Path(d)
        extra = ("-delay", str(args.delay_ms)) if args.delay_ms else ()
        sim = vsphere_sim.start(binary, tmp, extra=extra)
        try:
            (tmp / "an").mkdir()
            (tmp / "pi").mkdir()
            a_first, a_second, a_changed = run_ansible(sim, tmp / "an", args.machines, args.parallelism)
            p_apply, p_noop, p_made = run_pacsinfra(sim, tmp / "pi", args.machines, args.parallelism)
        finally:
            sim.stop()
    n = args.machines
    print(f"\nvSphere (vcsim, govmomi 0.24), {n} machines, parallelism/forks {args.parallelism}, "
          f"latency {args.delay_ms} ms/call\n")
    print(f"{'tool':<44} {'create N':>10} {'no-op':>9} {'VMs':>5}")
    print(f"{'pacsinfra (plan + apply, engine)':<44} {p_apply:>9.2f}s {p_noop:>8.2f}s {p_made:>5}")
    print(f"{'ansible community.vmware.vmware_guest':<44} {a_first:>9.2f}s {a_second:>8.2f}s {a_changed:>5}")
    print(f"\nratio ansible / pacsinfra: create {a_first / p_apply:.1f}x, no-op {a_second / p_noop:.1f}x "
          f"(target >= 3x on create)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
