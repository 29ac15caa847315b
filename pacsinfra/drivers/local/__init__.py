"""The ``local`` driver: this machine is the one host; services run supervised under a user dir."""

from pacsinfra.drivers.local.driver import LocalDriver

__all__ = ["LocalDriver"]
