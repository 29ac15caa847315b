"""The vsphere driver: VMware vSphere through vCenter (pyVmomi) — VMs, port groups, policies.

:mod:`.declaration` says what it is (pure); :mod:`.driver` is the implementation, which
needs pyVmomi (:func:`pacsinfra.providers.make_provider` gives the install hint).
"""
