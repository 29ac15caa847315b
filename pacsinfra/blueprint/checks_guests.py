"""Checks of ``provider.<driver>.ssh``: services on the machines a hypervisor driver makes.

Shared by kvm, vsphere and hyperv (:func:`check_login`): a login key (``key_file`` or
``key``), and ``host_keys`` naming machines or roles of the site. For vsphere and hyperv
(:func:`check_guest_services`), every machine that runs services also needs

- an address known before it boots: a static NIC address (``nics[].addresses``; the
  first one is where pacsinfra reaches it). DHCP addresses are known only after the
  machine is up, and the plan has no "known after apply" values;
- a host key known before the first connection: pinned in ``ssh.host_keys`` (the
  machine ``<site>-<role>-<n>`` or its role) or a ``known_hosts`` file. These drivers
  have no console to learn a key from, and pacsinfra never trusts a key on first use.

kvm's own rules (user-mode forwards, the console log) are in :mod:`.checks_kvm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacsinfra.blueprint.overlay import did_you_mean

if TYPE_CHECKING:
    from pacsinfra.blueprint.checks import Reporter
    from pacsinfra.blueprint.model import Site

#: drivers whose services this module checks (kvm has checks_kvm)
GUEST_DRIVERS = ("vsphere", "hyperv")


def code_of(driver: str) -> str:
    """The diagnostics' code: ``<driver>-services``."""
    return f"{driver}-services"


def check_login(site: Site, r: Reporter, driver: str, ssh: Any) -> None:
    """``provider.<driver>.ssh``: a login key, and pinned keys naming machines or roles."""
    base = ("provider", driver, "ssh")
    if ssh.key_file is None and ssh.key is None:
        r.add(base, f"services on {driver} machines need a login key",
              hint="add key_file: ~/.ssh/id_ed25519 (or key: {env: ...})", code=code_of(driver))
    if "metadata" in r.dropped.get("*", ()):
        return  # machine names depend on metadata.name
    members = {m for n, role in site.machines.items()
               for m in role.member_names(site.metadata.name, n)}
    for target in ssh.host_keys:
        if target not in site.machines and target not in members:
            r.add(base + ("host_keys", target), f"unknown machine or role {target!r}",
                  hint=did_you_mean(target, sorted(members | set(site.machines)),
                                    "roles and machines"),
                  code="unknown-ref", key=True)


def check_guest_services(site: Site, r: Reporter) -> None:
    """vsphere / hyperv with ``ssh``: login, and each service machine's address and host key."""
    driver = site.provider.driver
    if driver not in GUEST_DRIVERS:
        return
    ssh = getattr(getattr(site.provider, driver, None), "ssh", None)
    if ssh is None:
        return  # machines only: the services are not deployed by this driver
    check_login(site, r, driver, ssh)
    code = code_of(driver)
    metadata_ok = "metadata" not in r.dropped.get("*", ())
    for role_name, role in site.machines.items():
        if not role.services or role.count == 0:
            continue
        where = ("machines", role_name)
        if not any(n.addresses for n in role.nics):
            r.add(where, f"role {role_name!r} runs services but its machines have no address "
                  "known before they boot",
                  hint="give a NIC static addresses (nics[].addresses, one per member): "
                       "pacsinfra reaches the machine at the first one; DHCP addresses are "
                       "not supported for services yet", code=code, key=True)
        if ssh.known_hosts or role_name in ssh.host_keys or not metadata_ok:
            continue
        unpinned = [m for m in role.member_names(site.metadata.name, role_name)
                    if m not in ssh.host_keys]
        if unpinned:
            r.add(where, f"no pinned SSH host key for {', '.join(unpinned)}, which "
                  f"run{'s' if len(unpinned) == 1 else ''} services",
                  hint=f"add provider.{driver}.ssh.host_keys.{unpinned[0]} (or .{role_name}): "
                       "['ssh-ed25519 AAAA...'], or known_hosts: a file holding the keys "
                       "(pacsinfra never trusts a key on first use)", code=code, key=True)
