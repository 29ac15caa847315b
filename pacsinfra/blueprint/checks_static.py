"""Checks of ``provider.static``: every machine the site needs is an existing host we can reach.

- each member ``<site>-<role>-<n>`` of every role has a host entry (the missing ones are
  named, per role);
- a host entry that names no machine is a warning (a typo, or a role's count lowered);
- each host can log in with a key (``key_file`` or ``key``, on the host or in ``deploy``,
  not both on the host) and has a pinned host key (``host_keys`` or ``known_hosts``):
  never trust on first use;
- two entries on one address must not share a root directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacsinfra.blueprint.overlay import did_you_mean

if TYPE_CHECKING:
    from pacsinfra.blueprint.model import Site
    from pacsinfra.blueprint.report import Reporter

DEFAULT_ROOT = "/opt/pacsinfra"


def _value(host: Any, deploy: Any, name: str) -> Any:
    """The host's own login field, else the site's ``deploy`` one."""
    own = getattr(host, name, None)
    return own if own is not None else getattr(deploy, name, None)


def check_static(site: Site, r: Reporter) -> None:
    """Diagnostics for a site on ``provider.driver: static``."""
    p = site.provider.static
    if p is None or not p.hosts:
        r.add(("provider", "static") if p is not None else ("provider", "driver"),
              "the static driver needs provider.static.hosts (one entry per machine)",
              hint="add provider: {static: {hosts: {<site>-<role>-<n>: {address: 10.0.0.5, "
                   "host_keys: ['ssh-ed25519 AAAA...']}}}} and deploy: {key_file: "
                   "~/.ssh/id_ed25519}",
              code="provider")
        if p is None:
            return
    d = site.deploy
    deploy_ok = "deploy" not in r.dropped.get("*", ())  # an invalid deploy is reported itself
    metadata_ok = "metadata" not in r.dropped.get("*", ())
    members: dict[str, str] = {}
    if metadata_ok:
        for role_name, role in site.machines.items():
            for m in role.member_names(site.metadata.name, role_name):
                members[m] = role_name
        for role_name, role in site.machines.items():
            missing = [m for m in role.member_names(site.metadata.name, role_name)
                       if m not in p.hosts]
            if missing and p.hosts:
                r.add(("machines", role_name),
                      f"no host for machine{'s' if len(missing) > 1 else ''} "
                      f"{', '.join(missing)} in provider.static.hosts",
                      hint=f"add provider.static.hosts.{missing[0]}: {{address: ..., "
                           "host_keys: [...]}, or lower the role's count",
                      code="static-host", key=True)
    seen: dict[tuple[str, str], str] = {}
    for name, host in p.hosts.items():
        base = ("provider", "static", "hosts", name)
        if metadata_ok and name not in members:
            r.warn(base, f"host entry {name!r} is not a machine of this site",
                   hint=did_you_mean(name, sorted(members), "machines"), code="static-host",
                   key=True)
        key_file, key = _value(host, d, "key_file"), _value(host, d, "key")
        if key_file is None and key is None and deploy_ok:
            r.add(base, f"no SSH key to log in to {name} with",
                  hint="set deploy.key_file: ~/.ssh/id_ed25519 (or key: {env: ...}), or the "
                       "host's own key_file", code="static-host", key=True)
        elif host.key_file is not None and host.key is not None:
            r.add(base + ("key",), "key_file and key both given; use one",
                  code="static-host")
        if not host.host_keys and _value(host, d, "known_hosts") is None and deploy_ok:
            r.add(base, f"no pinned SSH host key for {name}",
                  hint="add host_keys: ['ssh-ed25519 AAAA...'] (from the host's console or "
                       "/etc/ssh/ssh_host_ed25519_key.pub), or a known_hosts file; pacsinfra "
                       "never trusts a key on first use", code="static-host", key=True)
        where = (host.address, str(_value(host, d, "root") or DEFAULT_ROOT))
        if where in seen:
            r.add(base + ("root",) if host.root else base,
                  f"{name} and {seen[where]} share address {where[0]} and root {where[1]}",
                  hint="give one of them another root", code="static-host", key=not host.root)
        seen.setdefault(where, name)
