"""The ``static`` provider end to end: services deployed over SSH onto existing hosts.

Three hosts (sshd in their own network namespaces, host keys pinned): a router on the
first, an archive node on each of the others, the router fanning every study out to
both. apply -> the processes run *inside the hosts' namespaces* -> ``pacsinfra verify``
passes through the router into both archives -> an empty plan -> a router config change
is one in-place update that restarts the router alone -> destroy leaves no process
behind (data kept). And a host whose pinned key is wrong fails with both fingerprints.

Real sshd, real SSH, real processes; the hosts install pacsinfra into their own venvs
from a wheelhouse on the (shared) file system, downloaded once and cached.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, need, need_module
from support.host_root import host_root
from support.netns_hosts import NetnsHost, netns_hosts, route_between  # noqa: F401 - fixture
from support.procs import processes_under
from support.wheelhouse import wheelhouse as wheels_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PY = "/usr/bin/python3"  # the hosts' interpreter (not this venv's)
SITE = "stsite"
ROLES = ("router", "archive-a", "archive-b")  # on hosts 0, 1, 2
MACHINES = tuple(f"{SITE}-{r}-1" for r in ROLES)


def wheelhouse() -> Path:
    """pacsinfra's dependencies as wheels for the hosts' python, downloaded once and kept
    (tests/support/wheelhouse.py; the hosts' python and this venv's are the same version)."""
    out = subprocess.run([SYSTEM_PY, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True).stdout
    try:
        return wheels_for(tuple(int(v) for v in out.split()))
    except RuntimeError as exc:
        need(False, f"the hosts' dependency wheels: {exc}")
        raise


def blueprint(hosts: list[NetnsHost], roots: list[Path], records: Path, house: Path,
              receiver: int, *, retries: int = 10, keys: list[str] | None = None,
              engine: str | None = None, viewer: bool = False) -> str:
    keys = keys or [h.host_key_line for h in hosts]
    deploy = (f"deploy: {{user: root, key_file: {hosts[0].key_file}, python: {SYSTEM_PY}, "
              f"find_links: {house}" + (f", engine: {engine}" if engine else "") + "}\n")
    entries = "\n".join(
        f"      {m}: {{address: {h.address}, root: {root}, host_keys: [\"{k}\"]}}"
        for m, h, root, k in zip(MACHINES, hosts, roots, keys, strict=True))
    rcv = hosts[0].root_address  # this machine, reachable from every host (route_between)
    # the viewer on the router's host reads archive-a on its host, whose DICOMweb is open
    # to the network with a token (the viewer's read token comes from it)
    web_a = ("{bind: 0.0.0.0, port: 8042, tokens: [{name: viewer, scopes: [read], "
             "token: {env: STATIC_DICOMWEB_TOKEN}}]}" if viewer
             else "{enabled: false}")
    viewer_svc = ("  viewer:\n    kind: viewer\n    config: {archive: archive-a, port: 3000}\n"
                  if viewer else "")
    router_services = "[router, viewer]" if viewer else "[router]"
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: {SITE}}}
provider:
  driver: static
  static:
    records: {records}
    hosts:
{entries}
machines:
  router: {{cpu: {{count: 1}}, memory: {{size: 1GiB}}, services: {router_services}}}
  archive-a: {{cpu: {{count: 1}}, memory: {{size: 1GiB}}, services: [archive-a]}}
  archive-b: {{cpu: {{count: 1}}, memory: {{size: 1GiB}}, services: [archive-b]}}
services:
  archive-a:
    kind: archive
    config:
      ae_title: ARCH_A
      port: 11112
      dicomweb: {web_a}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: {rcv}, port: {receiver}}}}}
  archive-b:
    kind: archive
    config:
      ae_title: ARCH_B
      port: 11112
      dicomweb: {{enabled: false}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: {rcv}, port: {receiver}}}}}
  router:
    kind: router
    config:
      ae_title: ROUTER
      port: 11104
      retry: {{max_attempts: {retries}}}
      destinations:
        a: {{ae_title: ARCH_A, service: archive-a, port: 11112}}
        b: {{ae_title: ARCH_B, service: archive-b, port: 11112}}
      rules: [{{name: both, forward: [a, b]}}]
{viewer_svc}{deploy}"""


class StaticSite:
    def __init__(self, hosts: list[NetnsHost], tmp: Path, house: Path) -> None:
        self.hosts = hosts
        self.tmp = tmp
        self.roots = [host_root(tmp / f"host{i}-root") for i in range(len(hosts))]
        self.records = tmp / "records"
        self.house = house
        self.receiver = free_port()
        self.bp = tmp / "site.yaml"
        self.env = {k: v for k, v in os.environ.items() if k != "PACSINFRA_DEBUG"}
        self.write()

    def write(self, **kw: object) -> None:
        self.bp.write_text(blueprint(self.hosts, self.roots, self.records, self.house,
                                     self.receiver, **kw))  # type: ignore[arg-type]

    #: seconds a command may take (ansible-runner, a playbook per command, needs more)
    timeout = 300.0

    def cli(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout or self.timeout)

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, f"pacsinfra {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def state(self, i: int, service: str) -> dict[str, object]:
        return json.loads((self.roots[i] / "run" / f"{service}.state.json").read_text())

    def pid(self, i: int, service: str) -> int:
        st = self.state(i, service)
        assert st["state"] == "running", st
        return int(st["pid"])  # type: ignore[call-overload]

    def processes(self) -> list[int]:
        """Live processes whose command line names one of the hosts' roots."""
        return processes_under(*self.roots)

@pytest.fixture(scope="module")
def house() -> Path:
    need(Path(SYSTEM_PY).exists(), "no system python3 for the hosts' venvs")
    return wheelhouse()


@pytest.fixture
def site(netns_hosts: list[NetnsHost], tmp_path: Path, house: Path) -> Iterator[StaticSite]:  # noqa: F811
    need_module("pynetdicom")
    route_between(netns_hosts)
    s = StaticSite(netns_hosts, tmp_path, house)
    try:
        yield s
    finally:
        if any((r / "machine.json").exists() for r in s.roots):
            s.cli("destroy", str(s.bp), "--auto-approve")
        for pid in s.processes():  # what a failed test left (only processes under our roots)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _netns_of(pid: int) -> str:
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                          text=True).stdout.strip()


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def _listening(netns: str) -> list[str]:
    """The TCP listen addresses (address:port) in a network namespace."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Hltn"], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


def test_static_site_lifecycle(site: StaticSite) -> None:
    site.env["STATIC_DICOMWEB_TOKEN"] = "static-test-dicomweb-token-0123456789"
    site.write(viewer=True)
    bp = str(site.bp)
    started = time.monotonic()
    site.ok("validate", "--strict", bp)
    out = site.ok("apply", bp, "--auto-approve")
    assert "Apply complete: 7 done (7 create)" in out, out
    apply_s = time.monotonic() - started

    # each service runs on its own host: in that host's network namespace, from its venv,
    # as the service account (pacsinfra logs in as root); its config is root's, readable
    # by the account's group; its data directory the account's own
    account = pwd.getpwnam("pacsinfra")
    services = [(0, "router"), (1, "archive-a"), (2, "archive-b"), (0, "viewer")]
    for i, svc in services:
        pid = site.pid(i, svc)
        assert _netns_of(pid) == site.hosts[i].netns, (svc, pid)
        assert _uid(pid) == account.pw_uid, (svc, pid)
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if svc == "viewer":  # `pacsinfra viewer serve` became nginx's master
            assert cmd[0].decode().startswith("nginx: master process"), cmd
        else:
            assert cmd[0].decode() == str(site.roots[i] / "venv" / "bin" / "python"), cmd
        cfg = (site.roots[i] / "services" / svc / "config.yaml").stat()
        assert (cfg.st_mode & 0o777, cfg.st_uid, cfg.st_gid) == (0o640, 0, account.pw_gid)
        data = (site.roots[i] / "data" / svc).stat()
        assert (data.st_mode & 0o777, data.st_uid) == (0o750, account.pw_uid), svc
    assert (site.roots[0] / "run").stat().st_mode & 0o777 == 0o700
    # the viewer and archive-a's DICOMweb: the viewer on loopback only, DICOMweb open
    # (with its token) to the viewer's host
    assert "127.0.0.1:3000" in _listening(site.hosts[0].netns)
    assert not [a for a in _listening(site.hosts[0].netns) if a.endswith(":3000")
                and not a.startswith("127.0.0.1:")]
    assert "0.0.0.0:8042" in _listening(site.hosts[1].netns)
    viewer_cfg = (site.roots[0] / "services/viewer/config.yaml").read_text()
    assert f"upstream: http://{site.hosts[1].address}:8042" in viewer_cfg, viewer_cfg
    assert "STATIC_DICOMWEB_TOKEN" in viewer_cfg and site.env["STATIC_DICOMWEB_TOKEN"] \
        not in viewer_cfg  # a reference, never the value
    assert (site.roots[0] / "cache" / "ohif-3.13.2.tgz").is_file()  # shipped by pacsinfra
    router_cfg = (site.roots[0] / "services/router/config.yaml").read_text()
    for h in site.hosts[1:]:
        assert f"host: {h.address}" in router_cfg, router_cfg  # service: -> the host's address
    assert f"bind: {site.hosts[0].address}" in router_cfg
    assert f"spool_dir: {site.roots[0] / 'data' / 'router'}" in router_cfg
    # no secret and no key material in state or records
    state_text = (site.tmp / ".pacsinfra" / f"{SITE}.state.json").read_text()
    assert "PRIVATE KEY" not in state_text and "PRIVATE KEY" not in router_cfg

    # verify: through the router into both archives, the receiver on this machine
    t0 = time.monotonic()
    out = site.ok("verify", bp)
    verify_s = time.monotonic() - t0
    assert "smoke test PASSED" in out, out
    assert "service.archive-a[0], service.archive-b[0]" in out.splitlines()[0], out
    # the study opens in the viewer (on its host, through its proxy), and is deleted from
    # both archives where they run (archive-b serves no DICOMweb at all)
    step = [ln for ln in out.splitlines() if ln.startswith("viewer")]
    assert step and " PASS " in step[0] and "pixels identical" in step[0], out
    assert len([ln for ln in out.splitlines() if ln.startswith("delete") and " PASS " in ln]) == 2, out
    for aet, h in (("ARCH_A", site.hosts[1]), ("ARCH_B", site.hosts[2])):
        lines = [ln for ln in out.splitlines()
                 if ln.startswith("arrival") and f"{aet}@{h.address}:11112" in ln]
        assert lines and " PASS " in lines[0], out

    # nothing to do right after apply
    t0 = time.monotonic()
    site.ok("plan", bp, "--detailed-exitcode")
    plan_s = time.monotonic() - t0

    # a router setting changes: one in-place update, the archives untouched
    pids = {svc: site.pid(i, svc) for i, svc in services}
    site.write(retries=4, viewer=True)
    plan = json.loads(site.ok("plan", bp, "--json"))
    changing = [s for s in plan["steps"] if s["action"] != "no-op"]
    assert [(s["address"], s["action"], s["kind"]) for s in changing] == [
        ("service.router[0]", "update", "IN_PLACE")], changing
    assert [f["name"] for f in changing[0]["fields"]] == ["config"]
    out = site.ok("apply", bp, "--auto-approve")
    assert "1 done (1 update)" in out, out
    assert site.pid(1, "archive-a") == pids["archive-a"]
    assert site.pid(2, "archive-b") == pids["archive-b"]
    assert site.pid(0, "router") != pids["router"]
    assert "max_attempts: 4" in (site.roots[0] / "services/router/config.yaml").read_text()
    site.ok("plan", bp, "--detailed-exitcode")

    # destroy: no process left on any host; the archives' data stays
    out = site.ok("destroy", bp, "--auto-approve")
    assert "7 delete" in out, out
    deadline = time.monotonic() + 10
    while site.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.processes() == []
    for i, _ in services:
        assert not (site.roots[i] / "machine.json").exists()
        assert not (site.roots[i] / "services").exists()
    assert (site.roots[1] / "data" / "archive-a").is_dir()
    print(f"\napply {apply_s:.1f}s, verify {verify_s:.1f}s, no-op plan {plan_s:.1f}s")


def test_wrong_host_key_is_refused_with_both_fingerprints(site: StaticSite) -> None:
    from pacsinfra.deploy.ssh import fingerprint, parse_public_key

    hosts = site.hosts
    wrong = [hosts[1].host_key_line, hosts[1].host_key_line, hosts[2].host_key_line]
    site.write(keys=wrong)  # host 0 (the router's) is pinned to host 1's key
    r = site.cli("apply", str(site.bp), "--auto-approve")
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert "Traceback" not in text, text
    offered = fingerprint(parse_public_key(hosts[0].host_key_line))
    pinned = fingerprint(parse_public_key(hosts[1].host_key_line))
    assert "HOST KEY MISMATCH" in text and MACHINES[0] in text, text
    assert offered in text and pinned in text, text
    assert not any((root / "machine.json").exists() for root in site.roots)
    assert site.processes() == []


def test_service_data_goes_to_the_mounted_disk(site: StaticSite) -> None:
    """A disk the blueprint mounts must be mounted on the host (else the machine step
    refuses, naming it, before anything is installed); the archive's data goes there."""
    import secrets

    host, root = site.hosts[1], site.roots[1]
    svc = f"arch-{secrets.token_hex(3)}"
    shm = Path("/dev/shm") / svc  # /dev/shm is a mount point, also in the host's namespace
    bad = site.tmp / "not-a-mount"
    bad.mkdir()

    def write(disks: str) -> None:
        site.bp.write_text(f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: stdisk}}
provider:
  driver: static
  static:
    records: {site.records}
    hosts:
      stdisk-pacs-1: {{address: {host.address}, root: {root}, host_keys: ["{host.host_key_line}"]}}
deploy: {{user: root, key_file: {host.key_file}, python: {SYSTEM_PY}, find_links: {site.house}}}
storage: {{fast: {{tier: performance, encrypted: true}}}}
machines:
  pacs:
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    disks: [{disks}]
    services: [{svc}]
services:
  {svc}: {{kind: archive, config: {{ae_title: DISKARCH, port: 11112, dicomweb: {{enabled: false}}}}}}
""")

    try:
        write(f"{{name: data, size: 1GiB, storage: fast, mount: /dev/shm}}, "
              f"{{name: nl, size: 1GiB, storage: fast, mount: {bad}}}")
        r = site.cli("apply", str(site.bp), "--auto-approve")
        out = r.stdout + r.stderr
        assert r.returncode == 1 and "Traceback" not in out, out
        assert f"nothing is mounted where the blueprint mounts disk 'nl' at {bad}" in out, out
        assert "disk 'data'" not in out, out  # /dev/shm is mounted
        assert not (root / "machine.json").exists() and not (root / "venv").exists()

        write("{name: data, size: 1GiB, storage: fast, mount: /dev/shm}")
        site.ok("apply", str(site.bp), "--auto-approve")
        cfg = (root / "services" / svc / "config.yaml").read_text()
        assert f"data_dir: {shm}" in cfg, cfg
        assert (shm / "index.sqlite").exists()  # the running archive made its index there
        site.ok("destroy", str(site.bp), "--auto-approve")
    finally:
        shutil.rmtree(shm, ignore_errors=True)
