"""Find what to verify on an applied site: the entry AE, the archives a study goes to, the receiver.

Reads the site's state (the services as they were deployed, with their rendered
configs), not the blueprint alone: ``pacsinfra verify`` checks what runs, and refuses
a site that was never applied. The entry is the router when the site has one (else
the archive). The archives to wait for are the ones the router's rules send a
synthetic study to, found by running the router's own rule engine on a sample of
that study; destinations that are load-balanced groups are reported, not waited for
(the study lands on one member, chosen at run time).

The C-MOVE receiver is the archives' move destination named ``receiver_ae``
(``PXVERIFY`` by default): the archive only moves to peers it knows, so the
blueprint declares it (``services.archive.config.peers``).

``deleters`` holds, per archive AE title, a :class:`~pacsinfra.verify.smoke.DicomWebDeleter`
for every pacsinfra archive whose DICOMweb this machine reaches with a delete-scoped
token (resolved from the config's secret reference), so the smoke test can remove its
study afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsinfra.errors import UsageError
from pacsinfra.pacs.config_common import Peer

LOOPBACK = "127.0.0.1"


@dataclass
class SiteEndpoints:
    """Who to send to, who to check, where to receive; ``notes`` explain what was left out."""

    entry: Peer
    entry_address: str
    archives: list[Peer]
    archive_addresses: list[str]
    receiver: Peer
    notes: list[str] = field(default_factory=list)
    deleters: dict[str, Any] = field(default_factory=dict)  # AE title -> StudyDeleter


def _host(config: Mapping[str, Any], host: str | None = None) -> str:
    """Where a listener is reached: its specific bind address, else its machine's address
    (``host``: a static host's address; None on the local provider: loopback)."""
    bind = str(config.get("bind") or "")
    if bind in ("", "0.0.0.0", "::"):
        return host or LOOPBACK
    return bind


def service_peer(config: Mapping[str, Any], host: str | None = None) -> Peer:
    """How a deployed service (its rendered config) is reached as a DICOM peer."""
    return Peer(ae_title=str(config["ae_title"]), host=_host(config, host),
                port=int(config["port"]))


#: (address, kind, rendered config) or (address, kind, rendered config, machine address)
ServiceEntry = tuple[str, str, Mapping[str, Any]] | tuple[str, str, Mapping[str, Any], str | None]


def _entries(services: Sequence[ServiceEntry]) -> list[tuple[str, str, Mapping[str, Any], str | None]]:
    return [(e[0], e[1], e[2], e[3] if len(e) > 3 else None) for e in services]  # type: ignore[misc]


def _receiver_hint(host: str | None) -> str:
    """Where the receiver must listen: loopback on this box, else an address of the
    machine running verify that the archive's host can reach."""
    return "127.0.0.1" if host is None else "<an address of this machine the archive reaches>"


def _deleter(addr: str, config: Mapping[str, Any], notes: list[str],
             host: str | None = None) -> Any:
    """A DICOMweb deleter for an archive's rendered config, or None (with a note why).

    The deleter authenticates with the config's legacy ``token`` or its first
    ``tokens`` entry with the ``delete`` (or ``admin``) scope; OIDC-only archives and
    archives that would only be reached on another machine's loopback get a note."""
    from pydantic import ValidationError

    from pacsinfra.errors import PacsinfraError
    from pacsinfra.pacs.archive.config import DicomWebConfig
    from pacsinfra.pacs.web_config import is_loopback
    from pacsinfra.verify.smoke import DicomWebDeleter, UnusableDeleter

    try:
        web = DicomWebConfig.model_validate(dict(config.get("dicomweb") or {}))
    except ValidationError as exc:
        notes.append(f"{addr}: cannot delete the test study: the archive's dicomweb settings "
                     f"are invalid: {exc.errors()[0]['msg']}")
        return None
    if not web.enabled:
        return None
    if host is not None and is_loopback(web.bind):
        notes.append(f"{addr}: cannot delete the test study: DICOMweb listens on the "
                     f"loopback of {host} only")
        return None
    ref = web.token or next((t.token for t in web.tokens
                             if "delete" in t.scopes or "admin" in t.scopes), None)
    if ref is None and not (web.anonymous and "delete" in web.anonymous_scopes):
        notes.append(f"{addr}: cannot delete the test study: give the archive's dicomweb a "
                     "token with the delete scope (dicomweb.tokens)")
        return None
    token = None
    if ref is not None:
        try:
            token = ref.resolve()
        except PacsinfraError as exc:
            # the archive has a delete API; this run cannot authenticate to it
            return UnusableDeleter(f"the archive's DICOMweb token ({ref.describe()}) cannot be "
                                   f"read here: {exc}; the test study is left in place")
    where = _host({"bind": web.bind}, host)
    scheme = "https" if web.tls.enabled else "http"
    return DicomWebDeleter(f"{scheme}://{where}:{web.port}", token=token, ca_file=web.tls.ca_file)


def _routed_targets(router_cfg: Mapping[str, Any], calling_ae: str) -> tuple[list[str], list[str]]:
    """(destination names, group names) the router's rules send a synthetic CT study to."""
    from pacsinfra.pacs.router.config import RouterConfig
    from pacsinfra.pacs.router.rules import Subject, route
    from pacsinfra.verify.study import PROFILES, make_study

    cfg = RouterConfig.model_validate(dict(router_cfg))
    sample = make_study(PROFILES["ct"], series=1, instances=1, scale=0.05)[0]
    decision = route(cfg.rules, Subject(sample, calling_ae, cfg.ae_title))
    dests: list[str] = []
    groups: list[str] = []
    for d in decision.deliveries:
        (groups if d.target in cfg.groups else dests).append(d.target)
    return dests, groups


def site_endpoints(
    services: Sequence[ServiceEntry],
    *,
    receiver_ae: str = "PXVERIFY",
    calling_ae: str = "PXSMOKE",
    deleter_for: Callable[[str], Any] | None = None,
) -> SiteEndpoints:
    """``services``: (address, kind, rendered config[, machine address]) of every deployed
    service; a service bound to every interface is reached at its machine's address.
    ``deleter_for(address)``: how to delete the test study from that archive where it
    runs (None: through its DICOMweb from here)."""
    entries = _entries(services)
    hosts = {a: h for a, _, _, h in entries}
    routers = [(a, c) for a, k, c, _ in entries if k == "router"]
    archives = [(a, c) for a, k, c, _ in entries if k == "archive"]
    if not archives:
        raise UsageError("the site runs no archive service: nothing to verify")
    notes: list[str] = []
    if routers:
        entry_addr, entry_cfg = routers[0]
        if len(routers) > 1:
            notes.append(f"{len(routers)} routers; verifying through {entry_addr}")
        dests, groups = _routed_targets(entry_cfg, calling_ae)
        for g in groups:
            notes.append(f"group {g!r}: the study lands on one member; not waited for per node")
        by_endpoint = {(str(c["ae_title"]), _host(c, hosts[a]), int(c["port"])): (a, c)
                       for a, c in archives}
        chosen: list[tuple[str, Mapping[str, Any]]] = []
        for name in dests:
            d = entry_cfg["destinations"][name]
            key = (str(d["ae_title"]), str(d.get("host") or ""), int(d.get("port", 104)))
            hit = by_endpoint.get(key)
            if hit is None:
                notes.append(f"destination {name!r} ({key[0]}@{key[1]}:{key[2]}) is not an "
                             "archive of this site; not checked")
            elif hit not in chosen:
                chosen.append(hit)
        if not chosen:
            raise UsageError(
                f"the router {entry_addr} sends a test study to no archive of this site "
                "(no rule forwards it to a destination naming an archive service)")
    else:
        entry_addr, entry_cfg = archives[0]
        chosen = list(archives)
    receiver: Peer | None = None
    for addr, cfg in chosen:
        raw = (cfg.get("peers") or {}).get(receiver_ae)
        if raw is None:
            raise UsageError(
                f"{addr}: the archive knows no C-MOVE destination {receiver_ae!r}; add "
                f"services.<archive>.config.peers.{receiver_ae}: "
                f"{{ae_title: {receiver_ae}, host: {_receiver_hint(hosts[addr])}, "
                "port: <free port>} to the blueprint")
        peer = Peer.model_validate(dict(raw))
        if receiver is not None and (peer.host, peer.port) != (receiver.host, receiver.port):
            raise UsageError(f"archives disagree on where {receiver_ae} listens: "
                             f"{receiver.host}:{receiver.port} and {peer.host}:{peer.port}")
        receiver = peer
    assert receiver is not None
    deleters = {}
    for addr, cfg in chosen:
        d = (deleter_for(addr) if deleter_for else None) or _deleter(addr, cfg, notes, hosts[addr])
        if d is not None:
            deleters[str(cfg["ae_title"])] = d
    return SiteEndpoints(
        entry=service_peer(entry_cfg, hosts[entry_addr]), entry_address=entry_addr,
        archives=[service_peer(c, hosts[a]) for a, c in chosen], archive_addresses=[a for a, _ in chosen],
        receiver=receiver, notes=notes, deleters=deleters,
    )


Services = list[tuple[str, str, Mapping[str, Any], str | None]]


def deployed_services(blueprint: Path, overlay: str | None, state_path: Path | None,
                      *, fallback: str) -> tuple[str, Services]:
    """The site's name, and (address, kind, rendered config, machine address) of every service
    its state records (the machine address is None on the local provider).

    Raises UsageError for a site never applied and StateError for one whose state holds
    no services (``fallback`` names the command that works without a blueprint).
    """
    from pacsinfra.apply.engine import Engine
    from pacsinfra.blueprint import load_blueprint
    from pacsinfra.errors import StateError
    from pacsinfra.specs import ServiceSpec

    loaded = load_blueprint(str(blueprint), site=overlay)
    engine = Engine(loaded, state_path)
    with engine:
        state = engine.read_state()
    if state is None:
        raise UsageError(f"{blueprint}: no state at {engine.store.describe()}; "
                         "run pacsinfra apply first")
    services: Services = [(r.address, r.spec.kind, r.spec.config, r.spec.host)
                          for r in state.resources.values() if isinstance(r.spec, ServiceSpec)]
    if not services:
        raise StateError(f"{blueprint}: the state records no services (only the local and "
                         f"static providers deploy them today); run `{fallback}` instead")
    return loaded.site.metadata.name, services


def entry_endpoint(services: Services) -> tuple[str, Peer]:
    """The site's front door: the first router, else the first archive (address, peer)."""
    for kind in ("router", "archive"):
        for address, k, config, host in services:
            if k == kind:
                return address, service_peer(config, host)
    raise UsageError("the site runs no router or archive")
