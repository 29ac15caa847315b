"""Cross-field checks of a validated site: references, addresses, capacity, policy.

Each check appends diagnostics and carries on, so one run reports every problem.
The rules are listed in docs/blueprint.md ("Checks"); their codes are stable
(tests and CI consumers match on them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pacsinfra.blueprint.capabilities import (
    EXISTING_HOSTS,
    FEATURE_TEXT,
    GPU_MODES,
    can,
    drivers_that_can,
)
from pacsinfra.blueprint.checks_dr import check_dr
from pacsinfra.blueprint.checks_guests import check_guest_services
from pacsinfra.blueprint.checks_kvm import check_kvm_nics, check_kvm_services
from pacsinfra.blueprint.checks_net import check_addresses, check_networks
from pacsinfra.blueprint.checks_services import check_phi, check_services, phi_classes
from pacsinfra.blueprint.checks_static import check_static
from pacsinfra.blueprint.diagnose import format_path
from pacsinfra.blueprint.model import MachineRole, Site
from pacsinfra.blueprint.overlay import did_you_mean
from pacsinfra.blueprint.types import is_label
from pacsinfra.blueprint.yaml_safe import Loc
from pacsinfra.errors import Diagnostic

MAX_HOSTNAME = 63
_PROVIDER_CODES = frozenset({"capability", "image-driver", "provider", "no-nic", "archive-tier",
                             "static-host", "kvm-services"})


class Reporter:
    """Collects diagnostics located through the merged Loc tree."""

    def __init__(self, root: Loc | None, file: str, dropped: dict[str, Any] | None = None) -> None:
        self.root = root
        self.file = file
        self.diags: list[Diagnostic] = []
        # partial validation: entries that exist in the file but did not validate
        self.dropped: dict[str, Any] = dropped or {}

    def exists_invalid(self, section: str, name: str) -> bool:
        """``name`` is in the file's ``section`` but was dropped for its own errors."""
        return name in self.dropped.get(section, ())

    @property
    def provider_known(self) -> bool:
        return "provider" not in self.dropped.get("*", ())

    def locate(self, parts: Iterable[Any]) -> Loc | None:
        node = self.root
        for p in parts:
            if node is None:
                return None
            nxt = node.child(p)
            if nxt is None:
                return node
            node = nxt
        return node

    def add(self, parts: tuple[Any, ...], message: str, *, hint: str = "", code: str,
            severity: str = "error", key: bool = False, ref: tuple[str, str] | None = None) -> None:
        if ref is not None and self.exists_invalid(*ref):
            return  # the target exists; its own errors are reported already
        if not self.provider_known and code in _PROVIDER_CODES:
            return
        if "metadata" in self.dropped.get("*", ()) and code == "hostname":
            return
        if code == "not-placed" and ref is None and parts[-1] in self.dropped.get(
            "service-users", ()
        ):
            return
        loc = self.locate(parts)
        line = col = 0
        file = self.file
        if loc is not None:
            file = loc.file
            line, col = (loc.key_line, loc.key_col) if key and loc.key_line else (loc.line, loc.col)
        self.diags.append(
            Diagnostic(message=message, path=format_path(parts), file=file, line=line,
                       column=col, hint=hint, severity=severity, code=code)
        )

    def warn(self, parts: tuple[Any, ...], message: str, *, hint: str = "", code: str,
             key: bool = False) -> None:
        self.add(parts, message, hint=hint, code=code, severity="warning", key=key)


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
    check_storage(site, r)
    check_machines(site, r)
    check_addresses(site, r)
    check_capacity(site, r)
    check_services(site, r)
    check_phi(site, r)
    check_deploy(site, r)
    check_dr(site, r)
    return r.diags


def check_deploy(site: Site, r: Reporter) -> None:
    """Pinned host keys must name a role or a machine of the site."""
    if site.deploy is None or "metadata" in r.dropped.get("*", ()):
        return  # machine names depend on metadata.name
    members = {
        m for name, role in site.machines.items() for m in role.member_names(site.metadata.name, name)
    }
    for target in site.deploy.host_keys:
        if target not in site.machines and target not in members:
            r.add(("deploy", "host_keys", target), f"unknown machine or role {target!r}",
                  hint=did_you_mean(target, sorted(members | set(site.machines)),
                                    "roles and machines"),
                  code="unknown-ref", key=True)


# -- provider ---------------------------------------------------------------------------------


def check_provider(site: Site, r: Reporter) -> None:
    p = site.provider
    drv = p.driver
    if drv == "vsphere" and (p.vsphere is None or not p.vsphere.server):
        r.add(("provider", "vsphere") if p.vsphere else ("provider", "driver"),
              "the vsphere driver needs provider.vsphere.server",
              hint="add provider: {vsphere: {server: vcenter.example, user: ..., "
                   "password: {env: VSPHERE_PASSWORD}}}", code="provider")
    if drv == "hyperv" and (p.hyperv is None or not p.hyperv.host):
        r.add(("provider", "hyperv") if p.hyperv else ("provider", "driver"),
              "the hyperv driver needs provider.hyperv.host",
              hint="add provider: {hyperv: {host: hv01, user: ..., password: {env: HV_PASSWORD}}}",
              code="provider")
    if drv == "static":
        check_static(site, r)
    if drv == "kvm":
        check_kvm_services(site, r)
    check_guest_services(site, r)  # vsphere / hyperv with provider.<driver>.ssh
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
        for feat, val in (("iops_limit", sc.iops_limit), ("iops_reservation", sc.iops_reservation)):
            if val is not None and not can(drv, feat):
                r.warn(base + (feat,), f"the {drv} driver cannot apply {FEATURE_TEXT[feat]}; "
                       "it will be ignored", hint=_drivers_hint(feat), code="capability")
        if sc.tier == "archive" and sc.object is None and drv not in EXISTING_HOSTS:
            r.warn(base + ("tier",), "an archive tier without 'object' storage (endpoint, bucket)",
                   hint="archive tier means object storage; add object: {endpoint: ..., bucket: ...}",
                   code="archive-tier")


def _drivers_hint(feature: str) -> str:
    can_do = drivers_that_can(feature)
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
        if role.image not in site.images:
            r.add(base + ("image",), f"unknown image {role.image!r}",
                  hint=did_you_mean(role.image, site.images, "images"), code="unknown-ref",
                  ref=("images", role.image))
        elif drv not in EXISTING_HOSTS and getattr(site.images[role.image], drv, None) is None:
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
            if not can(drv, "anti_affinity"):
                r.warn(base + ("placement", "anti_affinity"),
                       f"the {drv} driver cannot keep machines apart", code="capability")
            elif host_names and role.count > len(host_names):
                r.warn(base + ("placement", "anti_affinity"),
                       f"{role.count} machines kept apart on only {len(host_names)} hosts",
                       hint="add hosts or lower count", code="anti-affinity")
        if not role.nics and drv not in EXISTING_HOSTS:
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
    for feat, used in (
        ("cpu_reservation", cpu.reservation is not None),
        ("cpu_limit", cpu.limit is not None),
        ("cpu_shares", cpu.shares is not None),
        ("memory_reservation", mem.reservation is not None),
        ("memory_lock", mem.lock),
        ("hugepages", mem.hugepages),
    ):
        if used and not can(drv, feat):
            field = {"cpu_reservation": ("cpu", "reservation"), "cpu_limit": ("cpu", "limit"),
                     "cpu_shares": ("cpu", "shares"),
                     "memory_reservation": ("memory", "reservation"),
                     "memory_lock": ("memory", "lock"), "hugepages": ("memory", "hugepages")}[feat]
            r.warn(base + field, f"the {drv} driver cannot apply {FEATURE_TEXT[feat]}; "
                   "it will be ignored", hint=_drivers_hint(feat), code="capability")


def _check_gpu(role: MachineRole, base: tuple[Any, ...], drv: str, r: Reporter) -> None:
    gpu = role.gpu
    if gpu is None:
        return
    modes = GPU_MODES.get(drv, frozenset())
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
