"""A real VM end to end: the KVM driver boots a Debian guest under QEMU, pacsinfra deploys
the archive into it over SSH and ``pacsinfra verify`` passes through it.

1. A guest image from Debian packages (``support.guest_image``: cloud kernel, busybox
   initramfs, ext4 root with python3, venv and sshd; cached, keyed by package versions).
2. ``KvmDriver`` on ``qemu:///embed`` (TCG) creates the machine: a qcow2 overlay on the
   image's root file system, direct kernel boot with this run's initrd (SSH host key and
   root's authorized key appended: the host key is generated here and pinned, never
   trusted on first use), a user-mode NIC forwarding 127.0.0.1:<ssh> and the archive's
   DICOM port into the guest.
3. A ``static`` blueprint names the guest (127.0.0.1, port = the forwarded SSH port,
   pinned key) and ``pacsinfra apply`` installs the wheel into a venv in the guest
   (``system_site_packages``: the dependencies are in the image), writes the config,
   starts the archive under the supervisor and C-ECHOes it through the forward.
4. ``pacsinfra verify --receiver-bind 127.0.0.1``: the archive C-MOVEs to PXVERIFY at
   10.0.2.2 (QEMU's address for the host's loopback), where verify listens.
5. ``destroy``, then the driver deletes the machine; the console log is printed on failure.

First slice of issue 8: the machine comes from the KVM driver's API and the services from
a second (static) blueprint; the kvm driver does not emit service resources yet.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need, need_binary, need_module
from support.guest_image import GuestImage, build_guest, keyed_initrd
from support.qemu_embed import embed_root
from support.wheelhouse import requirements, wheelhouse

from pacsinfra.drivers.base import (
    DiskSpec,
    MachineSpec,
    NicSpec,
    Ownership,
    PowerState,
    StorageSpec,
    changed_fields,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITE = "qg"  # the machine (kvm); the services' site is "qgs" (static)
MACHINE = "qgs-archive-1"  # <site>-<role>-<n> of the static blueprint
BOOT_TIMEOUT = 180.0  # TCG on a busy 2-core machine: ~7 s idle, allow a lot more
GUEST_ROOT = "/opt/pacsinfra"


@dataclass
class Times:
    """Measured seconds, printed at the end (pytest -s) and on failure."""

    values: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        return ", ".join(f"{k} {v:.1f}s" for k, v in self.values.items())


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pacsinfra-e2e",
                    "-f", str(path)], check=True, capture_output=True)


def wait_for_ssh(port: int, known_hosts: Path, key: Path, console: Path, timeout: float) -> float:
    """Seconds until ``ssh`` logs in with the pinned host key (StrictHostKeyChecking=yes)."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        r = subprocess.run(
            ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o",
             "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
             "-i", str(key), "-p", str(port), "root@127.0.0.1", "true"],
            capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return time.monotonic() - t0
        last = r.stderr.strip()[-300:]
        time.sleep(1)
    pytest.fail(f"the guest's sshd did not answer on 127.0.0.1:{port} within {timeout:.0f}s "
                f"(last ssh error: {last})\n--- console ---\n{_tail(console)}", pytrace=False)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"(no console log at {path})"


def static_blueprint(tmp: Path, ssh_port: int, host_key: str, client_key: Path,
                     dicom_port: int, receiver_port: int) -> str:
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: qgs}}
provider:
  driver: static
  static:
    user: root
    key_file: {client_key}
    python: /usr/bin/python3
    system_site_packages: true
    records: {tmp / "records"}
    hosts:
      {MACHINE}: {{address: 127.0.0.1, port: {ssh_port}, root: {GUEST_ROOT}, host_keys: ["{host_key}"]}}
images: {{guest: {{}}}}
machines:
  archive: {{image: guest, cpu: {{count: 2}}, memory: {{size: 1GiB}}, services: [archive]}}
services:
  archive:
    kind: archive
    config:
      ae_title: QGARCH
      port: {dicom_port}
      bind: 0.0.0.0
      dicomweb: {{enabled: false}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 10.0.2.2, port: {receiver_port}}}}}
"""


@pytest.fixture
def guest(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The booted guest (machine created through KvmDriver) and how to reach it."""
    need_module("libvirt")
    need_module("pynetdicom")
    need_binary("qemu-system-x86_64", "qemu-img", "apt-get", "apt-cache", "dpkg-deb", "tar",
                "mke2fs", "ssh", "ssh-keygen")
    need(os.geteuid() == 0, "qemu:///embed with user=root needs root")
    times = Times()
    t0 = time.monotonic()
    try:
        house = wheelhouse(sys.version_info[:2])
        log: list[str] = []
        image: GuestImage = build_guest(house, requirements(), log=log)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        need(False, f"cannot build the guest image from Debian packages: {exc}")
        raise
    times.values["image"] = time.monotonic() - t0
    need(image.python == "{}.{}".format(*sys.version_info[:2]),
         f"the guest's Python {image.python} differs from this venv's (binary wheels are per ABI)")

    keys = tmp_path / "keys"
    keys.mkdir()
    _keygen(keys / "host")
    _keygen(keys / "client")
    host_key = " ".join((keys / "host.pub").read_text().split()[:2])
    initrd = keyed_initrd(image, keys / "host", (keys / "client.pub").read_text(),
                          tmp_path / "initrd")
    ssh_port, dicom_port = free_port(), free_port()
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{ssh_port} {host_key}\n")
    console_dir = tmp_path / "console"
    console_dir.mkdir()
    console = console_dir / "qg-guest-1.console.log"

    from pacsinfra.drivers.kvm import KvmDriver

    root = embed_root(tmp_path_factory)
    driver = KvmDriver({"uri": f"qemu:///embed?root={root}", "shutdown_timeout": 2,
                        "cloud_init": False, "console_log": str(console_dir)})
    driver.connect()
    pool = StorageSpec(address="storage.guest", name="qg-guest", tier="test")
    spec = MachineSpec(
        address="machine.guest[0]", name="qg-guest-1", role="guest", index=0,
        image={"path": str(image.root), "format": "raw", "kernel": str(image.kernel),
               "initrd": str(initrd), "cmdline": image.cmdline},
        cpu_count=2, memory_mib=1024,
        disks=(DiskSpec("os", 1024, pool.name),),
        nics=(NicSpec(f"user:hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
                      f"hostfwd=tcp:127.0.0.1:{dicom_port}-:{dicom_port}"),),
    )
    try:
        driver.create(pool, Ownership(SITE, pool.address, "e2e"))
        t0 = time.monotonic()
        created = driver.create(spec, Ownership(SITE, spec.address, "e2e"))
        assert created.power == PowerState.ON
        assert changed_fields(spec, created) == []  # image, NIC forwards and all read back
        times.values["boot"] = time.monotonic() - t0 + wait_for_ssh(
            ssh_port, keys / "known_hosts", keys / "client", console, BOOT_TIMEOUT)
        yield {"driver": driver, "spec": spec, "ssh_port": ssh_port, "dicom_port": dicom_port,
               "host_key": host_key, "client_key": keys / "client", "console": console,
               "times": times, "image": image, "log": log}
    finally:
        t0 = time.monotonic()
        observed = driver.read(spec)
        if observed is not None:
            driver.delete(observed)
        observed_pool = driver.read(pool)
        if observed_pool is not None:
            driver.delete(observed_pool)
        driver.close()
        times.values["teardown"] = time.monotonic() - t0
        print(f"\nkvm guest e2e: {times.report()}; image build log: {log or 'cached'}")


def _dicom_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_archive_deployed_into_a_real_guest_and_verified(guest: dict[str, Any],
                                                          tmp_path: Path) -> None:
    times: Times = guest["times"]
    receiver = free_port()
    bp = tmp_path / "site.yaml"
    bp.write_text(static_blueprint(tmp_path, guest["ssh_port"], guest["host_key"],
                                   guest["client_key"], guest["dicom_port"], receiver))
    env = {k: v for k, v in os.environ.items() if k != "PACSINFRA_DEBUG"}

    def cli(*args: str, timeout: float = 600) -> str:
        try:
            r = subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=env,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pacsinfra {args[0]} timed out after {timeout:.0f}s\n--- console ---\n"
                        f"{_tail(guest['console'])}", pytrace=False)
        assert r.returncode == 0, (f"pacsinfra {' '.join(args)} -> {r.returncode}\n{r.stdout}\n"
                                   f"{r.stderr}\n--- console ---\n{_tail(guest['console'])}")
        return r.stdout

    try:
        t0 = time.monotonic()
        out = cli("apply", str(bp), "--auto-approve")
        times.values["deploy"] = time.monotonic() - t0
        assert "create" in out and "Apply complete" in out, out
        assert _dicom_open(guest["dicom_port"])  # through the forward into the guest

        t0 = time.monotonic()
        out = cli("verify", str(bp), "--receiver-bind", "127.0.0.1", timeout=300)
        times.values["verify"] = time.monotonic() - t0
        assert "smoke test PASSED" in out, out
        assert f"QGARCH@127.0.0.1:{guest['dicom_port']}" in out, out

        t0 = time.monotonic()
        cli("plan", str(bp), "--detailed-exitcode")  # nothing to do right after apply
        times.values["replan"] = time.monotonic() - t0
    finally:
        if (tmp_path / ".pacsinfra").exists():
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "pacsinfra", "destroy", str(bp),
                            "--auto-approve"], env=env, capture_output=True, timeout=300)
            times.values["destroy"] = time.monotonic() - t0
        shutil.rmtree(tmp_path / "records", ignore_errors=True)
