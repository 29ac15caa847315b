"""``dr rebuild`` onto the ``static`` provider: the archive's data restored on its own host.

Site A (local provider) is applied, filled with studies and backed up twice while it
runs, then destroyed. The same blueprint's ``dr`` overlay puts site B on an existing
host (sshd in its own network namespace, host key pinned) and names the backups
(``dr.backups``), so ``pacsinfra dr rebuild site.yaml --site dr`` needs no ``--from``:
the host's machine step installs pacsinfra into its venv, the newest backup is copied
there and restored by the host's own ``pacsinfra restore``, and only then do the
archive and router start. Every study of the backup is found by a C-FIND on the host's
address, verify passes through B's router, the archive runs inside the host's
namespace, and its restored files are older than its process. Destroying B keeps its
data (static hosts never lose data); a second rebuild then refuses (exit 2) before
building anything.

Real sshd, real SSH, real processes; the host installs from the cached wheelhouse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, need_module
from support.host_root import host_root
from support.netns_hosts import NetnsHost
from support.procs import cmdline, processes_under
from support.standin import SYSTEM_PY, house, standin  # noqa: F401 - fixtures
from test_archive_support import store_studies, study_counts

pytestmark = pytest.mark.integration

MACHINE = "drst-b-pacs-1"


def _blueprint(tmp: Path, host: NetnsHost, house: Path,  # noqa: F811
               ports: dict[str, int]) -> str:
    root = host_root(tmp / "host-root")
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: drst}}
provider: {{driver: local}}
machines:
  pacs:
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    services: [archive, router]
services:
  archive:
    kind: archive
    config:
      ae_title: ARCHIVE
      port: {ports["a_archive"]}
      dicomweb: {{enabled: false}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 127.0.0.1, port: {ports["a_recv"]}}}}}
  router:
    kind: router
    config:
      ae_title: ROUTER
      port: {ports["a_router"]}
      destinations: {{arch: {{ae_title: ARCHIVE, service: archive, port: {ports["a_archive"]}}}}}
      rules: [{{name: all, forward: [arch]}}]
dr:
  backups: {tmp / "backups"}
sites:
  dr:
    metadata: {{name: drst-b, description: site A rebuilt on an existing host}}
    deploy: {{user: root, key_file: {host.key_file}, python: {SYSTEM_PY}, find_links: {house}}}
    provider:
      driver: static
      static:
        records: {tmp / "records"}
        hosts:
          {MACHINE}: {{address: {host.address}, root: {root}, host_keys: ["{host.host_key_line}"]}}
    services:
      archive:
        config:
          port: 11112
          peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: {host.root_address}, port: {ports["b_recv"]}}}}}
      router:
        config:
          port: 11104
          destinations: {{arch: {{ae_title: ARCHIVE, service: archive, port: 11112}}}}
"""


def _started_at(pid: int) -> float:
    """When ``pid`` started, as a Unix time (boot time from /proc/uptime: 10 ms, not 1 s)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    booted = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def test_dr_rebuild_onto_a_static_host(standin: NetnsHost, house: Path,  # noqa: F811
                                       tmp_path: Path) -> None:
    host = standin  # the existing host site B is rebuilt on
    need_module("pynetdicom")
    ports = {k: free_port() for k in ("a_archive", "a_router", "a_recv", "b_recv")}
    bp = tmp_path / "site.yaml"
    bp.write_text(_blueprint(tmp_path, host, house, ports))
    root = host_root(tmp_path / "host-root")
    local_root = tmp_path / "local-root"
    env = {k: v for k, v in os.environ.items() if k != "PACSINFRA_DEBUG"}
    env["PACSINFRA_LOCAL_ROOT"] = str(local_root)

    def cli(*args: str, rc: int = 0) -> str:
        r = subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=env,
                           capture_output=True, text=True, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == rc, f"pacsinfra {' '.join(args)} -> {r.returncode}\n{out}"
        assert "Traceback" not in out, out
        return out

    timings: dict[str, float] = {}
    try:
        # site A: filled, backed up twice while running, then lost
        cli("apply", str(bp), "--auto-approve")
        sent = store_studies(ports["a_archive"], studies=4, per_study=3, prefix="DRA")
        (config,) = local_root.glob("drst/machines/*/services/archive/config.yaml")
        (tmp_path / "backups").mkdir()
        cli("backup", "--archive-config", str(config), "--to", str(tmp_path / "backups/mon"))
        sent.update(store_studies(ports["a_archive"], studies=2, per_study=2, prefix="DRB"))
        cli("backup", "--archive-config", str(config), "--to", str(tmp_path / "backups/tue"))
        cli("destroy", str(bp), "--auto-approve")

        data = root / "data" / "archive"

        # the newest backup is a copy of "tue" with one byte of one instance flipped: the
        # host's restore refuses it, leaves nothing in the data directory, starts nothing
        wed = tmp_path / "backups" / "wed"
        shutil.copytree(tmp_path / "backups" / "tue", wed)  # copies: new inodes
        summary = json.loads((wed / "backup.json").read_text())
        (wed / "backup.json").write_text(json.dumps({**summary, "finished_at": time.time()}))
        victim = wed / json.loads((wed / "manifest.jsonl").read_text().splitlines()[0])["path"]
        raw = bytearray(victim.read_bytes())
        raw[-1] ^= 0xFF
        victim.write_bytes(bytes(raw))
        t0 = time.monotonic()
        bad = cli("dr", "rebuild", str(bp), "--site", "dr", "--auto-approve", rc=1)
        timings["corrupt"] = time.monotonic() - t0
        print(bad)
        assert "Apply complete: 1 done (1 create)" in bad, bad  # the machine, nothing more
        assert f"{victim} is corrupt" in bad and "nothing was restored" in bad, bad
        assert not data.exists()
        assert not list((root / "data").glob(".*"))  # no staging, no half-restored directory
        assert not (root / "services").exists() or not any((root / "services").iterdir())
        assert processes_under(root) == []
        shutil.rmtree(wed)

        # site B on the static host, from the backups the blueprint names (again: the
        # machine exists now, the archive and router do not)
        t0 = time.monotonic()
        out = cli("dr", "rebuild", str(bp), "--site", "dr", "--auto-approve")
        timings["rebuild"] = time.monotonic() - t0
        print(out)  # shown with -s, or when the test fails
        assert f"backup {tmp_path / 'backups' / 'tue'}: 6 studies, 16 instances" in out, out
        assert (f"restored 6 studies, 16 instances into service.archive[0] on {MACHINE} "
                f"(root@{host.address}:22) at {data}") in out, out
        assert "6/6 studies of the backup found by C-FIND" in out, out
        assert "smoke test PASSED" in out, out
        assert "the archives' machines exist already" in out, out
        # the restore, then the services
        lines = out.splitlines()
        first = {key: next(i for i, ln in enumerate(lines) if key in ln) for key in (
            "copied the backup", "restored 6 studies", "service.archive[0]: creating",
            "Apply complete: 2 done (2 create)")}
        assert sorted(first, key=first.__getitem__) == list(first), out

        # the test's own C-FIND at the host's address: every study, every instance
        found = study_counts(11112, host=host.address)
        assert {uid: found.get(uid) for uid in sent} == sent, found

        # the archive runs inside the host's namespace, from the host's venv, and started
        # after its data was in place (restored files are immutable: their mtime is the copy)
        config_path = str(root / "services" / "archive" / "config.yaml")
        (pid,) = [p for p in processes_under(root) if config_path in cmdline(p)]
        netns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                               text=True).stdout.strip()
        assert netns == host.netns
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert argv0 == str(root / "venv" / "bin" / "python")
        manifest = (tmp_path / "backups" / "tue" / "manifest.jsonl").read_text().splitlines()
        restored = [data / e["tier"] / e["rel_path"] for e in map(json.loads, manifest)]
        assert len(restored) == 16 and all(p.is_file() for p in restored), restored
        assert max(p.stat().st_mtime for p in restored) < _started_at(pid) < time.time()
        # nothing left behind: the staging directory on the host, the packed tar here
        assert not list((root / "data").glob(".pacsinfra-dr-*"))
        assert not list(tmp_path.glob(".pacsinfra-dr-pack-*"))
        state_text = (tmp_path / ".pacsinfra" / "drst-b-dr.state.json").read_text()
        assert "PRIVATE KEY" not in state_text

        # destroy keeps the host's data; a rebuild then refuses before building anything
        cli("destroy", str(bp), "--site", "dr", "--auto-approve")
        assert (data / "index.sqlite").exists()
        t0 = time.monotonic()
        again = cli("dr", "rebuild", str(bp), "--site", "dr", "--auto-approve", rc=2)
        timings["refusal"] = time.monotonic() - t0
        assert f"{data} on {MACHINE}" in again and "is not empty" in again, again
        assert not (root / "machine.json").exists()
        assert processes_under(root) == []
        print(f"\ncorrupt backup refused {timings['corrupt']:.1f}s, rebuild "
              f"{timings['rebuild']:.1f}s, refusal {timings['refusal']:.1f}s")
    finally:
        if (root / "machine.json").exists():
            cli("destroy", str(bp), "--site", "dr", "--auto-approve")
        if list(local_root.glob("drst/machines/*")):
            cli("destroy", str(bp), "--auto-approve")
        for pid in processes_under(root):  # what a failed test left under the host's root
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
