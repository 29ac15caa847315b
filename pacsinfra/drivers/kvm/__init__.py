"""The kvm driver: KVM through libvirt (libvirt-python) — domains, networks, directory pools.

:mod:`.declaration` says what it is (pure); :mod:`.driver` is the implementation, which
needs libvirt-python (:func:`pacsinfra.providers.make_provider` gives the install hint).
"""
