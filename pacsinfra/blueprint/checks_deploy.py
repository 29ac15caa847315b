"""Checks of ``deploy``: can pacsinfra reach every machine that runs services?

For the machines a hypervisor driver makes (kvm, vsphere, hyperv), services are deployed
over SSH with the site's ``deploy`` login. Each machine that runs services needs

- a login key (``deploy.key_file`` or ``deploy.key``). Without one the machines are made
  and their services are **not** deployed: a warning on every role that lists services;
- an address known before it boots: a static NIC address (the first one is where
  pacsinfra reaches it; kvm also takes a user-mode forward to guest port 22,
  :mod:`.checks_kvm`). DHCP addresses are known only after the machine is up, and a
  plan has no "known after apply" values;
- a host key known before the first connection: pinned in ``deploy.host_keys`` (the
  machine ``<site>-<role>-<n>`` or its role), a ``known_hosts`` file, or learnt by the
  driver out of band (kvm: the serial console, ``provider.kvm.console_log``). pacsinfra
  never trusts a key on first use.

The ``static`` provider's own rules (a host entry per machine) are in
:mod:`.checks_static`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsinfra.blueprint.checks_kvm import check_kvm_reach
from pacsinfra.blueprint.overlay import did_you_mean
from pacsinfra.providers import declaration

if TYPE_CHECKING:
    from pacsinfra.blueprint.model import MachineRole, Site
    from pacsinfra.blueprint.report import Reporter

CODE = "services-unreachable"


def check_deploy(site: Site, r: Reporter) -> None:
    """``deploy``: pinned keys name machines or roles; every service machine is reachable."""
    metadata_ok = "metadata" not in r.dropped.get("*", ())
    deploy = site.deploy
    if deploy is not None and metadata_ok:
        members = {m for n, role in site.machines.items()
                   for m in role.member_names(site.metadata.name, n)}
        for target in deploy.host_keys:
            if target not in site.machines and target not in members:
                r.add(("deploy", "host_keys", target), f"unknown machine or role {target!r}",
                      hint=did_you_mean(target, sorted(members | set(site.machines)),
                                        "roles and machines"),
                      code="unknown-ref", key=True)
    if not r.provider_known or "deploy" in r.dropped.get("*", ()):
        return  # an invalid provider or deploy section is reported by itself
    decl = declaration(site.provider.driver)
    if not decl.makes_machines:
        return  # this box, or hosts checked one by one (checks_static)
    roles = {n: role for n, role in site.machines.items() if role.services and role.count}
    if not roles:
        return
    if decl.reach is None:
        for name in roles:
            r.warn(("machines", name, "services"), f"the {decl.name} driver cannot run "
                   "services on its machines: they are not deployed", code=CODE, key=True)
        return
    if deploy is None or (deploy.key_file is None and deploy.key is None):
        for name in roles:
            r.warn(("machines", name, "services"),
                   f"role {name!r} runs services, but pacsinfra has no login for the "
                   f"{decl.name} machines: they are made and their services are not deployed",
                   hint="set deploy: {user: root, key_file: ~/.ssh/id_ed25519, known_hosts: "
                        "~/.ssh/known_hosts} (or host_keys)", code=CODE, key=True)
        return
    for name, role in roles.items():
        if decl.name == "kvm":
            reachable = check_kvm_reach(site, r, name, role)
        else:
            reachable = _check_static_address(r, name, role)
        if reachable and metadata_ok:
            _check_host_keys(site, r, name, role)


def _check_static_address(r: Reporter, name: str, role: MachineRole) -> bool:
    if any(n.addresses for n in role.nics):
        return True
    r.add(("machines", name), f"role {name!r} runs services but its machines have no address "
          "known before they boot",
          hint="give a NIC static addresses (nics[].addresses, one per member): pacsinfra "
               "reaches the machine at the first one; DHCP addresses are known only after "
               "boot", code=CODE, key=True)
    return False


def _check_host_keys(site: Site, r: Reporter, name: str, role: MachineRole) -> None:
    deploy = site.deploy
    assert deploy is not None
    if deploy.known_hosts or name in deploy.host_keys:
        return
    decl = declaration(site.provider.driver)
    learns = decl.host_key_setting
    settings = getattr(site.provider, decl.name, None)
    if learns and getattr(settings, learns, None):
        return  # learnt out of band (kvm: the console), then recorded
    unpinned = [m for m in role.member_names(site.metadata.name, name)
                if m not in deploy.host_keys]
    if not unpinned:
        return
    also = f", or set provider.{decl.name}.{learns} to learn them" if learns else ""
    r.add(("machines", name), f"no pinned SSH host key for {', '.join(unpinned)}, which "
          f"run{'s' if len(unpinned) == 1 else ''} services",
          hint=f"add deploy.host_keys.{unpinned[0]} (or .{name}): ['ssh-ed25519 AAAA...'], or "
               f"deploy.known_hosts: a file holding the keys{also} (pacsinfra never trusts a "
               "key on first use)", code=CODE, key=True)
