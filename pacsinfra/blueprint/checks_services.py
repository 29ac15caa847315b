"""Service checks: references between services, placement, ports, and PHI at rest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacsinfra.blueprint.overlay import did_you_mean
from pacsinfra.blueprint.services import (
    DATA_KINDS,
    DICOM_KINDS,
    ArchiveService,
    DatabaseService,
    RouterService,
    ViewerService,
)
from pacsinfra.providers import DECLARATIONS
from pacsinfra.types import is_label

if TYPE_CHECKING:
    from pacsinfra.blueprint.model import Site
    from pacsinfra.blueprint.report import Reporter


# -- services --------------------------------------------------------------------------------


def check_services(site: Site, r: Reporter) -> None:
    hosts = site.service_hosts()
    services = site.services
    placed = {s for s, roles in hosts.items() if any(site.machines[x].count > 0 for x in roles)}

    def need_kind(parts: tuple[Any, ...], ref: str, kinds: set[str], what: str) -> bool:
        svc = services.get(ref)
        if svc is None:
            cands = [n for n, s in services.items() if s.kind in kinds]
            r.add(parts, f"unknown {what} service {ref!r}",
                  hint=did_you_mean(ref, cands, f"{'/'.join(sorted(kinds))} services"),
                  code="unknown-ref", ref=("services", ref))
            return False
        if svc.kind not in kinds:
            r.add(parts, f"service {ref!r} is a {svc.kind}, not a {'/'.join(sorted(kinds))}",
                  code="wrong-kind")
            return False
        if ref not in placed:
            r.add(parts, f"{what} service {ref!r} is not deployed on any machine",
                  hint=f"add {ref!r} to a role's services", code="not-placed",
                  ref=("service-users", ref))
            return False
        return True

    for name, svc in services.items():
        base = ("services", name)
        if not is_label(name):
            r.add(base, f"service name {name!r} is not a DNS label", code="name", key=True)
        if name not in placed:
            r.add(base, f"service {name!r} is not placed on any machine",
                  hint=f"list it in a role: machines.<role>.services: [{name}]",
                  code="not-placed", key=True)
        if isinstance(svc, ArchiveService):
            cfg = svc.config
            idx = cfg.index
            if idx.backend == "postgresql" and idx.service:
                need_kind(base + ("config", "index", "service"), idx.service, {"database"},
                          "index database")
            for i, tier in enumerate(cfg.tiers):
                if tier.storage_class and tier.storage_class not in site.storage:
                    r.add(base + ("config", "tiers", i, "storage_class"),
                          f"unknown storage class {tier.storage_class!r}",
                          hint=did_you_mean(tier.storage_class, site.storage, "storage classes"),
                          code="unknown-ref", ref=("storage", tier.storage_class))
        elif isinstance(svc, RouterService):
            q = svc.config.queue
            if q.backend == "postgresql" and q.service:
                need_kind(base + ("config", "queue", "service"), q.service, {"database"},
                          "queue database")
            for dname, dest in svc.config.destinations.items():
                if dest.service:
                    need_kind(base + ("config", "destinations", dname, "service"), dest.service,
                              {"archive", "router", "viewer"}, "destination")
        elif isinstance(svc, ViewerService):
            archives = [n for n, s in services.items() if s.kind == "archive"]
            if svc.config.archive:
                if need_kind(base + ("config", "archive"), svc.config.archive, {"archive"},
                             "archive"):
                    _check_viewer_wiring(site, name, svc.config.archive, r)
            elif svc.config.upstream:
                pass  # an archive outside the site
            elif len(archives) == 1:
                if archives[0] in placed:
                    _check_viewer_wiring(site, name, archives[0], r)
            elif archives:
                r.add(base + ("config",), f"the site has {len(archives)} archives: say which "
                      "one the viewer reads", hint=f"add archive: {archives[0]}",
                      code="viewer-archive")
            else:
                r.add(base + ("config",), "a viewer without an archive to read from",
                      hint="add an archive service, or give upstream: (an archive's DICOMweb "
                      "URL) with upstream_token", code="viewer-archive")
        elif isinstance(svc, DatabaseService) and svc.config.replica_of:
            need_kind(base + ("config", "replica_of"), svc.config.replica_of, {"database"},
                      "primary")
    _check_ports(site, r)
    _check_dicom_wiring(site, r)
    _check_database_wiring(site, r)
    _check_tiers_and_gpus(site, r)


def _check_viewer_wiring(site: Site, viewer: str, archive: str, r: Reporter) -> None:
    """The viewer can reach the archive's DICOMweb: served at all, listening beyond
    loopback when some viewer machine does not run the archive, and a token to read with
    when the archive asks for one."""
    from pacsinfra.services.render import read_token

    viewer_svc, archive_svc = site.services[viewer], site.services[archive]
    assert isinstance(viewer_svc, ViewerService) and isinstance(archive_svc, ArchiveService)
    cfg = viewer_svc.config
    web = archive_svc.config.dicomweb
    base = ("services", viewer, "config")
    where = base + ("archive",) if cfg.archive else base
    if not web.enabled:
        r.add(where, f"archive {archive!r} serves no DICOMweb (dicomweb.enabled: false), which "
              "the viewer reads", hint=f"enable services.{archive}.config.dicomweb",
              code="viewer-archive")
        return
    if cfg.upstream:
        return
    hosts = site.service_hosts()
    apart = [role for role in hosts.get(viewer, ()) if archive not in site.machines[role].services]
    bind = str(web.bind)
    if apart and site.provider.driver != "local" and (
            bind in ("localhost", "::1") or bind.startswith("127.")):
        r.add(where, f"the viewer runs on role {apart[0]!r}, where archive {archive!r} does "
              f"not, and the archive's DICOMweb listens on {bind} only",
              hint=f"set services.{archive}.config.dicomweb.bind (e.g. 0.0.0.0) with tokens "
              f"for the viewer, or run the viewer on the archive's machines",
              code="viewer-archive")
    authenticated = bool(web.token is not None or getattr(web, "tokens", None)
                         or getattr(web, "oidc", None) is not None)
    if authenticated and cfg.upstream_token is None and read_token(web) is None:
        r.add(base, f"archive {archive!r} requires a token on DICOMweb and none of its tokens "
              "can read", hint="give the viewer upstream_token: {env: VIEWER_ARCHIVE_TOKEN} "
              "(a token with the read scope), or add one to the archive's tokens",
              code="viewer-archive")


def _check_dicom_wiring(site: Site, r: Reporter) -> None:
    """A router's destination must use the AE title and port its target listens on, and
    the target must accept the router's AE title."""
    for rname, router in site.services.items():
        if not isinstance(router, RouterService):
            continue
        for dname, dest in router.config.destinations.items():
            target = site.services.get(dest.service or "")
            if not isinstance(target, ArchiveService | RouterService):
                continue
            base = ("services", rname, "config", "destinations", dname)
            tcfg = target.config
            if dest.ae_title != tcfg.ae_title:
                r.add(base + ("ae_title",),
                      f"destination AE title {dest.ae_title!r} is not the AE title of service "
                      f"{dest.service!r} ({tcfg.ae_title!r})",
                      hint=f"write ae_title: {tcfg.ae_title}", code="ae-mismatch")
            # without a port, the router is given the port the service listens on
            if dest.port != tcfg.port and "port" in dest.model_fields_set:
                r.add(base + ("port",),
                      f"destination port {dest.port}, but service {dest.service!r} listens "
                      f"on {tcfg.port}", hint=f"write port: {tcfg.port}", code="port-mismatch")
            if dest.tls.enabled != tcfg.tls.enabled:
                want = "on" if tcfg.tls.enabled else "off"
                r.add(base + ("tls",),
                      f"destination TLS is {'on' if dest.tls.enabled else 'off'} but service "
                      f"{dest.service!r} has TLS {want}: associations would fail",
                      hint=f"set tls: {{enabled: {str(tcfg.tls.enabled).lower()}}} on both",
                      code="tls-mismatch")
            allowed = tcfg.allowed_calling_aes
            if allowed is not None and router.config.ae_title not in allowed:
                r.add(("services", dest.service, "config", "allowed_calling_aes"),
                      f"service {dest.service!r} would refuse router {rname!r}: its AE title "
                      f"{router.config.ae_title!r} is not in allowed_calling_aes",
                      hint=f"add {router.config.ae_title} to the list", code="ae-refused")


def _check_database_wiring(site: Site, r: Reporter) -> None:
    """An index / queue on a database service uses its port and a database it creates."""
    for name, svc in site.services.items():
        if isinstance(svc, ArchiveService):
            conn: Any = svc.config.index
            where: tuple[Any, ...] = ("services", name, "config", "index")
        elif isinstance(svc, RouterService):
            conn, where = svc.config.queue, ("services", name, "config", "queue")
        else:
            continue
        if conn.backend != "postgresql" or not conn.service:
            continue
        db = site.services.get(conn.service)
        if not isinstance(db, DatabaseService):
            continue  # reported by the reference checks
        # an unset port is taken from the database service when the config is rendered
        if "port" in conn.model_fields_set and conn.port != db.config.port:
            r.add(where + ("port",), f"port {conn.port}, but database service "
                  f"{conn.service!r} listens on {db.config.port}",
                  hint=f"write port: {db.config.port} (or leave it out: it is taken from the "
                       "database service)", code="port-mismatch")
        if "user" in conn.model_fields_set and conn.user != db.config.user:
            r.add(where + ("user",), f"user {conn.user!r}, but database service "
                  f"{conn.service!r} creates role {db.config.user!r}",
                  hint=f"write user: {db.config.user} (or leave it out: it is taken from "
                       "the database service)", code="user-mismatch")
        if conn.database not in db.config.databases:
            r.add(where + ("database",) if "database" in conn.model_fields_set else where,
                  f"database {conn.database!r} is not one of the databases service "
                  f"{conn.service!r} creates ({', '.join(db.config.databases) or 'none'})",
                  hint=f"add {conn.database} to services.{conn.service}.config.databases",
                  code="database-missing")


def _check_tiers_and_gpus(site: Site, r: Reporter) -> None:
    """Archive tiers on the right kind of storage; GPU viewers on machines with a GPU."""
    for name, svc in site.services.items():
        if isinstance(svc, ArchiveService):
            for i, tier in enumerate(svc.config.tiers):
                sc = site.storage.get(tier.storage_class or "")
                if sc is None:
                    continue
                where = ("services", name, "config", "tiers", i, "storage_class")
                if tier.kind == "filesystem" and sc.tier == "archive":
                    r.add(where, f"filesystem tier {tier.name!r} on {tier.storage_class!r}, an "
                          "archive (object) storage class", hint="use kind: s3 for object storage",
                          code="archive-tier")
                elif tier.kind == "s3" and sc.tier != "archive":
                    r.warn(where, f"s3 tier {tier.name!r} on {tier.storage_class!r}, a "
                           f"{sc.tier} storage class", hint="object storage is tier: archive",
                           code="archive-tier")
                elif tier.kind == "filesystem" and tier.path is None and \
                        data_on_disks(site.provider.driver):
                    _tier_disk(site, name, tier.name, str(tier.storage_class), where, r)
        elif isinstance(svc, ViewerService) and svc.config.gpu_required:
            for role_name, role in site.machines.items():
                if name in role.services and role.gpu is None:
                    r.warn(("machines", role_name, "services"),
                           f"viewer {name!r} needs a GPU (gpu_required) but role {role_name!r} "
                           "has none", hint="add gpu: {mode: vgpu, profile: ...}", code="gpu")


def _tier_disk(site: Site, svc: str, tier: str, storage_class: str, where: tuple[Any, ...],
               r: Reporter) -> None:
    """A tier placed by storage class needs a mounted disk of that class on its machines."""
    for role_name, role in site.machines.items():
        if svc in role.services and not any(
                d.storage == storage_class and d.mount for d in role.disks):
            r.warn(where, f"tier {tier!r} is on storage class {storage_class!r}, but machine "
                   f"role {role_name!r} mounts no disk of that class: its files will go under "
                   "the archive's data_dir", hint=f"give role {role_name!r} a disk with "
                   f"storage: {storage_class} and a mount point, or set the tier's path",
                   code="archive-tier")


def _listen_ports(svc: Any) -> list[tuple[tuple[str, ...], int]]:
    cfg = svc.config
    out: list[tuple[tuple[str, ...], int]] = []
    if svc.kind in DICOM_KINDS:
        out.append((("config", "port"), cfg.port))
    if svc.kind == "archive" and cfg.dicomweb.enabled:
        out.append((("config", "dicomweb", "port"), cfg.dicomweb.port))
    if svc.kind == "router" and cfg.metrics_port:
        out.append((("config", "metrics_port"), cfg.metrics_port))
    if svc.kind in ("database", "viewer"):
        out.append((("config", "port"), cfg.port))
    return out


def _check_ports(site: Site, r: Reporter) -> None:
    """Two services on one machine cannot listen on the same port."""
    for role_name, role in site.machines.items():
        used: dict[int, str] = {}
        for svc_name in role.services:
            svc = site.services.get(svc_name)
            if svc is None:
                continue
            for fld, port in _listen_ports(svc):
                if port in used and used[port] != svc_name:
                    r.add(("services", svc_name) + fld,
                          f"port {port} is also used by service {used[port]!r} on role "
                          f"{role_name!r}", hint="give one of them another port",
                          code="port-conflict")
                used.setdefault(port, svc_name)


# -- policy: PHI -----------------------------------------------------------------------------


def phi_classes(site: Site) -> dict[str, str]:
    """Storage class -> why it holds PHI (explicit, or used by a data service)."""
    out: dict[str, str] = {}
    for name, sc in site.storage.items():
        if sc.phi:
            out[name] = "marked phi: true"
    for role_name, role in site.machines.items():
        kinds = {site.services[s].kind for s in role.services if s in site.services}
        if role.holds_data or kinds & DATA_KINDS:
            for disk in role.disks:
                dsc = site.storage.get(disk.storage)
                if dsc is not None and dsc.phi is None:
                    out.setdefault(disk.storage, f"disks of role {role_name!r} hold patient data")
    for svc in site.services.values():
        if isinstance(svc, ArchiveService):
            for tier in svc.config.tiers:
                tsc = site.storage.get(tier.storage_class or "")
                if tsc is not None and tsc.phi is None and tier.storage_class:
                    out.setdefault(tier.storage_class, "an archive tier stores images on it")
    return out


def check_phi(site: Site, r: Reporter) -> None:
    for name, why in sorted(phi_classes(site).items()):
        if not site.storage[name].encrypted:
            r.warn(("storage", name, "encrypted"),
                   f"storage class {name!r} holds PHI ({why}) but is not encrypted at rest",
                   hint="set encrypted: true (or phi: false if it truly holds no patient data); "
                        "--strict makes this an error", code="phi-unencrypted")


__all__ = ["check_phi", "check_services", "phi_classes"]


def data_on_disks(driver: str) -> bool:
    """Whether the blueprint's disk mounts decide where the driver's services keep data."""
    decl = DECLARATIONS.get(driver)
    return decl is None or decl.data_on_disks
