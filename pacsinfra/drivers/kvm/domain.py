"""MachineSpec <-> libvirt domain XML: render through ``templates/kvm/domain.xml.j2``, parse back.

Both directions use the same normalisation, so parsing a rendered domain yields the
spec it came from (the golden tests check exactly that). Mapping (see docs/drivers/kvm.md):

- ``cpu_shares`` (already the machine's total: low/normal/high = 500/1000/2000 per vCPU,
  times vCPUs) -> ``<cputune><shares>`` as is; without shares, ``cpu_reservation_mhz`` ->
  ``<shares>`` = reserved MHz (CFS has no guarantee; a weight proportional to the
  reservation is the KVM meaning of it).
- ``cpu_limit_mhz`` -> ``<global_period>`` 100000 us and ``<global_quota>`` =
  limit_mhz / host_mhz x period (the whole domain may use that much of one host CPU).
- ``memory_lock`` -> ``<memoryBacking><locked/>``; ``hugepages`` -> ``<hugepages/>``.
- disks -> qcow2 volumes ``<machine>-<disk>.qcow2`` in the pool named by ``DiskSpec.storage``.
- NICs -> ``<interface type='network'>``, whose VLAN is the network's (an OVS network's
  default port group ``vlan-<id>``; recorded only on NAT/Linux-bridge networks, which
  cannot tag); ``ovs:NAME`` / ``bridge:NAME`` -> a host bridge directly, where ``ovs:``
  adds ``<virtualport type='openvswitch'/>`` and ``vlan`` -> ``<vlan><tag/>``.
- ``user:<options>`` -> a QEMU user-mode NIC with port forwards, as ``<qemu:commandline>``
  arguments (see :mod:`pacsinfra.drivers.kvm.usernet`).
- image ``kernel`` / ``initrd`` / ``cmdline`` -> direct kernel boot (``<os><kernel>``...),
  no firmware boot from the disk; ``console_log`` (a directory) -> the serial console
  is also written to ``<dir>/<name>.console.log``.
- vGPU -> ``count`` mdev hostdevs (vfio-pci) with stable UUIDs; passthrough -> PCI hostdev.

Fields libvirt does not model (role, image, addresses for cloud-init, reservations
that are only recorded, ...) travel in the ``<pacsinfra:intent>`` JSON of the
ownership element and are read back from there.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from pacsinfra.drivers.kvm import templating, usernet
from pacsinfra.drivers.kvm.xmlutil import intent_json, intent_of, owner_of, size_mib
from pacsinfra.errors import CapabilityError
from pacsinfra.specs import DiskSpec, GpuSpec, MachineSpec, NicSpec, Ownership

CFS_PERIOD_US = 100_000
DEFAULT_MTU = 1500
_GPU_NS = uuid.UUID("6f1c3b52-0d6e-4a43-9a53-5a8f3c7d2e11")  # namespace for stable mdev UUIDs


@dataclass(frozen=True)
class DomainContext:
    """What rendering needs besides the spec: facts about the host and the storage backend."""

    domain_type: str = "kvm"  # "kvm", or "qemu" for TCG
    machine: str = "q35"
    host_mhz: int | None = None  # needed only for cpu_limit_mhz
    uses_files: bool = False  # disks referenced by path (qemu:///embed) instead of pool/volume
    pool_paths: Mapping[str, str] = field(default_factory=dict)  # pool -> directory, for uses_files
    seed: bool = True  # attach a NoCloud seed CD-ROM
    seed_pool: str | None = None  # pool for the seed when the machine has no disk
    cpuset: str | None = None  # host CPUs the vCPUs are pinned to
    console_log: str | None = None  # directory for <name>.console.log (the serial console)


def disk_volume_name(machine: str, disk: str) -> str:
    """The volume that holds ``disk`` of ``machine``."""
    return f"{machine}-{disk}.qcow2"


def seed_volume_name(machine: str) -> str:
    """The volume that holds the cloud-init seed ISO of ``machine``."""
    return f"{machine}-seed.iso"


def seed_pool(spec: MachineSpec, ctx: DomainContext) -> str | None:
    """Where the seed ISO lives: the pool of the first disk, else the configured one."""
    if spec.disks:
        return spec.disks[0].storage
    return ctx.seed_pool


def default_mac(machine: str, index: int) -> str:
    """A stable locally administered MAC in QEMU's 52:54:00 range (cloud-init matches on it)."""
    digest = hashlib.sha256(f"{machine}/nic/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def mdev_uuid(machine: str, index: int) -> str:
    """A stable UUID for the ``index``-th vGPU mdev of ``machine``."""
    return str(uuid.uuid5(_GPU_NS, f"{machine}/gpu/{index}"))


def nic_macs(spec: MachineSpec) -> list[str]:
    """The MAC of every NIC: the one asked for, else the stable default."""
    return [(nic.mac or default_mac(spec.name, i)).lower() for i, nic in enumerate(spec.nics)]


_PCI_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<slot>[0-9a-fA-F]{1,2})\.(?P<fn>[0-7])$"
)


def parse_pci(address: str) -> dict[str, str]:
    """``0000:65:00.0`` (or ``65:00.0``) -> libvirt's hex address attributes."""
    m = _PCI_RE.match(address.strip())
    if not m:
        raise CapabilityError(f"bad PCI address {address!r} (want DDDD:BB:SS.F)")
    return {
        "domain": f"0x{int(m['domain'] or '0', 16):04x}",
        "bus": f"0x{int(m['bus'], 16):02x}",
        "slot": f"0x{int(m['slot'], 16):02x}",
        "function": f"0x{int(m['fn'], 16):x}",
    }


def format_pci(el: ET.Element) -> str:
    """A libvirt ``<address domain= bus= slot= function=>`` as ``DDDD:BB:SS.F``."""

    def num(attr: str) -> int:
        return int(el.get(attr) or "0", 0)

    return f"{num('domain'):04x}:{num('bus'):02x}:{num('slot'):02x}.{num('function'):x}"


def normalise_machine(machine: str) -> str:
    """``pc-q35-7.2`` -> ``q35``, ``pc-i440fx-7.2`` -> ``pc``: versioned types compare as the alias."""
    if machine == "q35" or machine.startswith("pc-q35"):
        return "q35"
    if machine == "pc" or machine.startswith("pc-i440fx"):
        return "pc"
    return machine


def shares_source(spec: MachineSpec) -> str | None:
    """Which field ``<shares>`` carries: "shares", "reservation", or None."""
    if spec.cpu_shares is not None:
        return "shares"
    if spec.cpu_reservation_mhz:
        return "reservation"
    return None


def _intent(spec: MachineSpec) -> dict[str, Any]:
    gpu = None
    if spec.gpu is not None:
        gpu = {
            "mode": spec.gpu.mode,
            "profile": spec.gpu.profile,
            "count": spec.gpu.count,
            "device": spec.gpu.device,
        }
    return {
        "role": spec.role,
        "index": spec.index,
        "image": dict(spec.image),
        "cpu_reservation_mhz": spec.cpu_reservation_mhz,
        "memory_reservation_mib": spec.memory_reservation_mib,
        "shares_source": shares_source(spec),
        "disks": [
            {"name": d.name, "provisioning": d.provisioning, "mount": d.mount} for d in spec.disks
        ],
        "nics": [
            {"address": n.address, "prefix": n.prefix, "gateway": n.gateway, "vlan": n.vlan}
            for n in spec.nics
        ],
        "gpu": gpu,
        "anti_affinity_group": spec.anti_affinity_group,
        "host_hint": spec.host_hint,
        "cluster_hint": spec.cluster_hint,
        "holds_data": spec.holds_data,
        "hostname": spec.hostname,
        "ssh_authorized_keys": list(spec.ssh_authorized_keys),
    }


def _nic_target(network: str) -> tuple[str, str, bool]:
    """(interface type, source, ovs) for a NicSpec.network value."""
    if network.startswith("bridge:"):
        return "bridge", network[len("bridge:") :], False
    if network.startswith("ovs:"):
        return "bridge", network[len("ovs:") :], True
    return "network", network, False


def domain_inputs(spec: MachineSpec, ctx: DomainContext) -> dict[str, Any]:
    """The values ``domain.xml.j2`` renders (pure; raises CapabilityError for impossible asks)."""
    cputune: dict[str, Any] | None = None
    source = shares_source(spec)
    shares: int | None = None
    if source == "shares":
        shares = int(spec.cpu_shares or 0)
    elif source == "reservation":
        shares = int(spec.cpu_reservation_mhz or 0)
    quota: int | None = None
    if spec.cpu_limit_mhz:
        if not ctx.host_mhz:
            raise CapabilityError(
                f"{spec.address}: a CPU limit needs the host clock (connect first, or set "
                "provider.kvm.host_mhz)"
            )
        quota = max(1000, round(spec.cpu_limit_mhz * CFS_PERIOD_US / ctx.host_mhz))
    if shares is not None or quota is not None:
        cputune = {"shares": shares, "period": CFS_PERIOD_US, "quota": quota}

    def disk_ref(pool: str, volume: str) -> dict[str, Any]:
        if ctx.uses_files:
            base = ctx.pool_paths.get(pool)
            if base is None:
                raise CapabilityError(f"{spec.address}: storage pool {pool} has no known directory")
            return {
                "type": "file",
                "path": f"{base.rstrip('/')}/{volume}",
                "pool": pool,
                "volume": volume,
            }
        return {"type": "volume", "pool": pool, "volume": volume, "path": None}

    disks = []
    for i, disk in enumerate(spec.disks):
        ref = disk_ref(disk.storage, disk_volume_name(spec.name, disk.name))
        ref.update(
            format="qcow2",
            dev="vd" + _letters(i),
            serial=disk.name[:20],
            iops=disk.iops_limit,
        )
        disks.append(ref)

    seed = None
    pool = seed_pool(spec, ctx)
    if ctx.seed and pool:
        seed = disk_ref(pool, seed_volume_name(spec.name))

    nics = []
    user_nics: list[list[str]] = []
    for i, (nic, mac) in enumerate(zip(spec.nics, nic_macs(spec), strict=True)):
        if usernet.is_user(nic.network):
            opts = usernet.options(nic.network)
            if i >= usernet.MAX_NICS:
                raise CapabilityError(f"{spec.address}: a user-mode NIC must be among the "
                                      f"first {usernet.MAX_NICS} NICs")
            user_nics.append(usernet.UserNic(i, mac, opts).args())
            continue
        kind, source_name, ovs = _nic_target(nic.network)
        nics.append(
            {
                "type": kind,
                "source": source_name,
                "mac": mac,
                "portgroup": None,
                # on a libvirt network the VLAN is the network's (port group), not the NIC's
                "vlan": nic.vlan if kind == "bridge" else None,
                "ovs": ovs,
                "mtu": nic.mtu if nic.mtu and nic.mtu != DEFAULT_MTU else None,
            }
        )

    mdevs: list[dict[str, str]] = []
    pci: list[dict[str, str]] = []
    if spec.gpu is not None:
        if spec.gpu.mode == "vgpu":
            mdevs = [{"uuid": mdev_uuid(spec.name, i)} for i in range(max(1, spec.gpu.count))]
        elif spec.gpu.mode == "passthrough":
            if not spec.gpu.device:
                raise CapabilityError(f"{spec.address}: GPU passthrough needs a PCI device address")
            pci = [parse_pci(a) for a in spec.gpu.device.split(",")]
        else:
            raise CapabilityError(f"{spec.address}: unknown GPU mode {spec.gpu.mode!r}")

    boot = None
    if spec.image.get("kernel"):
        boot = {"kernel": str(spec.image["kernel"]), "initrd": spec.image.get("initrd"),
                "cmdline": spec.image.get("cmdline")}
    elif spec.image.get("initrd") or spec.image.get("cmdline"):
        raise CapabilityError(f"{spec.address}: image initrd/cmdline need a kernel")
    console_log = f"{ctx.console_log.rstrip('/')}/{spec.name}.console.log" if ctx.console_log else None

    return {
        "type": ctx.domain_type,
        "name": spec.name,
        "boot": boot,
        "user_nics": user_nics,
        "console_log": console_log,
        "intent": intent_json(_intent(spec)),
        "memory_kib": spec.memory_mib * 1024,
        "locked": spec.memory_lock,
        "hugepages": spec.hugepages,
        "vcpus": spec.cpu_count,
        "cpuset": ctx.cpuset,
        "cputune": cputune,
        "machine": ctx.machine,
        "disks": disks,
        "seed": seed,
        "nics": nics,
        "mdevs": mdevs,
        "pci": pci,
    }


def render_domain(
    spec: MachineSpec, owner: Ownership, ctx: DomainContext, *, uuid: str | None = None
) -> str:
    """The domain XML for ``spec`` (pure); ``uuid`` when redefining an existing domain."""
    inputs = domain_inputs(spec, ctx)
    inputs["uuid"] = uuid
    return templating.render("domain.xml.j2", d=inputs, owner=owner)


def _letters(i: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (the disk naming scheme of Linux and libvirt)."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(ord("a") + r) + out
    return out


@dataclass(frozen=True)
class DiskRef:
    """A disk as the domain XML points at it."""

    serial: str
    dev: str
    pool: str | None
    volume: str | None
    path: str | None
    iops: int | None


@dataclass(frozen=True)
class DomainFacts:
    """What the domain XML says, before volume sizes are filled in."""

    name: str
    domain_type: str
    machine: str
    owner: Ownership | None
    intent: dict[str, Any]
    disks: tuple[DiskRef, ...]
    seed: DiskRef | None
    root: ET.Element


def _disk_ref(el: ET.Element) -> DiskRef:
    src = el.find("source")
    target = el.find("target")
    serial = el.findtext("serial") or ""
    iops_text = el.findtext("iotune/total_iops_sec")
    pool = volume = path = None
    if src is not None:
        pool, volume = src.get("pool"), src.get("volume")
        path = src.get("file") or src.get("dev")
        if volume is None and path:
            volume = path.rsplit("/", 1)[-1]
    return DiskRef(
        serial=serial,
        dev=target.get("dev", "") if target is not None else "",
        pool=pool,
        volume=volume,
        path=path,
        iops=int(iops_text) if iops_text else None,
    )


def domain_facts(xml: str) -> DomainFacts:
    """Parse the parts of a domain XML the driver needs before the full parse."""
    root = ET.fromstring(xml)
    disks: list[DiskRef] = []
    seed = None
    for el in root.findall("devices/disk"):
        if el.get("device") == "cdrom":
            seed = _disk_ref(el)
        elif el.get("device", "disk") == "disk":
            disks.append(_disk_ref(el))
    os_type = root.find("os/type")
    return DomainFacts(
        name=root.findtext("name") or "",
        domain_type=root.get("type", ""),
        machine=normalise_machine(os_type.get("machine", "") if os_type is not None else ""),
        owner=owner_of(root),
        intent=intent_of(root),
        disks=tuple(disks),
        seed=seed,
        root=root,
    )


def _user_nic(nic: usernet.UserNic, intent_nics: list[dict[str, Any]]) -> NicSpec:
    recorded = intent_nics[nic.index] if nic.index < len(intent_nics) else {}
    return NicSpec(network=usernet.PREFIX + nic.options, address=recorded.get("address"),
                   prefix=recorded.get("prefix"), gateway=recorded.get("gateway"),
                   vlan=recorded.get("vlan"), mac=nic.mac or None)


def parse_domain(
    facts: DomainFacts,
    *,
    capacities_mib: Mapping[str, int],
    pool_of_path: Mapping[str, str] | None = None,
    host_mhz: int | None,
    running: bool,
    address: str | None = None,
) -> MachineSpec:
    """Read a domain back into a MachineSpec.

    ``capacities_mib`` maps each disk's target dev (vda) to its volume capacity (read from the
    storage backend); ``pool_of_path`` maps a file disk's directory to its pool name.
    """
    root = facts.root
    intent = facts.intent
    vcpus = int(root.findtext("vcpu") or "1")
    memory = size_mib(root.find("memory"))

    shares_text = root.findtext("cputune/shares")
    shares = int(shares_text) if shares_text else None
    source = intent.get("shares_source", "shares" if shares is not None else None)
    cpu_shares: int | None = None
    reservation = intent.get("cpu_reservation_mhz")
    if shares is not None and source == "reservation":
        reservation = shares
    elif shares is not None:
        cpu_shares = shares
    limit: int | None = None
    quota_text = root.findtext("cputune/global_quota")
    period = int(root.findtext("cputune/global_period") or CFS_PERIOD_US)
    if quota_text and int(quota_text) > 0 and host_mhz:
        limit = round(int(quota_text) * host_mhz / period)

    backing = root.find("memoryBacking")
    locked = backing is not None and backing.find("locked") is not None
    hugepages = backing is not None and backing.find("hugepages") is not None

    intent_disks = {d.get("name"): d for d in intent.get("disks", []) if isinstance(d, dict)}
    disks = []
    for ref in facts.disks:
        name = ref.serial or (ref.volume or ref.dev)
        prefix = facts.name + "-"
        if not ref.serial and ref.volume and ref.volume.startswith(prefix):
            name = ref.volume[len(prefix) :].removesuffix(".qcow2")
        recorded = intent_disks.get(name, {})
        pool = ref.pool
        if pool is None and ref.path and pool_of_path:
            pool = pool_of_path.get(ref.path.rsplit("/", 1)[0], "")
        disks.append(
            DiskSpec(
                name=name,
                size_mib=capacities_mib.get(ref.dev, 0),
                storage=pool or "",
                provisioning=recorded.get("provisioning", "thin"),
                mount=recorded.get("mount"),
                iops_limit=ref.iops,
            )
        )

    intent_nics = [n for n in intent.get("nics", []) if isinstance(n, dict)]
    user_nics = {u.index: u for u in usernet.parse_args(
        [a.get("value", "") for a in root.findall(f"{{{usernet.QEMU_NS}}}commandline/"
                                                   f"{{{usernet.QEMU_NS}}}arg")])}
    nics = []
    i = -1
    for el in root.findall("devices/interface"):
        i += 1
        while i in user_nics:  # user-mode NICs keep their place among the others
            nics.append(_user_nic(user_nics.pop(i), intent_nics))
            i += 1
        kind = el.get("type", "")
        src = el.find("source")
        if kind == "network":
            network = src.get("network", "") if src is not None else ""
        elif kind == "bridge":
            vport = el.find("virtualport")
            is_ovs = vport is not None and vport.get("type") == "openvswitch"
            network = ("ovs:" if is_ovs else "bridge:") + (
                src.get("bridge", "") if src is not None else ""
            )
        else:
            network = f"{kind}:"
        tag = el.find("vlan/tag")
        mtu_el = el.find("mtu")
        mac_el = el.find("mac")
        recorded = intent_nics[i] if i < len(intent_nics) else {}
        nics.append(
            NicSpec(
                network=network,
                address=recorded.get("address"),
                prefix=recorded.get("prefix"),
                gateway=recorded.get("gateway"),
                vlan=int(tag.get("id", "0")) if tag is not None else recorded.get("vlan"),
                mtu=int(mtu_el.get("size", DEFAULT_MTU)) if mtu_el is not None else DEFAULT_MTU,
                mac=mac_el.get("address", "").lower() if mac_el is not None else None,
            )
        )

    nics.extend(_user_nic(u, intent_nics) for _, u in sorted(user_nics.items()))

    gpu: GpuSpec | None = None
    recorded_gpu = intent.get("gpu") if isinstance(intent.get("gpu"), dict) else None
    mdevs = root.findall("devices/hostdev[@type='mdev']")
    pcis = root.findall("devices/hostdev[@type='pci']")
    if mdevs:
        gpu = GpuSpec(
            mode="vgpu",
            profile=(recorded_gpu or {}).get("profile"),
            count=len(mdevs),
            device=(recorded_gpu or {}).get("device"),
        )
    elif pcis:
        addrs = [a for a in (h.find("source/address") for h in pcis) if a is not None]
        gpu = GpuSpec(
            mode="passthrough",
            profile=(recorded_gpu or {}).get("profile"),
            count=(recorded_gpu or {}).get("count", len(addrs)),
            device=",".join(format_pci(a) for a in addrs),
        )

    return MachineSpec(
        address=address or (facts.owner.address if facts.owner else ""),
        name=facts.name,
        role=intent.get("role", ""),
        index=int(intent.get("index", 0)),
        image=dict(intent.get("image") or {}),
        cpu_count=vcpus,
        memory_mib=memory,
        cpu_reservation_mhz=reservation,
        cpu_limit_mhz=limit,
        cpu_shares=cpu_shares,
        memory_reservation_mib=intent.get("memory_reservation_mib"),
        memory_lock=locked,
        hugepages=hugepages,
        disks=tuple(disks),
        nics=tuple(nics),
        gpu=gpu,
        anti_affinity_group=intent.get("anti_affinity_group"),
        host_hint=intent.get("host_hint"),
        cluster_hint=intent.get("cluster_hint"),
        holds_data=bool(intent.get("holds_data", False)),
        hostname=intent.get("hostname"),
        ssh_authorized_keys=tuple(intent.get("ssh_authorized_keys") or ()),
        power_on=running,
    )
