"""Services as plan resources: render each (machine, service) pair's config file from the blueprint.

For drivers that run the PACS services themselves (``local``: this box; ``static``:
existing hosts over SSH; ``kvm``, ``vsphere``, ``hyperv``: the machines they make, over
SSH once they boot), every service a machine role lists becomes a
:class:`~pacsinfra.drivers.base.ServiceSpec` resource ``service.<name>[<i>]`` (its
i-th host), ordered after its machine, and a router after the archives its
destinations name. The spec's ``config`` is the file the service reads, rendered here
through the driver's :class:`HostLayout` (where a machine keeps its files, how it is
reached):

- ``service:`` references in router destinations become ``host`` / ``port`` of the
  target service: its machine's address (127.0.0.1 on the local provider, the host's
  address on static hosts), the port from the target's config unless the blueprint
  pinned one;
- data directories (``data_dir``, ``spool_dir``) left at their defaults go to the disks
  the machine role mounts (``disks[].mount``: ``<mount>/<svc>``; an archive tier with a
  ``storage_class`` onto the disk of that class), else under the machine's directory
  (``<root>/data/<svc>`` on a static host); relative ones are resolved there. The
  ``local`` provider keeps everything under its root;
- a listener whose ``bind`` was not set binds 127.0.0.1 on the local provider (one box:
  nothing outside needs to reach it unless the blueprint says so) and the host's own
  address on static hosts (the router and pacsinfra reach it there);
- an archive ``index`` or a router ``queue`` naming a database service (``service:``)
  gets that service's address, port, role (``user``) and password *reference*, and the
  archive / router depends on the database (it starts after it, is removed before it);
- a database's ``data_dir`` left at its default moves under the machine's data
  directory, and its Unix socket goes to the machine's run directory.

Secrets stay references (``{"env": ...}``): the config carries what the blueprint wrote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Protocol

from pacsinfra.drivers.base import ServiceSpec
from pacsinfra.errors import PlanError

#: drivers whose plans can include the services (they install and run them themselves);
#: the hypervisor drivers only when the blueprint says how to log in to their machines
#: (``provider.<driver>.ssh``)
SERVICE_DRIVERS = frozenset({"local", "static", "kvm", "vsphere", "hyperv"})
GUEST_DRIVERS = frozenset({"kvm", "vsphere", "hyperv"})
#: service kinds a driver can run today (the others are left to the deploy stage)
RUNNABLE_KINDS = frozenset({"archive", "router", "database"})
LOOPBACK = "127.0.0.1"
WILDCARDS = ("", "0.0.0.0", "::")
#: sun_path holds 108 bytes with the terminating NUL; PostgreSQL adds ``/.s.PGSQL.<port>``
MAX_SOCKET_PATH = 107


class HostLayout(Protocol):
    """Where a driver puts a machine's files and how the machine is reached."""

    def base_dir(self, machine: str) -> PurePath:
        """The machine's directory (relative data paths are resolved under it)."""
        ...

    def data_dir(self, machine: str, service: str) -> PurePath:
        """Where a service keeps its data by default."""
        ...

    def address(self, machine: str) -> str | None:
        """The address the machine is reached at; None for this box (loopback)."""
        ...

    def default_bind(self, machine: str) -> str:
        """What a listener binds when the blueprint does not say."""
        ...


class LocalLayout:
    """The local provider: machines are directories under ``root``, reached on loopback."""

    def __init__(self, root: Path, site_id: str) -> None:
        self.root, self.site_id = root, site_id

    def base_dir(self, machine: str) -> PurePath:
        from pacsinfra.drivers.local import paths

        return paths.machine_dir(self.root, self.site_id, machine)

    def data_dir(self, machine: str, service: str) -> PurePath:
        from pacsinfra.drivers.local import paths

        return paths.data_dir(self.root, self.site_id, machine, service)

    def address(self, machine: str) -> str | None:
        return None

    def default_bind(self, machine: str) -> str:
        return LOOPBACK


def runs_services(driver: str, site: Any) -> bool:
    """Whether the plan of ``site`` on ``driver`` includes its services as resources."""
    if driver not in SERVICE_DRIVERS:
        return False
    if driver in GUEST_DRIVERS:
        return getattr(getattr(site.provider, driver, None), "ssh", None) is not None
    return True


def layout_for(driver: str, site: Any, site_id: str, *,
               machines: Mapping[str, Any] | None = None) -> HostLayout:
    """The layout of a service driver, from the blueprint's provider settings.

    ``machines`` (name -> MachineSpec) lets a hypervisor driver find each machine's
    address in its NICs (static addresses, user-mode forwards): known at plan time.
    """
    settings = getattr(site.provider, driver, None)
    if driver == "kvm":
        from pacsinfra.drivers.kvm.services import KvmLayout

        return KvmLayout(settings, machines or {})
    if driver in GUEST_DRIVERS:
        from pacsinfra.drivers.guest_services import GuestLayout

        return GuestLayout(settings, machines or {})
    if driver == "static":
        from pacsinfra.drivers.static.layout import StaticLayout, StaticSettings

        return StaticLayout(StaticSettings.parse(settings))
    from pacsinfra.drivers.local.paths import local_root

    return LocalLayout(local_root(settings), site_id)


def _dump(config: Any) -> dict[str, Any]:
    data = config.model_dump(mode="json", exclude_none=True, by_alias=True)
    assert isinstance(data, dict)
    return data


def _place(value: str | None, default: PurePath, base: PurePath) -> str:
    """``default`` when unset; a relative path resolved under ``base``."""
    if not value:
        return str(default)
    return value if os.path.isabs(value) else str(base / value)


def _target_host(svc_name: str, dest_name: str, target: str,
                 nodes: Mapping[str, Sequence[str]], layout: HostLayout) -> str:
    """The one address a ``service:`` destination points at (its single node's machine)."""
    addresses = {layout.address(m) or LOOPBACK for m in nodes.get(target, ())}
    if len(addresses) > 1:
        raise PlanError(
            f"services.{svc_name}.config.destinations.{dest_name}: service {target!r} runs on "
            f"{len(addresses)} machines ({', '.join(sorted(addresses))}); a destination is one "
            "node: declare one destination per node with host: and port:, and a group over them")
    return addresses.pop() if addresses else LOOPBACK


def _database_host(where: str, target: str, db: Any,
                   nodes: Mapping[str, Sequence[str]], layout: HostLayout) -> str:
    """Where an index / queue reaches database service ``target``: its machine's address,
    or the address it binds when the blueprint pinned a specific one."""
    machines = list(nodes.get(target, ()))
    if len(machines) > 1:
        raise PlanError(
            f"{where}: database service {target!r} runs on {len(machines)} machines; an index "
            "or queue connects to one server: place the database on one machine, or give "
            "host: and port: instead of service:")
    bind = str(db.config.bind) if "bind" in db.config.model_fields_set else ""
    if bind not in WILDCARDS:
        return bind
    return (layout.address(machines[0]) if machines else None) or LOOPBACK


def _wire_database(site: Any, where: str, conn: Any, out: dict[str, Any],
                   nodes: Mapping[str, Sequence[str]], layout: HostLayout) -> None:
    """Resolve ``service:`` of an index / queue block ``out`` to the database's coordinates.

    Host and port always come from the database service (checks report a pinned port that
    differs); the role and the password *reference* do unless the blueprint set them.
    """
    db = site.services.get(conn.service) if conn.backend == "postgresql" and conn.service else None
    if db is None or db.kind != "database":
        return
    given = conn.model_fields_set
    out.pop("service", None)
    out["host"] = _database_host(where, str(conn.service), db, nodes, layout)
    if "port" not in given:
        out["port"] = int(db.config.port)
    if "user" not in given:
        out["user"] = str(db.config.user)
    if "password" not in given and db.config.password is not None:
        out["password"] = _dump(db.config.password)


def _socket_dir(svc_name: str, cfg: Any, given: set[str], base: PurePath) -> str:
    """The database's Unix socket directory; PlanError when a given one would not fit.

    The default is the machine's run directory; when that path is too long for a socket
    (deep provider roots, long site names) a short per-machine directory under /tmp is
    used instead (named by a hash of the long one, so it is stable across plans).
    """
    fits = lambda d: len(f"{d}/.s.PGSQL.{cfg.port}") <= MAX_SOCKET_PATH  # noqa: E731
    if "socket_dir" not in given:
        sock = str(base / "run" / f"pg-{svc_name}")
        if fits(sock):
            return sock
        import hashlib

        return f"/tmp/pacsinfra-pg-{hashlib.sha256(sock.encode()).hexdigest()[:16]}"
    sock = _place(cfg.socket_dir, base / "run" / f"pg-{svc_name}", base)
    if not fits(sock):
        raise PlanError(
            f"services.{svc_name}.config.socket_dir: the socket path under {sock} is longer "
            f"than the {MAX_SOCKET_PATH} bytes a Unix socket path may have; set socket_dir "
            "to a short directory (e.g. /run/pacsinfra-db) or use a shorter provider root")
    return sock


def _mounts(disks: Sequence[Any]) -> list[tuple[str, PurePosixPath]]:
    """(storage class, mount point) of the machine's disks that have a mount point, in
    the order the blueprint lists them."""
    return [(str(d.storage), PurePosixPath(d.mount)) for d in disks if getattr(d, "mount", None)]


def _on_disk(svc_name: str, mounts: Sequence[tuple[str, PurePosixPath]],
             storage_class: str | None = None) -> PurePosixPath | None:
    """``<mount>/<service>`` on the disk of ``storage_class`` (any class: the first
    mounted disk); None when the machine has no such disk."""
    for sc, mount in mounts:
        if storage_class is None or sc == storage_class:
            return mount / svc_name
    return None


def _archive_tiers(data: dict[str, Any], svc_name: str,
                   mounts: Sequence[tuple[str, PurePosixPath]]) -> None:
    """Filesystem tiers without a path go to the disk of their storage class."""
    for tier in data.get("tiers") or []:
        if tier.get("kind", "filesystem") != "filesystem" or tier.get("path"):
            continue
        sc = tier.get("storage_class")
        home = _on_disk(svc_name, mounts, sc) if sc else None
        if home is not None:
            tier["path"] = str(home / str(tier["name"]))


def render_config(
    site: Any,
    svc_name: str,
    machine_name: str,
    *,
    layout: HostLayout,
    nodes: Mapping[str, Sequence[str]] | None = None,
    disks: Sequence[Any] = (),
) -> dict[str, Any]:
    """The config file of service ``svc_name`` on machine ``machine_name``.

    ``nodes`` maps each service to the names of the machines it runs on (to resolve
    router destinations that name a service). ``disks``: the machine role's disks;
    on machines pacsinfra does not own the whole of (every layout but ``local``, whose
    root holds everything), data directories left at their defaults go to the disks
    the blueprint mounts: an archive tier with a ``storage_class`` to the disk of that
    class, the rest of a service's data to ``<mount>/<service>`` of the disk of the
    archive's default tier's class, else of the first disk with a mount point.
    """
    svc = site.services[svc_name]
    cfg = svc.config
    data = _dump(cfg)
    given = cfg.model_fields_set
    mdir = layout.base_dir(machine_name)
    mounts = [] if isinstance(layout, LocalLayout) else _mounts(disks)
    ddir = layout.data_dir(machine_name, svc_name)
    if mounts:
        default_class = None
        if svc.kind == "archive":
            tiers = {t.name: t for t in cfg.tiers}
            first = tiers.get(cfg.default_tier or "") or (cfg.tiers[0] if cfg.tiers else None)
            default_class = first.storage_class if first is not None else None
        ddir = (_on_disk(svc_name, mounts, default_class) if default_class else None) \
            or _on_disk(svc_name, mounts) or ddir
    bind = layout.default_bind(machine_name)
    if "bind" not in given:
        data["bind"] = bind
    if svc.kind == "archive":
        data["data_dir"] = _place(cfg.data_dir if "data_dir" in given else None, ddir, mdir)
        _archive_tiers(data, svc_name, mounts)
        web = data.get("dicomweb") or {}
        if web and "bind" not in cfg.dicomweb.model_fields_set:
            web["bind"] = bind
        _wire_database(site, f"services.{svc_name}.config.index", cfg.index, data["index"],
                       nodes or {}, layout)
    elif svc.kind == "database":
        data["data_dir"] = _place(cfg.data_dir if "data_dir" in given else None, ddir, mdir)
        data["socket_dir"] = _socket_dir(svc_name, cfg, given, mdir)
    elif svc.kind == "router":
        data["spool_dir"] = _place(cfg.spool_dir if "spool_dir" in given else None, ddir, mdir)
        _wire_database(site, f"services.{svc_name}.config.queue", cfg.queue, data["queue"],
                       nodes or {}, layout)
        for dest_name, dest in cfg.destinations.items():
            target = site.services.get(dest.service) if dest.service else None
            if target is None:
                continue
            out = data["destinations"][dest_name]
            out.pop("service", None)
            out["host"] = _target_host(svc_name, dest_name, str(dest.service), nodes or {}, layout)
            if "port" not in dest.model_fields_set:
                out["port"] = int(target.config.port)
    return data


def _role_of(machine_address: str) -> str:
    """``machine.pacs[0]`` -> ``pacs``."""
    return machine_address.partition(".")[2].partition("[")[0]


def service_resources(
    site: Any,
    *,
    layout: HostLayout,
    hosts_of: Mapping[str, Sequence[tuple[str, str]]],
) -> list[tuple[ServiceSpec, tuple[str, ...]]]:
    """One (spec, depends_on) per host of every service; ``hosts_of``: service -> [(address, name)]."""
    out: list[tuple[ServiceSpec, tuple[str, ...]]] = []
    services: Mapping[str, Any] = site.services or {}
    instances: dict[str, list[str]] = {}
    for svc_name in services:
        instances[svc_name] = [f"service.{svc_name}[{i}]" for i in range(len(hosts_of.get(svc_name, ())))]
    nodes = {s: [name for _, name in pairs] for s, pairs in hosts_of.items()}
    roles = site.machines or {}
    for svc_name, svc in services.items():
        targets: set[str] = set()
        if svc.kind == "router":
            for dest in svc.config.destinations.values():
                if dest.service in instances:
                    targets.update(instances[dest.service])
        # an index / queue on a database service: start after it, be removed before it
        conn = (svc.config.index if svc.kind == "archive"
                else svc.config.queue if svc.kind == "router" else None)
        if conn is not None and conn.backend == "postgresql" and conn.service in instances:
            targets.update(instances[conn.service])
        for i, (m_addr, m_name) in enumerate(hosts_of.get(svc_name, ())):
            config: dict[str, Any] = {}
            if svc.kind in RUNNABLE_KINDS:
                role = roles.get(_role_of(m_addr))
                config = render_config(site, svc_name, m_name, layout=layout, nodes=nodes,
                                       disks=getattr(role, "disks", None) or ())
            spec = ServiceSpec(
                address=f"service.{svc_name}[{i}]",
                name=f"{m_name}-{svc_name}",
                service=svc_name,
                kind=str(svc.kind),
                machine=m_addr,
                config=config,
                host=layout.address(m_name),
            )
            out.append((spec, tuple(sorted({m_addr, *targets}))))
    return out
