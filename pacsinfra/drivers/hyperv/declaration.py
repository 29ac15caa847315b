"""The hyperv driver, declared: its settings, what it can do, how its machines are reached.

Pure (no pywinrm import): the blueprint model, ``validate``, the planner and the docs
read this; :class:`~pacsinfra.drivers.hyperv.driver.HypervDriver` carries it out. A VM
runs services once pacsinfra can reach it at its first static NIC address (the image
must configure it: Hyper-V has no seed to hand it to the guest).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pacsinfra.drivers.base import Capability
from pacsinfra.drivers.declaration import STATIC_ADDRESS, Declaration
from pacsinfra.secrets import SecretRef
from pacsinfra.types import Mhz, Strict

#: the WinRM authentications the driver opens sessions with (pywinrm transports)
TRANSPORTS = ("ntlm", "kerberos", "credssp", "basic")


class HypervSettings(Strict):
    """WinRM connection to a Hyper-V host.

    Attributes:
        host: The Hyper-V host (name or address). Required with the hyperv driver.
        port: WinRM port (default 5986 with ``ssl``, 5985 without).
        transport: WinRM authentication (default ``ntlm``); ``certificate`` is not supported.
        user: WinRM login (a local or domain account).
        password: The WinRM password.
        ssl: WinRM over HTTPS (default true).
        verify_ssl: Verify the WinRM listener's certificate (default true).
        ca_file: PEM bundle of the CA that signed the WinRM listener's certificate.
        vm_path: Where VM configuration files go (default: the first disk's directory).
        generation: VM generation; only 2 is supported.
        shutdown_timeout: Seconds of guest shutdown before ``Stop-VM -TurnOff``, when a change
            needs the VM off (default 120).
    """

    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535, description="WinRM port (5986 with ssl)")
    transport: Literal["ntlm", "kerberos", "credssp", "basic"] | None = Field(
        None, description="WinRM authentication (ntlm)")
    user: str | None = None
    password: SecretRef | None = Field(None, description="a secret reference, resolved at connect")
    ssl: bool | None = Field(None, description="HTTPS (true)")
    verify_ssl: bool | None = Field(None, description="verify the listener's certificate (true)")
    ca_file: str | None = None
    vm_path: str | None = Field(None, description="where VM configurations go (host default)")
    generation: Literal[2] | None = Field(
        None, description="VM generation: 2 (UEFI, SCSI boot; pacsinfra builds no other)")
    shutdown_timeout: float | None = Field(None, gt=0, le=3600,
                                           description="seconds a clean shutdown may take")
    host_mhz: Mhz | None = Field(None, description="core clock, for MHz -> reserve/limit percent")
    storage_root: str | None = Field(None, description="where storage classes without a path live")


class HypervImage(Strict):
    """Where the Hyper-V driver finds an image: a VHDX file on the host.

    Attributes:
        vhdx: Path of the image file on the Hyper-V host.
        generation: VM generation; only 2 is supported.
        mode: How the OS disk is made from the image: a full ``copy`` (default) or a
            ``differencing`` disk with the image as parent.
        os: Picks the Secure Boot template: ``windows`` -> ``MicrosoftWindows``, else
            ``MicrosoftUEFICertificateAuthority``.
        secure_boot: Secure Boot on (default true).
        secure_boot_template: A Secure Boot template by name, overriding the one ``os`` picks.
    """

    vhdx: str
    generation: Literal[2] | None = Field(None, description="2: pacsinfra builds no other")
    mode: Literal["copy", "differencing"] | None = Field(
        None, description="how the OS disk is made from the image")
    os: Literal["linux", "windows"] | None = Field(None, description="picks the Secure Boot template")
    secure_boot: bool | None = None
    secure_boot_template: str | None = None


class HypervNetwork(Strict):
    """How the Hyper-V driver makes a network: a virtual switch.

    Attributes:
        switch: Virtual switch name (default ``<site>-<network>``).
        type: Switch type (default: ``external`` when ``adapter`` is set, else ``internal``).
    """

    switch: str | None = Field(None, description="switch name (<site>-<name>)")
    type: Literal["internal", "external", "private"] | None = None
    adapter: str | None = Field(None, description="the host NIC an external switch binds to")


class HypervStorage(Strict):
    """How the Hyper-V driver makes a storage class: a directory on the host.

    Attributes:
        path: Directory of the class's VHDX files (default: a directory ``<site>-<class>``
            under ``provider.hyperv.storage_root``).
    """

    path: str | None = Field(None, description="directory of the class's disks")


DECLARATION = Declaration(
    name="hyperv",
    summary="Microsoft Hyper-V over WinRM (pywinrm + PowerShell from templates)",
    implementation="pacsinfra.drivers.hyperv.driver:HypervDriver",
    settings=HypervSettings,
    image=HypervImage,
    network=HypervNetwork,
    storage=HypervStorage,
    capabilities=frozenset({
        Capability.CPU_RESERVATION,
        Capability.CPU_LIMIT,
        Capability.CPU_SHARES,
        Capability.MEMORY_RESERVATION,
        Capability.GPU_PARTITION,
        Capability.VLAN,
        Capability.JUMBO_FRAMES,
        Capability.IOPS_LIMIT,
    }),
    network_name_key="switch",
    storage_name_key="path",
    reach=STATIC_ADDRESS,
    sdk=("winrm", "hyperv"),
    required=(("host", "{host: hv01, user: ..., password: {env: HV_PASSWORD}}"),),
)
