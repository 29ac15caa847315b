"""KvmDriver: pacsinfra's specs on libvirt (domains, networks, directory pools).

Settings (``provider.kvm`` of the blueprint; an object with attributes or a Mapping):

- ``uri``: ``qemu:///system`` (default), ``qemu+ssh://user@host/system``,
  ``qemu:///embed?root=DIR``, ``test:///default``.
- ``domain_type``: ``kvm`` or ``qemu`` (TCG). Default ``qemu`` for embed URIs, else ``kvm``.
- ``machine`` (``q35``), ``host_mhz`` (default: the host's, from libvirt),
  ``shutdown_timeout`` seconds (60), ``cloud_init`` (True), ``seed_pool`` (for
  machines without disks), ``cpu_pinning`` (role -> host cpuset, e.g. ``{archive: "2-7"}``),
  ``pool_root`` (where pools without ``settings.path`` go), ``console_log`` (a directory
  for each domain's serial console, ``<name>.console.log``), ``ssh`` (how to log in to
  the machines to run their services: :mod:`.services`).

Machine work (create/update/delete of domains) lives in :mod:`.machines`; this
module dispatches by spec type and handles networks and pools. Services
(``ServiceSpec``, when ``ssh`` is set) run in the domains over SSH: :mod:`.services`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pacsinfra.drivers.base import (
    Capability,
    ChangeKind,
    Driver,
    MachineSpec,
    NetworkSpec,
    Observed,
    Ownership,
    PowerState,
    Rendered,
    ServiceSpec,
    Spec,
    StorageSpec,
    spec_to_dict,
)
from pacsinfra.drivers.kvm import classify as classify_mod
from pacsinfra.drivers.kvm import domain as dom
from pacsinfra.drivers.kvm import network as net
from pacsinfra.drivers.kvm import pool as pool_mod
from pacsinfra.drivers.kvm.client import LibvirtClient, is_embed_uri, open_connection
from pacsinfra.drivers.settings import setting
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound, TaskFailed

DEFAULT_URI = "qemu:///system"




class KvmDriver(Driver):
    """The libvirt driver (libvirt-python)."""

    name: ClassVar[str] = "kvm"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.CPU_RESERVATION,
            Capability.CPU_LIMIT,
            Capability.CPU_SHARES,
            Capability.MEMORY_LOCK,
            Capability.HUGEPAGES,
            Capability.VGPU,
            Capability.GPU_PASSTHROUGH,
            Capability.VLAN,
            Capability.JUMBO_FRAMES,
            Capability.CLOUD_INIT,
        }
    )
    # libvirt domain state name (client.DOMAIN_STATES) -> PowerState; unknowns map to UNKNOWN
    STATE_MAP: ClassVar[dict[str, PowerState]] = {
        "running": PowerState.ON,
        "shutoff": PowerState.OFF,
        "paused": PowerState.SUSPENDED,
    }

    def __init__(self, config: Any, *, client: Any = None) -> None:
        super().__init__(config, client=client)
        self.uri: str = str(setting(config, "uri", DEFAULT_URI))
        self._lc: LibvirtClient | None = None
        self._lock = threading.Lock()
        self._owns_connection = client is None
        from pacsinfra.drivers.kvm.services import GuestServices

        self.services = GuestServices(self)

    # -- connection ----------------------------------------------------------------
    def connect(self) -> None:
        """Open the libvirt connection (wraps the one passed as ``client=``)."""
        with self._lock:
            if self._lc is not None:
                return
            conn = self._client if self._client is not None else open_connection(self.uri)
            uri = self.uri if self._client is None else ""
            self._lc = LibvirtClient(conn, uri)
            self.uri = self._lc.uri

    def close(self) -> None:
        """Close the connection if this driver opened it."""
        self.services.close()
        with self._lock:
            lc, self._lc = self._lc, None
        if lc is not None and self._owns_connection:
            lc.close()

    @property
    def lc(self) -> LibvirtClient:
        """The connected client (connecting on first use)."""
        if self._lc is None:
            self.connect()
        assert self._lc is not None
        return self._lc

    # -- settings ------------------------------------------------------------------
    def domain_type(self) -> str:
        """``kvm``, or ``qemu`` (TCG) for embedded QEMU or when configured."""
        configured = setting(self.config, "domain_type")
        if configured:
            if configured not in ("kvm", "qemu"):
                raise CapabilityError(f"kvm: domain_type must be kvm or qemu, not {configured!r}")
            return str(configured)
        return "qemu" if is_embed_uri(self.uri) else "kvm"

    def host_mhz(self) -> int | None:
        """The host clock for CPU limits: configured, else reported by libvirt when connected."""
        configured = setting(self.config, "host_mhz")
        if configured:
            return int(configured)
        if self._lc is not None:
            return self._lc.host_mhz()
        return None

    def shutdown_timeout(self) -> float:
        return float(setting(self.config, "shutdown_timeout", 60))

    def domain_context(self, spec: MachineSpec) -> dom.DomainContext:
        """Everything rendering ``spec`` needs to know about this host (cheap lookups only)."""
        uses_files = self._lc is not None and self._lc.storage.uses_files
        if self._lc is None and is_embed_uri(self.uri):
            uses_files = True
        pool_paths: dict[str, str] = {}
        if uses_files:
            pools = {d.storage for d in spec.disks}
            seed_pool = setting(self.config, "seed_pool")
            if seed_pool:
                pools.add(str(seed_pool))
            for p in sorted(pools):
                path = self.lc.storage.pool_path(p)
                if path:
                    pool_paths[p] = path
        pinning = setting(self.config, "cpu_pinning", {}) or {}
        cpuset = pinning.get(spec.role) if isinstance(pinning, Mapping) else None
        return dom.DomainContext(
            domain_type=self.domain_type(),
            machine=str(setting(self.config, "machine", "q35")),
            host_mhz=self.host_mhz(),
            uses_files=uses_files,
            pool_paths=pool_paths,
            seed=bool(setting(self.config, "cloud_init", True)),
            seed_pool=setting(self.config, "seed_pool"),
            cpuset=str(cpuset) if cpuset else None,
            console_log=setting(self.config, "console_log"),
        )

    def pool_root(self) -> str:
        default = pool_mod.DEFAULT_POOL_ROOT
        if self._lc is not None and self._lc.storage.uses_files:
            default = str(getattr(self._lc.storage, "root", default)) + "/pools"
        return str(setting(self.config, "pool_root", default))

    # -- hosts, for work between steps ----------------------------------------------
    def host_session(self, machine: str, *, with_pacsinfra: bool = False) -> Any:
        """The SSH session to running machine ``machine`` (``provider.kvm.ssh``)."""
        return self.services.host_session(machine, with_pacsinfra=with_pacsinfra)

    def machine_running(self, machine: str) -> bool:
        """Whether ``machine`` exists and runs."""
        return self.services.running(machine)

    # -- planning --------------------------------------------------------------------
    def render(self, spec: Spec, owner: Ownership) -> Rendered:
        """The XML ``create`` would send (no changes on the hypervisor)."""
        if isinstance(spec, ServiceSpec):
            return Rendered("application/json", json.dumps(spec_to_dict(spec), indent=1),
                            self.services.render_params(spec))
        if isinstance(spec, MachineSpec):
            ctx = self.domain_context(spec)
            volumes = [
                {"pool": v.pool, "name": v.name, "xml": v.xml}
                for v in (
                    pool_mod.disk_volume(spec, d, from_image=i == 0)
                    for i, d in enumerate(spec.disks)
                )
            ]
            return Rendered(
                "application/xml",
                dom.render_domain(spec, owner, ctx),
                {"volumes": volumes, "domain_type": ctx.domain_type},
            )
        if isinstance(spec, NetworkSpec):
            return Rendered("application/xml", net.render_network(spec, owner))
        if isinstance(spec, StorageSpec):
            uuid = pool_mod.pool_uuid(spec)
            return Rendered(
                "application/xml",
                pool_mod.with_uuid(pool_mod.render_pool(spec, self.pool_root()), uuid),
                {"marker": pool_mod.marker_name(owner), "uuid": uuid},
            )
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def classify(self, spec: Spec, field_name: str) -> ChangeKind:
        """How disruptive changing ``field_name`` is (table in classify.py / docs)."""
        if isinstance(spec, ServiceSpec):
            from pacsinfra.drivers import service_common

            return service_common.classify(spec, field_name)
        return classify_mod.classify(spec, field_name)

    def classify_change(self, spec: Spec, observed: Observed, field_name: str) -> ChangeKind:
        """Like classify, knowing the actual value (disk growth is IN_PLACE, shrink REPLACE)."""
        if isinstance(spec, ServiceSpec):
            return self.classify(spec, field_name)
        return classify_mod.classify_change(spec, observed, field_name)

    def check(self, spec: Spec) -> list[str]:
        """Problems visible before touching anything."""
        from pacsinfra.drivers.kvm.machines import check_machine

        problems: list[str] = []
        if isinstance(spec, ServiceSpec):
            problems += self.services.check(spec)
        elif isinstance(spec, MachineSpec):
            problems += check_machine(spec, embed=is_embed_uri(self.uri))
            if not problems:
                # everything rendering would refuse (pool directories are looked up later)
                ctx = dom.DomainContext(domain_type=self.domain_type(), host_mhz=self.host_mhz())
                try:
                    dom.domain_inputs(spec, ctx)
                    pool_mod.image_source(spec.image)
                except CapabilityError as exc:
                    problems.append(str(exc))
        elif isinstance(spec, NetworkSpec):
            if is_embed_uri(self.uri):
                problems.append(f"{spec.address}: qemu:///embed has no network driver")
            try:
                net.network_inputs(spec)
            except CapabilityError as exc:
                problems.append(str(exc))
        return problems

    # -- reading ---------------------------------------------------------------------
    def read(self, spec: Spec) -> Observed | None:
        """The object named by ``spec``, parsed into its spec type, or None when absent."""
        if isinstance(spec, MachineSpec):
            from pacsinfra.drivers.kvm.machines import read_machine

            return read_machine(self, spec.name, desired=spec)
        if isinstance(spec, NetworkSpec):
            return self._read_network(spec.name, desired=spec)
        if isinstance(spec, StorageSpec):
            return self._read_pool(spec.name, desired=spec)
        if isinstance(spec, ServiceSpec):
            return self.services.read(spec)
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def list_owned(self, site: str) -> list[Observed]:
        """Every domain, network and pool carrying pacsinfra's mark for ``site``."""
        from pacsinfra.drivers.kvm.machines import read_machine

        out: list[Observed] = []
        for name in self.lc.network_names():
            obs = self._read_network(name, desired=None)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        for name in self.lc.storage.pool_names():
            obs = self._read_pool(name, desired=None)
            if obs is not None and obs.owner is not None and obs.owner.site == site:
                out.append(obs)
        for name in self.lc.domain_names():
            mobs = read_machine(self, name, desired=None)
            if mobs is not None and mobs.owner is not None and mobs.owner.site == site:
                out.append(mobs)
        out += self.services.list_owned(site)
        return out

    def read_network(self, name: str) -> Observed | None:
        """The libvirt network ``name`` (mark and whether it runs), or None when absent."""
        return self._read_network(name, desired=None)

    def _read_network(self, name: str, desired: NetworkSpec | None) -> Observed | None:
        xml = self.lc.network_xml(name)
        if xml is None:
            return None
        spec, owner = net.parse_network(xml, address=desired.address if desired else None)
        return Observed(
            spec=spec,
            id=self.lc.network_uuid(name),
            owner=owner,
            power=PowerState.ON if self.lc.network_active(name) else PowerState.OFF,
        )

    def pool_owner(self, name: str) -> Ownership | None:
        """The ownership mark of pool ``name`` (its marker volume), if any."""
        for vol in self.lc.storage.volume_names(name):
            owner = pool_mod.owner_from_marker(vol)
            if owner is not None:
                return owner
        return None

    def _half_done_pool(self, name: str, desired: StorageSpec | None) -> bool:
        """Whether pool ``name`` is an empty, unmarked pool defined by an interrupted
        create (or left by an interrupted delete) of ``desired``: it carries the UUID
        only pacsinfra gives that pool (see :func:`pool.pool_uuid`) and no volume."""
        if desired is None or desired.name != name:
            return False
        storage = self.lc.storage
        return storage.pool_uuid(name) == pool_mod.pool_uuid(desired) and not storage.volume_names(
            name
        )

    def _read_pool(self, name: str, desired: StorageSpec | None) -> Observed | None:
        storage = self.lc.storage
        if not storage.pool_exists(name):
            return None
        owner = self.pool_owner(name)
        if owner is None and self._half_done_pool(name, desired):
            return None  # not there yet (or any more): create completes it
        spec = pool_mod.parse_pool(name, storage.pool_path(name), owner, desired)
        return Observed(
            spec=spec,
            id=storage.pool_uuid(name),
            owner=owner,
            power=PowerState.ON,
            unobservable=pool_mod.UNOBSERVABLE,
        )

    # -- acting ------------------------------------------------------------------------
    def create(self, spec: Spec, owner: Ownership) -> Observed:
        """Create the object (idempotent: an object already marked for it is returned)."""
        if isinstance(spec, MachineSpec):
            from pacsinfra.drivers.kvm.machines import create_machine

            return create_machine(self, spec, owner)
        if isinstance(spec, NetworkSpec):
            return self._create_network(spec, owner)
        if isinstance(spec, StorageSpec):
            return self._create_pool(spec, owner)
        if isinstance(spec, ServiceSpec):
            return self.services.create(spec, owner)
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def update(self, spec: Spec, observed: Observed, fields: Sequence[str]) -> Observed:
        """Bring ``fields`` to ``spec``; powers a machine off and on when classify says so."""
        if observed.owner is None:
            raise AlreadyExists(
                f"kvm: {spec.name} is not owned by pacsinfra; refusing to change it"
            )
        if isinstance(spec, MachineSpec):
            from pacsinfra.drivers.kvm.machines import update_machine

            return update_machine(self, spec, observed, fields)
        if isinstance(spec, NetworkSpec):
            return self._update_network(spec, observed, fields)
        if isinstance(spec, StorageSpec):
            return self._update_pool(spec, observed, fields)
        if isinstance(spec, ServiceSpec):
            return self.services.update(spec, observed, fields)
        raise TypeError(f"unknown spec type {type(spec).__name__}")

    def delete(self, observed: Observed) -> None:
        """Remove the object and what it owns. Absent is success; unowned is refused."""
        spec = observed.spec
        if isinstance(spec, MachineSpec):
            from pacsinfra.drivers.kvm.machines import delete_machine

            delete_machine(self, observed)
            self.services.forget(spec.name)
        elif isinstance(spec, ServiceSpec):
            self.services.delete(observed)
        elif isinstance(spec, NetworkSpec):
            self._delete_network(spec.name)
        elif isinstance(spec, StorageSpec):
            self._delete_pool(spec.name)
        else:
            raise TypeError(f"unknown spec type {type(spec).__name__}")

    def wait_for_address(self, observed: Observed, *, timeout: float) -> str:
        """A static address at once; else the first DHCP lease libvirt reports."""
        try:
            return super().wait_for_address(observed, timeout=0)
        except CapabilityError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            addresses = self.lc.domain_addresses(observed.spec.name)
            if addresses:
                return addresses[0]
            if time.monotonic() >= deadline:
                raise TaskFailed(f"kvm: no address for {observed.spec.name} within {timeout:.0f}s")
            time.sleep(1.0)

    # -- networks ------------------------------------------------------------------
    def claim(self, kind: str, name: str, found: Observed | None, owner: Ownership) -> bool:
        """True when ``found`` is already ours for ``owner``; raise when the name is taken."""
        if found is None:
            return False
        if found.owner is not None and (found.owner.site, found.owner.address) == (
            owner.site,
            owner.address,
        ):
            return True
        whose = (
            f"owned by {found.owner.site} {found.owner.address}"
            if found.owner
            else "not created by pacsinfra"
        )
        raise AlreadyExists(f"kvm: {kind} {name} already exists ({whose})")

    def _create_network(self, spec: NetworkSpec, owner: Ownership) -> Observed:
        existing = self._read_network(spec.name, spec)
        if self.claim("network", spec.name, existing, owner):
            assert existing is not None
            if existing.power != PowerState.ON:  # an earlier create killed before the start
                self.lc.start_network(spec.name)
            found = self._read_network(spec.name, spec)
            assert found is not None
            return found
        xml = net.render_network(spec, owner)
        try:
            self.lc.define_network(xml, spec.name, start=True)
        except Exception:
            self._delete_network(spec.name, check_owner=False)
            raise
        found = self._read_network(spec.name, spec)
        if found is None:
            raise TaskFailed(f"kvm: network {spec.name} vanished after creation")
        return found

    def _update_network(
        self, spec: NetworkSpec, observed: Observed, fields: Sequence[str]
    ) -> Observed:
        assert observed.owner is not None
        restart = any(self.classify(spec, f) >= ChangeKind.NEEDS_POWER_OFF for f in fields)
        if any(self.classify(spec, f) == ChangeKind.REPLACE for f in fields):
            raise CapabilityError(f"kvm: changing {list(fields)} of {spec.name} needs a replace")
        xml = net.render_network(spec, observed.owner, uuid=self.lc.network_uuid(spec.name))
        self.lc.define_network(xml, spec.name, start=True, restart=restart)
        found = self._read_network(spec.name, spec)
        if found is None:
            raise NotFound(f"kvm: network {spec.name} vanished during update")
        return found

    def _delete_network(self, name: str, *, check_owner: bool = True) -> None:
        found = self._read_network(name, None)
        if found is None:
            return
        if check_owner and found.owner is None:
            raise AlreadyExists(f"kvm: network {name} is not owned by pacsinfra; not deleting it")
        self.lc.delete_network(name)

    # -- pools -----------------------------------------------------------------------
    def _create_pool(self, spec: StorageSpec, owner: Ownership) -> Observed:
        """Create the pool with its marker; completes a half-done pool of an earlier run.

        On a directory backend the pool appears with its marker or not at all; on
        libvirt an interrupted create leaves an empty pool with :func:`pool.pool_uuid`,
        which ``_read_pool`` reports as absent so this completes it.
        """
        storage = self.lc.storage
        if self.claim("storage pool", spec.name, self._read_pool(spec.name, spec), owner):
            found = self._read_pool(spec.name, spec)
            assert found is not None
            return found
        path = pool_mod.pool_path(spec, self.pool_root())
        xml = pool_mod.with_uuid(
            pool_mod.render_pool(spec, self.pool_root()), pool_mod.pool_uuid(spec)
        )
        try:
            storage.create_pool(spec.name, path, xml, pool_mod.marker_name(owner))
        except Exception:
            # only a pool this call defined (ours by its UUID) and still empty
            if self._half_done_pool(spec.name, spec):
                storage.delete_pool(spec.name)
            raise
        found = self._read_pool(spec.name, spec)
        if found is None:
            raise TaskFailed(f"kvm: pool {spec.name} vanished after creation")
        return found

    def _update_pool(
        self, spec: StorageSpec, observed: Observed, fields: Sequence[str]
    ) -> Observed:
        replace = [f for f in fields if self.classify(spec, f) == ChangeKind.REPLACE]
        if replace:
            raise CapabilityError(f"kvm: changing {replace} of pool {spec.name} needs a replace")
        # Everything else is pacsinfra's own bookkeeping (not modelled by libvirt).
        found = self._read_pool(spec.name, spec)
        if found is None:
            raise NotFound(f"kvm: pool {spec.name} vanished during update")
        return found

    def _delete_pool(self, name: str) -> None:
        storage = self.lc.storage
        if not storage.pool_exists(name):
            return
        owner = self.pool_owner(name)
        if owner is None:
            raise AlreadyExists(f"kvm: pool {name} is not owned by pacsinfra; not deleting it")
        others = [v for v in storage.volume_names(name) if pool_mod.owner_from_marker(v) is None]
        if others:
            raise TaskFailed(
                f"kvm: pool {name} still holds {len(others)} volume(s) ({', '.join(others[:3])}); "
                "delete their machines first"
            )
        storage.delete_pool(name)  # the pool before (or with) its marker: see Storage.delete_pool
