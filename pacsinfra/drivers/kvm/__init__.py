"""KVM / libvirt driver (libvirt-python): domains, networks and directory pools.

Importing this package needs libvirt-python; the registry turns a missing SDK into a
DriverUnavailable error with the install hint.
"""

from pacsinfra.drivers.kvm.driver import KvmDriver

__all__ = ["KvmDriver"]
