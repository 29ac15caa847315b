#!/usr/bin/env python3
"""No-op plan of a large site against libvirt's test:///default, everything applied.

Target: < 2 s for 1,000 machines. The peer is the floor: the same driver's
``list_owned`` alone (one read of every object); the ratio is the engine's own
overhead on top of reading the hypervisor.

With ``--state URL`` (e.g. ``postgresql://USER@HOST:PORT/DB?schema=bench``) the state
lives in that backend instead of a local file; the table then also reports the
backend's lock + unlock round trip (every plan takes the lock once).

Usage: bench_plan.py [--machines 1000] [--runs 5] [--state URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

SITE = """\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: bench}}
provider:
  driver: kvm
  kvm: {{uri: "test:///default", cloud_init: false}}
images:
  debian12:
    kvm: {{path: /var/lib/libvirt/images/debian12.qcow2}}
networks:
  dicom: {{purpose: dicom, cidr: 10.20.0.0/16, mtu: 9000}}
  management: {{purpose: management, cidr: 10.21.0.0/16}}
storage:
  flash: {{tier: performance}}
machines:
  worker:
    count: {count}
    image: debian12
    cpu: {{count: 2, shares: normal}}
    memory: {{size: 2GiB}}
    disks:
      - {{name: os, size: 10GiB, storage: flash}}
    nics:
      - {{network: dicom}}
      - {{network: management}}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parallelism", type=int, default=10)
    ap.add_argument("--state", default=None, metavar="URL",
                    help="state backend (default: a local file in a temp dir)")
    args = ap.parse_args(argv)

    import libvirt

    from pacsinfra.apply.engine import Engine
    from pacsinfra.blueprint import load_blueprint
    from pacsinfra.drivers.kvm.driver import KvmDriver

    work = Path(tempfile.mkdtemp(prefix="pacsinfra-bench-plan-"))
    bp_path = work / "site.yaml"
    bp_path.write_text(SITE.format(count=args.machines))
    conn = libvirt.open("test:///default")
    t0 = time.perf_counter()
    bp = load_blueprint(bp_path)
    load_s = time.perf_counter() - t0
    driver = KvmDriver(bp.site.provider.kvm, client=conn)  # the blueprint's settings, this connection
    eng = Engine(bp, args.state or work / "state.json", driver)
    where = "local file" if args.state is None else args.state.split("://", 1)[0]
    t0 = time.perf_counter()
    first = eng.plan()
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng.apply(first, parallelism=args.parallelism)
    apply_s = time.perf_counter() - t0

    plans, floors = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        p = eng.plan()
        plans.append(time.perf_counter() - t0)
        if p.has_changes:
            print(f"ERROR: plan after apply is not empty: {p.summary()}", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        driver.list_owned(eng.site)
        floors.append(time.perf_counter() - t0)
    med, floor = statistics.median(plans), statistics.median(floors)
    trips = []
    for _ in range(20):
        t0 = time.perf_counter()
        with eng.store.lock("bench"):
            pass
        trips.append(time.perf_counter() - t0)
    n = len(first.steps)
    print(
        f"no-op plan, {args.machines} machines ({n} resources) on test:///default, "
        f"state: {where}, median of {args.runs}"
    )
    print(f"{'measure':<44} {'seconds':>9}")
    print(f"{'load + validate blueprint':<44} {load_s:>9.3f}")
    print(f"{'first plan (everything to create)':<44} {first_s:>9.3f}")
    print(f"{'apply, parallelism ' + str(args.parallelism):<44} {apply_s:>9.3f}")
    print(f"{'driver.list_owned alone (the floor)':<44} {floor:>9.3f}")
    print(f"{'no-op plan (engine)':<44} {med:>9.3f}")
    print(f"{'ratio engine / floor':<44} {med / floor if floor else float('nan'):>9.2f}")
    print(f"{'state lock + unlock round trip (median of 20)':<44} {statistics.median(trips):>9.4f}")
    print(f"{'target < 2 s':<44} {'met' if med < 2.0 else 'MISSED':>9}")
    eng.destroy(parallelism=args.parallelism)
    eng.close()
    conn.close()
    return 0 if med < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
