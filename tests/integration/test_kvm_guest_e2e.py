"""A real VM end to end, the way a user does it: one ``kvm`` blueprint, and
``pacsinfra dr rebuild`` makes the machine, restores a site's backup into it and deploys
the archive.

1. A guest image from Debian packages (``support.guest_image``: cloud kernel, busybox
   initramfs, ext4 root with python3, venv and sshd; cached, keyed by package versions).
   Its init prints the SSH host keys on the serial console between cloud-init's
   ``-----BEGIN SSH HOST KEY KEYS-----`` markers.
2. The blueprint: ``provider.kvm`` on ``qemu:///embed`` (TCG) with ``console_log`` and
   ``ssh`` (root, this run's client key, the guest's python, ``system_site_packages``),
   the image (qcow2 overlay on the raw root, direct kernel boot with this run's initrd:
   root's authorized key and a host key generated here, which the blueprint does *not*
   pin), a user-mode network (``kvm: {user: true}``) whose NIC forwards 127.0.0.1:<ssh>
   to guest port 22 and the archive's DICOM port, and ``services: [archive]``.
3. Site A runs on this machine (the local provider): three studies, a live backup, then
   it is destroyed.
4. ``pacsinfra dr rebuild --site dr``: pool, machine (boot); the driver learns the host
   key from the console (the test checks it is the one it generated), waits for sshd,
   installs the wheel into a venv in the guest, copies the backup in and restores it
   with the guest's own pacsinfra, then starts the archive under the supervisor (no
   systemd in this guest); the smoke test C-MOVEs to PXVERIFY at 10.0.2.2 (QEMU's
   address for the host's loopback) and every study of the backup is found.
5. An empty plan, then ``destroy``: the service is stopped over SSH, then the machine and
   the pool go. The console log's tail is in every failure message.

Services as systemd units in the same kind of guest: ``test_kvm_guest_systemd.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from support.guest_image import GuestImage
from support.kvm_guest import ConsoleWatch, Times, dicom_open, prepared_guest, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITE = "qg"
MACHINE = "qg-archive-1"  # <site>-<role>-<n>
BOOT_TIMEOUT = 180  # TCG on a busy 2-core machine: ~7 s idle, allow a lot more
GUEST_ROOT = "/opt/pacsinfra"


def kvm_blueprint(g: dict[str, Any], receiver_port: int) -> str:
    image: GuestImage = g["image"]
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
images:
  guest:
    kvm: {{path: {image.root}, format: raw, kernel: {image.kernel}, initrd: {g["initrd"]},
          cmdline: "{image.cmdline}"}}
networks:
  lab: {{purpose: dicom, kvm: {{user: true}}}}
storage:
  guest: {{tier: performance}}
machines:
  archive:
    image: guest
    cpu: {{count: 2}}
    memory: {{size: 1GiB}}
    disks: [{{name: os, size: 1GiB, storage: guest}}]
    nics:
      - network: lab
        forwards: [{{guest: 22, host: {g["ssh_port"]}}},
                   {{guest: {g["dicom_port"]}, host: {g["dicom_port"]}}}]
    services: [archive]
services:
  archive:
    kind: archive
    config:
      ae_title: QGARCH
      port: {g["dicom_port"]}
      dicomweb: {{enabled: false}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 10.0.2.2, port: {receiver_port}}}}}
"""


@pytest.fixture
def guest(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The guest's image, this run's keys and ports; leftovers removed at the end."""
    with prepared_guest(tmp_path, tmp_path_factory, site=SITE, machine=MACHINE,
                        ports=("dicom_port",), label="kvm guest e2e") as g:
        yield g


def _local_site_a(port: int) -> str:
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: qga}}
provider: {{driver: local}}
machines:
  pacs: {{cpu: {{count: 1}}, memory: {{size: 1GiB}}, services: [archive]}}
services:
  archive:
    kind: archive
    config: {{ae_title: ARCHIVE, port: {port}, dicomweb: {{enabled: false}}}}
"""


def test_dr_rebuild_restores_into_a_kvm_guest(guest: dict[str, Any], tmp_path: Path) -> None:
    """``dr rebuild`` onto the kvm provider: the guest is made first, the backup copied
    into it over SSH and restored there by the guest's own pacsinfra, and only then does
    the archive start; every study of the backup is found through the forward."""
    from test_archive_support import store_studies, study_counts

    times: Times = guest["times"]
    console: Path = guest["console"]
    env = {k: v for k, v in os.environ.items() if k != "PACSINFRA_DEBUG"}
    env["PACSINFRA_LOCAL_ROOT"] = str(tmp_path / "local-root")

    def cli(*args: str, timeout: float = 600, rc: int = 0) -> str:
        try:
            r = subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=env,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pacsinfra {args[0]} timed out after {timeout:.0f}s\n--- console ---\n"
                        f"{tail(console)}", pytrace=False)
        out = r.stdout + r.stderr
        assert r.returncode == rc, (f"pacsinfra {' '.join(args)} -> {r.returncode}\n{out}\n"
                                    f"--- console ---\n{tail(console)}")
        assert "Traceback" not in out, out
        return out

    # site A (this machine): three studies, a live backup, then lost
    a_port = free_port()
    site_a = tmp_path / "a.yaml"
    site_a.write_text(_local_site_a(a_port))
    backups = tmp_path / "backups"
    backups.mkdir()
    cli("apply", str(site_a), "--auto-approve")
    sent = store_studies(a_port, studies=3, per_study=2, prefix="QGDR")
    (config,) = (tmp_path / "local-root").glob("qga/machines/*/services/archive/config.yaml")
    cli("backup", "--archive-config", str(config), "--to", str(backups / "mon"))
    cli("destroy", str(site_a), "--auto-approve")

    # site B: the kvm guest, rebuilt from the backups its blueprint names
    bp = tmp_path / "site.yaml"
    bp.write_text(kvm_blueprint(guest, free_port()) + f"""\
dr: {{backups: {backups}}}
sites:
  dr: {{metadata: {{description: site A rebuilt in a VM}}}}
""")
    try:
        out = cli("plan", str(bp), "--site", "dr")
        for addr in ("storage.guest", "machine.archive[0]", "service.archive[0]"):
            assert addr in out, out
        assert "network.lab" not in out, out  # user-mode NAT: no network object

        watch = ConsoleWatch(console)
        watch.start()
        t0 = time.monotonic()
        out = cli("dr", "rebuild", str(bp), "--site", "dr", "--auto-approve",
                  "--receiver-bind", "127.0.0.1", timeout=900)
        watch.stop = True
        times.values["boot (console keys)"] = watch.seen or -1.0
        times.values["dr rebuild"] = time.monotonic() - t0
        print(out)
        assert f"backup {backups / 'mon'}: 3 studies, 6 instances" in out, out
        assert f"restored 3 studies, 6 instances into service.archive[0] on {MACHINE}" in out, out
        assert "3/3 studies of the backup found by C-FIND" in out, out
        assert "smoke test PASSED" in out, out
        lines = out.splitlines()
        order = [next(i for i, ln in enumerate(lines) if key in ln) for key in (
            "machine.archive[0]: created", "restored 3 studies", "service.archive[0]: creating")]
        assert order == sorted(order), out  # machine, restore, then the archive
        # the test's own C-FIND through the forward: what site A held, instance for instance
        # (verify's own test study stays: this archive has no DICOMweb to delete it with)
        found = study_counts(guest["dicom_port"], "QGARCH")
        assert {uid: found.get(uid) for uid in sent} == sent, found

        # the host key was learnt from the console (not pinned anywhere) and is the guest's own
        from pacsinfra.deploy.ssh import host_keys_from_console

        learnt = [" ".join(k.split()[:2]) for k in host_keys_from_console(tail(console, 10**6))]
        assert learnt == [guest["host_key"]], learnt
        t0 = time.monotonic()
        cli("plan", str(bp), "--site", "dr", "--detailed-exitcode")  # nothing left to do
        times.values["replan"] = time.monotonic() - t0

        t0 = time.monotonic()
        out = cli("destroy", str(bp), "--site", "dr", "--auto-approve", timeout=300)
        times.values["destroy"] = time.monotonic() - t0
        for addr in ("service.archive[0]", "machine.archive[0]", "storage.guest"):
            assert f"{addr}: deleted" in out, out
        assert out.index("service.archive[0]: deleted") < out.index("machine.archive[0]: deleted")
        assert not dicom_open(guest["dicom_port"])
    finally:
        if "destroy" not in times.values:  # a failed rebuild or check: take the guest down
            subprocess.run([sys.executable, "-m", "pacsinfra", "destroy", str(bp), "--site",
                            "dr", "--auto-approve"], env=env, capture_output=True, timeout=300)
        print(f"\n--- console tail ---\n{tail(console, 1500)}")
