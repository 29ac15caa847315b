"""The hyperv driver: Hyper-V over WinRM — PowerShell from templates/hyperv/*.ps1.j2.

:mod:`.declaration` says what it is (pure); :mod:`.driver` is the implementation, which
needs pywinrm (:func:`pacsinfra.providers.make_provider` gives the install hint).
"""
