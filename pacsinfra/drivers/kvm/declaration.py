"""The kvm driver, declared: its settings, what it can do, how its machines are reached.

Pure (no libvirt import): the blueprint model, ``validate``, the planner and the docs
read this; :class:`~pacsinfra.drivers.kvm.driver.KvmDriver` carries it out.

A machine runs services once pacsinfra can reach its sshd at an address known before it
boots: the host side of a user-mode NIC's forward to guest port 22
(``127.0.0.1:<port>``), else the first static NIC address (at ``deploy.port``). DHCP
addresses are known only after boot, and a plan has no "known after apply" values.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from pacsinfra.drivers.base import Capability, Endpoint
from pacsinfra.drivers.declaration import Declaration, Reach, static_endpoint
from pacsinfra.drivers.kvm import usernet
from pacsinfra.specs import MachineSpec
from pacsinfra.types import Mhz, Strict

DOMAIN_TYPES = ("kvm", "qemu")
_HOSTFWD = re.compile(r"tcp:([0-9.]*):(\d+)-([0-9.]*):(\d+)")


class KvmSettings(Strict):
    """libvirt connection and KVM host settings.

    Attributes:
        uri: libvirt connection URI: ``qemu:///system`` (default),
            ``qemu+ssh://admin@kvm01/system``, ``qemu:///embed?root=DIR``, or
            ``test:///default`` (libvirt's built-in fake hypervisor).
        domain_type: ``kvm`` (hardware virtualisation) or ``qemu`` (TCG emulation). Default:
            ``qemu`` for ``qemu:///embed`` URIs, else ``kvm``.
        machine: QEMU machine type (default ``q35``).
        cloud_init: Attach a NoCloud seed CD-ROM (hostname, SSH keys, static addresses, disk
            mounts) to each machine. Default true.
        seed_pool: The storage pool that holds the seed of machines without disks.
        pool_root: Directory of the pools of storage classes without ``kvm.path`` (default
            ``/var/lib/pacsinfra/pools``).
        shutdown_timeout: Seconds of ACPI shutdown before a hard power-off, when a change needs
            the machine off (default 60).
        console_log: A directory on the KVM host: each machine's serial console also goes to
            ``<name>.console.log`` there, where SSH host keys can be learnt from.
    """

    uri: str | None = Field(None, description="libvirt URI: qemu:///system (default), "
                            "qemu+ssh://user@host/system, qemu:///embed?root=DIR, test:///default")
    domain_type: Literal["kvm", "qemu"] | None = Field(
        None, description="kvm, or qemu (TCG); default qemu for embed URIs, else kvm")
    machine: str | None = Field(None, description="QEMU machine type (q35)")
    host_mhz: Mhz | None = Field(
        None, description="per-core clock, for CPU reservations and limits (default: libvirt's)")
    cpu_pinning: dict[str, str] | None = Field(
        None, description="role -> host cpuset, e.g. {archive: \"2-7\"}")
    cloud_init: bool | None = Field(None, description="attach a NoCloud seed (true)")
    seed_pool: str | None = Field(None, description="pool for the seeds of machines without disks")
    pool_root: str | None = Field(None, description="where pools without a path are made")
    shutdown_timeout: float | None = Field(
        None, gt=0, le=3600, description="seconds a clean shutdown may take (60)")
    console_log: str | None = Field(
        None, description="a directory: each domain's serial console also goes to "
                          "<name>.console.log (pacsinfra learns new machines' SSH host keys there)")


class KvmImage(Strict):
    """Where the KVM driver finds an image: a file, a libvirt volume, or a kernel.

    One of ``path``, ``volume`` + ``pool``, or ``kernel`` (direct kernel boot, alone or with
    either of the others); ``initrd`` and ``cmdline`` need ``kernel``.

    Attributes:
        path: Base image file on the KVM host; the first disk is a copy-on-write overlay on it.
        format: Format of ``path`` (default ``qcow2``).
        volume: A libvirt volume, cloned into the first disk and grown to its size.
        pool: The pool of ``volume``.
        initrd: Initramfs file on the KVM host, for direct kernel boot.
        cmdline: Kernel command line, for direct kernel boot.
    """

    path: str | None = None
    format: Literal["qcow2", "raw"] | None = None
    volume: str | None = None
    pool: str | None = None
    # direct kernel boot (files on the KVM host); with no path/volume the disk starts blank
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KvmImage:
        if self.path and self.volume:
            raise ValueError("a kvm image is either 'path' or 'volume' (+ 'pool'), not both")
        if self.volume and not self.pool:
            raise ValueError("a kvm image 'volume' needs its 'pool'")
        if not (self.path or self.volume or self.kernel):
            raise ValueError("a kvm image needs 'path', 'volume' + 'pool', or 'kernel'")
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ValueError("a kvm image 'initrd' or 'cmdline' needs its 'kernel'")
        return self


class KvmNetwork(Strict):
    """How the KVM driver makes a network: a libvirt network, a host bridge, or user-mode NAT.

    Attributes:
        bridge: Bridge device of the libvirt network (default ``pi-<hash>``).
        forward: libvirt forward mode (default: ``nat`` when the network has a ``cidr``, else
            isolated).
        openvswitch: An Open vSwitch network: NICs are tagged with the network's ``vlan``
            through a port group.
        dhcp: Serve DHCP on the network (the upper half of the ``cidr``).
    """

    network: str | None = Field(None, description="libvirt network name (<site>-<name>)")
    bridge: str | None = None
    forward: Literal["nat", "route", "open", "bridge", "none"] | None = None
    openvswitch: bool | None = None
    dhcp: bool | None = None
    # QEMU user-mode NAT (slirp) instead of a libvirt network: no network object is made;
    # each NIC on it is reached through its ``forwards`` (guest 10.0.2.15, host at 10.0.2.2)
    user: bool | None = None

    @model_validator(mode="after")
    def _user_alone(self) -> KvmNetwork:
        if self.user:
            given = [k for k in ("network", "bridge", "forward", "openvswitch", "dhcp")
                     if getattr(self, k) is not None]
            if given:
                raise ValueError(f"a user-mode network (user: true) is no libvirt network: drop "
                                 f"{', '.join(given)}")
        return self


class KvmStorage(Strict):
    """How the KVM driver makes a storage class: a directory pool.

    Attributes:
        pool: Pool name (default ``<site>-<class>``).
        path: The pool's directory (default ``<pool_root>/<pool>``).
    """

    pool: str | None = Field(None, description="pool name (<site>-<name>)")
    path: str | None = Field(None, description="its directory (<pool_root>/<pool>)")


def user_forwards(spec: MachineSpec) -> list[tuple[str, int, int]]:
    """``(host address, host port, guest port)`` of every TCP forward of the user-mode NICs."""
    out = []
    for nic in spec.nics:
        if not usernet.is_user(nic.network):
            continue
        for item in nic.network[len(usernet.PREFIX):].split(","):
            key, _, value = item.partition("=")
            m = _HOSTFWD.fullmatch(value) if key == "hostfwd" else None
            if m:
                out.append((m[1] or "127.0.0.1", int(m[2]), int(m[4])))
    return out


def ssh_endpoint(spec: MachineSpec, port: int = 22) -> Endpoint | None:
    """The machine's SSH endpoint as the blueprint fixes it (None: known only after boot)."""
    for haddr, hport, gport in user_forwards(spec):
        if gport == 22:
            return Endpoint(haddr, hport, True)
    return static_endpoint(spec, port, skip=usernet.is_user)


def endpoint_problem(spec: MachineSpec) -> str:
    """Why a kvm machine cannot run services: no address known before it boots."""
    return (f"machine {spec.name} runs services but has no address known before it boots: "
            "give one of its NICs a static address (nics[].addresses), or put it on a "
            "user-mode network (networks.<n>.kvm.user: true) with a forward to guest port 22")


DECLARATION = Declaration(
    name="kvm",
    summary="KVM through libvirt (libvirt-python): domains, networks, directory pools",
    implementation="pacsinfra.drivers.kvm.driver:KvmDriver",
    settings=KvmSettings,
    image=KvmImage,
    network=KvmNetwork,
    storage=KvmStorage,
    capabilities=frozenset({
        Capability.CPU_RESERVATION,  # the CFS weight when no shares are given
        Capability.CPU_LIMIT,
        Capability.CPU_SHARES,
        Capability.MEMORY_LOCK,
        Capability.HUGEPAGES,
        Capability.VGPU,
        Capability.GPU_PASSTHROUGH,
        Capability.VLAN,  # tagged on Open vSwitch networks (validate warns for the others)
        Capability.JUMBO_FRAMES,
        Capability.IOPS_LIMIT,
    }),
    network_name_key="network",
    storage_name_key="pool",
    reach=Reach(endpoint=ssh_endpoint, problem=endpoint_problem),
    host_key_setting="console_log",
    sdk=("libvirt", "kvm"),
)
