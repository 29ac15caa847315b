"""Cross-field checks of a validated site: references, addresses, capacity, policy.

Each check appends diagnostics and carries on, so one run reports every problem.
The rules are listed in docs/blueprint.md ("Checks"); their codes are stable
(tests and CI consumers match on them).
"""

from __future__ import annotations

from typing import Any

from pacsinfra.blueprint.checks_deploy import check_deploy
from pacsinfra.blueprint.checks_dr import check_dr
from pacsinfra.blueprint.checks_kvm import check_kvm_nics, check_kvm_vlans
from pacsinfra.blueprint.checks_net import check_addresses, check_networks
from pacsinfra.blueprint.checks_services import check_phi, check_services, phi_classes
from pacsinfra.blueprint.checks_static import check_static
from pacsinfra.blueprint.model import MachineRole, Metadata, Site
from pacsinfra.blueprint.overlay import did_you_mean
from pacsinfra.blueprint.report import Reporter
from pacsinfra.blueprint.yaml_safe import Loc
from pacsinfra.drivers.base import Capability
from pacsinfra.drivers.declaration import Declaration
from pacsinfra.errors import Diagnostic
from pacsinfra.providers import DECLARATIONS, that_can
from pacsinfra.types import is_label

MAX_HOSTNAME = 63


def run_checks(site: Site, root: Loc | None, file: str,
               dropped: dict[str, Any] | None = None) -> list[Diagnostic]:
    """All cross-field diagnostics of ``site`` (errors and warnings).

    ``dropped`` is set when ``site`` is a partial site (see
    :func:`pacsinfra.blueprint.load.partial_site`): checks then say nothing about
    references to entries that exist but were invalid.
    """
    r = Reporter(root, file, dropped)
    if r.provider_known:
        check_provider(site, r)
    check_networks(site, r)
    check_kvm_nics(site, r)
    if r.provider_known:
        check_kvm_vlans(site, r)
    check_storage(site, r)
    check_machines(site, r)
    check_addresses(site, r)
    check_capacity(site, r)
    check_services(site, r)
    check_phi(site, r)
    check_deploy(site, r)
    check_dr(site, r)
    return r.diags


# -- provider ---------------------------------------------------------------------------------


def check_provider(site: Site, r: Reporter) -> None:
    p = site.provider
    drv = p.driver
    section = getattr(p, drv, None)
    for name, example in _decl(drv).required:
        if section is None or not getattr(section, name, None):
            r.add(("provider", drv) if section is not None else ("provider", "driver"),
                  f"the {drv} driver needs provider.{drv}.{name}",
                  hint=f"add provider: {{{drv}: {example}}}", code="provider")
    if drv == "static":
        check_static(site, r)
    roles = sorted(site.machines)
    per_role: list[tuple[tuple[Any, ...], Any]] = []
    if p.kvm is not None and p.kvm.cpu_pinning:
        per_role.append((("provider", "kvm", "cpu_pinning"), p.kvm.cpu_pinning))
    if p.vsphere is not None and isinstance(p.vsphere.latency_sensitivity, dict):
        per_role.append((("provider", "vsphere", "latency_sensitivity"),
                         p.vsphere.latency_sensitivity))
    for where, mapping in per_role:
        for role in mapping:
            if role not in site.machines:
                r.add(where + (role,), f"unknown role {role!r}",
                      hint=did_you_mean(role, roles, "roles"), code="unknown-ref", key=True,
                      ref=("machines", role))
    seen: dict[str, int] = {}
    for i, h in enumerate(p.hosts):
        if h.name in seen:
            r.add(("provider", "hosts", i, "name"), f"duplicate host name {h.name!r}",
                  hint=f"also hosts[{seen[h.name]}]", code="duplicate")
        seen.setdefault(h.name, i)
        if h.cpu_mhz is None and h.cores and h.core_mhz:
            h.cpu_mhz = h.cores * h.core_mhz


# -- storage ---------------------------------------------------------------------------------


def check_storage(site: Site, r: Reporter) -> None:
    drv = site.provider.driver
    for name, sc in site.storage.items():
        base = ("storage", name)
        if (sc.iops_limit is not None and sc.iops_reservation is not None
                and sc.iops_reservation > sc.iops_limit):
            r.add(base + ("iops_reservation",),
                  f"IOPS reservation {sc.iops_reservation} exceeds the limit {sc.iops_limit}",
                  hint="a reservation must be <= iops_limit", code="reservation")
        for cap, val in ((Capability.IOPS_LIMIT, sc.iops_limit),
                         (Capability.IOPS_RESERVATION, sc.iops_reservation)):
            if val is not None and not _decl(drv).can(cap):
                r.warn(base + (cap.value,), f"the {drv} driver cannot apply {cap.text}; "
                       "it will be ignored", hint=_drivers_hint(cap), code="capability")
        if sc.tier == "archive" and sc.object is None and _decl(drv).makes_machines:
            r.warn(base + ("tier",), "an archive tier without 'object' storage (endpoint, bucket)",
                   hint="archive tier means object storage; add object: {endpoint: ..., bucket: ...}",
                   code="archive-tier")


def _decl(driver: str) -> Declaration:
    """The provider's declaration; for a driver validation already refused, one that can
    everything (so nothing more is reported about it)."""
    return DECLARATIONS.get(driver) or _ANY


_ANY = Declaration(name="?", summary="", implementation="", settings=Metadata,
                   capabilities=frozenset(Capability), makes_machines=False)


def _drivers_hint(capability: Capability) -> str:
    can_do = that_can(capability)
    return f"supported by: {', '.join(can_do)}" if can_do else ""


# -- machines --------------------------------------------------------------------------------


def check_machines(site: Site, r: Reporter) -> None:
    drv = site.provider.driver
    name = site.metadata.name
    host_names = {h.name for h in site.provider.hosts}
    core_mhz = _core_mhz(site)
    for role_name, role in site.machines.items():
        base = ("machines", role_name)
        if not is_label(role_name):
            r.add(base, f"role name {role_name!r} is not a DNS label",
                  hint="lower-case letters, digits and '-'", code="name", key=True)
        longest = f"{name}-{role_name}-{max(role.count, 1)}"
        if len(longest) > MAX_HOSTNAME:
            r.add(base, f"machine name {longest!r} is longer than {MAX_HOSTNAME} characters",
                  hint="shorten the site or role name", code="hostname", key=True)
        makes = _decl(drv).makes_machines
        if role.image is None:
            if makes and r.provider_known:
                r.add(base, f"role {role_name!r} has no image; the {drv} driver makes its "
                      "machines from one", hint="add image: <a name from images>",
                      code="image-driver", key=True)
        elif role.image not in site.images:
            r.add(base + ("image",), f"unknown image {role.image!r}",
                  hint=did_you_mean(role.image, site.images, "images"), code="unknown-ref",
                  ref=("images", role.image))
        elif makes and getattr(site.images[role.image], drv, None) is None:
            r.add(base + ("image",), f"image {role.image!r} has no {drv} entry",
                  hint=f"add images.{role.image}.{drv}", code="image-driver")
        _check_cpu_mem(role, base, drv, core_mhz, r)
        disk_names: dict[str, int] = {}
        for i, disk in enumerate(role.disks):
            if disk.name in disk_names:
                r.add(base + ("disks", i, "name"), f"duplicate disk name {disk.name!r}",
                      hint=f"also disks[{disk_names[disk.name]}]", code="duplicate")
            disk_names.setdefault(disk.name, i)
            sc = site.storage.get(disk.storage)
            if sc is None:
                r.add(base + ("disks", i, "storage"), f"unknown storage class {disk.storage!r}",
                      hint=did_you_mean(disk.storage, site.storage, "storage classes"),
                      code="unknown-ref", ref=("storage", disk.storage))
            elif sc.tier == "archive":
                r.add(base + ("disks", i, "storage"),
                      f"storage class {disk.storage!r} is an archive (object) tier; "
                      "a machine disk cannot live there",
                      hint="use a performance or capacity class; point the archive "
                           "service's tiers at the object store", code="archive-tier")
            if disk.size == 0:
                r.add(base + ("disks", i, "size"), "a disk of size 0", code="size")
        mounts: dict[str, int] = {}
        for i, disk in enumerate(role.disks):
            if disk.mount:
                if not disk.mount.startswith("/"):
                    r.add(base + ("disks", i, "mount"), f"mount point {disk.mount!r} is not absolute",
                          hint=f"write /{disk.mount.lstrip('./')}", code="mount")
                if disk.mount in mounts:
                    r.add(base + ("disks", i, "mount"), f"mount point {disk.mount!r} used twice",
                          hint=f"also disks[{mounts[disk.mount]}]", code="duplicate")
                mounts.setdefault(disk.mount, i)
        for i, nic in enumerate(role.nics):
            if nic.network not in site.networks:
                r.add(base + ("nics", i, "network"), f"unknown network {nic.network!r}",
                      hint=did_you_mean(nic.network, site.networks, "networks"),
                      code="unknown-ref", ref=("networks", nic.network))
        for i, svc in enumerate(role.services):
            if svc not in site.services:
                r.add(base + ("services", i), f"unknown service {svc!r}",
                      hint=did_you_mean(svc, site.services, "services"), code="unknown-ref",
                      ref=("services", svc))
        if role.services and len(set(role.services)) != len(role.services):
            r.add(base + ("services",), "a service is listed twice", code="duplicate")
        _check_gpu(role, base, drv, r)
        _check_gpu_offer(site, role, base, r)
        for i, h in enumerate(role.placement.hosts):
            if host_names and h not in host_names:
                r.add(base + ("placement", "hosts", i), f"unknown host {h!r}",
                      hint=did_you_mean(h, host_names, "declared provider.hosts"),
                      code="unknown-ref")
        if role.placement.anti_affinity:
            if not _decl(drv).can(Capability.ANTI_AFFINITY):
                r.warn(base + ("placement", "anti_affinity"),
                       f"the {drv} driver cannot keep machines apart; it will be ignored",
                       hint=_drivers_hint(Capability.ANTI_AFFINITY), code="capability")
            elif host_names and role.count > len(host_names):
                r.warn(base + ("placement", "anti_affinity"),
                       f"{role.count} machines kept apart on only {len(host_names)} hosts",
                       hint="add hosts or lower count", code="anti-affinity")
        if not role.nics and makes:
            r.warn(base, "a role without NICs is unreachable", hint="add nics: [{network: ...}]",
                   code="no-nic", key=True)


def _core_mhz(site: Site) -> int | None:
    """The slowest declared core clock (what a vCPU can at most get), if known."""
    clocks = [h.core_mhz for h in site.provider.hosts if h.core_mhz]
    if site.provider.kvm is not None and site.provider.kvm.host_mhz:
        clocks.append(site.provider.kvm.host_mhz)
    return min(clocks) if clocks else None


def _check_cpu_mem(role: MachineRole, base: tuple[Any, ...], drv: str, core_mhz: int | None,
                   r: Reporter) -> None:
    cpu, mem = role.cpu, role.memory
    if cpu.reservation is not None:
        if core_mhz and cpu.reservation > cpu.count * core_mhz:
            r.add(base + ("cpu", "reservation"),
                  f"CPU reservation {cpu.reservation}MHz exceeds {cpu.count} vCPU x "
                  f"{core_mhz}MHz = {cpu.count * core_mhz}MHz",
                  hint="reserve at most count x the host's core clock", code="reservation")
        if cpu.limit is not None and cpu.reservation > cpu.limit:
            r.add(base + ("cpu", "reservation"),
                  f"CPU reservation {cpu.reservation}MHz exceeds the limit {cpu.limit}MHz",
                  hint="a reservation must be <= limit", code="reservation")
    if isinstance(cpu.shares, int) and not isinstance(cpu.shares, bool) and not (
        1 <= cpu.shares <= 1_000_000
    ):
        r.add(base + ("cpu", "shares"), f"CPU shares {cpu.shares} out of range",
              hint="low, normal, high or an integer 1..1000000", code="range")
    if mem.reservation is not None and mem.reservation > mem.size:
        r.add(base + ("memory", "reservation"),
              f"memory reservation {mem.reservation}MiB exceeds the size {mem.size}MiB",
              hint="a reservation must be <= size", code="reservation")
    if mem.lock and mem.reservation is not None and mem.reservation != mem.size:
        r.add(base + ("memory", "lock"),
              "locked memory is reserved in full; reservation must equal size or be left out",
              code="reservation")
    if mem.size == 0:
        r.add(base + ("memory", "size"), "memory size 0", code="size")
    for cap, used, field in (
        (Capability.CPU_RESERVATION, cpu.reservation is not None, ("cpu", "reservation")),
        (Capability.CPU_LIMIT, cpu.limit is not None, ("cpu", "limit")),
        (Capability.CPU_SHARES, cpu.shares is not None, ("cpu", "shares")),
        (Capability.MEMORY_RESERVATION, mem.reservation is not None, ("memory", "reservation")),
        (Capability.MEMORY_LOCK, mem.lock, ("memory", "lock")),
        (Capability.HUGEPAGES, mem.hugepages, ("memory", "hugepages")),
    ):
        if used and not _decl(drv).can(cap):
            r.warn(base + field, f"the {drv} driver cannot apply {cap.text}; "
                   "it will be ignored", hint=_drivers_hint(cap), code="capability")


def _check_gpu(role: MachineRole, base: tuple[Any, ...], drv: str, r: Reporter) -> None:
    gpu = role.gpu
    if gpu is None:
        return
    modes = _decl(drv).gpu_modes
    if gpu.mode not in modes:
        if not modes:
            hint = "GPUs need a hypervisor driver (kvm, vsphere or hyperv)"
        elif gpu.mode == "vgpu" and "partition" in modes:
            hint = f"the {drv} driver shares a GPU by partitioning: use mode: partition"
        else:
            hint = f"the {drv} driver supports: {', '.join(sorted(modes))}"
        r.add(base + ("gpu", "mode"), f"the {drv} driver cannot do GPU mode {gpu.mode!r}",
              hint=hint, code="capability")
    if gpu.mode == "passthrough" and gpu.count != 1:
        r.add(base + ("gpu", "count"), "passthrough assigns one named device; count must be 1",
              hint="declare one role per device", code="gpu")
    if gpu.mode == "passthrough" and role.count > 1:
        r.add(base + ("gpu", "device"),
              f"PCI device {gpu.device} cannot be passed through to {role.count} machines",
              hint="use count: 1, or a vGPU profile to share the GPU", code="gpu")
    # vSphere refuses to power on a VM with a vGPU or DirectPath device unless all its
    # memory is reserved; catching it here saves a failed apply.
    mem = role.memory
    if drv == "vsphere" and not mem.lock and (mem.reservation or 0) < mem.size:
        r.add(base + ("memory", "reservation"),
              f"vSphere needs the memory of a VM with a GPU ({gpu.mode}) fully reserved",
              hint=f"set memory.reservation to {mem.size}MiB (the size) or memory.lock: true",
              code="gpu")


def _check_gpu_offer(site: Site, role: MachineRole, base: tuple[Any, ...], r: Reporter) -> None:
    """A vGPU profile no declared host (or provider.vsphere.vgpu_profiles) offers."""
    gpu = role.gpu
    if gpu is None or gpu.mode != "vgpu" or not gpu.profile:
        return
    offered: set[str] = set()
    for h in site.provider.hosts:
        offered.update(h.gpus)
    vs = site.provider.vsphere
    if site.provider.driver == "vsphere" and vs is not None and vs.vgpu_profiles:
        offered.update(vs.vgpu_profiles)
    if offered and gpu.profile not in offered:
        r.add(base + ("gpu", "profile"), f"no declared host offers vGPU profile {gpu.profile!r}",
              hint=did_you_mean(gpu.profile, offered, "offered profiles"), code="capability")
    hosts_with = [h.name for h in site.provider.hosts if gpu.profile in h.gpus]
    pinned = role.placement.hosts
    if offered and pinned and hosts_with and not set(pinned) & set(hosts_with):
        r.add(base + ("placement", "hosts"),
              f"none of the hosts {pinned} offers vGPU profile {gpu.profile!r}",
              hint=f"hosts offering it: {', '.join(hosts_with)}", code="capability")


# -- capacity --------------------------------------------------------------------------------


def check_capacity(site: Site, r: Reporter) -> None:
    hosts = site.provider.hosts
    cpu_total = sum(h.cpu_mhz or 0 for h in hosts) if all(h.cpu_mhz for h in hosts) else 0
    mem_total = sum(h.memory or 0 for h in hosts) if all(h.memory for h in hosts) else 0
    if not hosts:
        return
    cpu_res = sum(role.count * (role.cpu.reservation or 0) for role in site.machines.values())
    mem_res = 0
    for role in site.machines.values():
        m = role.memory
        reserved = m.size if m.lock else (m.reservation or 0)
        mem_res += role.count * reserved
    if cpu_total and cpu_res > cpu_total:
        r.add(("provider", "hosts"),
              f"machines reserve {cpu_res}MHz of CPU; the declared hosts have {cpu_total}MHz",
              hint="lower reservations or declare more hosts", code="capacity")
    if mem_total and mem_res > mem_total:
        r.add(("provider", "hosts"),
              f"machines reserve {mem_res}MiB of memory; the declared hosts have {mem_total}MiB",
              hint="lower reservations or declare more hosts", code="capacity")


__all__ = ["Reporter", "phi_classes", "run_checks"]
