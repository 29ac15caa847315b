"""The NoCloud seed of a machine: meta-data, user-data, network-config v2, as a ``cidata`` ISO.

The ISO is built by ``genisoimage`` (Debian package genisoimage) or, failing that,
``xorriso -as mkisofs``; both take the same arguments. The files are rendered from the
MachineSpec only, so the same spec always yields the same seed (the instance-id is a
hash of the content: a changed seed is a new instance for cloud-init).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pacsinfra.drivers.kvm.domain import nic_macs
from pacsinfra.errors import CapabilityError, TaskFailed
from pacsinfra.specs import MachineSpec

VOLUME_LABEL = "cidata"


@dataclass(frozen=True)
class Seed:
    """The three NoCloud files."""

    meta_data: str
    user_data: str
    network_config: str

    def files(self) -> dict[str, str]:
        return {
            "meta-data": self.meta_data,
            "user-data": self.user_data,
            "network-config": self.network_config,
        }


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False)


def network_config(spec: MachineSpec) -> dict[str, Any]:
    """Netplan-style v2 config: each NIC matched by MAC; static when it has an address."""
    ethernets: dict[str, Any] = {}
    for i, (nic, mac) in enumerate(zip(spec.nics, nic_macs(spec), strict=True)):
        entry: dict[str, Any] = {"match": {"macaddress": mac}, "set-name": f"eth{i}"}
        if nic.address:
            entry["addresses"] = [f"{nic.address}/{nic.prefix or 24}"]
            if nic.gateway:
                entry["routes"] = [{"to": "default", "via": nic.gateway}]
        else:
            entry["dhcp4"] = True
        if nic.mtu and nic.mtu != 1500:
            entry["mtu"] = nic.mtu
        ethernets[f"nic{i}"] = entry
    return {"version": 2, "ethernets": ethernets}


def disk_config(spec: MachineSpec) -> dict[str, Any]:
    """cloud-init ``fs_setup`` + ``mounts`` for the disks that have a mount point.

    Each is found by its virtio serial (the disk's name, as the domain XML sets it), gets
    an ext4 file system labelled with the disk's name on the whole device unless it
    already has one (``overwrite: false``: a re-run or a re-attached disk keeps its
    data), and is mounted by label with ``nofail`` (a missing disk must not stop the
    boot; the service deploy checks that the mount point is mounted).
    """
    fs: list[dict[str, Any]] = []
    mounts: list[list[str]] = []
    for disk in spec.disks:
        if not disk.mount:
            continue
        label = disk.name[:16]  # ext4 labels hold 16 bytes
        fs.append({"label": label, "filesystem": "ext4", "partition": "none",
                   "overwrite": False,
                   "device": f"/dev/disk/by-id/virtio-{disk.name[:20]}"})
        mounts.append([f"LABEL={label}", disk.mount, "ext4", "defaults,nofail", "0", "2"])
    return {"fs_setup": fs, "mounts": mounts} if fs else {}


def build_seed(spec: MachineSpec) -> Seed:
    """The seed files for ``spec`` (pure)."""
    hostname = spec.hostname or spec.name
    user: dict[str, Any] = {"hostname": hostname, "preserve_hostname": False}
    if spec.ssh_authorized_keys:
        user["ssh_authorized_keys"] = list(spec.ssh_authorized_keys)
    user.update(disk_config(spec))
    user_data = "#cloud-config\n" + _dump(user)
    net = _dump(network_config(spec))
    digest = hashlib.sha256((user_data + net).encode()).hexdigest()[:12]
    meta = _dump({"instance-id": f"{spec.name}-{digest}", "local-hostname": hostname})
    return Seed(meta_data=meta, user_data=user_data, network_config=net)


def iso_tool() -> list[str]:
    """The command that builds an ISO (mkisofs arguments follow)."""
    if shutil.which("genisoimage"):
        return ["genisoimage"]
    if shutil.which("xorriso"):
        return ["xorriso", "-as", "mkisofs"]
    raise CapabilityError(
        "building a cloud-init seed needs genisoimage or xorriso (apt-get install genisoimage)"
    )


def build_iso(seed: Seed) -> bytes:
    """The seed as an ISO 9660 image labelled ``cidata`` (Joliet + Rock Ridge)."""
    with tempfile.TemporaryDirectory(prefix="pacsinfra-seed-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name, text in seed.files().items():
            (src / name).write_text(text)
        out = Path(tmp) / "seed.iso"
        cmd = [
            *iso_tool(),
            "-quiet",
            "-output",
            str(out),
            "-volid",
            VOLUME_LABEL,
            "-joliet",
            "-rock",
            str(src),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise TaskFailed(f"building the cloud-init seed failed: {proc.stderr.strip()}")
        return out.read_bytes()
