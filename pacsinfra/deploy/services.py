"""Services as plan resources: render each (machine, service) pair's config file from the blueprint.

For drivers that run the PACS services themselves (``local`` today), every service a
machine role lists becomes a :class:`~pacsinfra.drivers.base.ServiceSpec` resource
``service.<name>[<i>]`` (its i-th host), ordered after its machine, and a router after
the archives its destinations name. The spec's ``config`` is the file the service
reads, rendered here:

- ``service:`` references in router destinations become ``host`` / ``port`` of the
  target service (127.0.0.1 on the local provider; the port from the target's config
  unless the blueprint pinned one, and the target's AE title);
- data directories (``data_dir``, ``spool_dir``) left at their defaults move under the
  machine's directory; relative ones are resolved there;
- a listener whose ``bind`` was not set binds 127.0.0.1 on the local provider (one box:
  nothing outside needs to reach it unless the blueprint says so).

Secrets stay references (``{"env": ...}``): the config carries what the blueprint wrote.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pacsinfra.drivers.base import ServiceSpec
from pacsinfra.drivers.local import paths

#: drivers whose plans include the services (they install and run them themselves)
SERVICE_DRIVERS = frozenset({"local"})
#: service kinds a driver can run today (the others are left to the deploy stage)
RUNNABLE_KINDS = frozenset({"archive", "router"})
LOOPBACK = "127.0.0.1"


def _dump(config: Any) -> dict[str, Any]:
    data = config.model_dump(mode="json", exclude_none=True, by_alias=True)
    assert isinstance(data, dict)
    return data


def _place(value: str | None, default: Path, base: Path) -> str:
    """``default`` when unset; a relative path resolved under ``base``."""
    if not value:
        return str(default)
    return value if os.path.isabs(value) else str(base / value)


def render_config(
    site: Any,
    svc_name: str,
    machine_name: str,
    *,
    site_id: str,
    root: Path,
) -> dict[str, Any]:
    """The config file of service ``svc_name`` on machine ``machine_name`` (local provider)."""
    svc = site.services[svc_name]
    cfg = svc.config
    data = _dump(cfg)
    given = cfg.model_fields_set
    mdir = paths.machine_dir(root, site_id, machine_name)
    ddir = paths.data_dir(root, site_id, machine_name, svc_name)
    if "bind" not in given:
        data["bind"] = LOOPBACK
    if svc.kind == "archive":
        data["data_dir"] = _place(cfg.data_dir if "data_dir" in given else None, ddir, mdir)
        web = data.get("dicomweb") or {}
        if web and "bind" not in cfg.dicomweb.model_fields_set:
            web["bind"] = LOOPBACK
    elif svc.kind == "router":
        data["spool_dir"] = _place(cfg.spool_dir if "spool_dir" in given else None, ddir, mdir)
        for dest_name, dest in cfg.destinations.items():
            target = site.services.get(dest.service) if dest.service else None
            if target is None:
                continue
            out = data["destinations"][dest_name]
            out.pop("service", None)
            out["host"] = LOOPBACK
            if "port" not in dest.model_fields_set:
                out["port"] = int(target.config.port)
    return data


def service_resources(
    site: Any,
    *,
    site_id: str,
    root: Path,
    hosts_of: Mapping[str, Sequence[tuple[str, str]]],
) -> list[tuple[ServiceSpec, tuple[str, ...]]]:
    """One (spec, depends_on) per host of every service; ``hosts_of``: service -> [(address, name)]."""
    out: list[tuple[ServiceSpec, tuple[str, ...]]] = []
    services: Mapping[str, Any] = site.services or {}
    instances: dict[str, list[str]] = {}
    for svc_name in services:
        instances[svc_name] = [f"service.{svc_name}[{i}]" for i in range(len(hosts_of.get(svc_name, ())))]
    for svc_name, svc in services.items():
        targets: set[str] = set()
        if svc.kind == "router":
            for dest in svc.config.destinations.values():
                if dest.service in instances:
                    targets.update(instances[dest.service])
        for i, (m_addr, m_name) in enumerate(hosts_of.get(svc_name, ())):
            config: dict[str, Any] = {}
            if svc.kind in RUNNABLE_KINDS:
                config = render_config(site, svc_name, m_name, site_id=site_id, root=root)
            spec = ServiceSpec(
                address=f"service.{svc_name}[{i}]",
                name=f"{m_name}-{svc_name}",
                service=svc_name,
                kind=str(svc.kind),
                machine=m_addr,
                config=config,
            )
            out.append((spec, tuple(sorted({m_addr, *targets}))))
    return out
