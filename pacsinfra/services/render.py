"""Services as plan resources: render each (machine, service) pair's config file from the blueprint.

For drivers that run the PACS services themselves (``local``: this box; ``static``:
existing hosts over SSH; ``kvm``, ``vsphere``, ``hyperv``: the machines they make, over
SSH once they boot), every service a machine role lists becomes a
:class:`~pacsinfra.specs.ServiceSpec` resource ``service.<name>[<i>]`` (its
i-th host), ordered after its machine, and a router after the archives its
destinations name. The spec's ``config`` is the file the service reads, rendered here
through the driver's :class:`HostLayout` (where a machine keeps its files, how it is
reached):

- ``service:`` references in router destinations become ``host`` / ``port`` of the
  target service: its machine's address (127.0.0.1 on the local provider, the host's
  address on static hosts), the port from the target's config unless the blueprint
  pinned one. A target on several machines becomes one destination per node
  (``<name>@<machine>``): groups listing the destination list the nodes, and rules
  forwarding to it forward to a group of its name over them;
- data directories (``data_dir``, ``spool_dir``) left at their defaults go to the disks
  the machine role mounts (``disks[].mount``: ``<mount>/<svc>``; an archive tier with a
  ``storage_class`` onto the disk of that class), else under the machine's directory
  (``<root>/data/<svc>`` on a static host); relative ones are resolved there. The
  ``local`` provider keeps everything under its root;
- a DICOM listener whose ``bind`` was not set binds 127.0.0.1 on the local provider
  (one box: nothing outside needs to reach it unless the blueprint says so) and the
  host's own address on other hosts (the router and pacsinfra reach it there). HTTP
  listeners (an archive's DICOMweb, a viewer) keep their own loopback default: opening
  them to the network takes an explicit ``bind`` and authentication;
- a viewer reads the archive it names (else the site's only one) at the archive's
  DICOMweb: on loopback when they share a machine, else at the archive's machine, with
  the archive's least-privileged read token unless it names its own; on other hosts
  its OHIF build comes from ``<root>/cache`` (shipped there by pacsinfra);
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
from pathlib import PurePath, PurePosixPath
from typing import Any, Protocol

from pacsinfra.errors import PlanError
from pacsinfra.specs import ServiceSpec

#: service kinds the services layer runs
RUNNABLE_KINDS = frozenset({"archive", "router", "database", "viewer"})
LOOPBACK = "127.0.0.1"
WILDCARDS = ("", "0.0.0.0", "::")
#: sun_path holds 108 bytes with the terminating NUL; PostgreSQL adds ``/.s.PGSQL.<port>``
MAX_SOCKET_PATH = 107


class HostLayout(Protocol):
    """Where a kind of host keeps a machine's files and how the machine is reached."""

    #: whether the blueprint's disk mounts decide where data goes (False: the layout
    #: keeps everything under its own root, as the local provider does)
    uses_mounts: bool

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
        """What a DICOM listener binds when the blueprint does not say."""
        ...

    def cache_dir(self, machine: str) -> PurePath | None:
        """Where downloads shared by the machine's services are kept (the viewer's OHIF
        build); None: the pacsinfra user's own cache (the services run on this box)."""
        ...


def _dump(config: Any) -> dict[str, Any]:
    data = config.model_dump(mode="json", exclude_none=True, by_alias=True)
    assert isinstance(data, dict)
    return data


def _place(value: str | None, default: PurePath, base: PurePath) -> str:
    """``default`` when unset; a relative path resolved under ``base``."""
    if not value:
        return str(default)
    return value if os.path.isabs(value) else str(base / value)


def _target_hosts(dest_name: str, target: str, nodes: Mapping[str, Sequence[str]],
                  layout: HostLayout) -> dict[str, str]:
    """Where a ``service:`` destination points: ``{destination name: address}``, one entry
    named ``dest_name`` for a single-node target, else ``<dest_name>@<machine>`` per node."""
    by_address: dict[str, str] = {}
    for machine in nodes.get(target, ()):
        by_address.setdefault(layout.address(machine) or LOOPBACK, machine)
    if len(by_address) <= 1:
        return {dest_name: next(iter(by_address), LOOPBACK)}
    return {f"{dest_name}@{machine}": address for address, machine in by_address.items()}


def _fan_out(data: dict[str, Any], svc_name: str, dest_name: str, named: dict[str, str]) -> None:
    """Replace destination ``dest_name`` of router config ``data`` by one per node of its
    target (``named``: new name -> address): groups listing it list every node instead, and
    rules forwarding to it forward to a group of that name over the nodes (the archive
    nodes share one index, so any of them takes a study; ``by_study`` keeps a study on one)."""
    template = data["destinations"].pop(dest_name)
    for name, address in named.items():
        data["destinations"][name] = {**template, "host": address}
    groups: dict[str, Any] = data.setdefault("groups", {})
    for group in groups.values():
        members = group["members"]
        if dest_name in members:
            at = members.index(dest_name)
            rest = [m for m in members[at + 1:] if m not in named]
            group["members"] = [*members[:at], *named, *rest]
    if any(dest_name in rule.get("forward", ()) for rule in data.get("rules", ())):
        if dest_name in groups:
            raise PlanError(
                f"services.{svc_name}.config.destinations.{dest_name}: its service runs on "
                f"{len(named)} machines, so it becomes a group of that name, but a group "
                f"{dest_name!r} exists already; rename one of them")
        groups[dest_name] = {"members": list(named)}


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


def viewer_archive(site: Any, viewer_cfg: Any) -> str | None:
    """The archive service a viewer reads from: the one it names, else the site's only one."""
    if viewer_cfg.archive:
        return str(viewer_cfg.archive)
    archives = [n for n, s in (site.services or {}).items() if s.kind == "archive"]
    return archives[0] if len(archives) == 1 else None


def read_token(web: Any) -> Any:
    """The bearer token a viewer reads an archive's DICOMweb with: the ``tokens`` entry
    that can read with the fewest other scopes (least privilege), else the single
    ``token`` (every scope); None when the archive takes no tokens."""
    readers = [t for t in getattr(web, "tokens", None) or ()
               if "read" in t.scopes or "admin" in t.scopes]
    if readers:
        return min(readers, key=lambda t: (len(t.scopes), "admin" in t.scopes)).token
    return web.token


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _viewer_upstream(site: Any, svc_name: str, machine_name: str, archive: str,
                     nodes: Mapping[str, Sequence[str]], layout: HostLayout) -> str:
    """The archive's DICOMweb base URL as the viewer on ``machine_name`` reaches it: on
    loopback when the archive runs on the same machine, else at the archive's machine
    (its first node, when it runs on several); its DICOMweb must listen there."""
    web = site.services[archive].config.dicomweb
    scheme = "https" if web.tls.enabled else "http"
    bind = str(web.bind)
    here = layout.address(machine_name) or LOOPBACK
    machines = list(nodes.get(archive, ()))
    where = {m: layout.address(m) or LOOPBACK for m in machines}
    if machine_name in where or here in where.values() or not machines:
        host = LOOPBACK if bind in WILDCARDS or _loopback(bind) else bind
        return f"{scheme}://{_url_host(host)}:{web.port}"
    if _loopback(bind):
        raise PlanError(
            f"services.{svc_name}: the viewer on {machine_name} reads archive {archive!r} on "
            f"{machines[0]}, whose DICOMweb listens on {bind} only: set "
            f"services.{archive}.config.dicomweb.bind (with tokens), or place the viewer on "
            "the archive's machines")
    host = bind if bind not in WILDCARDS else where[machines[0]]
    return f"{scheme}://{_url_host(host)}:{web.port}"


def _viewer_proxies(site: Any, archive: str, machine_name: str,
                    nodes: Mapping[str, Sequence[str]], layout: HostLayout) -> list[str]:
    """Where the viewers reading ``archive`` connect from, as the archive on
    ``machine_name`` sees them: each is a proxy for its users, whose own addresses it
    forwards (so the archive's per-client limits and audit see the users)."""
    here = layout.address(machine_name) or LOOPBACK
    found: set[str] = set()
    for name, svc in (site.services or {}).items():
        if svc.kind != "viewer" or svc.config.upstream or viewer_archive(site, svc.config) != archive:
            continue
        for m in nodes.get(name, ()):
            address = layout.address(m) or LOOPBACK
            found.add(LOOPBACK if address == here else address)
    return sorted(found)


def _loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def _render_viewer(site: Any, svc_name: str, machine_name: str, data: dict[str, Any],
                   given: set[str], nodes: Mapping[str, Sequence[str]],
                   layout: HostLayout) -> None:
    """A viewer's upstream, token and OHIF cache, from the archive and the host it runs on.

    Its ``bind`` stays what the blueprint says (loopback unless it says otherwise: a
    viewer shows patient images, so listening beyond loopback needs users and TLS).
    """
    cfg = site.services[svc_name].config
    if "site_name" not in given:
        data["site_name"] = str(site.metadata.name)[:64]
    archive = viewer_archive(site, cfg)
    target = site.services.get(archive) if archive else None
    if target is not None and target.kind == "archive":
        if not cfg.upstream:
            data["upstream"] = _viewer_upstream(site, svc_name, machine_name, archive or "",
                                                nodes, layout)
        if cfg.upstream_token is None:
            token = read_token(target.config.dicomweb)
            if token is not None:
                data["upstream_token"] = _dump(token)
    cache = layout.cache_dir(machine_name)
    if cache is not None:  # on another host: the build pacsinfra ships there
        ohif = data.setdefault("ohif", {})
        ohif.setdefault("cache_dir", str(cache / "ohif"))
        if not cfg.ohif.tarball:
            ohif["tarball"] = str(cache / f"ohif-{cfg.ohif.version}.tgz")


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
    mounts = _mounts(disks) if layout.uses_mounts else []
    ddir = layout.data_dir(machine_name, svc_name)
    if mounts:
        default_class = None
        if svc.kind == "archive":
            tiers = {t.name: t for t in cfg.tiers}
            first = tiers.get(cfg.default_tier or "") or (cfg.tiers[0] if cfg.tiers else None)
            default_class = first.storage_class if first is not None else None
        ddir = (_on_disk(svc_name, mounts, default_class) if default_class else None) \
            or _on_disk(svc_name, mounts) or ddir
    if "bind" not in given and svc.kind != "viewer":
        data["bind"] = layout.default_bind(machine_name)
    if svc.kind == "archive":
        data["data_dir"] = _place(cfg.data_dir if "data_dir" in given else None, ddir, mdir)
        _archive_tiers(data, svc_name, mounts)
        proxies = _viewer_proxies(site, svc_name, machine_name, nodes or {}, layout)
        limits = cfg.dicomweb.limits
        if proxies and "trusted_proxies" not in limits.model_fields_set:
            data["dicomweb"]["limits"]["trusted_proxies"] = proxies
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
            if "port" not in dest.model_fields_set:
                out["port"] = int(target.config.port)
            named = _target_hosts(dest_name, str(dest.service), nodes or {}, layout)
            if len(named) == 1:
                out["host"] = named[dest_name]
            else:
                _fan_out(data, svc_name, dest_name, named)
    elif svc.kind == "viewer":
        data["data_dir"] = _place(cfg.data_dir if "data_dir" in given else None, ddir, mdir)
        _render_viewer(site, svc_name, machine_name, data, given, nodes or {}, layout)
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
        if svc.kind == "viewer" and not svc.config.upstream:
            archive = viewer_archive(site, svc.config)
            if archive in instances:  # its health check reads the archive through it
                targets.update(instances[archive])
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
