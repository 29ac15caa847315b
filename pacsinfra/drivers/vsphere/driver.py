"""VsphereDriver: pacsinfra's specs on vCenter (VMs, port groups, storage policies) via pyVmomi.

Settings (``provider.vsphere`` of the blueprint; an object with attributes or a Mapping):

- ``server`` (``vc.example``, ``host:port`` or ``https://host:port/sdk``), ``user``,
  ``password`` (a SecretRef, resolved in :meth:`connect` only),
  ``insecure`` (False: TLS is verified), ``ca_file``.
- ``datacenter``, ``cluster``, ``resource_pool``, ``folder`` (``a/b``, created when
  missing), ``datastore`` (default: the cluster's first).
- Optional: ``hot_add`` (enable CPU/memory hot-add on new VMs), ``latency_sensitivity``
  (a level, or role -> level), ``guest_id``, ``shutdown_timeout`` (s), ``task_timeout`` (s),
  ``cloud_init`` (guestinfo metadata/userdata, default True), ``vgpu_profiles``
  (declared vGPU profiles, for hosts that do not report theirs, e.g. the simulator).
- ``ssh``: how to log in to the VMs to run their services (``ServiceSpec`` steps, over
  SSH at each VM's first static address: :mod:`.services`). Without it, machines only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pyVmomi.VmomiJSONEncoder import VmomiJSONEncoder

from pacsinfra.drivers import service_common
from pacsinfra.drivers.base import (
    Capability,
    ChangeKind,
    Driver,
    MachineSpec,
    NetworkSpec,
    Observed,
    Ownership,
    Rendered,
    ServiceSpec,
    Spec,
    StorageSpec,
    spec_to_dict,
)
from pacsinfra.drivers.settings import setting
from pacsinfra.drivers.vsphere import classify as classify_mod
from pacsinfra.drivers.vsphere import network as net_mod
from pacsinfra.drivers.vsphere import spec as spec_mod
from pacsinfra.drivers.vsphere.client import Endpoint, VsphereClient
from pacsinfra.drivers.vsphere.inventory import Inventory
from pacsinfra.drivers.vsphere.machines import Machines
from pacsinfra.drivers.vsphere.network import Networks
from pacsinfra.drivers.vsphere.services import VsphereGuests
from pacsinfra.drivers.vsphere.storage import Policies
from pacsinfra.errors import CapabilityError, ConnectError, SecretError
from pacsinfra.secrets import SecretRef

MAX_DISKS = len(spec_mod.SCSI_UNITS)


def _secret(value: Any) -> SecretRef | None:
    if value is None or isinstance(value, SecretRef):
        return value
    if isinstance(value, Mapping):
        return SecretRef(**value)
    raise SecretError("vsphere: password must be a secret reference ({env: ...} or {file: ...}), not a literal")


class VsphereDriver(Driver):
    """The vSphere driver (pyVmomi), tested against govmomi's vcsim."""

    name: ClassVar[str] = "vsphere"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.CPU_RESERVATION,
            Capability.CPU_LIMIT,
            Capability.CPU_SHARES,
            Capability.MEMORY_RESERVATION,
            Capability.MEMORY_LOCK,
            Capability.VGPU,
            Capability.GPU_PASSTHROUGH,
            Capability.VLAN,
            Capability.STORAGE_POLICY,
            Capability.ANTI_AFFINITY,
            Capability.HOT_ADD,
            Capability.CLOUD_INIT,
        }
    )

    def __init__(self, config: Any, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self._vc: VsphereClient | None = None
        self._inv: Inventory | None = None
        self._machines: Machines | None = None
        self._networks: Networks | None = None
        self._policies: Policies | None = None
        self.services = VsphereGuests(self)

    # -- connection -------------------------------------------------------------------
    def connect(self) -> None:
        if self._vc is not None:
            return
        timeout = float(setting(self.config, "task_timeout", 600))
        if self._client is not None:
            vc = VsphereClient(si=self._client, task_timeout=timeout)
        else:
            server = setting(self.config, "server")
            if not server:
                raise ConnectError("vsphere: provider.vsphere.server is not set")
            endpoint = Endpoint.parse(
                str(server),
                user=str(setting(self.config, "user", "")),
                insecure=bool(setting(self.config, "insecure", False)),
                ca_file=setting(self.config, "ca_file"),
            )
            ref = _secret(setting(self.config, "password"))
            vc = VsphereClient(endpoint, ref.resolve if ref else None, task_timeout=timeout)
            vc.connect()
            # More pooled HTTP connections than pyVmomi's default 5: applies run in parallel.
            vc.si._stub.poolSize = int(setting(self.config, "connections", 16))
        self._vc = vc
        self._inv = Inventory(vc, self.config)
        self._machines = Machines(vc, self._inv, self.config)
        self._networks = Networks(vc, self._inv)
        self._policies = Policies(vc, self._inv)

    def close(self) -> None:
        self.services.close()
        vc, self._vc = self._vc, None
        if vc is not None:
            vc.close()

    @property
    def client(self) -> VsphereClient:
        """The connected client (connecting on first use)."""
        self.connect()
        assert self._vc is not None
        return self._vc

    @property
    def machines(self) -> Machines:
        self.connect()
        assert self._machines is not None
        return self._machines

    @property
    def networks(self) -> Networks:
        self.connect()
        assert self._networks is not None
        return self._networks

    @property
    def policies(self) -> Policies:
        self.connect()
        assert self._policies is not None
        return self._policies

    # -- reading ---------------------------------------------------------------------
    def list_owned(self, site: str) -> list[Observed]:
        out = list(self.policies.list_owned(site))
        marks = self.client.read_marks(net_mod.MARK_KIND)
        for name, mark in sorted(marks.items()):
            if (mark.get("owner") or {}).get("site") != site:
                continue
            obs = self.networks.read_name(name, mark)
            if obs is not None:
                out.append(obs)
        machines = self.machines.list_owned(site)
        out += machines
        out += self.services.list_owned(site, machines)
        return out

    def read(self, spec: Spec) -> Observed | None:
        if isinstance(spec, ServiceSpec):
            return self.services.read(spec)
        if isinstance(spec, MachineSpec):
            return self.machines.read(spec)
        if isinstance(spec, NetworkSpec):
            return self.networks.read(spec)
        if isinstance(spec, StorageSpec):
            return self.policies.read(spec)
        raise TypeError(f"not a spec: {type(spec).__name__}")

    # -- hosts, for work between steps ----------------------------------------------------
    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> Any:
        """The SSH session to running VM ``machine`` (``provider.vsphere.ssh``)."""
        return self.services.host_session(machine, with_pacsinfra=with_pacsinfra)

    def machine_running(self, machine: str) -> bool:
        """Whether VM ``machine`` exists, is pacsinfra's and is powered on."""
        return self.services.running(machine)

    # -- planning ----------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        if isinstance(spec, ServiceSpec):
            return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1),
                            self.services.render_params(spec))
        if isinstance(spec, MachineSpec):
            extras = spec_mod.Extras(owner=owner, hot_add=bool(setting(self.config, "hot_add", False)))
            ds = str(setting(self.config, "datastore", "datastore"))
            resolver = spec_mod.NameResolver(ds)
            cfg = spec_mod.new_config(spec, extras, ds, resolver)
            payload: dict[str, Any] = {
                "method": "CloneVM_Task + ReconfigVM_Task" if spec.image.get("template") else "CreateVM_Task",
                "template": spec.image.get("template"),
                "config": json.loads(json.dumps(cfg, cls=VmomiJSONEncoder)),
            }
            custom = spec_mod.customization(spec)
            if custom is not None:
                payload["customization"] = json.loads(json.dumps(custom, cls=VmomiJSONEncoder))
            text = json.dumps(payload, indent=2, sort_keys=True)
        elif isinstance(spec, NetworkSpec):
            text = json.dumps(net_mod.render(spec), indent=2, sort_keys=True)
        elif isinstance(spec, StorageSpec):
            from pacsinfra.drivers.vsphere import pbm as pbm_mod

            payload = {
                "method": "PbmCreate",
                "name": spec.name,
                "description": pbm_mod.description(spec),
                "rules": {f"{pbm_mod.NAMESPACE}.{k}": v for k, v in pbm_mod.rules_of(spec).items()},
            }
            text = json.dumps(payload, indent=2, sort_keys=True)
        else:
            raise TypeError(f"not a spec: {type(spec).__name__}")
        return Rendered(media_type="application/json", text=text)

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        if isinstance(spec, ServiceSpec):
            return service_common.classify(spec, field_name)
        return classify_mod.classify(spec, field_name)

    def classify_change(self, spec: Spec, observed: Observed, field_name: str) -> ChangeKind:
        if isinstance(spec, ServiceSpec):
            return self.classify(spec, field_name)
        hot = self._machines.hot_add.get(observed.id, (False, False)) if self._machines else (False, False)
        return classify_mod.classify_change(spec, observed, field_name, hot)

    def check(self, spec: Spec) -> list[str]:
        problems: list[str] = []
        if isinstance(spec, ServiceSpec):
            problems += self.services.check(spec)
        elif isinstance(spec, MachineSpec):
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
                        f"memory.reservation to {spec.memory_mib} MiB (the memory size) or memory.lock: true"
                    )
            if len(spec.disks) > MAX_DISKS:
                problems.append(f"{where}: {len(spec.disks)} disks; one SCSI controller holds {MAX_DISKS}")
            for d in spec.disks:
                if d.provisioning not in ("thin", "thick"):
                    problems.append(f"{where}: disk {d.name}: provisioning must be thin or thick")
            if spec.memory_reservation_mib and spec.memory_reservation_mib > spec.memory_mib:
                problems.append(f"{where}: memory reservation exceeds the memory size")
            if spec.cpu_limit_mhz is not None and spec.cpu_reservation_mhz and spec.cpu_limit_mhz < spec.cpu_reservation_mhz:
                problems.append(f"{where}: CPU limit below the CPU reservation")
        elif isinstance(spec, NetworkSpec):
            if spec.vlan is not None and not 0 <= spec.vlan <= 4094:
                problems.append(f"{spec.address}: VLAN {spec.vlan} outside 0-4094")
        elif isinstance(spec, StorageSpec) and spec.provisioning not in ("thin", "thick"):
            problems.append(f"{spec.address}: provisioning must be thin or thick")
        return problems

    # -- acting ------------------------------------------------------------------------------
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        self._refuse(spec)
        if isinstance(spec, ServiceSpec):
            return self.services.create(spec, owner)
        if isinstance(spec, MachineSpec):
            return self.machines.create(spec, owner)
        if isinstance(spec, NetworkSpec):
            self.networks.create(spec, owner)
            obs = self.networks.read(spec)
            assert obs is not None
            return obs
        if isinstance(spec, StorageSpec):
            return self.policies.create(spec, owner)
        raise TypeError(f"not a spec: {type(spec).__name__}")

    def _refuse(self, spec: Spec) -> None:
        problems = self.check(spec)
        if problems:
            raise CapabilityError("; ".join(problems))

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        self._refuse(spec)
        owner = observed.owner
        if owner is None:
            raise CapabilityError(f"vsphere: {spec.name} carries no pacsinfra mark; refusing to change it")
        if isinstance(spec, ServiceSpec):
            return self.services.update(spec, observed, fields)
        if isinstance(spec, MachineSpec):
            kinds = [self.classify_change(spec, observed, f) for f in fields]
            if ChangeKind.REPLACE in kinds:
                bad = [f for f, k in zip(fields, kinds, strict=True) if k is ChangeKind.REPLACE]
                raise CapabilityError(f"vsphere: {spec.name}: {', '.join(bad)} cannot change in place (replace)")
            needs_off = ChangeKind.NEEDS_POWER_OFF in kinds
            return self.machines.update(spec, observed, fields, needs_off)
        if isinstance(spec, NetworkSpec):
            self.networks.update(spec, owner)
            obs = self.networks.read(spec)
            assert obs is not None
            return obs
        if isinstance(spec, StorageSpec):
            return self.policies.update(spec, observed, owner)
        raise TypeError(f"not a spec: {type(spec).__name__}")

    def delete(self, observed: Observed) -> None:
        spec = observed.spec
        if isinstance(spec, ServiceSpec):
            self.services.delete(observed)
        elif isinstance(spec, MachineSpec):
            self.machines.delete(observed)
            self.services.forget(spec.name)
        elif isinstance(spec, NetworkSpec):
            self.networks.delete(spec.name, bool(spec.settings.get("distributed")))
        elif isinstance(spec, StorageSpec):
            self.policies.delete(observed)
        else:
            raise TypeError(f"not a spec: {type(spec).__name__}")
