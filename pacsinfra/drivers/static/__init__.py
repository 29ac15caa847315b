"""The ``static`` driver: hosts that already exist (bare metal, pre-made VMs), reached over SSH."""

from pacsinfra.drivers.static.driver import StaticDriver

__all__ = ["StaticDriver"]
