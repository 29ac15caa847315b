#!/usr/bin/env python3
"""Check the Hyper-V scripts' JSON contracts against a REAL Hyper-V host (manual; not CI).

The test suite runs the driver against an in-memory model of Hyper-V behind a loopback
WS-Management endpoint (tests/support/). This script runs the same scenarios against a
real host, so an admin can confirm the PowerShell templates do what the model assumes:

  1. host-info: clock, processors, memory
  2. create a private switch, a storage directory and a VM from a VHDX (differencing)
  3. read back: the plan comparison is empty; the facts carry every key the model reports
  4. drift: change a VLAN and the processor weight behind the driver's back -> detected,
     classified IN_PLACE, repaired by update without stopping the VM
  5. a hostile VM name (quotes, $( ), backticks) is created verbatim
  6. adoption: a fresh driver finds everything by its Notes mark (list_owned)
  7. failure: a VM name taken by an unmarked VM -> AlreadyExists; a VM too big for the
     host's memory -> PowerShellFailed in Start-VM with a line number, nothing left behind
  8. delete everything (disks first, VMs last), then nothing owned remains

Everything it creates is named ``pacsinfra-check-<random>`` and carries the mark of site
``pacsinfra-contract-check``; it is deleted at the end (also after a failure).

Usage (on an admin workstation that can reach the host's WinRM listener):

  HV_PASSWORD=... python scripts/check-hyperv-contracts.py --host hv01.example --user 'DOM\\admin' \\
      --password-env HV_PASSWORD --image 'C:\\Images\\debian12.vhdx' --storage 'D:\\pacsinfra-check' --yes

Exit code 0 when every check passed, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacsinfra.drivers.hyperv.client import PowerShellFailed  # noqa: E402
from pacsinfra.drivers.hyperv.driver import HypervDriver  # noqa: E402
from pacsinfra.errors import AlreadyExists, PacsinfraError  # noqa: E402
from pacsinfra.specs import (
    ChangeKind,
    DiskSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Observed,
    Ownership,
    StorageSpec,
    changed_fields,
)

SITE = "pacsinfra-contract-check"
VM_KEYS = {"id", "name", "state", "generation", "notes", "processor", "memory", "disks", "adapters", "gpus", "secure_boot"}
HOST_KEYS = {"host", "mhz", "logical_processors", "memory_mib", "memory_free_mib"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int)
    ap.add_argument("--transport", default="ntlm", choices=["ntlm", "kerberos", "credssp", "basic"])
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-env", required=True, help="environment variable holding the password")
    ap.add_argument("--no-ssl", action="store_true", help="HTTP (5985) instead of HTTPS (5986)")
    ap.add_argument("--ca-file", help="CA bundle that signed the WinRM listener's certificate")
    ap.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    ap.add_argument("--image", required=True, help="a VHDX on the host to build the test VM from")
    ap.add_argument("--storage", required=True, help="a directory on the host for the test disks")
    ap.add_argument("--yes", action="store_true", help="really create and delete objects on the host")
    args = ap.parse_args()
    if not args.yes:
        print("refusing to touch the host without --yes (this creates and deletes a switch, VMs and VHDX files)")
        return 2
    if not os.environ.get(args.password_env):
        print(f"environment variable {args.password_env} is not set")
        return 2
    config = {"host": args.host, "port": args.port, "transport": args.transport, "user": args.user,
              "password": {"env": args.password_env}, "ssl": not args.no_ssl,
              "verify_ssl": not args.insecure, "ca_file": args.ca_file}
    return Checker(config, args.image, args.storage.rstrip("\\")).run()


class Checker:
    def __init__(self, config: dict[str, object], image: str, storage: str) -> None:
        self.config, self.image, self.storage = config, image, storage
        self.tag = f"pacsinfra-check-{secrets.token_hex(3)}"
        self.drv = HypervDriver(config)
        self.results: list[tuple[str, bool, str]] = []
        self.made: list[Observed] = []

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        try:
            detail = fn()
            self.results.append((name, True, detail))
            return True
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next check runs
            self.results.append((name, False, f"{type(exc).__name__}: {exc}"))
            traceback.print_exc(file=sys.stderr)
            return False

    def owner(self, address: str) -> Ownership:
        return Ownership(site=SITE, address=address, lineage=self.tag)

    def specs(self) -> tuple[NetworkSpec, StorageSpec, MachineSpec]:
        sw = f"{self.tag}-sw"
        net = NetworkSpec(address="network.check", name=sw, purpose="check", vlan=110,
                          settings={"switch": sw, "type": "private"})
        store = StorageSpec(address="storage.check", name=self.storage, tier="performance",
                            settings={"path": self.storage})
        vm = MachineSpec(address="machine.check[0]", name=f"{self.tag}-vm", role="check", index=0,
                         image={"vhdx": self.image, "mode": "differencing"}, cpu_count=2, memory_mib=2048,
                         cpu_reservation_mhz=1000, cpu_shares=2000,
                         disks=(DiskSpec("os", 20480, self.storage), DiskSpec("data", 1024, self.storage)),
                         nics=(NicSpec(sw, vlan=110),), power_on=False)
        return net, store, vm

    def run(self) -> int:
        net, store, vm = self.specs()
        try:
            if self.check("connect + host-info", self.connect):
                self.check("create switch, directory, VM; read back equal", lambda: self.create(net, store, vm))
                self.check("drift detected, classified, repaired", lambda: self.drift(vm))
                self.check("hostile name stays data", lambda: self.hostile(vm))
                self.check("adoption by mark (list_owned)", lambda: self.adopt(net, store, vm))
                self.check("unmarked duplicate name refused", lambda: self.duplicate(vm))
                self.check("too little memory: cmdlet + line, cleaned up", lambda: self.too_big(vm))
        finally:
            self.check("delete everything", self.cleanup)
        width = max(len(n) for n, _, _ in self.results)
        for name, ok, detail in self.results:
            print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
        return 0 if all(ok for _, ok, _ in self.results) else 1

    def connect(self) -> str:
        self.drv.connect()
        missing = HOST_KEYS - set(self.drv.host.facts)
        assert not missing, f"host-info lacks {missing}"
        return f"{self.drv.host.facts['host']}: {self.drv.host.facts['mhz']} MHz, {self.drv.host.facts['logical_processors']} LPs"

    def create(self, net: NetworkSpec, store: StorageSpec, vm: MachineSpec) -> str:
        for spec in (net, store, vm):
            assert not self.drv.check(spec), self.drv.check(spec)
            obs = self.drv.create(spec, self.owner(spec.address))
            self.made.append(obs)
            assert changed_fields(spec, obs) == [], f"{spec.address}: {changed_fields(spec, obs)}"
            again = self.drv.read(spec)
            assert again is not None and changed_fields(spec, again) == []
        facts = self.drv.run("get-vm", {"name": vm.name, "mark_prefix": "pacsinfra:"})["vms"]
        assert len(facts) == 1 and set(facts[0]) >= VM_KEYS, f"get-vm keys: {sorted(facts[0])}"
        return f"VM id {self.made[-1].id}"

    def raw(self, script: str) -> None:
        """Change the host behind the driver's back (an admin's hand edit)."""
        r = self.drv.hc.session.run_ps(script)
        assert r.status_code == 0, r.std_err.decode(errors="replace")

    def drift(self, vm: MachineSpec) -> str:
        self.raw(f"Get-VM -Name '{vm.name}' | Get-VMNetworkAdapter | Set-VMNetworkAdapterVlan -Access -VlanId 4000;"
                 f" Set-VMProcessor -VMName '{vm.name}' -RelativeWeight 300")
        obs = self.drv.read(vm)
        assert obs is not None
        fields = changed_fields(vm, obs)
        assert fields == ["cpu_shares", "nics"], fields
        assert all(self.drv.classify_change(vm, obs, f) is ChangeKind.IN_PLACE for f in fields)
        done = self.drv.update(vm, obs, fields)
        assert changed_fields(vm, done) == [], changed_fields(vm, done)
        return "cpu_shares, nics repaired in place"

    def hostile(self, vm: MachineSpec) -> str:
        name = f"{self.tag}-x'; $(Get-Date) ;"
        spec = dataclasses.replace(vm, address="machine.check[1]", name=name, index=1,
                                   disks=(DiskSpec("os", 20480, self.storage),))
        obs = self.drv.create(spec, self.owner(spec.address))
        self.made.append(obs)
        assert obs.spec.name == name and changed_fields(spec, obs) == []
        return repr(name)

    def adopt(self, net: NetworkSpec, store: StorageSpec, vm: MachineSpec) -> str:
        fresh = HypervDriver(self.config)
        found = {o.owner.address: o for o in fresh.list_owned(SITE) if o.owner and o.owner.lineage == self.tag}
        for spec in (net, store, vm):
            assert spec.address in found, f"{spec.address} not found by its mark"
            assert changed_fields(spec, found[spec.address]) == [], changed_fields(spec, found[spec.address])
        return f"{len(found)} objects adopted"

    def duplicate(self, vm: MachineSpec) -> str:
        name = f"{self.tag}-plain"
        self.raw(f"New-VM -Name '{name}' -Generation 2 -NoVHD -MemoryStartupBytes 512MB | Out-Null")
        try:
            spec = dataclasses.replace(vm, address="machine.check[2]", name=name, index=2)
            try:
                self.drv.create(spec, self.owner(spec.address))
            except AlreadyExists as exc:
                return str(exc)
            raise AssertionError("creating over an unmarked VM did not raise AlreadyExists")
        finally:
            self.raw(f"Remove-VM -Name '{name}' -Force")

    def too_big(self, vm: MachineSpec) -> str:
        mib = int(self.drv.host.facts["memory_mib"]) + 4096
        mib -= mib % 2
        spec = dataclasses.replace(vm, address="machine.check[3]", name=f"{self.tag}-big", index=3,
                                   memory_mib=mib, power_on=True, disks=(DiskSpec("os", 20480, self.storage),))
        try:
            self.drv.create(spec, self.owner(spec.address))
        except PowerShellFailed as exc:
            assert exc.cmdlet == "Start-VM" and exc.line > 0, (exc.cmdlet, exc.line)
            assert self.drv.read(spec) is None, "the failed VM was not removed"
            return f"{exc.cmdlet} line {exc.line}: {exc.reason[:60]}"
        raise AssertionError("a VM larger than the host's memory started")

    def cleanup(self) -> str:
        gone = 0
        owned = [o for o in HypervDriver(self.config).list_owned(SITE) if o.owner and o.owner.lineage == self.tag]
        order = {"machine": 0, "storage": 1, "network": 2}
        for o in sorted(owned, key=lambda o: order[o.spec.address.split(".")[0]]):
            self.drv.delete(o)
            gone += 1
        left = [o for o in HypervDriver(self.config).list_owned(SITE) if o.owner and o.owner.lineage == self.tag]
        assert not left, f"still owned: {[o.spec.address for o in left]}"
        return f"{gone} objects deleted"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PacsinfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
