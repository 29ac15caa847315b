"""Services as plan resources: render each (machine, service) pair's config file from the blueprint.

For drivers that run the PACS services themselves (``local``: this box; ``static``:
existing hosts over SSH), every service a machine role lists becomes a
:class:`~pacsinfra.drivers.base.ServiceSpec` resource ``service.<name>[<i>]`` (its
i-th host), ordered after its machine, and a router after the archives its
destinations name. The spec's ``config`` is the file the service reads, rendered here
through the driver's :class:`HostLayout` (where a machine keeps its files, how it is
reached):

- ``service:`` references in router destinations become ``host`` / ``port`` of the
  target service: its machine's address (127.0.0.1 on the local provider, the host's
  address on static hosts), the port from the target's config unless the blueprint
  pinned one;
- data directories (``data_dir``, ``spool_dir``) left at their defaults move under the
  machine's directory (``<root>/data/<svc>`` on a static host); relative ones are
  resolved there;
- a listener whose ``bind`` was not set binds 127.0.0.1 on the local provider (one box:
  nothing outside needs to reach it unless the blueprint says so) and the host's own
  address on static hosts (the router and pacsinfra reach it there).

Secrets stay references (``{"env": ...}``): the config carries what the blueprint wrote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Protocol

from pacsinfra.drivers.base import ServiceSpec
from pacsinfra.errors import PlanError

#: drivers whose plans include the services (they install and run them themselves)
SERVICE_DRIVERS = frozenset({"local", "static"})
#: service kinds a driver can run today (the others are left to the deploy stage)
RUNNABLE_KINDS = frozenset({"archive", "router"})
LOOPBACK = "127.0.0.1"


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


def layout_for(driver: str, site: Any, site_id: str) -> HostLayout:
    """The layout of a service driver, from the blueprint's provider settings."""
    settings = getattr(site.provider, driver, None)
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


def render_config(
    site: Any,
    svc_name: str,
    machine_name: str,
    *,
    layout: HostLayout,
    nodes: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The config file of service ``svc_name`` on machine ``machine_name``.

    ``nodes`` maps each service to the names of the machines it runs on (to resolve
    router destinations that name a service).
    """
    svc = site.services[svc_name]
    cfg = svc.config
    data = _dump(cfg)
    given = cfg.model_fields_set
    mdir = layout.base_dir(machine_name)
    ddir = layout.data_dir(machine_name, svc_name)
    bind = layout.default_bind(machine_name)
    if "bind" not in given:
        data["bind"] = bind
    if svc.kind == "archive":
        data["data_dir"] = _place(cfg.data_dir if "data_dir" in given else None, ddir, mdir)
        web = data.get("dicomweb") or {}
        if web and "bind" not in cfg.dicomweb.model_fields_set:
            web["bind"] = bind
    elif svc.kind == "router":
        data["spool_dir"] = _place(cfg.spool_dir if "spool_dir" in given else None, ddir, mdir)
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
    for svc_name, svc in services.items():
        targets: set[str] = set()
        if svc.kind == "router":
            for dest in svc.config.destinations.values():
                if dest.service in instances:
                    targets.update(instances[dest.service])
        for i, (m_addr, m_name) in enumerate(hosts_of.get(svc_name, ())):
            config: dict[str, Any] = {}
            if svc.kind in RUNNABLE_KINDS:
                config = render_config(site, svc_name, m_name, layout=layout, nodes=nodes)
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
