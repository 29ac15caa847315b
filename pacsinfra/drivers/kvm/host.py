"""The KVM host as the handlers see it: the libvirt connection and the settings they share.

Settings (``provider.kvm``, declared in :mod:`.declaration`; a model or a Mapping):
``uri`` (``qemu:///system`` by default, ``qemu+ssh://...``, ``qemu:///embed?root=DIR``,
``test:///default``), ``domain_type`` (``qemu`` for embed URIs, else ``kvm``),
``machine`` (q35), ``host_mhz`` (else libvirt's), ``shutdown_timeout`` (60 s),
``cloud_init`` (true), ``seed_pool``, ``cpu_pinning`` (role -> cpuset), ``pool_root``,
``console_log``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from pacsinfra.drivers.kvm import domain as dom
from pacsinfra.drivers.kvm import pool as pool_mod
from pacsinfra.drivers.kvm.client import LibvirtClient, is_embed_uri, open_connection
from pacsinfra.drivers.settings import setting
from pacsinfra.errors import AlreadyExists, CapabilityError
from pacsinfra.specs import MachineSpec, Observed, Ownership, PowerState

DEFAULT_URI = "qemu:///system"


class KvmHost:
    """One libvirt connection, opened on first use, and the host-wide settings."""

    # libvirt domain state name (client.DOMAIN_STATES) -> PowerState; unknowns map to UNKNOWN
    STATE_MAP: ClassVar[dict[str, PowerState]] = {
        "running": PowerState.ON,
        "shutoff": PowerState.OFF,
        "paused": PowerState.SUSPENDED,
    }

    def __init__(self, config: Any, client: Any = None) -> None:
        self.config = config
        self.uri: str = str(setting(config, "uri", DEFAULT_URI))
        self._client = client  # an open libvirt connection passed in (tests): not closed here
        self._lc: LibvirtClient | None = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------
    def connect(self) -> None:
        """Open the libvirt connection (wraps the one passed as ``client``)."""
        with self._lock:
            if self._lc is not None:
                return
            conn = self._client if self._client is not None else open_connection(self.uri)
            self._lc = LibvirtClient(conn, self.uri if self._client is None else "")
            self.uri = self._lc.uri

    def close(self) -> None:
        """Close the connection if this host opened it."""
        with self._lock:
            lc, self._lc = self._lc, None
        if lc is not None and self._client is None:
            lc.close()

    @property
    def connected(self) -> LibvirtClient | None:
        """The client when connected (None: nothing has needed the host yet)."""
        return self._lc

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

    def seed_pool(self) -> str | None:
        """``seed_pool``: where seeds of machines without disks go."""
        value = setting(self.config, "seed_pool")
        return str(value) if value else None

    @property
    def embedded(self) -> bool:
        """Whether this is ``qemu:///embed`` (no network or storage driver: directories)."""
        return is_embed_uri(self.uri)

    def uses_files(self) -> bool:
        """Whether pools are plain directories here (embed), known before connecting."""
        if self._lc is not None:
            return self._lc.volumes.uses_files
        return self.embedded

    def domain_context(self, spec: MachineSpec) -> dom.DomainContext:
        """Everything rendering ``spec`` needs to know about this host (cheap lookups only)."""
        uses_files = self.uses_files()
        pool_paths: dict[str, str] = {}
        if uses_files:
            pools = {d.storage for d in spec.disks}
            if self.seed_pool():
                pools.add(str(self.seed_pool()))
            for p in sorted(pools):
                path = self.lc.volumes.pool_path(p)
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
            seed_pool=self.seed_pool(),
            cpuset=str(cpuset) if cpuset else None,
            console_log=setting(self.config, "console_log"),
        )

    def pool_root(self) -> str:
        default = pool_mod.DEFAULT_POOL_ROOT
        if self._lc is not None and self._lc.volumes.uses_files:
            default = str(getattr(self._lc.volumes, "root", default)) + "/pools"
        return str(setting(self.config, "pool_root", default))

    def pool_owner(self, name: str) -> Ownership | None:
        """The ownership mark of pool ``name`` (its marker volume), if any."""
        for vol in self.lc.volumes.volume_names(name):
            owner = pool_mod.owner_from_marker(vol)
            if owner is not None:
                return owner
        return None


def claim(kind: str, name: str, found: Observed | None, owner: Ownership) -> bool:
    """True when ``found`` is already ours for ``owner``; raise when the name is taken."""
    if found is None:
        return False
    if found.owner is not None and (found.owner.site, found.owner.address) == (
            owner.site, owner.address):
        return True
    whose = (f"owned by {found.owner.site} {found.owner.address}" if found.owner
             else "not created by pacsinfra")
    raise AlreadyExists(f"kvm: {kind} {name} already exists ({whose})")
