"""Services as systemd units, on a real guest whose PID 1 is systemd.

The guest image of ``test_kvm_guest_e2e.py`` (``support.guest_image``: Debian's cloud
kernel, packages unpacked into an ext4 root, systemd in it) booted with
``init=/lib/systemd/systemd``: Debian's ``ssh.service`` starts sshd, a oneshot unit
prints the host keys on the console between cloud-init's markers, so the KVM driver
learns them as usual. One kvm blueprint, through the CLI, with ``init`` left at
``auto``:

1. ``apply``: the archive and a router in front of it become
   ``pacsinfra-archive.service`` / ``pacsinfra-router.service`` (PID 1 is systemd, found
   by the driver): active and enabled, hardened (no capabilities, ``NoNewPrivs``), the
   archive's secret in a 0600 env file and in the process's environment byte for byte,
   nowhere in the unit, the state, the plan or any output; no supervisor.
2. ``verify`` passes through the router; a plan right after is empty.
3. ``kill -9`` of the archive: systemd restarts it (``Restart=on-failure``).
4. A router whose TLS certificate is missing fails its update's health check: ``apply``
   exits 1 with the unit's journal tail and where to read it (``journalctl -u``).
5. ``deploy.init: supervisor`` and a router config change: one in-place update that
   moves the router to the pacsinfra supervisor (unit gone, answering again), the
   archive's unit untouched.
6. ``destroy --target`` of each service: the archive's unit is stopped, disabled and
   deleted with its env file; then the machine and pool go.

Plus, on a netns sshd host (no systemd there): ``auto`` picks the supervisor and
``init: systemd`` is refused with a message naming the host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from support.guest_image import GuestImage
from support.kvm_guest import ConsoleWatch, Times, dicom_open, prepared_guest, tail
from support.netns_hosts import NetnsLab, require_netns

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITE = "qs"
MACHINE = "qs-pacs-1"  # <site>-<role>-<n>
BOOT_TIMEOUT = 180
GUEST_ROOT = "/opt/pacsinfra"
ARCHIVE_UNIT = "pacsinfra-archive.service"
ROUTER_UNIT = "pacsinfra-router.service"
VIEWER_UNIT = "pacsinfra-viewer.service"
SECRET_VAR = "QS_ARCHIVE_TOKEN"
VIEWER_TOKEN_VAR, VIEWER_TOKEN = "QS_VIEWER_TOKEN", "qs-viewer-read-token-0123456789"
VIEWER_USER, VIEWER_PASSWORD_VAR, VIEWER_PASSWORD = "radiology", "QS_VIEWER_PASSWORD", "qs-pw-42"
# what an env file must carry intact: quotes, $, backquote, backslash, #, non-ASCII
SECRET = "s3cr\"t $HOME `id` \\ 'q' #x é-Ω"


def _step(out: str, address: str, verb: str = "created") -> float:
    """Seconds the engine reported for one step (-1 when absent)."""
    m = re.search(re.escape(address) + rf": {verb} \(([0-9.]+)s\)", out)
    return float(m[1]) if m else -1.0


def systemd_blueprint(g: dict[str, Any], receiver_port: int, *, max_attempts: int = 10,
                      init: str | None = None, broken_tls: bool = False) -> str:
    image: GuestImage = g["image"]
    deploy = f"  init: {init}\n" if init else ""
    # a certificate that is not on the host: the router cannot start
    tls = ("\n      tls: {enabled: true, cert_file: /etc/pacsinfra/missing.pem, "
           "key_file: /etc/pacsinfra/missing.key}") if broken_tls else ""
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: {SITE}}}
provider:
  driver: kvm
  kvm:
    uri: "qemu:///embed?root={g["embed"]}"
    cloud_init: false
    shutdown_timeout: 2
    console_log: {g["console_dir"]}
deploy:
  user: root
  key_file: {g["client_key"]}
  python: /usr/bin/python3
  root: {GUEST_ROOT}
  system_site_packages: true
  boot_timeout: {BOOT_TIMEOUT}
{deploy}images:
  guest:
    kvm: {{path: {image.root}, format: raw, kernel: {image.kernel}, initrd: {g["initrd"]},
          cmdline: "{image.systemd_cmdline}"}}
networks:
  lab: {{purpose: dicom, kvm: {{user: true}}}}
storage:
  guest: {{tier: performance}}
machines:
  pacs:
    image: guest
    cpu: {{count: 2}}
    memory: {{size: 1GiB}}
    disks: [{{name: os, size: 1GiB, storage: guest}}]
    nics:
      - network: lab
        forwards: [{{guest: 22, host: {g["ssh_port"]}}},
                   {{guest: {g["archive_port"]}, host: {g["archive_port"]}}},
                   {{guest: {g["router_port"]}, host: {g["router_port"]}}},
                   {{guest: {g["viewer_port"]}, host: {g["viewer_port"]}}}]
    services: [archive, router, viewer]
services:
  archive:
    kind: archive
    config:
      ae_title: QSARCH
      port: {g["archive_port"]}
      # DICOMweb on loopback, for the viewer beside it (its read token); the legacy
      # all-scope token travels as a secret: into the unit's env file, never into the
      # unit or the config
      dicomweb:
        token: {{env: {SECRET_VAR}}}
        tokens: [{{name: viewer, scopes: [read], token: {{env: {VIEWER_TOKEN_VAR}}}}}]
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 10.0.2.2, port: {receiver_port}}}}}
  router:
    kind: router
    config:
      ae_title: QSROUTER
      port: {g["router_port"]}
      destinations: {{arch: {{ae_title: QSARCH, service: archive, port: {g["archive_port"]}}}}}
      rules: [{{name: all, forward: [arch]}}]
      retry: {{max_attempts: {max_attempts}}}{tls}
  viewer:
    kind: viewer
    config:
      port: {g["viewer_port"]}
      bind: 0.0.0.0                 # reached through QEMU's forward: a login is required
      allow_plain_http: true        # (the test's loopback stands in for a TLS proxy)
      auth: {{users: {{{VIEWER_USER}: {{password: {{env: {VIEWER_PASSWORD_VAR}}}}}}}}}
"""


@pytest.fixture
def guest(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The image, this run's keys and ports; leftovers removed at the end."""
    with prepared_guest(tmp_path, tmp_path_factory, site=SITE, machine=MACHINE,
                        ports=("archive_port", "router_port", "viewer_port"),
                        label="kvm guest systemd") as g:
        yield g


class Guest:
    """Commands in the guest over SSH, its host key pinned (the one this run generated)."""

    def __init__(self, g: dict[str, Any]) -> None:
        from pacsinfra.deploy.ssh import SSHTarget, SSHTransport

        self.t = SSHTransport(SSHTarget(host="127.0.0.1", port=g["ssh_port"], user="root",
                                        key_file=g["client_key"], host_keys=(g["host_key"],),
                                        name=MACHINE))

    def sh(self, cmd: str, ok: tuple[int, ...] = (0,)) -> str:
        res = self.t.run(cmd, 60)
        assert res.rc in ok, f"{cmd} -> {res.rc}\n{res.stdout}\n{res.stderr}"
        return res.stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}")

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID"))

    def close(self) -> None:
        self.t.close()


# Three Python services and a dozen restarts in a TCG guest: ~550 s on an idle 2-core
# machine, beyond 600 s when the rest of the suite runs beside it.
@pytest.mark.timeout(1500)
def test_services_run_as_systemd_units_in_a_systemd_guest(
        guest: dict[str, Any], tmp_path: Path) -> None:
    times: Times = guest["times"]
    receiver = free_port()
    bp = tmp_path / "site.yaml"
    bp.write_text(systemd_blueprint(guest, receiver))
    env = {k: v for k, v in os.environ.items() if k != "PACSINFRA_DEBUG"}
    env[SECRET_VAR] = SECRET
    env[VIEWER_TOKEN_VAR] = VIEWER_TOKEN
    env[VIEWER_PASSWORD_VAR] = VIEWER_PASSWORD
    console: Path = guest["console"]
    outputs: list[str] = []

    def cli(*args: str, timeout: float = 600, ok: tuple[int, ...] = (0,)) -> str:
        try:
            r = subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=env,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pacsinfra {args[0]} timed out after {timeout:.0f}s\n--- console ---\n"
                        f"{tail(console)}", pytrace=False)
        outputs.extend((r.stdout, r.stderr))
        assert r.returncode in ok, (f"pacsinfra {' '.join(args)} -> {r.returncode}\n{r.stdout}\n"
                                    f"{r.stderr}\n--- console ---\n{tail(console)}")
        return r.stdout

    vm: Guest | None = None
    t_all = time.monotonic()
    try:
        watch = ConsoleWatch(console)
        watch.start()
        t0 = time.monotonic()
        out = cli("apply", str(bp), "--auto-approve")
        times.values["apply"] = time.monotonic() - t0
        watch.stop = True
        times.values["boot (console keys)"] = watch.seen or -1.0
        times.values["machine step"] = _step(out, "machine.pacs[0]")
        times.values["archive step"] = _step(out, "service.archive[0]")
        times.values["router step"] = _step(out, "service.router[0]")
        times.values["viewer step"] = _step(out, "service.viewer[0]")
        assert "Apply complete" in out and "5 done" in out, out

        # -- the services are systemd units ------------------------------------------------
        vm = Guest(guest)
        assert vm.sh("cat /proc/1/comm") == "systemd"
        for unit in (ARCHIVE_UNIT, ROUTER_UNIT, VIEWER_UNIT):
            assert vm.sh(f"systemctl is-active {unit}") == "active"
            assert vm.sh(f"systemctl is-enabled {unit}") == "enabled"
            # logged in as root, every service runs as the unprivileged service account
            assert vm.sh(f"ps -o user= -p {vm.main_pid(unit)}") == "pacsinfra", unit
        assert vm.sh(f"tr '\\0' ' ' < /proc/{vm.main_pid(VIEWER_UNIT)}/cmdline").startswith(
            "nginx: master process")
        # no supervisor anywhere: the unit's main process is the service itself
        assert vm.sh(f"ls {GUEST_ROOT}/run/ 2>/dev/null | grep -c '\\.pid$'", ok=(0, 1)) == "0"
        apid = vm.main_pid(ARCHIVE_UNIT)
        cmd = vm.sh(f"tr '\\0' ' ' < /proc/{apid}/cmdline")
        assert f"-m pacsinfra archive serve --config {GUEST_ROOT}/services/archive/config.yaml" \
            in cmd, cmd
        status = vm.sh(f"cat /proc/{apid}/status")
        assert "CapBnd:\t0000000000000000" in status and "NoNewPrivs:\t1" in status, status
        # the secret: in the process's environment byte for byte, through a 0600 env file
        environ = vm.t.run(f"cat /proc/{apid}/environ", 30).stdout
        assert f"{SECRET_VAR}={SECRET}" in environ.split("\0")
        env_file = f"{GUEST_ROOT}/services/archive/secrets.env"
        assert vm.sh(f"stat -c %a {env_file}") == "600"
        unit_text = vm.sh(f"cat /etc/systemd/system/{ARCHIVE_UNIT}")
        assert f"EnvironmentFile={env_file}" in unit_text and "ProtectSystem=strict" in unit_text
        assert "$HOME" not in unit_text and "s3cr" not in unit_text
        assert "s3cr" not in vm.sh(f"cat {GUEST_ROOT}/services/archive/config.yaml")
        assert "EnvironmentFile" not in vm.sh(f"cat /etc/systemd/system/{ROUTER_UNIT}")

        t0 = time.monotonic()
        out = cli("verify", str(bp), "--receiver-bind", "127.0.0.1", "--keep", "--json",
                  timeout=300)
        times.values["verify"] = time.monotonic() - t0
        report = json.loads(out)
        assert report["ok"], out
        viewer_step = next(s for s in report["steps"] if s["name"] == "viewer")
        assert "pixels identical to those sent" in viewer_step["detail"], viewer_step

        # -- the study in a browser, through the guest's viewer ---------------------------------
        t0 = time.monotonic()
        times.values["first image in the browser"] = _browser_sees(
            f"http://127.0.0.1:{guest['viewer_port']}", report["study_uid"])
        times.values["browser"] = time.monotonic() - t0

        t0 = time.monotonic()
        cli("plan", str(bp), "--detailed-exitcode")  # running is read from systemctl show
        times.values["replan"] = time.monotonic() - t0

        # -- systemd's restart policy: a killed archive comes back by itself -----------------
        t0 = time.monotonic()
        vm.sh(f"kill -9 {apid}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = vm.main_pid(ARCHIVE_UNIT)
            if pid not in (0, apid) and vm.sh(f"systemctl is-active {ARCHIVE_UNIT}",
                                              ok=(0, 3)) == "active":
                break
            time.sleep(0.5)
        assert pid not in (0, apid), "systemd did not restart the killed archive"
        assert vm.show(ARCHIVE_UNIT, "NRestarts") == "1"
        apid = pid
        deadline = time.monotonic() + 60
        while not dicom_open(guest["archive_port"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        times.values["restart after kill -9"] = time.monotonic() - t0

        # -- a failed health check fails the apply with the unit's journal -----------------------
        bp.write_text(systemd_blueprint(guest, receiver, broken_tls=True))
        t0 = time.monotonic()
        cli("apply", str(bp), "--auto-approve", ok=(1,))
        times.values["failed router update"] = time.monotonic() - t0
        failure = outputs[-2] + outputs[-1]
        at = failure.find("service.router[0]: update FAILED")
        print("--- the failed apply said ---\n" + failure[at:at + 2500])
        assert "service.router[0]: update FAILED" in failure, failure
        assert f"journalctl -u {ROUTER_UNIT}" in failure, failure
        assert "missing.pem" in failure or "No such file" in failure, failure  # the journal tail
        # pacsinfra's own message, no traceback of its own (the journal's lines are quoted)
        assert not [ln for ln in failure.splitlines()
                    if "Traceback" in ln and not ln.lstrip().startswith("|")], failure
        assert vm.main_pid(ROUTER_UNIT) == 0  # a failed deploy leaves it stopped
        assert vm.main_pid(ARCHIVE_UNIT) == apid

        # -- the next config change, with init: supervisor, restarts the router alone and moves
        # it (on this deploy) from its unit to the supervisor; the archive's unit is untouched
        bp.write_text(systemd_blueprint(guest, receiver, max_attempts=5, init="supervisor"))
        out = cli("plan", str(bp))
        assert "1 to change" in out and "service.router[0]" in out, out
        t0 = time.monotonic()
        out = cli("apply", str(bp), "--auto-approve")
        times.values["router update, to the supervisor"] = time.monotonic() - t0
        times.values["(its step)"] = _step(out, "service.router[0]", "updated")
        assert "1 done (1 update)" in out, out
        assert vm.sh(f"systemctl is-active {ROUTER_UNIT}", ok=(3, 4)) in ("inactive", "unknown")
        assert vm.sh(f"test -e /etc/systemd/system/{ROUTER_UNIT}", ok=(1,)) == ""
        assert vm.sh(f"test -e {GUEST_ROOT}/run/router.pid") == ""
        assert dicom_open(guest["router_port"])  # answering, from the supervisor now
        assert vm.main_pid(ARCHIVE_UNIT) == apid
        assert "max_attempts: 5" in vm.sh(f"cat {GUEST_ROOT}/services/router/config.yaml")
        cli("plan", str(bp), "--detailed-exitcode")  # the router's running read from its supervisor

        # -- destroy: units stopped, disabled, deleted -----------------------------------------
        t0 = time.monotonic()
        cli("destroy", str(bp), "--auto-approve", "--target", "service.viewer[0]")
        assert vm.sh(f"test -e /etc/systemd/system/{VIEWER_UNIT}", ok=(1,)) == ""
        assert vm.sh("pgrep -x nginx", ok=(1,)) == ""
        cli("destroy", str(bp), "--auto-approve", "--target", "service.router[0]")
        out = cli("destroy", str(bp), "--auto-approve", "--target", "service.archive[0]")
        assert "service.archive[0]: deleted" in out, out
        assert vm.sh(f"systemctl is-active {ARCHIVE_UNIT}", ok=(3, 4)) in ("inactive", "unknown")
        assert vm.sh(f"test -e /etc/systemd/system/{ARCHIVE_UNIT} || test -e {env_file}",
                     ok=(1,)) == ""
        assert "pacsinfra-" not in vm.sh("systemctl list-unit-files --no-legend 'pacsinfra-*'"
                                         " | grep -v pacsinfra-guest", ok=(0, 1))
        assert vm.sh("pgrep -f 'pacsinfra (archive|router) serve'", ok=(1,)) == ""
        vm.close()
        vm = None
        out = cli("destroy", str(bp), "--auto-approve", timeout=300)
        times.values["destroys"] = time.monotonic() - t0
        for addr in ("machine.pacs[0]", "storage.guest"):
            assert f"{addr}: deleted" in out, out
        assert not dicom_open(guest["archive_port"])

        # the secret never left the env file: no output, state or plan holds it
        state = bp.parent / ".pacsinfra"
        leaks = [str(p) for p in state.rglob("*") if p.is_file() and "s3cr" in p.read_text()]
        assert leaks == [] and not any("s3cr" in o for o in outputs)
        assert "s3cr" not in tail(console, 10**7)
        times.values["whole test"] = time.monotonic() - t_all
    finally:
        if vm is not None:
            vm.close()
        print(f"\n--- console tail ---\n{tail(console, 1500)}")


def _browser_sees(url: str, study_uid: str) -> float:
    """Debian's Chromium logs in to the viewer, finds the study in the list and shows its
    image with no failed DICOMweb call; the seconds from opening the study to the image."""
    from test_viewer_support import (
        NetLog,
        chromium,
        dismiss_overlays,
        image_stats,
        need_viewer_tools,
        wait_for_image,
    )

    need_viewer_tools()
    log = NetLog()
    with chromium() as browser:
        context = browser.new_context(
            http_credentials={"username": VIEWER_USER, "password": VIEWER_PASSWORD},
            service_workers="block", viewport={"width": 1280, "height": 900})
        page = context.new_page()
        log.attach(page)
        try:
            page.goto(url + "/", wait_until="domcontentloaded")
            page.get_by_text("PACSINFRA, TEST", exact=False).first.wait_for(timeout=60_000)
            page.goto(f"{url}/viewer?StudyInstanceUIDs={study_uid}", wait_until="domcontentloaded")
            seconds, _ = wait_for_image(page, timeout=60)
            dismiss_overlays(page)
            _, png = wait_for_image(page, timeout=20)
        finally:
            context.close()
    share, spread, levels = image_stats(png)
    assert share >= 0.05 and spread >= 2.0 and levels >= 8, (share, spread, levels)
    assert not log.errors(), log.summary()
    return seconds


def test_hosts_without_systemd_keep_the_supervisor() -> None:
    """A netns sshd host (PID 1 there is not systemd): auto means the supervisor, and
    ``init: systemd`` is refused naming the host, before anything is installed."""
    require_netns()
    from pacsinfra.errors import DeployError
    from pacsinfra.services.remote.service import RemoteService
    from pacsinfra.services.remote.session import HostSession
    from pacsinfra.services.remote.settings import HostSettings
    from pacsinfra.specs import ServiceSpec

    with tempfile.TemporaryDirectory(prefix="pacsinfra-nosd-") as tmp, \
            NetnsLab(1, Path(tmp)) as lab:
        host = lab.hosts[0]
        settings = HostSettings(machine="nosd-archive-1", address=host.address, port=host.port,
                                key_file=str(host.key_file), host_keys=(host.host_key_line,),
                                root=str(host.workdir / "root"))
        session = HostSession(settings)
        spec = ServiceSpec(address="service.archive[0]", name="nosd-archive-1-archive",
                           service="archive", kind="archive", machine="machine.archive[0]",
                           config={"ae_title": "NOSD", "port": 11112}, host=host.address)
        try:
            probe = session.init_probe()
            assert probe.root and not probe.systemd
            assert RemoteService(session, spec, "auto").wants_systemd() is False
            assert RemoteService(session, spec, "supervisor").wants_systemd() is False
            with pytest.raises(DeployError) as info:
                RemoteService(session, spec, "systemd").wants_systemd()
            msg = str(info.value)
            assert f"PID 1 on nosd-archive-1 (root@{host.address}:22) is not systemd" in msg, msg
            assert "init: auto or supervisor" in msg
        finally:
            session.close()
