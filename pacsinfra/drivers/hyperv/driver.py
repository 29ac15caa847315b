"""HypervDriver: pacsinfra's driver contract over WinRM + PowerShell scripts.

Every operation renders one script (``scripts.render``) and runs it through the one
:class:`HypervClient`; the mapping between specs and the scripts' JSON lives in
``machines.py`` and ``infra.py``, the change table in ``classify.py``. Services
(``ServiceSpec``, when ``provider.hyperv.ssh`` is set) run in the VMs over SSH:
:mod:`.services`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

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
from pacsinfra.drivers.hyperv import classify as cls_mod
from pacsinfra.drivers.hyperv import infra
from pacsinfra.drivers.hyperv import machines as mach
from pacsinfra.drivers.hyperv.client import HypervClient, open_session
from pacsinfra.drivers.hyperv.config import HypervSettings, read_settings
from pacsinfra.drivers.hyperv.marks import MARK_PREFIX
from pacsinfra.drivers.hyperv.scripts import Script, render
from pacsinfra.drivers.hyperv.services import HypervGuests
from pacsinfra.drivers.settings import setting
from pacsinfra.errors import AlreadyExists, AuthError, CapabilityError, TaskFailed

WINDOWS_FILE_NAME_FORBIDDEN = '\\/:*?"<>|\n\r\t'
POWERSHELL_WILDCARDS = "[]`"


class HypervDriver(Driver):
    """The Hyper-V driver (pywinrm; PowerShell scripts rendered from templates/hyperv)."""

    name: ClassVar[str] = "hyperv"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.CPU_RESERVATION,
            Capability.CPU_LIMIT,
            Capability.CPU_SHARES,
            Capability.MEMORY_RESERVATION,
            Capability.VGPU,
            Capability.VLAN,
        }
    )
    STATE_MAP = mach.STATE_MAP

    def __init__(self, config: Any, *, client: Any = None) -> None:
        """``config``: provider.hyperv (object or mapping); ``client``: a winrm.Session-like object."""
        super().__init__(config, client=client)
        self.settings: HypervSettings = read_settings(config)
        self._hc: HypervClient | None = None
        self._host: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.services = HypervGuests(self)

    # -- connection ----------------------------------------------------------------
    def connect(self) -> None:
        """Open the WinRM session (the password is resolved here, never earlier) and read the host."""
        with self._lock:
            if self._hc is not None:
                return
            s = self.settings
            session = self._client
            if session is None:
                ref = s.password_ref()
                if ref is None or not s.user:
                    raise AuthError("hyperv: provider.hyperv.user and password are required")
                session = open_session(
                    s.endpoint, s.user, ref.resolve(), transport=s.transport,
                    verify=s.verify_ssl, ca_file=s.ca_file,
                )
            hc = HypervClient(session, s.endpoint if self._client is None else "")
            self._host = dict(hc.run(render("host-info", {})))
            self._hc = hc

    def close(self) -> None:
        """Forget the session (WinRM shells are closed after every script) and the guests'."""
        self.services.close()
        with self._lock:
            self._hc = None

    @property
    def hc(self) -> HypervClient:
        if self._hc is None:
            self.connect()
        assert self._hc is not None
        return self._hc

    def run(self, name: str, parameters: dict[str, Any]) -> Any:
        """Render and run one script; its JSON result."""
        return self.hc.run(render(name, parameters))

    @property
    def host(self) -> dict[str, Any]:
        """What host-info reported (empty before connect)."""
        return dict(self._host)

    def context(self) -> mach.HostContext:
        """Host clock (configured, else reported), storage root and VM path."""
        mhz = self.settings.host_mhz or (int(self._host["mhz"]) if self._host.get("mhz") else None)
        return mach.HostContext(host_mhz=mhz, storage_root=self.settings.storage_root,
                                vm_path=self.settings.vm_path)

    # -- hosts, for work between steps ---------------------------------------------
    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> Any:
        """The SSH session to running VM ``machine`` (``provider.hyperv.ssh``)."""
        return self.services.host_session(machine, with_pacsinfra=with_pacsinfra)

    def machine_running(self, machine: str) -> bool:
        """Whether VM ``machine`` exists, is pacsinfra's and runs."""
        return self.services.running(machine)

    # -- planning ------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The script ``create`` would run, with its parameters document. Pure."""
        if isinstance(spec, ServiceSpec):
            return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1),
                            self.services.render_params(spec))
        script = self._create_script(spec, owner)
        return Rendered(media_type="text/x-powershell", text=script.text, parameters=script.parameters)

    def _create_script(self, spec: Spec, owner: Ownership) -> Script:
        ctx = self.context()
        if isinstance(spec, MachineSpec):
            return render("new-vm", mach.new_vm_parameters(spec, owner, ctx))
        if isinstance(spec, NetworkSpec):
            return render("new-switch", infra.switch_parameters(spec, owner))
        if isinstance(spec, StorageSpec):
            return render("ensure-storage", infra.storage_parameters(spec, owner, ctx))
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        if isinstance(spec, ServiceSpec):
            return service_common.classify(spec, field_name)
        return cls_mod.classify(spec, field_name)

    def classify_change(self, spec: Spec, observed: Observed, field_name: str) -> ChangeKind:
        if isinstance(spec, ServiceSpec):
            return self.classify(spec, field_name)
        return cls_mod.classify_change(spec, observed, field_name)

    def check(self, spec: Spec) -> list[str]:
        """What Hyper-V cannot do for ``spec`` (pure)."""
        problems: list[str] = []
        if isinstance(spec, ServiceSpec):
            problems += self.services.check(spec)
        elif isinstance(spec, MachineSpec):
            where = spec.address
            bad = sorted(set(spec.name) & set(WINDOWS_FILE_NAME_FORBIDDEN))
            if bad:
                # the VHDX files are named after the VM
                problems.append(f"{where}: the name {spec.name!r} contains {''.join(bad)!r}, "
                                "which Windows file names cannot hold")
            wild = sorted(set(spec.name) & set(POWERSHELL_WILDCARDS))
            if wild:
                # VHDX paths pass through -Path parameters, which expand wildcards
                problems.append(f"{where}: the name {spec.name!r} contains {''.join(wild)!r}, "
                                "PowerShell wildcard characters")
            if not spec.image.get("vhdx"):
                problems.append(f"{where}: the image needs a hyperv entry with a vhdx path")
            if str(spec.image.get("mode", "copy")) not in ("copy", "differencing"):
                problems.append(f"{where}: image mode must be copy or differencing")
            if not spec.disks:
                problems.append(f"{where}: a Hyper-V machine needs a disk for its image")
            if spec.image.get("generation") not in (None, 2) or setting(self.config, "generation") not in (None, 2):
                problems.append(f"{where}: pacsinfra builds generation 2 VMs only (UEFI, SCSI boot)")
            if spec.hugepages:
                problems.append(f"{where}: Hyper-V has no huge pages setting (memory.hugepages)")
            if spec.gpu is not None and spec.gpu.mode != "vgpu":
                problems.append(f"{where}: only vgpu (GPU partitioning) is supported on Hyper-V")
            mhz = self.context().host_mhz
            for label, value in (("reservation", spec.cpu_reservation_mhz), ("limit", spec.cpu_limit_mhz)):
                if value and mhz and value > spec.cpu_count * mhz:
                    problems.append(
                        f"{where}: cpu {label} {value}MHz exceeds {spec.cpu_count} vCPUs x {mhz}MHz"
                    )
            lp = self._host.get("logical_processors")
            if lp and spec.cpu_count > int(lp):
                problems.append(f"{where}: {spec.cpu_count} vCPUs but the host has {lp} logical processors")
        elif isinstance(spec, NetworkSpec):
            kind = infra.switch_type(spec.settings)
            if kind not in infra.SWITCH_TYPES:
                problems.append(f"{spec.address}: switch type must be internal, external or private")
            if kind == "external" and not spec.settings.get("adapter"):
                problems.append(f"{spec.address}: an external switch needs settings.adapter (a host NIC)")
        return problems

    # -- reading -------------------------------------------------------------------
    def read(self, spec: Spec) -> Observed | None:
        """The object for ``spec`` by name (a marked one for this address first)."""
        if isinstance(spec, ServiceSpec):
            return self.services.read(spec)
        if isinstance(spec, MachineSpec):
            vms = self.run("get-vm", {"name": spec.name, "mark_prefix": MARK_PREFIX})["vms"]
            found = [self._vm(f, spec) for f in vms]
            return _pick(found, spec.address)
        if isinstance(spec, NetworkSpec):
            sws = self.run("get-switch", {"name": spec.name, "mark_prefix": MARK_PREFIX})["switches"]
            return _pick([self._switch(f, spec) for f in sws], spec.address)
        if isinstance(spec, StorageSpec):
            path = mach.storage_dir(spec.name, self.context())
            dirs = self.run("get-storage", {"paths": [path], "root": None})["directories"]
            present = [self._storage(d, spec) for d in dirs if d.get("exists")]
            return present[0] if present else None
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def list_owned(self, site: str) -> list[Observed]:
        """Every VM, switch and storage directory marked for ``site``, and the services in its VMs."""
        out: list[Observed] = []
        vms = [self._vm(f, None) for f in self.run("get-vm", {"name": None, "mark_prefix": MARK_PREFIX})["vms"]]
        machines = [o for o in vms if o.owner and o.owner.site == site]
        out += machines
        sws = self.run("get-switch", {"name": None, "mark_prefix": MARK_PREFIX})["switches"]
        out += [o for o in (self._switch(f, None) for f in sws) if o.owner and o.owner.site == site]
        ctx = self.context()
        dirs = sorted({
            mach.storage_dir(d.storage, ctx)
            for o in out if isinstance(o.spec, MachineSpec) for d in o.spec.disks
        })
        found = self.run("get-storage", {"paths": dirs, "root": ctx.storage_root})["directories"]
        for d in found:
            if d.get("exists"):
                obs = self._storage(d, None)
                if obs.owner and obs.owner.site == site:
                    out.append(obs)
        out += self.services.list_owned(site, machines)
        return out

    def observe_vm(self, facts: dict[str, Any]) -> Observed:
        """A VM's facts (from ``get-vm``) as an observation, without a desired spec."""
        return self._vm(facts, None)

    def _vm(self, facts: dict[str, Any], desired: MachineSpec | None) -> Observed:
        spec, owner, power, addresses = mach.parse_vm(facts, desired, self.context())
        return Observed(spec=spec, id=str(facts["id"]), owner=owner, power=power, addresses=addresses)

    def _switch(self, facts: dict[str, Any], desired: NetworkSpec | None) -> Observed:
        spec, owner = infra.parse_switch(facts, desired)
        return Observed(spec=spec, id=str(facts.get("id") or facts["name"]), owner=owner)

    def _storage(self, facts: dict[str, Any], desired: StorageSpec | None) -> Observed:
        spec, owner = infra.parse_storage(facts, desired, self.context())
        return Observed(spec=spec, id=str(facts["path"]), owner=owner)

    # -- acting --------------------------------------------------------------------
    def claim(self, spec: Spec, found: Observed | None, owner: Ownership) -> bool:
        """True when ``found`` is already ours for ``owner``; raise when the name is taken."""
        if found is None:
            return False
        if found.owner is not None and (found.owner.site, found.owner.address) == (owner.site, owner.address):
            return True
        whose = f"owned by {found.owner.site} {found.owner.address}" if found.owner else "not created by pacsinfra"
        raise AlreadyExists(f"hyperv: {spec.name} already exists ({whose})")

    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Create the object; a failed VM create removes what it left behind, then raises."""
        if isinstance(spec, ServiceSpec):
            return self.services.create(spec, owner)
        found = self.read(spec)
        if self.claim(spec, found, owner):
            assert found is not None
            return found
        script = self._create_script(spec, owner)
        if isinstance(spec, MachineSpec):
            try:
                facts = self.hc.run(script)
            except TaskFailed:
                self._cleanup_machine(spec, owner)
                raise
            return self._vm(facts, spec)
        if isinstance(spec, NetworkSpec):
            return self._switch(self.hc.run(script), spec)
        if isinstance(spec, StorageSpec):
            self.hc.run(script)
            made = self.read(spec)
            if made is None:
                raise TaskFailed(f"hyperv: directory for {spec.address} missing right after creating it")
            return made
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def _cleanup_machine(self, spec: MachineSpec, owner: Ownership) -> None:
        """Remove a half-created VM carrying ``owner``'s mark, and its disk files."""
        ctx = self.context()
        paths = [mach.disk_path(spec.name, d, ctx) for d in spec.disks]
        vms = self.run("get-vm", {"name": spec.name, "mark_prefix": MARK_PREFIX})["vms"]
        ours = [f for f in vms if (o := self._vm(f, spec).owner) is not None
                and (o.site, o.address, o.lineage) == (owner.site, owner.address, owner.lineage)]
        for f in ours or [{"id": None}]:
            self.run("remove-vm", {"id": f["id"], "paths": paths})

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Bring ``fields`` to ``spec``; stops a running VM first when classify says so."""
        if observed.owner is None:
            raise AlreadyExists(f"hyperv: {spec.name} is not owned by pacsinfra; refusing to change it")
        owner = observed.owner
        if isinstance(spec, ServiceSpec):
            return self.services.update(spec, observed, fields)
        if isinstance(spec, MachineSpec):
            return self._update_machine(spec, observed, owner, fields)
        if isinstance(spec, NetworkSpec):
            notes = infra.switch_parameters(spec, owner)["notes"]
            return self._switch(self.run("set-switch", {"name": spec.name, "notes": notes}), spec)
        if isinstance(spec, StorageSpec):
            self.run("ensure-storage", infra.storage_parameters(spec, owner, self.context()))
            got = self.read(spec)
            if got is None:
                raise TaskFailed(f"hyperv: directory for {spec.address} vanished during update")
            return got
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def _update_machine(self, spec: MachineSpec, observed: Observed, owner: Ownership,
                        fields: Sequence[str]) -> Observed:
        ctx = self.context()
        kinds = [self.classify_change(spec, observed, f) for f in fields]
        worst = max(kinds, default=ChangeKind.IN_PLACE)
        stop_first = worst >= ChangeKind.NEEDS_POWER_OFF
        params = mach.set_vm_parameters(spec, observed.id, owner, fields, stop_first=stop_first, ctx=ctx,
                                        shutdown_timeout=self.settings.shutdown_timeout)
        return self._vm(self.run("set-vm", params), spec)

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """A static address at once; else the first IPv4 the integration services report."""
        try:
            return super().wait_for_address(observed, timeout=0)
        except CapabilityError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            got = self.read(observed.spec)
            if got is not None and got.addresses:
                return got.addresses[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TaskFailed(f"hyperv: no address for {observed.spec.name} within {timeout:.0f}s "
                                 "(are the guest's integration services running?)")
            time.sleep(min(2.0, left))

    def delete(self, observed: Observed) -> None:
        """Remove the object (a VM's disks first, the VM last). Absent is success; unowned is refused."""
        spec = observed.spec
        if observed.owner is None:
            raise AlreadyExists(f"hyperv: {spec.name} is not owned by pacsinfra; refusing to delete it")
        if isinstance(spec, ServiceSpec):
            self.services.delete(observed)
        elif isinstance(spec, MachineSpec):
            ctx = self.context()
            paths = [mach.disk_path(spec.name, d, ctx) for d in spec.disks]
            self.run("remove-vm", {"id": observed.id, "paths": paths})
            self.services.forget(spec.name)
        elif isinstance(spec, NetworkSpec):
            self.run("remove-switch", {"name": spec.name})
        elif isinstance(spec, StorageSpec):
            self.run("remove-storage", {"path": mach.storage_dir(spec.name, self.context())})
        else:
            raise TypeError(f"unknown spec type {type(spec).__name__}")


def _pick(found: list[Observed], address: str) -> Observed | None:
    """The object marked for ``address``, else any marked one, else the first (unowned) one."""
    for o in found:
        if o.owner is not None and o.owner.address == address:
            return o
    for o in found:
        if o.owner is not None:
            return o
    return found[0] if found else None
