"""Hyper-V driver: PowerShell scripts (templates/hyperv/*.ps1.j2) run over WinRM by pywinrm.

Importing this package needs pywinrm only when a session is opened; the registry turns a
missing SDK into a DriverUnavailable error with the install hint.
"""

import winrm  # noqa: F401  - fail at import when pywinrm is missing (the registry's install hint)

from pacsinfra.drivers.hyperv.driver import HypervDriver

__all__ = ["HypervDriver"]
