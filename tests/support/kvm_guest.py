"""What the real-guest tests share: a prepared guest (image, this run's keys, initrd,
console directory, embed root, free ports), leftovers removed, timings, console reads.

Used by tests/integration/test_kvm_guest_e2e.py and test_kvm_guest_systemd.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need, need_binary, need_module

from support.guest_image import GuestImage, build_guest, keyed_initrd
from support.qemu_embed import embed_root
from support.wheelhouse import requirements, wheelhouse


@dataclass
class Times:
    """Measured seconds, printed at the end (pytest -s) and on failure."""

    values: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        return ", ".join(f"{k} {v:.1f}s" for k, v in self.values.items())


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pacsinfra-e2e",
                    "-f", str(path)], check=True, capture_output=True)


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"(no console log at {path})"


def dicom_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ConsoleWatch(threading.Thread):
    """Seconds from start until the console shows the host keys (the guest has booted)."""

    def __init__(self, console: Path) -> None:
        super().__init__(daemon=True)
        self.console, self.t0, self.seen, self.stop = console, time.monotonic(), None, False

    def run(self) -> None:
        while not self.stop and self.seen is None:
            if "-----END SSH HOST KEY KEYS-----" in tail(self.console, 100_000):
                self.seen = time.monotonic() - self.t0
            time.sleep(0.2)


def remove_leftovers(root: Path, site: str) -> None:
    """Whatever a failed destroy left of ``site`` (run in a child: embed is per process)."""
    code = f"""
from pacsinfra.drivers.kvm.driver import KvmDriver
from pacsinfra.specs import MachineSpec, StorageSpec
d = KvmDriver({{"uri": "qemu:///embed?root={root}", "shutdown_timeout": 2}})
d.connect()
found = d.list_owned({site!r})
for kind in (MachineSpec, StorageSpec):
    for obs in found:
        if isinstance(obs.spec, kind):
            d.delete(obs)
            print("removed leftover", obs.spec.address)
d.close()
"""
    subprocess.run([sys.executable, "-c", code], timeout=120, check=False)


@contextmanager
def prepared_guest(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, *, site: str,
                   machine: str, ports: tuple[str, ...], label: str) -> Iterator[dict[str, Any]]:
    """The guest image (built or cached), this run's host and client keys in a keyed
    initrd, a console directory, an embed root and a free port per name in ``ports``
    (plus ``ssh_port``); leftovers of ``site`` removed and timings printed at the end."""
    need_module("libvirt")
    need_module("pynetdicom")
    need_binary("qemu-system-x86_64", "qemu-img", "apt-get", "apt-cache", "dpkg-deb", "tar",
                "mke2fs", "ssh-keygen")
    need(os.geteuid() == 0, "qemu:///embed with user=root needs root")
    times = Times()
    t0 = time.monotonic()
    log: list[str] = []
    try:
        image: GuestImage = build_guest(wheelhouse(sys.version_info[:2]), requirements(),
                                        log=log)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        need(False, f"cannot build the guest image from Debian packages: {exc}")
        raise
    times.values["image"] = time.monotonic() - t0
    need(image.python == "{}.{}".format(*sys.version_info[:2]),
         f"the guest's Python {image.python} differs from this venv's (binary wheels are per ABI)")
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys / "host")
    keygen(keys / "client")
    initrd = keyed_initrd(image, keys / "host", (keys / "client.pub").read_text(),
                          tmp_path / "initrd")
    console_dir = tmp_path / "console"
    console_dir.mkdir()
    root = embed_root(tmp_path_factory)
    g: dict[str, Any] = {
        "image": image, "initrd": initrd, "embed": root, "console_dir": console_dir,
        "console": console_dir / f"{machine}.console.log", "client_key": keys / "client",
        "host_key": " ".join((keys / "host.pub").read_text().split()[:2]),
        "ssh_port": free_port(), "times": times, "log": log,
        **{name: free_port() for name in ports}}
    try:
        yield g
    finally:
        t0 = time.monotonic()
        remove_leftovers(root, site)
        times.values["leftovers"] = time.monotonic() - t0
        print(f"\n{label}: {times.report()}; image build log: {log or 'cached'}")
