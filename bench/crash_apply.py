#!/usr/bin/env python3
"""Crash test: kill -9 apply (and destroy) at random moments; every rerun must converge.

The hypervisor is real embedded QEMU (``qemu:///embed?root=DIR``), which keeps its
domains in DIR across processes, so a killed process leaves exactly what a
crashed pacsinfra would leave. Domains are defined, not started (TCG boots would
only burn the two cores); disks are real qcow2 files made by the KVM driver.

Each trial:
  1. start ``apply`` from nothing (or, one trial in four, ``destroy`` from
     everything) in a child process and SIGKILL it after a random number of
     state writes plus a random fraction of a step (so the kill lands inside a
     driver call or a state write, whatever the machine's load);
  2. rerun ``apply`` to completion in a fresh process;
  3. check, in a third process: the state file parses and lists exactly the
     blueprint's addresses; the hypervisor holds exactly the blueprint's domains
     (no duplicate, none missing), each with this site's mark; no disk file is
     left that no domain uses (no orphan); a new plan is empty.

Usage: crash_apply.py [--trials 20] [--machines 6] [--disks 1] [--parallelism 3]
                      [--budget 170] [--seed N] [--fail-fast] [--keep]
Prints a table; exits 1 if any trial did not converge.

``--scenario leftover`` kills at one exact moment instead: a site of one machine is
scaled to two, and the apply is killed as soon as the new machine's first volume file
exists (before its domain is defined). Then a scale-down back to one machine, and
(killed the same way again) a destroy, must each succeed and leave no volume behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QEMU_CONF = """\
user = "root"
group = "root"
security_driver = "none"
namespaces = []
stdio_handler = "file"
cgroup_controllers = ["cpu", "cpuacct"]
"""


def blueprint_text(root: Path, machines: int, disks: int = 1) -> str:
    """A site of ``machines`` domains with ``disks`` qcow2 disks each, on a file pool under ``root``.

    With ``disks=0`` the site has no storage class at all: domains only.
    """
    disk_list = ", ".join(f"{{name: d{i}, size: 1GiB, storage: flash}}" for i in range(disks))
    storage = "storage:\n  flash:\n    tier: performance\n    provisioning: thin\n" if disks else ""
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata:
  name: crash
provider:
  driver: kvm
  kvm:
    uri: "qemu:///embed?root={root}"
    cloud_init: false
images:
  base:
    kvm: {{path: {root}/images/base.qcow2}}
{storage}machines:
  node:
    count: {machines}
    image: base
    cpu: {{count: 1}}
    memory: {{size: 64MiB}}
    disks: [{disk_list}]
    holds_data: false
"""


# -- the child process -----------------------------------------------------------------------


def _engine(blueprint: Path, state: Path) -> Any:
    import dataclasses

    from pacsinfra.apply.engine import Engine
    from pacsinfra.blueprint import load_blueprint
    from pacsinfra.plan.desired import Resource
    from pacsinfra.specs import MachineSpec

    eng = Engine(load_blueprint(blueprint), state)
    assert eng.desired is not None
    for addr, res in list(eng.desired.resources.items()):
        if isinstance(res.spec, MachineSpec):  # defined, not booted: see the module docstring
            spec = dataclasses.replace(res.spec, power_on=False)
            eng.desired.resources[addr] = Resource(spec, res.depends_on)
    return eng


def worker(op: str, blueprint: Path, state: Path, parallelism: int) -> int:
    """Run one operation; print 'working' just before the hypervisor is touched."""
    from pacsinfra.apply.executor import ApplyFailed

    eng = _engine(blueprint, state)
    with eng:
        if op == "verify":
            print(json.dumps(verify(eng, blueprint)), flush=True)
            return 0
        plan = eng.plan(destroy=(op == "destroy"))
        print("working", flush=True)
        t0 = time.monotonic()
        try:
            eng.apply(plan, parallelism=parallelism)
        except ApplyFailed as exc:
            print(exc.result.summary(), file=sys.stderr)
            return 1
        print(f"done {time.monotonic() - t0:.3f}", flush=True)
    return 0


def verify(eng: Any, blueprint: Path) -> dict[str, Any]:
    """What converged means, checked against the hypervisor, the pool directory and the state."""
    from xml.etree import ElementTree as ET

    problems: list[str] = []
    desired = {a: r.spec for a, r in eng.desired.resources.items()}
    state = eng.store.read()  # raises if corrupt
    if state is None:
        problems.append("no state file")
    elif set(state.resources) != set(desired):
        problems.append(f"state lists {sorted(state.resources)}, blueprint {sorted(desired)}")
    driver = eng.driver.provider  # the kvm driver under the site driver
    owned = driver.list_owned(eng.site)
    left = [o.spec.name for o in owned if o.leftover]
    if left:
        problems.append(f"leftovers of interrupted creates remain: {left}")
    addrs = [o.owner.address for o in owned if o.owner and not o.leftover]
    if sorted(addrs) != sorted(desired):
        problems.append(f"hypervisor holds {sorted(addrs)} (duplicates or missing)")
    conn = driver.lc.conn if hasattr(driver.lc, "conn") else None
    used: set[str] = set()
    domains: list[str] = []
    if conn is not None:
        for dom in conn.listAllDomains():
            domains.append(dom.name())
            root = ET.fromstring(dom.XMLDesc(0))
            for src in root.iter("source"):
                if src.get("file"):
                    used.add(os.path.realpath(str(src.get("file"))))
    want_domains = sorted(s.name for s in desired.values() if type(s).__name__ == "MachineSpec")
    if sorted(domains) != want_domains:
        problems.append(f"domains {sorted(domains)} != {want_domains}")
    pool_dir = blueprint.parent / "root" / "pools" / "crash-flash"
    files = sorted(p for p in pool_dir.glob("*") if p.is_file()) if pool_dir.exists() else []
    orphans = [
        p.name
        for p in files
        if os.path.realpath(p) not in used
        and not p.name.startswith(".")
        and "pacsinfra" not in p.name
    ]
    if orphans:
        problems.append(f"orphan files in the pool: {orphans}")
    making = [p.name for p in files if p.name.startswith(".pacsinfra-making.")]
    if making:
        problems.append(f"making markers left in the pool: {making}")
    plan = eng.plan()
    if plan.has_changes:
        problems.append(f"plan after rerun not empty: {plan.summary()}")
    return {"ok": not problems, "problems": problems, "serial": state.serial if state else None}


# -- the parent -------------------------------------------------------------------------------


def _spawn(op: str, bp: Path, state: Path, parallelism: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--worker",
            op,
            "--blueprint",
            str(bp),
            "--state",
            str(state),
            "--parallelism",
            str(parallelism),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(
    op: str, bp: Path, state: Path, parallelism: int, timeout: float = 120
) -> tuple[int, str, str]:
    proc = _spawn(op, bp, state, parallelism)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _serial(state: Path) -> int:
    """The state file's serial (0 when absent); the file is replaced atomically, so a read is whole."""
    try:
        m = re.search(r'"serial": (\d+)', state.read_text())
    except FileNotFoundError:
        return 0
    return int(m.group(1)) if m else 0


# draws per trial until a kill lands inside the operation
KILL_ATTEMPTS = 3


def _kill_during(
    op: str, bp: Path, state: Path, parallelism: int, after_steps: int, extra: float
) -> str:
    """Start ``op``; once ``after_steps`` state writes happened, wait ``extra`` s and SIGKILL it.

    Waiting on recorded progress (not on wall time) puts every kill inside the
    operation whatever the machine's load; ``extra`` (up to one step's duration)
    lands it at a random point of the steps in flight, state writes included.
    """
    start = _serial(state)
    proc = _spawn(op, bp, state, parallelism)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "working":
        proc.wait()
        return f"ended before working (rc {proc.returncode})"
    while _serial(state) < start + after_steps and proc.poll() is None:
        time.sleep(0.001)
    time.sleep(extra)
    if proc.poll() is not None:
        return "finished before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return f"killed after {after_steps} write(s) +{1000 * extra:.0f}ms"


def _kill_on_file(op: str, bp: Path, state: Path, parallelism: int, path: Path,
                  timeout: float = 60.0) -> bool:
    """Start ``op`` and SIGKILL it the moment ``path`` exists; True when it was killed."""
    proc = _spawn(op, bp, state, parallelism)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "working":
        proc.wait()
        return False
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0002)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def leftover_scenario(work: Path, root: Path, parallelism: int, attempts: int = 10) -> int:
    """A create killed between its first volume and its domain: the scale-down and the
    destroy that follow must each succeed and leave nothing behind (module docstring)."""
    bp, state = work / "site.yaml", work / "crash.state.json"
    pool_dir = root / "pools" / "crash-flash"
    new_volume = pool_dir / "crash-node-2-d0.qcow2"
    rows: list[str] = []
    failures = 0

    def leave_a_leftover() -> str:
        for attempt in range(1, attempts + 1):
            bp.write_text(blueprint_text(root, 1))
            rc, _, err = _run("apply", bp, state, parallelism)
            if rc != 0:
                raise RuntimeError(f"apply of one machine failed: {err[-2000:]}")
            bp.write_text(blueprint_text(root, 2))
            if not _kill_on_file("apply", bp, state, parallelism, new_volume):
                continue
            domain = root / "etc" / "libvirt" / "qemu" / "crash-node-2.xml"
            if new_volume.exists() and not domain.exists():
                return f"killed with {new_volume.name} made, no domain (attempt {attempt})"
        raise RuntimeError(f"no kill landed between the volume and the domain in {attempts} tries")

    for op, machines in (("apply", 1), ("destroy", 0)):
        how = leave_a_leftover()
        bp.write_text(blueprint_text(root, max(machines, 1)))
        rc, out, err = _run(op, bp, state, parallelism)
        problems: list[str] = []
        if rc != 0:
            problems.append(f"{op} rc {rc}: {(err or out).strip()[-400:]}")
        elif op == "apply":
            vrc, vout, verr = _run("verify", bp, state, parallelism)
            try:
                problems += json.loads(vout.strip().splitlines()[-1])["problems"]
            except (ValueError, IndexError):
                problems.append(f"verify crashed: {verr.strip()[-400:]}")
        else:
            left = sorted(p.name for p in pool_dir.glob("*")) if pool_dir.exists() else []
            if left:
                problems.append(f"destroy left {left}")
        failures += bool(problems)
        what = "scale-down to 1" if op == "apply" else "destroy"
        rows.append(f"{what:<16} {how:<58} {'FAIL' if problems else 'ok'}  "
                    + ("; ".join(problems) or "converged"))
    print("leftover scenario: a create killed between its first volume and its domain")
    for row in rows:
        print(f"  {row}")
    print(f"{len(rows)} steps, {len(rows) - failures} ok, {failures} failed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--machines", type=int, default=6)
    ap.add_argument("--parallelism", type=int, default=3)
    ap.add_argument(
        "--disks", type=int, default=1, help="qcow2 disks per machine (0: domains only)"
    )
    ap.add_argument(
        "--budget", type=float, default=170.0, help="stop starting trials after this many seconds"
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first trial that fails")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--scenario", choices=["leftover"],
                    help="kill at one exact moment instead of random ones (see above)")
    ap.add_argument("--worker", choices=["apply", "destroy", "verify"], help=argparse.SUPPRESS)
    ap.add_argument("--blueprint", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.blueprint, args.state, args.parallelism)

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    # short and under /tmp: QEMU's monitor socket path (108 bytes max) lives under it
    work = Path(tempfile.mkdtemp(prefix="pxc-", dir="/tmp"))
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "qemu.conf").write_text(QEMU_CONF)
    (root / "images").mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(root / "images" / "base.qcow2"), "64M"],
        check=True,
    )
    bp = work / "site.yaml"
    bp.write_text(blueprint_text(root, args.machines, args.disks))
    state = work / "crash.state.json"
    started = time.monotonic()
    if args.scenario == "leftover":
        try:
            return leftover_scenario(work, root, args.parallelism)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)

    # calibrate: how long does the work of a full apply take here (second run: caches warm)?
    full = work_s = destroy_s = 0.0
    for _ in range(2):
        t0 = time.monotonic()
        rc, out, err = _run("apply", bp, state, args.parallelism)
        full = time.monotonic() - t0
        if rc != 0:
            print(f"calibration apply failed (rc {rc}):\n{err[-3000:]}", file=sys.stderr)
            return 1
        work_s = float(out.split("done", 1)[1].split()[0])  # the apply itself, without start-up
        rc, out, err = _run("destroy", bp, state, args.parallelism)
        if rc != 0:
            print(f"calibration destroy failed (rc {rc}):\n{err[-3000:]}", file=sys.stderr)
            return 1
        destroy_s = float(out.split("done", 1)[1].split()[0])
    steps = args.machines + (1 if args.disks else 0)  # one per machine, plus the pool

    rows: list[tuple[int, str, str, str, str]] = []
    failures = 0
    for trial in range(1, args.trials + 1):
        if time.monotonic() - started > args.budget:
            break
        op = "destroy" if trial % 4 == 0 else "apply"
        # start from nothing (apply) or from everything (destroy), so the kill hits real work
        _run("apply" if op == "destroy" else "destroy", bp, state, args.parallelism)
        per_step = (work_s if op == "apply" else destroy_s) / steps
        # Steps are uneven (the first domain start can take most of an apply), so a delay
        # drawn from the mean step can overshoot the end: a kill that missed is drawn
        # again, each time with a shorter delay, the last time right at the write.
        for attempt in range(1, KILL_ATTEMPTS + 1):
            delay = 0.0 if attempt == KILL_ATTEMPTS else rng.uniform(0.0, per_step / attempt)
            how = _kill_during(op, bp, state, args.parallelism, rng.randrange(steps), delay)
            if how.startswith("killed") or attempt == KILL_ATTEMPTS:
                break
            _run("apply" if op == "destroy" else "destroy", bp, state, args.parallelism)
        if attempt > 1:
            how += f" (try {attempt})"
        rc, out, err = _run("apply", bp, state, args.parallelism)
        if rc != 0:
            failed = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("failed")]
            detail = " | ".join(failed) or err.strip()[-300:]
            verdict, detail = "FAIL", f"rerun rc {rc}: {detail}"
        else:
            vrc, vout, verr = _run("verify", bp, state, args.parallelism)
            try:
                report = json.loads(vout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                report = {"ok": False, "problems": [f"verify crashed: {verr.strip()[-500:]}"]}
            verdict = "ok" if report["ok"] else "FAIL"
            detail = "; ".join(report["problems"]) or f"serial {report.get('serial')}"
        failures += verdict != "ok"
        rows.append((trial, op, how, verdict, detail))
        if failures and args.fail_fast:
            break

    print(
        f"crash test: {args.machines} machines x {args.disks} disks, parallelism {args.parallelism}, seed {seed}, "
        f"full apply {full:.2f}s incl. start-up, {work_s:.3f}s of work (destroy {destroy_s:.3f}s); kills after a random number of recorded steps"
    )
    print(f"{'trial':>5}  {'killed op':<9}  {'kill':<40}  {'result':<6}  detail")
    for trial, op, how, verdict, detail in rows:
        print(f"{trial:>5}  {op:<9}  {how:<40}  {verdict:<6}  {detail}")
    print(
        f"{len(rows)} trials, {len(rows) - failures} converged, {failures} failed, "
        f"{time.monotonic() - started:.1f}s"
    )
    if not args.keep:
        _run("destroy", bp, state, args.parallelism)
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    return 1 if failures or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
