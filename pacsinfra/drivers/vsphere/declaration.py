"""The vsphere driver, declared: its settings, what it can do, how its machines are reached.

Pure (no pyVmomi import): the blueprint model, ``validate``, the planner and the docs
read this; :class:`~pacsinfra.drivers.vsphere.driver.VsphereDriver` carries it out. A VM
runs services once pacsinfra can reach it at its first static NIC address.
"""

from __future__ import annotations

from pydantic import Field

from pacsinfra.drivers.base import Capability
from pacsinfra.drivers.declaration import STATIC_ADDRESS, Declaration
from pacsinfra.secrets import SecretRef
from pacsinfra.types import Strict


class VsphereSettings(Strict):
    """vCenter connection and placement defaults.

    Attributes:
        server: vCenter: ``vc.example``, ``vc.example:8443`` or ``https://vc.example/sdk``.
            Required with the vsphere driver.
        user: vCenter login.
        password: The vCenter password.
        insecure: ``true`` turns TLS verification off (labs only). Default false: verified
            against the system trust store or ``ca_file``.
        ca_file: PEM bundle of the CA that signed vCenter's certificate.
        datacenter: Datacenter of the machines (default: the first).
        cluster: Cluster of the machines (default: the first).
        resource_pool: A resource pool inside the cluster.
        folder: VM folder path ``a/b``, created when missing.
        datastore: Default datastore (default: the cluster's first).
        task_timeout: Seconds to wait for one vCenter task (default 600).
        connections: Pooled HTTPS connections to vCenter (default 16).
        guest_id: Guest OS identifier of new VMs (default ``otherLinux64Guest``); an image's
            ``vsphere.guest_id`` overrides it.
        hot_add: Enable CPU and memory hot-add on new VMs, so that growing them needs no
            power-off (default false).
        cloud_init: Pass hostname, SSH keys and network settings as guestinfo cloud-init
            metadata/userdata (default true).
        shutdown_timeout: Seconds of guest shutdown before a power-off, when a change needs the
            VM off (default 60).
    """

    server: str | None = Field(None, description="vc.example, host:port or https://host:port/sdk")
    user: str | None = None
    password: SecretRef | None = Field(None, description="a secret reference, resolved at connect")
    insecure: bool | None = Field(None, description="skip TLS verification (false)")
    ca_file: str | None = Field(None, description="CA bundle that signs vCenter's certificate")
    datacenter: str | None = None
    cluster: str | None = None
    resource_pool: str | None = None
    folder: str | None = Field(None, description="VM folder a/b, created when missing")
    datastore: str | None = Field(None, description="default datastore (the cluster's first)")
    task_timeout: float | None = Field(None, gt=0, le=86_400,
                                       description="seconds a vCenter task may take (600)")
    connections: int | None = Field(None, ge=1, le=256,
                                    description="pooled HTTP connections to vCenter (16)")
    vgpu_profiles: list[str] | None = Field(
        None, description="offered vGPU profiles, when the hosts cannot be asked")
    latency_sensitivity: str | dict[str, str] | None = Field(
        None, description="one level, or role -> level (normal, high, ...)")
    guest_id: str | None = Field(None, description="guest OS id of new VMs (otherLinux64Guest)")
    hot_add: bool | None = Field(None, description="enable CPU and memory hot-add on new VMs")
    cloud_init: bool | None = Field(None, description="guestinfo metadata/userdata (true)")
    shutdown_timeout: float | None = Field(None, gt=0, le=3600,
                                           description="seconds a clean shutdown may take")


class VsphereImage(Strict):
    """Where the vSphere driver finds an image: a VM template to clone.

    Attributes:
        template: The VM template new machines are cloned from.
        guest_id: Guest OS identifier, overriding ``provider.vsphere.guest_id``.
        datastore: The datastore holding the template (recorded with the machine; disks go to
            their storage classes' datastores).
    """

    template: str
    guest_id: str | None = None
    datastore: str | None = None


class VsphereNetwork(Strict):
    """How the vSphere driver makes a network: a standard or distributed port group.

    Attributes:
        portgroup: Port group name (default ``<site>-<network>``).
        switch: Virtual switch of the port group (standard: default ``vSwitch0``).
        distributed: A distributed port group on the distributed switch ``switch`` (default
            false: a standard port group on each host of the cluster).
    """

    portgroup: str | None = Field(None, description="port group name (<site>-<name>)")
    switch: str | None = Field(None, description="standard vSwitch or distributed switch")
    distributed: bool | None = None


class VsphereStorage(Strict):
    """How the vSphere driver makes a storage class: a storage policy.

    Attributes:
        policy: Storage policy name (default ``<site>-<class>``).
        datastore: Datastore of the class's disks (default: ``provider.vsphere.datastore``).
    """

    policy: str | None = Field(None, description="storage policy name (<site>-<name>)")
    datastore: str | None = None


DECLARATION = Declaration(
    name="vsphere",
    summary="VMware vSphere through vCenter (pyVmomi): VMs, port groups, storage policies",
    implementation="pacsinfra.drivers.vsphere.driver:VsphereDriver",
    settings=VsphereSettings,
    image=VsphereImage,
    network=VsphereNetwork,
    storage=VsphereStorage,
    capabilities=frozenset({
        Capability.CPU_RESERVATION,
        Capability.CPU_LIMIT,
        Capability.CPU_SHARES,
        Capability.MEMORY_RESERVATION,
        Capability.MEMORY_LOCK,
        Capability.VGPU,
        Capability.GPU_PASSTHROUGH,
        Capability.VLAN,
        Capability.JUMBO_FRAMES,
        Capability.IOPS_LIMIT,
        Capability.IOPS_RESERVATION,
        Capability.ANTI_AFFINITY,
    }),
    network_name_key="portgroup",
    storage_name_key="policy",
    reach=STATIC_ADDRESS,
    sdk=("pyVmomi", "vsphere"),
    required=(("server", "{server: vcenter.example, user: ..., password: {env: VSPHERE_PASSWORD}}"),),
)
