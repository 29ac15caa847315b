"""Virtual machines: create (empty or cloned), read, update, power, delete, anti-affinity.

Order of a create: the VM is made with its ownership mark in extraConfig from
the first request (so a crash leaves an adoptable, deletable object), then
devices and allocation, guest customization while off, power on, DRS rule.
Any failure after the VM exists deletes it before the error is raised.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from pyVmomi import vim
from pyVmomi.VmomiJSONEncoder import VmomiJSONEncoder

from pacsinfra.drivers.handlers import KindHandler
from pacsinfra.drivers.settings import setting
from pacsinfra.drivers.vsphere import classify as classify_mod
from pacsinfra.drivers.vsphere import spec as spec_mod
from pacsinfra.drivers.vsphere.client import PowerStateConflict, VsphereClient
from pacsinfra.drivers.vsphere.host import VsphereHost, refuse_unowned
from pacsinfra.drivers.vsphere.inventory import Inventory, InventoryResolver
from pacsinfra.drivers.vsphere.parse import parse_vm
from pacsinfra.drivers.vsphere.pbm import PolicyStore, check_placement
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound, PacsinfraError
from pacsinfra.specs import ChangeKind, MachineSpec, Observed, Ownership, PowerState, Rendered

VM_PROPS = ("name", "config", "runtime.powerState", "guest.net")
MAX_DISKS = len(spec_mod.SCSI_UNITS)
SNAPSHOT_TTL = 5.0  # seconds a listing answers name lookups for read()


class Machines(KindHandler[MachineSpec]):
    """VMs in one datacenter/cluster."""

    def __init__(self, host: VsphereHost) -> None:
        self.host = host
        self.config = host.config
        self._rule_lock = threading.Lock()
        self._snap_lock = threading.Lock()
        self._placement_ok: set[tuple[str, str]] = set()
        self.hot_add: dict[str, tuple[bool, bool]] = {}  # vm id -> (cpu, memory) hot-add enabled
        self.kept_disks: dict[str, tuple[int, int]] = {}  # vm id -> template disks the spec leaves out
        # name -> VM from the last full listing, and when it was taken: a plan lists once and
        # then reads each desired machine; within SNAPSHOT_TTL a read looks the name up here
        # instead of listing the inventory again (create() always looks afresh).
        self._snapshot: tuple[float, dict[str, Any]] | None = None
        self._generation = 0  # bumped by every create/delete/rename: a listing older than that is stale

    @property
    def client(self) -> VsphereClient:
        return self.host.client

    @property
    def inv(self) -> Inventory:
        return self.host.inventory

    @property
    def resolver(self) -> InventoryResolver:
        return InventoryResolver(self.inv)

    # -- planning ------------------------------------------------------------------------
    def render(self, spec: MachineSpec, owner: Ownership) -> Rendered:
        """The clone or create call and the VM's configuration, as vCenter would get them."""
        extras = spec_mod.Extras(owner=owner, hot_add=bool(setting(self.config, "hot_add", False)))
        ds = str(setting(self.config, "datastore", "datastore"))
        cfg = spec_mod.new_config(spec, extras, ds, spec_mod.NameResolver(ds))
        template = spec.image.get("template")
        payload: dict[str, Any] = {
            "method": "CloneVM_Task + ReconfigVM_Task" if template else "CreateVM_Task",
            "template": template,
            "config": json.loads(json.dumps(cfg, cls=VmomiJSONEncoder)),
        }
        custom = spec_mod.customization(spec)
        if custom is not None:
            payload["customization"] = json.loads(json.dumps(custom, cls=VmomiJSONEncoder))
        if spec.anti_affinity_group:
            # the cluster's DRS rule keeping the group's VMs on different hosts (sync_rule)
            payload["drs_rule"] = {"name": spec.anti_affinity_group, "type": "anti-affinity",
                                   "member": spec.name}
        return Rendered("application/json", json.dumps(payload, indent=2, sort_keys=True))

    def classify(self, spec: MachineSpec, field_name: str) -> ChangeKind:
        return classify_mod.classify(spec, field_name)

    def classify_change(self, spec: MachineSpec, observed: Observed, field_name: str) -> ChangeKind:
        """Hot-add decides whether more CPUs or memory need a power cycle."""
        hot = self.hot_add.get(observed.id, (False, False))
        return classify_mod.classify_change(spec, observed, field_name, hot)

    def check(self, spec: MachineSpec) -> list[str]:
        problems: list[str] = []
        where = f"{spec.address} ({spec.name})"
        if spec.gpu is not None:
            if spec.gpu.mode == "vgpu" and not spec.gpu.profile:
                problems.append(f"{where}: a vGPU needs a profile (e.g. grid_a40-8q)")
            if spec.gpu.mode == "passthrough" and not spec.gpu.device:
                problems.append(f"{where}: GPU passthrough needs the device's PCI address")
            if spec.gpu.mode not in ("vgpu", "passthrough"):
                problems.append(f"{where}: unknown GPU mode {spec.gpu.mode!r}")
            if spec.memory_reservation_mib != spec.memory_mib and not spec.memory_lock:
                problems.append(
                    f"{where}: vSphere requires all guest memory reserved for a GPU: set "
                    f"memory.reservation to {spec.memory_mib} MiB (the memory size) or "
                    "memory.lock: true")
        if len(spec.disks) > MAX_DISKS:
            problems.append(f"{where}: {len(spec.disks)} disks; one SCSI controller holds {MAX_DISKS}")
        for d in spec.disks:
            if d.provisioning not in ("thin", "thick"):
                problems.append(f"{where}: disk {d.name}: provisioning must be thin or thick")
        if spec.memory_reservation_mib and spec.memory_reservation_mib > spec.memory_mib:
            problems.append(f"{where}: memory reservation exceeds the memory size")
        if (spec.cpu_limit_mhz is not None and spec.cpu_reservation_mhz
                and spec.cpu_limit_mhz < spec.cpu_reservation_mhz):
            problems.append(f"{where}: CPU limit below the CPU reservation")
        return problems

    def _refuse(self, spec: MachineSpec) -> None:
        problems = self.check(spec)
        if problems:
            raise CapabilityError("; ".join(problems))

    # -- settings ------------------------------------------------------------------------
    def extras(self, spec: MachineSpec, owner: Ownership | None) -> spec_mod.Extras:
        lat = setting(self.config, "latency_sensitivity")
        if isinstance(lat, dict):
            lat = lat.get(spec.role)
        return spec_mod.Extras(
            guest_id=str(spec.image.get("guest_id") or setting(self.config, "guest_id", spec_mod.DEFAULT_GUEST_ID)),
            hot_add=bool(setting(self.config, "hot_add", False)),
            latency_sensitivity=str(lat) if lat else None,
            cloud_init=bool(setting(self.config, "cloud_init", True)),
            owner=owner,
        )

    # -- reading -------------------------------------------------------------------------
    def all_vms(self, props: Iterable[str] = VM_PROPS) -> list[tuple[Any, dict[str, Any]]]:
        """Every VM of the datacenter with the given properties (one pass)."""
        return self.client.retrieve(self.inv.dc_folder("vmFolder"), vim.VirtualMachine, list(props))

    def observed(self, vm: Any, props: dict[str, Any], desired: MachineSpec | None = None) -> Observed | None:
        parsed = parse_vm(props, self.inv.portgroup_names(), desired)
        if parsed is None:
            return None
        self.hot_add[vm._moId] = parsed.hot_add
        self.kept_disks[vm._moId] = parsed.kept_disks
        unobservable = frozenset({"disks.storage"}) if parsed.spec.disks else frozenset()
        return Observed(
            spec=parsed.spec,
            id=vm._moId,
            owner=parsed.owner,
            power=parsed.power,
            addresses=parsed.addresses,
            unobservable=unobservable,
        )

    def find(self, name: str) -> Any | None:
        """The VM (not template) called ``name`` in the datacenter, or None."""
        for vm, props in self.all_vms(["name", "config.template"]):
            if props.get("name") == name and not props.get("config.template"):
                return vm
        return None

    def read(self, spec: MachineSpec) -> Observed | None:
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap[0] < SNAPSHOT_TTL:
            vm = snap[1].get(spec.name)
        else:
            vm = self.find(spec.name)
        if vm is None:
            return None
        return self.read_vm(vm, spec)

    def read_vm(self, vm: Any, desired: MachineSpec | None = None) -> Observed | None:
        try:
            props = self.client.properties(vm, VM_PROPS)
        except NotFound:
            return None
        return self.observed(vm, props, desired)

    def list_owned(self, site: str) -> list[Observed]:
        out = []
        taken, generation = time.monotonic(), self._generation
        names: dict[str, Any] = {}
        for vm, props in self.all_vms():
            cfg = props.get("config")
            if props.get("name") and not (cfg is not None and cfg.template):
                names[str(props["name"])] = vm
            obs = self.observed(vm, props)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        with self._snap_lock:
            if generation == self._generation:
                self._snapshot = (taken, names)
        return out

    def forget_snapshot(self) -> None:
        """Drop the name snapshot: pacsinfra is changing the inventory."""
        with self._snap_lock:
            self._generation += 1
            self._snapshot = None

    def vm_of(self, observed: Observed) -> Any:
        return vim.VirtualMachine(observed.id, self.client.si._stub)

    # -- checks before touching vSphere ----------------------------------------------------
    def check_gpu(self, spec: MachineSpec) -> None:
        """The vGPU profile must be offered by a host of the cluster (or declared in settings)."""
        if spec.gpu is None or spec.gpu.mode != "vgpu":
            return
        declared = setting(self.config, "vgpu_profiles")
        offered: set[str] = set(declared or ())
        if not declared:
            for host in self.inv.hosts:
                types = self.client.properties(host, ["config.sharedPassthruGpuTypes"]).get(
                    "config.sharedPassthruGpuTypes"
                )
                offered |= set(types or ())
        if spec.gpu.profile not in offered:
            raise CapabilityError(
                f"vsphere: {spec.name}: no host of the cluster offers vGPU profile {spec.gpu.profile!r}"
                + (f" (offered: {', '.join(sorted(offered))})" if offered else " (no vGPU host found)")
            )

    def check_placement(self, spec: MachineSpec) -> None:
        """Each disk's datastore must satisfy its storage policy (asked of PBM, cached)."""
        store = PolicyStore(self.client)
        stores = self.inv.datastores()
        for disk in spec.disks:
            if disk.storage in stores:
                continue
            policy = self.inv.policy(disk.storage)
            if policy is None:
                raise NotFound(f"vsphere: storage policy {disk.storage!r} not found (is its storage class applied?)")
            ds_name = self.resolver.disk_datastore(disk)
            key = (policy.id, ds_name)
            if key in self._placement_ok:
                continue
            check_placement(store, policy, stores[ds_name]._moId, ds_name)
            self._placement_ok.add(key)

    # -- acting ----------------------------------------------------------------------------
    def create(self, spec: MachineSpec, owner: Ownership) -> Observed:
        self._refuse(spec)
        self.forget_snapshot()
        existing = self.find(spec.name)
        if existing is not None:
            obs = self.read_vm(existing, spec)
            if obs is not None and obs.owner == owner:
                return obs  # a retried create: it is already there
            who = f"site {obs.owner.site}" if obs and obs.owner else "no pacsinfra mark"
            raise AlreadyExists(f"vsphere: a VM named {spec.name} already exists ({who})")
        self.check_gpu(spec)
        self.check_placement(spec)
        extras = self.extras(spec, owner)
        template = spec.image.get("template")
        vm: Any = None
        try:
            if template:
                vm = self._clone(spec, extras, str(template))
            else:
                cfg = spec_mod.new_config(spec, extras, self.inv.default_datastore, self.resolver)
                host = self._host_named(spec.host_hint) if spec.host_hint else None
                vm = self.client.run(
                    f"vsphere: create {spec.name}",
                    self.inv.folder.CreateVM_Task,
                    config=cfg,
                    pool=self.inv.pool,
                    host=host,
                )
            self._customize(vm, spec)
            if spec.power_on:
                self.power_on(vm, spec.name)
            self.sync_rule(spec.anti_affinity_group)
        except BaseException as exc:
            if vm is not None:
                self._cleanup(vm, spec.name, exc)
            raise
        obs = self.read_vm(vm, spec)
        if obs is None:
            raise NotFound(f"vsphere: {spec.name} vanished right after its creation")
        return obs

    def _cleanup(self, vm: Any, name: str, exc: BaseException) -> None:
        try:
            self.destroy(vm, name)
        except PacsinfraError as again:
            exc.add_note(f"cleanup of the half-created {name} failed too: {again}")

    def _clone(self, spec: MachineSpec, extras: spec_mod.Extras, template: str) -> Any:
        src = None
        for vm, props in self.all_vms(["name"]):
            if props.get("name") == template:
                src = vm
                break
        if src is None:
            raise NotFound(f"vsphere: template {template!r} not found in the datacenter")
        ds = self.inv.datastores()[self.inv.default_datastore]
        reloc = vim.vm.RelocateSpec(pool=self.inv.pool, datastore=ds)
        # each template disk the spec keeps is cloned in the spec's format (a thin
        # template's disk made thick, or the other way round): vCenter converts while copying
        src_devices = self.client.properties(src, ["config.hardware.device"]).get(
            "config.hardware.device") or ()
        reloc.disk = spec_mod.clone_disk_locators(spec, list(src_devices), ds)
        if spec.host_hint:
            reloc.host = self._host_named(spec.host_hint)
        mark = vim.vm.ConfigSpec(extraConfig=spec_mod.extra_config(spec, extras))
        clone = vim.vm.CloneSpec(location=reloc, powerOn=False, template=False, config=mark)
        vm = self.client.run(
            f"vsphere: clone {template} to {spec.name}", src.CloneVM_Task, folder=self.inv.folder, name=spec.name, spec=clone
        )
        try:
            # Devices and allocation in a second step: the clone's own devices decide what to edit.
            devices = list(self.client.properties(vm, ["config.hardware.device"])["config.hardware.device"] or ())
            template_disks = len(spec_mod.disks_of(devices))
            extras.kept_disks = (len(spec.disks), max(0, template_disks - len(spec.disks)))
            cfg = spec_mod.base_config(spec, extras)
            cfg.cpuHotAddEnabled = extras.hot_add
            cfg.memoryHotAddEnabled = extras.hot_add
            if spec.image.get("guest_id") or setting(self.config, "guest_id"):
                cfg.guestId = extras.guest_id  # asked for; otherwise the template's stays
            cfg.deviceChange = spec_mod.device_changes(spec, devices, self.resolver, kept_disks=extras.kept_disks)
            self.client.run(f"vsphere: configure {spec.name}", vm.ReconfigVM_Task, spec=cfg)
            self._check_disk_formats(vm, spec, template)
        except BaseException as exc:
            self._cleanup(vm, spec.name, exc)
            raise
        return vm

    def _check_disk_formats(self, vm: Any, spec: MachineSpec, template: str) -> None:
        """Every disk in the format its storage class asks for, or a clear refusal (a plan
        that proposes the same conversion forever helps nobody)."""
        devices = self.client.properties(vm, ["config.hardware.device"])["config.hardware.device"]
        for disk, dev in zip(spec.disks, spec_mod.disks_of(list(devices or ())), strict=False):
            have = "thin" if getattr(dev.backing, "thinProvisioned", False) else "thick"
            if have != disk.provisioning:
                raise CapabilityError(
                    f"vsphere: {spec.name}: disk {disk.name} is {have} after cloning {template!r} "
                    f"and vCenter did not convert it to {disk.provisioning}; use a "
                    f"{disk.provisioning} template or a storage class with provisioning: {have}")

    def _host_named(self, name: str) -> Any:
        for h in self.inv.hosts:
            if self.client.properties(h, ["name"]).get("name") == name:
                return h
        raise NotFound(f"vsphere: host {name!r} not found in the cluster")

    def _customize(self, vm: Any, spec: MachineSpec) -> None:
        custom = spec_mod.customization(spec)
        if custom is None:
            return
        self.client.run(f"vsphere: customize {spec.name}", vm.CustomizeVM_Task, spec=custom)

    def power_on(self, vm: Any, name: str) -> None:
        try:
            self.client.run(f"vsphere: power on {name}", vm.PowerOnVM_Task)
        except PowerStateConflict:
            pass  # already on

    def power_off(self, vm: Any, name: str) -> None:
        """Ask the guest to shut down, then (after shutdown_timeout) power off."""
        timeout = float(setting(self.config, "shutdown_timeout", 60))
        try:
            self.client.call(f"vsphere: shut down {name}", vm.ShutdownGuest)
            if self.client.wait_property(vm, "runtime.powerState", "poweredOff", timeout):
                return
        except PacsinfraError:
            pass  # no VMware Tools in the guest: fall through to a hard power-off
        try:
            self.client.run(f"vsphere: power off {name}", vm.PowerOffVM_Task)
        except PowerStateConflict:
            pass  # already off

    def destroy(self, vm: Any, name: str) -> None:
        self.forget_snapshot()
        try:
            state = self.client.properties(vm, ["runtime.powerState"]).get("runtime.powerState")
        except NotFound:
            return
        if state != "poweredOff":
            try:
                self.client.run(f"vsphere: power off {name}", vm.PowerOffVM_Task)
            except (PowerStateConflict, NotFound):
                pass
        try:
            self.client.run(f"vsphere: destroy {name}", vm.Destroy_Task)
        except NotFound:
            pass

    def delete(self, observed: Observed) -> None:
        refuse_unowned(observed, "delete")
        vm = self.vm_of(observed)
        self.destroy(vm, observed.spec.name)
        group = getattr(observed.spec, "anti_affinity_group", None)
        if group:
            self.sync_rule(group)

    def update(self, spec: MachineSpec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Reconfigure the VM; powered off first when a field needs it."""
        self._refuse(spec)
        if observed.owner is None:
            raise CapabilityError(f"vsphere: {spec.name} carries no pacsinfra mark; refusing to "
                                  "change it")
        kinds = [self.classify_change(spec, observed, f) for f in fields]
        if ChangeKind.REPLACE in kinds:
            bad = [f for f, k in zip(fields, kinds, strict=True) if k is ChangeKind.REPLACE]
            raise CapabilityError(
                f"vsphere: {spec.name}: {', '.join(bad)} cannot change in place (replace)")
        return self._reconfigure(spec, observed, fields, ChangeKind.NEEDS_POWER_OFF in kinds)

    def _reconfigure(
        self, spec: MachineSpec, observed: Observed, fields_in: Sequence[str], power_off_needed: bool
    ) -> Observed:
        vm = self.vm_of(observed)
        fields = frozenset(fields_in)
        was_on = observed.power is PowerState.ON
        if power_off_needed and was_on:
            self.power_off(vm, spec.name)
        if "gpu" in fields:
            self.check_gpu(spec)
        if "disks" in fields:
            self.check_placement(spec)
        extras = self.extras(spec, observed.owner)
        if observed.id not in self.kept_disks:
            self.read_vm(vm)  # a plan made by another process: learn the kept template disks
        extras.kept_disks = self.kept_disks.get(observed.id, (0, 0))
        cfg: Any = vim.vm.ConfigSpec(extraConfig=spec_mod.extra_config(spec, extras))
        if "cpu_count" in fields:
            cfg.numCPUs = spec.cpu_count
        if "memory_mib" in fields:
            cfg.memoryMB = spec.memory_mib
        if fields & {"cpu_reservation_mhz", "cpu_limit_mhz", "cpu_shares", "cpu_count"}:
            cfg.cpuAllocation = spec_mod.cpu_allocation(spec)
        if fields & {"memory_reservation_mib", "memory_mib"}:
            cfg.memoryAllocation = spec_mod.memory_allocation(spec)
        if "memory_lock" in fields:
            cfg.memoryReservationLockedToMax = spec.memory_lock
        dev_fields = frozenset(fields & {"disks", "nics", "gpu"})
        if dev_fields:
            devices = self.client.properties(vm, ["config.hardware.device"])["config.hardware.device"]
            cfg.deviceChange = spec_mod.device_changes(
                spec, list(devices or ()), self.resolver, only=dev_fields, kept_disks=extras.kept_disks
            )
        self.client.run(f"vsphere: reconfigure {spec.name}", vm.ReconfigVM_Task, spec=cfg)
        if "name" in fields:
            self.forget_snapshot()
            self.client.run(f"vsphere: rename to {spec.name}", vm.Rename_Task, newName=spec.name)
        if "host_hint" in fields and spec.host_hint:
            reloc = vim.vm.RelocateSpec(host=self._host_named(spec.host_hint))
            self.client.run(f"vsphere: move {spec.name}", vm.RelocateVM_Task, spec=reloc)
        if power_off_needed and fields & {"nics", "hostname"}:
            self._customize(vm, spec)
        if spec.power_on and (was_on or "power_on" in fields):
            self.power_on(vm, spec.name)
        elif not spec.power_on and "power_on" in fields:
            self.power_off(vm, spec.name)
        if "anti_affinity_group" in fields:
            self.sync_rule(spec.anti_affinity_group)
            self.sync_rule(getattr(observed.spec, "anti_affinity_group", None))
        obs = self.read_vm(vm, spec)
        if obs is None:
            raise NotFound(f"vsphere: {spec.name} is gone")
        return obs

    # -- DRS anti-affinity ------------------------------------------------------------------
    def sync_rule(self, group: str | None) -> None:
        """Make the cluster's anti-affinity rule ``group`` list exactly the VMs of that group."""
        if not group:
            return
        with self._rule_lock:
            members = []
            for vm, props in self.all_vms(["config.extraConfig"]):
                extra = {o.key: str(o.value) for o in props.get("config.extraConfig") or ()}
                intent = spec_mod.json.loads(extra.get(spec_mod.INTENT_KEY, "{}") or "{}")
                if spec_mod.owner_of(extra) is not None and intent.get("anti_affinity_group") == group:
                    members.append(vm)
            cluster = self.inv.cluster
            if not isinstance(cluster, vim.ClusterComputeResource):
                return  # a standalone host has no DRS
            rules = self.client.properties(cluster, ["configurationEx"])["configurationEx"].rule or []
            current = [r for r in rules if r.name == group]
            specs = []
            if len(members) < 2:
                specs = [vim.cluster.RuleSpec(operation="remove", removeKey=r.key) for r in current]
            else:
                rule = vim.cluster.AntiAffinityRuleSpec(name=group, enabled=True, vm=members)
                if current:
                    have = sorted(v._moId for v in current[0].vm or ())
                    if have == sorted(v._moId for v in members):
                        return
                    rule.key = current[0].key
                    specs = [vim.cluster.RuleSpec(operation="edit", info=rule)]
                else:
                    specs = [vim.cluster.RuleSpec(operation="add", info=rule)]
            if not specs:
                return
            self.client.run(
                f"vsphere: anti-affinity rule {group}",
                cluster.ReconfigureComputeResource_Task,
                spec=vim.cluster.ConfigSpecEx(rulesSpec=specs),
                modify=True,
            )

    def rule_members(self, group: str) -> list[str]:
        """Names of the VMs in the cluster rule ``group`` (for tests and status)."""
        cluster = self.inv.cluster
        rules = self.client.properties(cluster, ["configurationEx"])["configurationEx"].rule or []
        names = []
        for r in rules:
            if r.name == group:
                names += [self.client.properties(v, ["name"])["name"] for v in r.vm or ()]
        return sorted(names)
