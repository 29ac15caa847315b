"""The embedded default end to end: ``provider: local`` with an archive and a router.

apply -> verify passes -> DCMTK storescu through the router, findscu finds it at the
archive -> an empty plan -> a router config change is one in-place service update
that restarts the router alone -> destroy leaves no process behind.
Real processes (the pacsinfra supervisor, archive, router) on free loopback ports,
state and data in a temp dir (PACSINFRA_LOCAL_ROOT).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, need, need_module
from support.procs import cmdline, processes_under

pytestmark = pytest.mark.integration

SITE = "lsite"
MACHINE = f"{SITE}-pacs-1"


def dcmtk(name: str) -> str:
    """A DCMTK tool (Debian's /usr/bin first: a pynetdicom app of the same name may shadow it)."""
    path = Path("/usr/bin") / name
    found = str(path) if path.exists() else shutil.which(name)
    need(found is not None, f"DCMTK {name} not installed (apt-get install dcmtk)")
    assert found
    return found


def blueprint(archive: int, router: int, receiver: int, web: int, token: Path,
              retries: int = 10) -> str:
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: {SITE}}}
provider: {{driver: local}}
storage:
  disk: {{tier: performance, encrypted: true}}
machines:
  pacs:
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    disks: [{{name: data, size: 1GiB, storage: disk}}]
    services: [archive, router]
services:
  archive:
    kind: archive
    config:
      ae_title: ARCHIVE
      port: {archive}
      dicomweb: {{enabled: true, bind: 127.0.0.1, port: {web}, token: {{file: "{token}"}}}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 127.0.0.1, port: {receiver}}}}}
  router:
    kind: router
    config:
      ae_title: ROUTER
      port: {router}
      retry: {{max_attempts: {retries}}}
      destinations: {{arch: {{ae_title: ARCHIVE, service: archive, port: {archive}}}}}
      rules: [{{name: all, forward: [arch]}}]
"""


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.bp = tmp / "site.yaml"
        self.ports = (free_port(), free_port(), free_port())
        self.web_port = free_port()
        self.token = tmp / "dicomweb.token"
        self.token.write_text("verify-delete-token\n")
        self.env = {**os.environ, "PACSINFRA_LOCAL_ROOT": str(self.root)}
        self.env.pop("PACSINFRA_DEBUG", None)
        self.write()

    def write(self, retries: int = 10) -> None:
        self.bp.write_text(blueprint(*self.ports, self.web_port, self.token, retries=retries))

    @property
    def run_dir(self) -> Path:
        return self.root / SITE / "machines" / MACHINE / "run"

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str, rc: int = 0) -> str:
        r = self.cli(*args)
        assert r.returncode == rc, f"pacsinfra {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def pid(self, service: str) -> int:
        state = json.loads((self.run_dir / f"{service}.state.json").read_text())
        assert state["state"] == "running", state
        return int(state["pid"])

    def processes(self) -> list[str]:
        """Command lines of live processes that mention this site's root."""
        return [f"{pid}: {cmdline(pid)}" for pid in processes_under(self.root)]

@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    need_module("pynetdicom")
    s = Site(tmp_path)
    try:
        yield s
    finally:
        if s.run_dir.exists():  # a failed test must not leave processes behind
            s.cli("destroy", str(s.bp), "--auto-approve")
            from pacsinfra.services import supervisor

            for lock in s.run_dir.glob("*.lock") if s.run_dir.exists() else []:
                supervisor.stop(s.run_dir, lock.name[: -len(".lock")])


def test_local_site_lifecycle(site: Site, tmp_path: Path) -> None:
    storescu, findscu = dcmtk("storescu"), dcmtk("findscu")
    archive_port, router_port, _ = site.ports
    bp = str(site.bp)
    site.ok("validate", "--strict", bp)
    assert "run pacsinfra apply first" in site.cli("verify", bp).stderr  # never applied: exit 2
    assert site.cli("verify", bp).returncode == 2

    out = site.ok("apply", bp, "--auto-approve")
    assert "Apply complete: 4 done (4 create)" in out, out
    assert site.processes(), "apply started no process"

    # verify: the table, every step passed, and the test study removed through DICOMweb
    out = site.ok("verify", bp)
    assert "smoke test PASSED" in out, out
    for step in ("c-store", "arrival", "c-find study", "c-find series", "c-find image",
                 "c-move+compare", "delete"):
        assert any(line.startswith(step) and " PASS " in line for line in out.splitlines()), out
    report = json.loads(site.ok("verify", bp, "--json", "--keep"))
    assert report["ok"] is True and report["entry"] == "service.router[0]"
    assert report["archives"] == ["service.archive[0]"]
    assert {s["result"] for s in report["steps"]} <= {"PASS", "SKIP"}

    # The smoke test removes its study through the archive's DICOMweb DELETE (token from
    # the rendered config's secret reference); C-FIND at the archive no longer finds it.
    import yaml

    from pacsinfra.verify.site import site_endpoints
    from pacsinfra.verify.smoke import run_smoke

    arch_cfg = yaml.safe_load(
        (site.root / SITE / "machines" / MACHINE / "services/archive/config.yaml").read_text())
    ep = site_endpoints([("service.archive[0]", "archive", arch_cfg)])
    assert set(ep.deleters) == {"ARCHIVE"}, ep.notes
    smoke = run_smoke(ep.entry, ep.archives, receiver_ae=ep.receiver.ae_title,
                      receiver_host=ep.receiver.host, receiver_port=ep.receiver.port,
                      wait_timeout=60, deleters=ep.deleters)
    assert smoke.ok, smoke.table()
    deleted = [s for s in smoke.steps if s.name == "delete"]
    assert [s.result for s in deleted] == ["PASS"], smoke.table()
    assert "DICOMweb DELETE" in deleted[0].detail
    gone = subprocess.run([findscu, "-v", "-S", "-aec", "ARCHIVE", "127.0.0.1", str(archive_port),
                           "-k", "QueryRetrieveLevel=STUDY",
                           "-k", f"StudyInstanceUID={smoke.study_uid}"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0, gone.stderr
    text = gone.stdout + gone.stderr  # -v echoes the query: look at the responses only
    assert "Final Find Response (Success)" in text and "Pending" not in text, text

    # DCMTK storescu through the router; findscu at the archive finds the instance
    from pacsinfra.verify.study import PROFILES, make_study

    ds = make_study(PROFILES["cr"], series=1, instances=1, scale=0.05)[0]
    dcm = tmp_path / "one.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    r = subprocess.run([storescu, "-aet", "MODALITY", "-aec", "ROUTER", "127.0.0.1",
                        str(router_port), str(dcm)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sop = str(ds.SOPInstanceUID)
    deadline = time.monotonic() + 30
    found = ""
    while time.monotonic() < deadline and sop not in found:
        f = subprocess.run([findscu, "-v", "-S", "-aec", "ARCHIVE", "127.0.0.1", str(archive_port),
                            "-k", "QueryRetrieveLevel=IMAGE",
                            "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                            "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                            "-k", "SOPInstanceUID"], capture_output=True, text=True, timeout=60)
        assert f.returncode == 0, f.stderr
        found = f.stdout + f.stderr
        if sop not in found:
            time.sleep(0.3)
    assert sop in found, found

    # nothing to do right after apply
    site.ok("plan", bp, "--detailed-exitcode")

    # a router setting changes: one in-place update of that service, the archive untouched
    archive_pid, router_pid = site.pid("archive"), site.pid("router")
    site.write(retries=4)
    plan = json.loads(site.ok("plan", bp, "--json"))
    changing = [s for s in plan["steps"] if s["action"] != "no-op"]
    assert [(s["address"], s["action"], s["kind"]) for s in changing] == [
        ("service.router[0]", "update", "IN_PLACE")], changing
    assert [f["name"] for f in changing[0]["fields"]] == ["config"]
    out = site.ok("apply", bp, "--auto-approve")
    assert "1 done (1 update)" in out, out
    assert site.pid("archive") == archive_pid
    assert site.pid("router") != router_pid
    cfg = (site.root / SITE / "machines" / MACHINE / "services/router/config.yaml").read_text()
    assert "max_attempts: 4" in cfg
    site.ok("plan", bp, "--detailed-exitcode")

    # a killed service is drift: the next plan restarts it
    from pacsinfra.services import supervisor

    supervisor.stop(site.run_dir, "archive")
    r = site.cli("verify", bp, "--wait", "2")
    assert r.returncode == 1 and "smoke test FAILED" in r.stdout, r.stdout + r.stderr
    plan = json.loads(site.ok("plan", bp, "--json"))
    changing = [s for s in plan["steps"] if s["action"] != "no-op"]
    assert [(s["address"], [f["name"] for f in s["fields"]]) for s in changing] == [
        ("service.archive[0]", ["running"])], changing
    site.ok("apply", bp, "--auto-approve")
    assert site.pid("archive") != archive_pid

    # destroy stops everything and removes the machine directory
    out = site.ok("destroy", bp, "--auto-approve")
    assert "4 delete" in out, out
    assert site.processes() == []
    assert not (site.root / SITE / "machines" / MACHINE).exists()


def test_unhealthy_service_fails_with_its_log(site: Site) -> None:
    """A service that cannot start (its port is taken) fails the step with its log tail."""
    import socket

    archive_port = site.ports[0]
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", archive_port))
        blocker.listen(1)
        r = site.cli("apply", str(site.bp), "--auto-approve")
    assert r.returncode == 1, r.stdout + r.stderr
    text = r.stdout + r.stderr
    assert "failed  service.archive[0] (create)" in text, text
    assert "health check failed" in text or "exited at start" in text, text
    assert "| " in text, text  # the log tail is quoted
    assert "skipped service.router[0]" in text, text
    # nothing of the failed service is left running or marked
    assert not (site.root / SITE / "machines" / MACHINE / "services/archive/service.json").exists()
    assert site.processes() == []


def test_unreachable_router_destination_fails_the_apply(site: Site, tmp_path: Path) -> None:
    """After the router answers, each of its destinations is C-ECHOed from the router's
    machine; one that does not answer fails the step, naming it, with the router's log."""
    extra = free_port()  # an external archive that is not there yet
    text = site.bp.read_text().replace(
        "destinations: {arch: {ae_title: ARCHIVE, service: archive, port: "
        f"{site.ports[0]}}}}}",
        "destinations: {arch: {ae_title: ARCHIVE, service: archive, port: "
        f"{site.ports[0]}}}, pacs2: {{ae_title: PACS2, host: 127.0.0.1, port: {extra}}}}}")
    text = text.replace("rules: [{name: all, forward: [arch]}]",
                        "rules: [{name: all, forward: [arch, pacs2]}]")
    assert "pacs2" in text and "[arch, pacs2]" in text
    site.bp.write_text(text)
    r = site.cli("apply", str(site.bp), "--auto-approve")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "failed  service.router[0] (create)" in out, out
    assert "destinations unreachable from the router's machine" in out, out
    assert f"destination pacs2: PACS2@127.0.0.1:{extra}" in out, out
    assert "destination arch" not in out, out  # the deployed archive answered
    assert "end of the router's log" in out, out

    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS2", "-od", str(tmp_path),
                            str(extra)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        site.ok("apply", str(site.bp), "--auto-approve")  # the destination is there now
    finally:
        scp.terminate()
        scp.wait()
