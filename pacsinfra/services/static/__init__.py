"""The ``static`` provider: hosts that already exist (bare metal, pre-made VMs), reached over SSH.

:mod:`.declaration` (pure), :mod:`.hosts` (machines as marked hosts; their services are
the remote services of :mod:`pacsinfra.services.remote`).
"""
