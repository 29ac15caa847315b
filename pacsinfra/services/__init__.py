"""The services layer: the archive, router, database and viewer on every kind of host.

Between the hypervisor drivers (which make machines and say how to reach them, through
a :class:`~pacsinfra.drivers.base.MachinePort`) and the transports
(:mod:`pacsinfra.deploy`: local, SSH, ansible-runner):

- :mod:`.render` — each (machine, service) pair's config file, from the blueprint;
- :mod:`.settings` — the blueprint's ``deploy`` section: one login for the whole site;
- :mod:`.local` — this box (the ``local`` provider): supervised processes;
- :mod:`.static` — existing hosts (the ``static`` provider), :mod:`.guest` — the
  machines a hypervisor driver makes; both run their services through :mod:`.remote`
  (a session per host, the service's files, a systemd unit or the supervisor);
- :mod:`.supervisor`, :mod:`.systemd`, :mod:`.postgres`, :mod:`.wheel` — what runs a
  service and what it needs on its host;
- :mod:`.health`, :mod:`.runner` — is it up, and one service's life;
- :mod:`.layer` — all of it as the one driver the engine acts through.
"""
