"""Machines on libvirt: read, create (with cleanup), update (with restart), delete.

A machine is a domain plus the volumes named after it (``<name>-<disk>.qcow2``) and
its cloud-init seed (``<name>-seed.iso``). Creation builds them in that order and,
on any failure, removes what it made (domain definition, seed, volumes) before
re-raising — like terraform-provider-libvirt's cleanupOnError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.kvm import classify as classify_mod
from pacsinfra.drivers.kvm import cloudinit, usernet
from pacsinfra.drivers.kvm import domain as dom
from pacsinfra.drivers.kvm import pool as pool_mod
from pacsinfra.drivers.kvm.host import KvmHost, claim
from pacsinfra.drivers.kvm.networks import Networks
from pacsinfra.drivers.kvm.templating import OWNER_NS
from pacsinfra.drivers.kvm.xmlutil import owner_fragment
from pacsinfra.errors import AlreadyExists, CapabilityError, DriverError, NotFound, TaskFailed
from pacsinfra.specs import (
    ChangeKind,
    DiskSpec,
    MachineSpec,
    Observed,
    Ownership,
    PowerState,
    Rendered,
)

MIB = 1024 * 1024
CPU_FIELDS = frozenset({"cpu_shares", "cpu_reservation_mhz", "cpu_limit_mhz"})
SEED_FIELDS = frozenset({"hostname", "ssh_authorized_keys", "nics"})


def check_machine(spec: MachineSpec, *, embed: bool = False) -> list[str]:
    """Problems with ``spec`` on KVM that need no connection to see."""
    out: list[str] = []
    if spec.cpu_count < 1:
        out.append(f"{spec.address}: cpu count must be at least 1")
    if spec.memory_mib < 1:
        out.append(f"{spec.address}: memory must be at least 1 MiB")
    for nic in spec.nics:
        if nic.network.startswith("bridge:") and nic.vlan is not None:
            out.append(
                f"{spec.address}: VLAN {nic.vlan} on Linux bridge {nic.network[7:]} is not "
                "supported by libvirt; use an Open vSwitch bridge (ovs:NAME) or an OVS network"
            )
        if usernet.is_user(nic.network):
            try:
                usernet.options(nic.network)
            except CapabilityError as exc:
                out.append(f"{spec.address}: {exc}")
        elif embed and not nic.network.startswith(("bridge:", "ovs:")):
            out.append(f"{spec.address}: qemu:///embed has no libvirt networks ({nic.network})")
    if spec.gpu is not None:
        if spec.gpu.mode == "vgpu" and not spec.gpu.profile:
            out.append(f"{spec.address}: a vGPU needs a profile (the mdev type)")
        if spec.gpu.mode == "passthrough":
            try:
                for address in (spec.gpu.device or "").split(","):
                    dom.parse_pci(address)
            except CapabilityError as exc:
                out.append(f"{spec.address}: {exc}")
        if spec.gpu.mode not in ("vgpu", "passthrough"):
            out.append(f"{spec.address}: unknown GPU mode {spec.gpu.mode!r}")
    names = [d.name for d in spec.disks]
    if len(set(names)) != len(names):
        out.append(f"{spec.address}: disk names must be unique")
    for d in spec.disks:
        if d.provisioning not in ("thin", "thick"):
            out.append(f"{spec.address}: disk {d.name}: provisioning must be thin or thick")
    return out


def _ref_pool(ref: dom.DiskRef, pool_of_path: dict[str, str]) -> str | None:
    if ref.pool:
        return ref.pool
    if ref.path:
        return pool_of_path.get(os.path.dirname(ref.path))
    return None

def _live_cputune(spec: MachineSpec, host_mhz: int | None) -> dict[str, int]:
    params: dict[str, int] = {}
    source = dom.shares_source(spec)
    if source == "shares":
        params["cpu_shares"] = int(spec.cpu_shares or 0)
    elif source == "reservation":
        params["cpu_shares"] = int(spec.cpu_reservation_mhz or 0)
    if spec.cpu_limit_mhz and host_mhz:
        params["global_period"] = dom.CFS_PERIOD_US
        params["global_quota"] = max(1000, round(spec.cpu_limit_mhz * dom.CFS_PERIOD_US / host_mhz))
    elif not spec.cpu_limit_mhz:
        params["global_quota"] = -1  # no limit
    return params


class Machines(KindHandler[MachineSpec]):
    """libvirt domains with their volumes and seeds."""

    def __init__(self, host: KvmHost, networks: Networks) -> None:
        self.host = host
        self.networks = networks  # a machine starts the site's networks it uses

    # -- reading ---------------------------------------------------------------------
    def read(self, spec: MachineSpec) -> Observed | None:
        return self._read_domain(spec.name, spec)

    def read_name(self, name: str) -> Observed | None:
        """The domain ``name`` as found, without a desired spec."""
        return self._read_domain(name, None)

    def list_owned(self, site: str) -> list[Observed]:
        """The site's domains, and the leftovers of its interrupted creates."""
        out = []
        for name in self.host.lc.domain_names():
            obs = self._read_domain(name, None)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        return out + self.leftovers(site)

    # -- planning --------------------------------------------------------------------
    def render(self, spec: MachineSpec, owner: Ownership) -> Rendered:
        """The domain XML and the volumes ``create`` would make."""
        ctx = self.host.domain_context(spec)
        volumes = [{"pool": v.pool, "name": v.name, "xml": v.xml}
                   for v in (pool_mod.disk_volume(spec, d, from_image=i == 0)
                             for i, d in enumerate(spec.disks))]
        return Rendered("application/xml", dom.render_domain(spec, owner, ctx),
                        {"volumes": volumes, "domain_type": ctx.domain_type})

    def classify(self, spec: MachineSpec, field_name: str) -> ChangeKind:
        return classify_mod.classify(spec, field_name)

    def classify_change(self, spec: MachineSpec, observed: Observed, field_name: str) -> ChangeKind:
        """Disk growth is in place, shrinking a replace (classify.py)."""
        return classify_mod.classify_change(spec, observed, field_name)

    def check(self, spec: MachineSpec) -> list[str]:
        problems = check_machine(spec, embed=self.host.embedded)
        if not problems:
            # everything rendering would refuse (pool directories are looked up later)
            ctx = dom.DomainContext(domain_type=self.host.domain_type(),
                                    host_mhz=self.host.host_mhz())
            try:
                dom.domain_inputs(spec, ctx)
                pool_mod.image_source(spec.image)
            except CapabilityError as exc:
                problems.append(str(exc))
        return problems

    def _pool_of_path(self) -> dict[str, str]:
        storage = self.host.lc.volumes
        if not storage.uses_files:
            return {}
        out: dict[str, str] = {}
        for name in storage.pool_names():
            path = storage.pool_path(name)
            if path:
                out[path.rstrip("/")] = name
        return out

    # -- the domain, its volumes and seed --------------------------------------------
    def _read_domain(self, name: str, desired: MachineSpec | None) -> Observed | None:
        """The domain ``name`` as an Observed MachineSpec, or None when absent."""
        lc = self.host.lc
        xml = lc.domain_xml(name)
        if xml is None:
            return None
        facts = dom.domain_facts(xml)
        pool_of_path = self._pool_of_path()
        capacities: dict[str, int] = {}
        missing: set[str] = set()
        for ref in facts.disks:
            pool = _ref_pool(ref, pool_of_path)
            if pool and ref.volume and lc.volumes.pool_exists(pool):
                cap = lc.volumes.volume_capacity(pool, ref.volume)
                if cap is not None:
                    capacities[ref.dev] = cap // MIB
                elif lc.volumes.pool_active(pool):  # a stopped pool hides its volumes
                    missing.add(ref.dev)
        if missing:
            # A disk whose volume is gone from its pool (a delete killed after the volumes
            # went, before the undefine) is not there: the plan shows it to be added, and
            # update creates it, instead of "growing" a volume that does not exist.
            facts = dataclasses.replace(
                facts, disks=tuple(r for r in facts.disks if r.dev not in missing)
            )
        state = lc.domain_state(name)
        if state == "absent":
            return None
        spec = dom.parse_domain(
            facts,
            capacities_mib=capacities,
            pool_of_path=pool_of_path,
            host_mhz=self.host.host_mhz(),
            running=state == "running",
            address=desired.address if desired else None,
        )
        return Observed(
            spec=spec,
            id=lc.domain_uuid(name),
            owner=facts.owner,
            power=self.host.STATE_MAP.get(state, PowerState.UNKNOWN),
        )

    def _validate_references(self, spec: MachineSpec, seed_pool: str | None) -> None:
        """Fail before creating anything when a pool, network or image is missing.

        test:///default accepts domains pointing at missing networks and volumes, and
        the system daemon only finds out at start: checking first keeps create atomic.
        """
        lc = self.host.lc
        missing: list[str] = []
        pools = {d.storage for d in spec.disks} | ({seed_pool} if seed_pool else set())
        for pool in sorted(pools):
            if not lc.volumes.pool_exists(pool):
                missing.append(f"storage pool {pool}")
        for nic in spec.nics:
            if nic.network.startswith(("bridge:", "ovs:", usernet.PREFIX)):
                continue
            if lc.network_xml(nic.network) is None:
                missing.append(f"network {nic.network}")
        backing, clone = pool_mod.image_source(spec.image)
        if clone is not None and lc.volumes.volume_capacity(*clone) is None:
            missing.append(f"image volume {clone[1]} in pool {clone[0]}")
        if backing is not None and lc.volumes.uses_files and not os.path.exists(backing[0]):
            missing.append(f"image file {backing[0]}")
        for boot_file in ("kernel", "initrd"):
            # on embed QEMU runs here: a missing file is seen now rather than at start
            path = spec.image.get(boot_file)
            if path and lc.volumes.uses_files and not os.path.exists(str(path)):
                missing.append(f"{boot_file} file {path}")
        if missing:
            raise NotFound(f"kvm: {spec.address} refers to what does not exist: {', '.join(missing)}")

    def _volumes_in_use(self) -> tuple[set[tuple[str, str]], set[str], dict[str, str]]:
        """What every defined domain's disks refer to: (pool, volume) pairs and real file paths.

        Also returns which domain uses each, for messages. Reads every domain: called only
        when a volume a create is about to make already exists (the rare leftover case).
        """
        from xml.etree import ElementTree as ET

        lc = self.host.lc
        pool_of_path = self._pool_of_path()
        refs: set[tuple[str, str]] = set()
        paths: set[str] = set()
        user: dict[str, str] = {}
        for name in lc.domain_names():
            xml = lc.domain_xml(name)
            if xml is None:
                continue
            # every <disk> (disks, CD-ROMs, LUNs, floppies), not only the ones pacsinfra renders
            for el in ET.fromstring(xml).iter("disk"):
                src = el.find("source")
                if src is None:
                    continue
                path = src.get("file") or src.get("dev")
                pool, volume = src.get("pool"), src.get("volume")
                if pool is None and path:
                    pool = pool_of_path.get(os.path.dirname(path))
                    volume = os.path.basename(path)
                if pool and volume:
                    refs.add((pool, volume))
                    user[f"{pool}/{volume}"] = name
                if path:
                    real = os.path.realpath(path)
                    paths.add(real)
                    user[real] = name
        return refs, paths, user

    def _clear_leftover(self, owner: Ownership, pool: str, vname: str, *, owned_pool: bool = True
    ) -> None:
        """Remove volume ``pool/vname`` if it is a leftover of an interrupted create or delete.

        ``vname`` is a name pacsinfra derives from the machine's (``<machine>-<disk>.qcow2``,
        ``<machine>-seed.iso``), and the caller has checked that no domain of that name
        exists. The volume is replaced only when no domain uses it and (with
        ``owned_pool``) the pool carries this site's mark; anything else is refused.
        A kill -9 runs no cleanup, so without this every later create would fail.
        """
        storage = self.host.lc.volumes
        path = storage.volume_path(pool, vname)
        if path is None:
            return
        if owned_pool:
            mark = self.host.pool_owner(pool)
            if mark is None or mark.site != owner.site:
                raise AlreadyExists(
                    f"kvm: volume {pool}/{vname} already exists in a pool this site does not own; "
                    "remove it or rename the machine"
                )
        refs, paths, user = self._volumes_in_use()
        real = os.path.realpath(path)
        if (pool, vname) in refs or real in paths:
            whose = user.get(f"{pool}/{vname}") or user.get(real)
            raise AlreadyExists(
                f"kvm: volume {pool}/{vname} already exists and domain {whose} uses it; "
                "remove it or rename the machine"
            )
        storage.delete_volume(pool, vname)

    def _create_disk(self, spec: MachineSpec,
        index: int,
        disk: Any,
        *,
        from_image: bool,
        owner: Ownership | None = None,
    ) -> tuple[str, str]:
        """Create the volume of ``disk``; with ``owner`` (a create), replace a leftover first."""
        storage = self.host.lc.volumes
        vol = pool_mod.disk_volume(spec, disk, from_image=from_image)
        if owner is not None:
            self._clear_leftover(owner, vol.pool, vol.name)
        if storage.volume_path(vol.pool, vol.name) is not None:
            raise AlreadyExists(
                f"kvm: volume {vol.pool}/{vol.name} already exists (left from an earlier run?); "
                "remove it or rename the machine"
            )
        storage.create_volume(
            vol.pool,
            vol.name,
            vol.xml,
            capacity=vol.capacity,
            fmt="qcow2",
            thick=vol.thick,
            backing=vol.backing,
            clone_from=vol.clone_from,
        )
        if vol.clone_from is not None:
            have = storage.volume_capacity(vol.pool, vol.name) or 0
            if have < vol.capacity:
                storage.resize_volume(vol.pool, vol.name, vol.capacity)
        return vol.pool, vol.name

    def _write_seed(self, spec: MachineSpec, pool: str, owner: Ownership | None = None
    ) -> tuple[str, str]:
        """(Re)build the seed ISO. With ``owner`` (a create) an existing seed is a leftover
        and replaced only when no domain uses it; without (an update of this machine) the
        machine's own seed is rebuilt."""
        storage = self.host.lc.volumes
        iso = cloudinit.build_iso(cloudinit.build_seed(spec))
        vname = dom.seed_volume_name(spec.name)
        if owner is not None:
            # The seed pool may be the operator's (``seed_pool``), given to pacsinfra for
            # seeds: a seed there is ours by its name, so only "in use" is checked.
            owned = any(d.storage == pool for d in spec.disks)
            self._clear_leftover(owner, pool, vname, owned_pool=owned)
        else:
            storage.delete_volume(pool, vname)  # a seed is always rebuilt from the spec
        xml = pool_mod.render_volume(name=vname, capacity=len(iso), allocation=len(iso), fmt="raw")
        storage.create_volume(pool, vname, xml, capacity=len(iso), fmt="raw", thick=False)
        # False on test:///default, which keeps no volume content: the volume still exists.
        storage.upload(pool, vname, iso)
        return pool, vname

    def _cleanup(self, name: str | None, volumes: list[tuple[str, str]], exc: BaseException
    ) -> None:
        """Undo a half-done create; failures here are noted on ``exc``, never raised over it."""
        lc = self.host.lc
        steps: list[tuple[str, Any]] = []
        if name is not None:
            steps.append((f"destroy {name}", lambda: lc.destroy_domain(name)))
            steps.append((f"undefine {name}", lambda: lc.undefine_domain(name)))
        for pool, vol in reversed(volumes):
            steps.append((f"delete {pool}/{vol}", lambda p=pool, v=vol: lc.volumes.delete_volume(p, v)))
        for what, step in steps:
            try:
                step()
            except DriverError as err:
                exc.add_note(f"cleanup: {what} failed: {err}")

    def _start_networks(self, spec: MachineSpec, owner: Ownership) -> None:
        """Start this site's networks the machine uses that are defined but not running.

        A network create killed between its definition and its start leaves it marked
        but stopped; the next plan adopts it as is, and the domain would not start.
        """
        for nic in spec.nics:
            if nic.network.startswith(("bridge:", "ovs:", usernet.PREFIX)):
                continue
            found = self.networks.read_name(nic.network)
            ours = found is not None and found.owner is not None and found.owner.site == owner.site
            if ours and found is not None and found.power != PowerState.ON:
                self.host.lc.start_network(nic.network)

    def create(self, spec: MachineSpec, owner: Ownership) -> Observed:
        """Create volumes, seed and domain, start it; undo everything on failure.

        Volumes named after the machine that an interrupted earlier create or delete
        left behind (unused by any domain, in this site's pool) are replaced.
        """
        lc = self.host.lc
        existing = self._read_domain(spec.name, spec)
        if claim("domain", spec.name, existing, owner):
            assert existing is not None
            self._drop_making(spec.name)  # a create killed after the definition
            return existing
        problems = check_machine(spec, embed=lc.volumes.uses_files)
        if problems:
            raise CapabilityError("; ".join(problems))
        ctx = self.host.domain_context(spec)
        seed_pool = dom.seed_pool(spec, ctx) if ctx.seed else None
        self._validate_references(spec, seed_pool)
        if ctx.uses_files:  # paths of pools are known only now that they are checked
            ctx = self.host.domain_context(spec)
        xml = dom.render_domain(spec, owner, ctx)  # render first: a bad spec creates nothing
        made: list[tuple[str, str]] = []
        defined = False
        try:
            if spec.disks:
                # the volumes' mark until the domain (the machine's own mark) exists: a
                # create killed in between leaves parts the next plan can name and remove
                made.append(self._mark_making(spec, owner))
            for i, disk in enumerate(spec.disks):
                made.append(self._create_disk(spec, i, disk, from_image=(i == 0), owner=owner))
            if seed_pool:
                made.append(self._write_seed(spec, seed_pool, owner))
            if lc.domain_exists(spec.name):  # appeared meanwhile (another process)
                raise AlreadyExists(f"kvm: domain {spec.name} appeared while creating it")
            lc.define_domain(xml)
            defined = True
            if spec.disks:
                made.pop(0)
                self._drop_making(spec.name)
            if spec.power_on:
                self._start_networks(spec, owner)
                lc.start_domain(spec.name)
        except BaseException as exc:
            # Only what this call made is removed: never a domain someone else defined.
            self._cleanup(spec.name if defined else None, made, exc)
            raise
        found = self._read_domain(spec.name, spec)
        if found is None:
            raise TaskFailed(f"kvm: domain {spec.name} vanished after creation")
        return found

    # -- the parts of an interrupted create --------------------------------------------
    def _mark_making(self, spec: MachineSpec, owner: Ownership) -> tuple[str, str]:
        """Write the making marker into the first disk's pool; (pool, marker name)."""
        pool = spec.disks[0].storage
        name = pool_mod.making_name(owner, spec.name)
        volumes = self.host.lc.volumes
        if volumes.volume_path(pool, name) is None:
            volumes.create_volume(pool, name, pool_mod.render_volume(
                name=name, capacity=0, allocation=0, fmt="raw"), capacity=0, fmt="raw",
                thick=False)
        return pool, name

    def _making_markers(self) -> list[tuple[str, str, Ownership, str]]:
        """Every making marker: (pool, marker, ownership, machine name)."""
        volumes = self.host.lc.volumes
        out = []
        for pool in volumes.pool_names():
            for vol in volumes.volume_names(pool):
                found = pool_mod.making_from_name(vol)
                if found is not None:
                    out.append((pool, vol, found[0], found[1]))
        return out

    def _drop_making(self, machine: str) -> None:
        """Remove the making markers of ``machine`` (its domain exists, or it is gone)."""
        for pool, vol, _, name in self._making_markers():
            if name == machine:
                with contextlib.suppress(NotFound):
                    self.host.lc.volumes.delete_volume(pool, vol)

    def leftovers(self, site: str) -> list[Observed]:
        """The parts of ``site``'s interrupted creates: a making marker whose machine has
        no domain, with the volumes named after that machine."""
        lc = self.host.lc
        out = []
        for pool, vol, owner, machine in self._making_markers():
            if owner.site != site:
                continue
            prefix = machine + "-"
            # a create killed between the domain's definition and the marker's removal
            # leaves the marker alone: the volumes are the domain's
            defined = lc.domain_exists(machine)
            parts = () if defined else tuple(
                DiskSpec(name=v[len(prefix):], size_mib=0, storage=p)
                for p in lc.volumes.pool_names() for v in lc.volumes.volume_names(p)
                if v.startswith(prefix))
            role, _, index = owner.address.partition(".")[2].partition("[")
            spec = MachineSpec(address=owner.address, name=machine, role=role,
                               index=int(index.rstrip("]") or 0), image={}, cpu_count=1,
                               memory_mib=0, disks=parts, power_on=False)
            out.append(Observed(spec=spec, id=f"leftover:{pool}/{vol}", owner=owner,
                                power=PowerState.OFF,
                                leftover="the marker of a create interrupted after its "
                                         "domain was defined" if defined else
                                         "volumes of a create that was interrupted before "
                                         "its domain was defined"))
        return out

    def _delete_leftover(self, observed: Observed) -> None:
        """Remove the volumes of an interrupted create that no domain uses, then its marker."""
        spec = observed.spec
        assert isinstance(spec, MachineSpec)
        lc = self.host.lc
        if lc.domain_exists(spec.name):  # the parts are the machine's: only the marker goes
            self._drop_making(spec.name)
            return
        refs, paths, _ = self._volumes_in_use()
        for disk in spec.disks:
            vol = f"{spec.name}-{disk.name}"
            path = lc.volumes.volume_path(disk.storage, vol)
            if path is None or (disk.storage, vol) in refs or os.path.realpath(path) in paths:
                continue
            with contextlib.suppress(NotFound):
                lc.volumes.delete_volume(disk.storage, vol)
        self._drop_making(spec.name)

    def _cleanup_volumes_only(self, volumes: list[tuple[str, str]], exc: BaseException
    ) -> None:
        for pool, vol in reversed(volumes):
            try:
                self.host.lc.volumes.delete_volume(pool, vol)
            except DriverError as err:
                exc.add_note(f"cleanup: delete {pool}/{vol} failed: {err}")

    def _disk_devs(self, name: str) -> dict[str, str]:
        """Disk name (serial) -> target dev, from the live domain."""
        xml = self.host.lc.domain_xml(name)
        if xml is None:
            return {}
        return {ref.serial: ref.dev for ref in dom.domain_facts(xml).disks if ref.serial}

    def update(self, spec: MachineSpec, observed: Observed, fields: Sequence[str]
    ) -> Observed:
        """Apply ``fields``: volumes first, then redefine; restart when a field needs power-off."""
        lc = self.host.lc
        current = self._read_domain(spec.name, spec)
        if current is None:
            raise NotFound(f"kvm: domain {spec.name} does not exist")
        if current.owner is None:
            raise AlreadyExists(
                f"kvm: domain {spec.name} is not owned by pacsinfra; refusing to change it"
            )
        kinds = {f: self.classify_change(spec, current, f) for f in fields}
        replace = sorted(f for f, k in kinds.items() if k == ChangeKind.REPLACE)
        if replace:
            raise CapabilityError(f"kvm: changing {', '.join(replace)} of {spec.name} needs a replace")
        worst = max(kinds.values(), default=ChangeKind.IN_PLACE)
        actual = current.spec
        assert isinstance(actual, MachineSpec)
        running = current.power == PowerState.ON
        restart = running and worst >= ChangeKind.NEEDS_POWER_OFF
        ctx = self.host.domain_context(spec)

        have = {d.name: d for d in actual.disks}
        made: list[tuple[str, str]] = []
        try:
            for i, disk in enumerate(spec.disks):
                if disk.name not in have:
                    made.append(
                        self._create_disk(
                            spec,
                            i,
                            disk,
                            from_image=(i == 0 and not actual.disks),
                            owner=current.owner,  # an update killed before the redefinition
                        )
                    )
        except BaseException as exc:
            self._cleanup_volumes_only(made, exc)
            raise

        if restart:
            lc.shutdown_domain(spec.name, self.host.shutdown_timeout())
        try:
            self._apply_update(spec, current, fields, ctx, running=running and not restart)
        except BaseException as exc:
            # Don't leave a machine off that was running: start it again (with the old
            # definition if the new one was not saved), and say so on the error.
            if running and lc.domain_state(spec.name) == "shutoff":
                try:
                    lc.start_domain(spec.name)
                    exc.add_note(f"{spec.name} was started again after the failed update")
                except DriverError as err:
                    exc.add_note(f"starting {spec.name} again failed too: {err}")
            raise
        found = self._read_domain(spec.name, spec)
        if found is None:
            raise NotFound(f"kvm: domain {spec.name} vanished during update")
        return found

    def _apply_update(self, spec: MachineSpec,
        current: Observed,
        fields: Sequence[str],
        ctx: dom.DomainContext,
        *,
        running: bool,
    ) -> None:
        """Resize, reseed, redefine, tune live, drop removed disks, set power (domain off or running)."""
        lc = self.host.lc
        storage = lc.volumes
        actual = current.spec
        assert isinstance(actual, MachineSpec) and current.owner is not None
        owner = current.owner
        have = {d.name: d for d in actual.disks}
        want = {d.name: d for d in spec.disks}
        devs = self._disk_devs(spec.name)
        for name, disk in want.items():
            old = have.get(name)
            if old is None or disk.size_mib <= old.size_mib:
                continue
            size = disk.size_mib * MIB
            if running and name[:20] in devs:
                lc.resize_disk_live(spec.name, devs[name[:20]], size)
            else:
                storage.resize_volume(disk.storage, dom.disk_volume_name(spec.name, name), size)
        seed_pool = dom.seed_pool(spec, ctx) if ctx.seed else None
        if seed_pool and (
            SEED_FIELDS & set(fields)
            # gone with a delete killed before the undefine: the domain would not start
            or storage.volume_path(seed_pool, dom.seed_volume_name(spec.name)) is None
        ):
            self._write_seed(spec, seed_pool)
        xml = dom.render_domain(spec, owner, ctx, uuid=current.id)
        lc.define_domain(xml)
        mark = owner_fragment(xml)
        if running and mark is not None:
            # a redefinition reaches a running domain at its next start only: its live
            # XML, which read() parses, gets the new mark and recorded intent now
            lc.set_domain_metadata(spec.name, OWNER_NS, "pacsinfra", mark)
        live = running and bool(CPU_FIELDS & set(fields))
        if live and not lc.set_cputune_live(spec.name, _live_cputune(spec, ctx.host_mhz)):
            raise CapabilityError(
                f"kvm: {lc.hypervisor_type} cannot change CPU tuning of running {spec.name}; "
                "the new values are saved and apply at its next start"
            )
        for name, old in have.items():
            if name not in want:
                storage.delete_volume(old.storage, dom.disk_volume_name(spec.name, name))
        state = lc.domain_state(spec.name)
        if spec.power_on and state != "running":
            self._start_networks(spec, owner)
            lc.start_domain(spec.name)
        elif not spec.power_on and state == "running":
            lc.shutdown_domain(spec.name, self.host.shutdown_timeout())

    def delete(self, observed: Observed) -> None:
        """Power off, delete its volumes, then undefine (nvram, managed save, snapshot metadata)."""
        if observed.leftover:
            self._delete_leftover(observed)
            return
        lc = self.host.lc
        spec = observed.spec
        assert isinstance(spec, MachineSpec)
        name = spec.name
        prefix = name + "-"
        volumes: set[tuple[str, str]] = set()
        xml = lc.domain_xml(name)
        pool_of_path = self._pool_of_path()
        if xml is not None:
            facts = dom.domain_facts(xml)
            if facts.owner is None:
                raise AlreadyExists(f"kvm: domain {name} is not owned by pacsinfra; not deleting it")
            for ref in (*facts.disks, facts.seed):
                if ref is None or not ref.volume or not ref.volume.startswith(prefix):
                    continue  # never delete a volume we did not name (e.g. a shared image)
                pool = _ref_pool(ref, pool_of_path)
                if pool:
                    volumes.add((pool, ref.volume))
            lc.destroy_domain(name)
        for disk in spec.disks:
            volumes.add((disk.storage, dom.disk_volume_name(name, disk.name)))
        ctx_seed_pool = dom.seed_pool(spec, dom.DomainContext(seed_pool=self.host.seed_pool()))
        if ctx_seed_pool:
            volumes.add((ctx_seed_pool, dom.seed_volume_name(name)))
        # The volumes go before the definition (the marked object) is removed: a delete
        # killed half-way leaves a marked domain, deleted again by the next run, never
        # unmarked volumes.
        seed = dom.seed_volume_name(name)
        for pool, vol in sorted(volumes, key=lambda pv: (pv[1] == seed, pv)):  # the seed last
            if pool and lc.volumes.pool_exists(pool):
                with contextlib.suppress(NotFound):
                    lc.volumes.delete_volume(pool, vol)
        self._drop_making(name)  # left by a create killed after the domain's definition
        if xml is not None:
            lc.undefine_domain(name)
