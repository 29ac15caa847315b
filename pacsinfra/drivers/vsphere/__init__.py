"""The vSphere driver (pyVmomi): VMs, port groups and storage policies on vCenter."""

from pacsinfra.drivers.vsphere.driver import VsphereDriver

__all__ = ["VsphereDriver"]
