"""Drivers by name, imported only when used.

Registration is by dotted path, so a missing optional SDK (libvirt-python,
pyVmomi, pywinrm) fails only when that driver is asked for, with the install
hint in the message.
"""

from __future__ import annotations

import importlib
from typing import Any

from pacsinfra.drivers.base import Driver
from pacsinfra.errors import DriverUnavailable, UsageError

DRIVERS: dict[str, str] = {
    "kvm": "pacsinfra.drivers.kvm:KvmDriver",
    "vsphere": "pacsinfra.drivers.vsphere:VsphereDriver",
    "hyperv": "pacsinfra.drivers.hyperv:HypervDriver",
    "local": "pacsinfra.drivers.local:LocalDriver",
    "static": "pacsinfra.drivers.static:StaticDriver",
}

# The PyPI package each driver's SDK comes from, and the extra that installs it.
_SDK_HINTS: dict[str, tuple[str, str]] = {
    "kvm": ("libvirt", "kvm"),
    "vsphere": ("pyVmomi", "vsphere"),
    "hyperv": ("winrm", "hyperv"),
}


def driver_class(name: str) -> type[Driver]:
    """The driver class registered as ``name``; raises a clear error when unknown or unavailable."""
    target = DRIVERS.get(name)
    if target is None:
        raise UsageError(f"unknown driver {name!r}; known drivers: {', '.join(sorted(DRIVERS))}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        sdk, extra = _SDK_HINTS.get(name, (exc.name or "?", name))
        if exc.name and exc.name.split(".")[0] in (sdk, sdk.lower()):
            raise DriverUnavailable(
                f"the {name} driver needs the {sdk} package, which is not installed; "
                f"install it with: pip install 'pacsinfra[{extra}]'"
            ) from None
        raise
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"{target} is not a Driver")
    return cls


def make_driver(name: str, config: Any, *, client: Any = None) -> Driver:
    """Instantiate the driver ``name`` (no I/O until ``connect``)."""
    return driver_class(name)(config, client=client)
