"""The blueprint model: what an admin declares about a PACS site (pydantic v2).

Shape and names are binding (docs/blueprint-contract.md). After validation sizes
are int MiB and frequencies int MHz. Every model forbids unknown keys, so a typo is
an error with the closest valid key, never a silently ignored setting.

Per-provider settings (``provider.kvm``, ``images.x.kvm``, ``networks.x.vsphere``...) are
the models each provider declares (:mod:`pacsinfra.providers`), and ``deploy`` is the
services layer's (:mod:`pacsinfra.services.settings`). Their fields default to ``None``:
they are dumped with ``exclude_none`` and the provider applies its own defaults, so
"not written" and "provider default" stay the same thing.

Cross-field rules (references, addresses, capacity, policy) are in
:mod:`pacsinfra.blueprint.checks`, which reports all problems at once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pacsinfra.blueprint.services import AnyService, Service
from pacsinfra.drivers.hyperv.declaration import (
    HypervImage,
    HypervNetwork,
    HypervSettings,
    HypervStorage,
)
from pacsinfra.drivers.kvm.declaration import KvmImage, KvmNetwork, KvmSettings, KvmStorage
from pacsinfra.drivers.vsphere.declaration import (
    VsphereImage,
    VsphereNetwork,
    VsphereSettings,
    VsphereStorage,
)
from pacsinfra.secrets import SecretRef
from pacsinfra.services.local.declaration import LocalSettings
from pacsinfra.services.settings import DeploySettings
from pacsinfra.services.static.declaration import StaticSettings
from pacsinfra.types import Cidr, IpAddress, Mhz, Name, Size

PURPOSES = ("dicom", "database", "viewer", "management", "backup", "storage")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- metadata and provider ---------------------------------------------------------------


class Metadata(_Strict):
    """The site's name (used in every object name: ``<name>-<role>-<n>``), labels, description.

    Attributes:
        name: The site's name, part of every object name pacsinfra makes.
        description: Free text for the people who read the blueprint.
        labels: Free-form key/value labels.
    """

    name: Name
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class HostCapacity(_Strict):
    """A host's capacity, declared so reservations can be checked before anything exists.

    Attributes:
        name: The host's name (as ``placement.hosts`` names it).
        cores: Physical cores.
        memory: Memory of the host.
    """

    name: str
    cpu_mhz: Mhz | None = None  # total: cores x clock
    core_mhz: Mhz | None = None  # one core's clock (bounds a VM's per-vCPU reservation)
    cores: int | None = Field(None, ge=1, le=4096)
    memory: Size | None = None
    gpus: list[str] = Field(default_factory=list)  # vGPU profiles / devices the host offers


class Provider(_Strict):
    """Which hypervisor, and how to reach it. Secrets are references, never values.

    Attributes:
        driver: Which driver builds the site; its settings are the key of the same name.
            Settings of other drivers may be present (an overlay can switch ``driver``).
    """

    driver: Literal["kvm", "vsphere", "hyperv", "local", "static"]
    kvm: KvmSettings | None = None
    vsphere: VsphereSettings | None = None
    hyperv: HypervSettings | None = None
    local: LocalSettings | None = None
    static: StaticSettings | None = None
    hosts: list[HostCapacity] = Field(default_factory=list)


# -- images, networks, storage -----------------------------------------------------------


class Image(_Strict):
    """One OS image, with where each driver finds it.

    Attributes:
        description: Free text.
    """

    description: str | None = None
    kvm: KvmImage | None = None
    vsphere: VsphereImage | None = None
    hyperv: HypervImage | None = None


class AllowRule(_Strict):
    """Micro-segmentation: traffic admitted into a network from another one.

    Attributes:
        protocol: ``tcp``, ``udp`` or ``any``.
    """

    from_: str = Field(alias="from")  # a network name
    ports: list[int] = Field(default_factory=list)  # empty: any port
    protocol: Literal["tcp", "udp", "any"] = "tcp"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Network(_Strict):
    """A segment: purpose, VLAN, addressing, MTU, QoS and who may talk into it.

    Attributes:
        purpose: What the segment carries; checks use it (DICOM must not depend on a
            ``management`` segment).
        description: Free text.
        vlan: VLAN id, unique within the site.
        cidr: The segment's addresses; static NIC addresses must lie inside.
        gateway: Default gateway: inside ``cidr``, not its network or broadcast address.
        mtu: MTU of the segment.
        qos: Traffic priority of the segment.
        allow_from: Networks whose traffic is admitted into this one (micro-segmentation).
        allow: Traffic admitted from other networks, by port and protocol.
    """

    purpose: Literal["dicom", "database", "viewer", "management", "backup", "storage"]
    description: str | None = None
    vlan: int | None = Field(None, ge=1, le=4094)
    cidr: Cidr | None = None
    gateway: IpAddress | None = None
    mtu: int | None = Field(None, ge=576, le=9216)
    jumbo: bool = False  # shorthand for mtu 9000
    qos: Literal["low", "normal", "high", "critical"] | None = None
    allow_from: list[str] = Field(default_factory=list)  # network names
    allow: list[AllowRule] = Field(default_factory=list)
    kvm: KvmNetwork | None = None
    vsphere: VsphereNetwork | None = None
    hyperv: HypervNetwork | None = None

    @model_validator(mode="after")
    def _jumbo(self) -> Network:
        if self.jumbo:
            if self.mtu is None:
                self.mtu = 9000
            elif self.mtu < 9000:
                raise ValueError(f"jumbo: true contradicts mtu {self.mtu}; drop one of them")
        return self


class ObjectStore(_Strict):
    """An S3-compatible bucket behind an ``archive`` storage class.

    Attributes:
        endpoint: The store's URL, e.g. ``https://s3.example``.
        bucket: Bucket name.
        access_key: S3 access key.
        secret_key: S3 secret key.
    """
    endpoint: str
    bucket: str
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None


class StorageClass(_Strict):
    """A storage tier: performance (flash), capacity (nearline), archive (object).

    Attributes:
        tier: ``performance`` (flash), ``capacity`` (nearline) or ``archive`` (object storage:
            no machine disks, only archive tiers).
        description: Free text.
        encrypted: Encryption at rest. A class holding patient data without it is a warning (an
            error with ``--strict``).
        phi: Holds patient data. Unset: derived, true when disks of archive or database roles
            or archive tiers use the class.
        iops_limit: I/O operations per second each disk of the class may use.
        iops_reservation: I/O operations per second guaranteed; at most ``iops_limit``.
        provisioning: ``thin``: space allocated on write; ``thick``: allocated up front.
    """

    tier: Literal["performance", "capacity", "archive"]
    description: str | None = None
    encrypted: bool = False
    phi: bool | None = None  # None: derived (used by archive/database machines)
    iops_limit: int | None = Field(None, ge=1, le=10_000_000)
    iops_reservation: int | None = Field(None, ge=0, le=10_000_000)
    provisioning: Literal["thin", "thick"] = "thin"
    object: ObjectStore | None = None  # archive tier on S3-compatible storage
    kvm: KvmStorage | None = None
    vsphere: VsphereStorage | None = None
    hyperv: HypervStorage | None = None


# -- machines ---------------------------------------------------------------------------


class Cpu(_Strict):
    """Virtual CPUs of each machine of a role, and their share of the host.

    Attributes:
        count: vCPUs per machine.
        reservation: CPU guaranteed to the whole machine.
        shares: Weight under contention: ``low`` / ``normal`` / ``high`` are 500 / 1000 / 2000
            per vCPU, or an integer for the whole machine.
        limit: Most CPU the whole machine may use.
    """
    count: int = Field(ge=1, le=768)
    reservation: Mhz | None = None  # for the whole VM
    shares: Literal["low", "normal", "high"] | int | None = None
    limit: Mhz | None = None


class Memory(_Strict):
    """Memory of each machine of a role.

    Attributes:
        size: Memory per machine.
        reservation: Memory guaranteed to the machine; at most ``size``.
        lock: Lock all of the machine's memory in host RAM.
        hugepages: Back the memory with huge pages (the host must have them reserved).
    """
    size: Size
    reservation: Size | None = None
    lock: bool = False
    hugepages: bool = False


class Disk(_Strict):
    """One disk of each machine of a role.

    Attributes:
        name: The disk's name, unique in the role (the guest finds it as
            ``/dev/disk/by-id/virtio-<name>`` on KVM).
        size: Disk size; growing it is a change in place, shrinking it replaces the machine.
        mount: Mount point in the guest; services' data directories left at their defaults go
            onto the disk mounted for them.
    """
    name: Name
    size: Size
    storage: str  # a storage class name
    mount: str | None = None


class PortForward(_Strict):
    """A port forward of a NIC on a user-mode network (``kvm: {user: true}``).

    Member k of a role listens on ``host + k`` (so every member gets its own port).

    Attributes:
        protocol: ``tcp`` or ``udp``.
    """

    guest: int = Field(ge=1, le=65535)  # the port in the guest
    host: int = Field(ge=1, le=65535)  # the port on the KVM host (member k: host + k)
    address: IpAddress = "127.0.0.1"  # where on the KVM host it listens
    protocol: Literal["tcp", "udp"] = "tcp"


class Nic(_Strict):
    """One network interface of each machine of a role.

    Attributes:
        pool: ``dhcp``: the address comes from DHCP (instead of ``addresses``).
        mac: A fixed MAC address (only on roles with one machine); default: chosen by the
            driver.
        traffic: What the NIC carries, checked against the network's purpose.
    """
    network: str  # a network name
    addresses: list[IpAddress] = Field(default_factory=list)  # member k gets addresses[k]
    pool: Literal["dhcp"] | None = None
    mac: str | None = Field(None, pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
    traffic: list[Literal["dicom", "dicomweb", "database", "management", "backup"]] | None = None
    forwards: list[PortForward] = Field(default_factory=list)  # only on a user-mode network

    @model_validator(mode="after")
    def _address_or_pool(self) -> Nic:
        if self.addresses and self.pool:
            raise ValueError("a NIC has static 'addresses' or 'pool: dhcp', not both")
        if self.forwards and (self.addresses or self.pool):
            raise ValueError("a NIC with 'forwards' is on a user-mode network: no 'addresses' "
                             "or 'pool'")
        return self


class Gpu(_Strict):
    """A vGPU profile (mdev, NVIDIA GRID), a partition (Hyper-V GPU-P), or a passed-through device.

    Attributes:
        mode: ``vgpu`` (mdev, NVIDIA GRID), ``partition`` (Hyper-V GPU-P) or ``passthrough`` (a
            whole device). Which modes a driver supports is checked.
        profile: The vGPU profile, e.g. ``grid_a40-8q``; required with ``vgpu``.
        count: GPUs (vGPUs or partitions) per machine.
        device: PCI address of the device, e.g. ``0000:65:00.0``; required with
            ``passthrough``.
    """

    mode: Literal["vgpu", "partition", "passthrough"]
    profile: str | None = None
    count: int = Field(1, ge=1, le=16)
    device: str | None = None

    @model_validator(mode="after")
    def _mode_fields(self) -> Gpu:
        if self.mode == "vgpu" and not self.profile:
            raise ValueError("gpu mode vgpu needs 'profile' (e.g. grid_a40-8q)")
        if self.mode == "passthrough" and not self.device:
            raise ValueError("gpu mode passthrough needs 'device' (a PCI address 0000:65:00.0)")
        return self


class Placement(_Strict):
    """Where the hypervisor should put a role's machines.

    Attributes:
        anti_affinity: Keep the role's machines on different hosts (a DRS anti-affinity rule on
            vSphere).
        hosts: Hosts the machines should run on.
        cluster: Cluster the machines should run in.
    """
    anti_affinity: bool = False
    hosts: list[str] = Field(default_factory=list)
    cluster: str | None = None


class MachineRole(_Strict):
    """A role: ``count`` identical machines named ``<site>-<role>-<n>``.

    Attributes:
        count: How many machines; 0 keeps the role declared with no machine.
        image: Key of the image in ``images``; needs an entry for the selected driver (none on
            ``local`` and ``static``).
        description: Free text.
        disks: Disks of each machine; the first one is made from the image.
        nics: Network interfaces of each machine.
        services: Names of ``services`` entries each machine of the role runs.
        holds_data: The machines hold data that a replace would destroy: ``apply`` refuses to
            replace them without ``--allow-replace``. Unset: true when the role runs an archive
            or a database.
    """

    count: int = Field(1, ge=0, le=10_000)
    image: str | None = None  # required where the provider makes machines (checks)
    description: str | None = None
    cpu: Cpu
    memory: Memory
    disks: list[Disk] = Field(default_factory=list)
    nics: list[Nic] = Field(default_factory=list)
    gpu: Gpu | None = None
    placement: Placement = Field(default_factory=Placement)
    services: list[str] = Field(default_factory=list)
    holds_data: bool | None = None

    def member_names(self, site_name: str, role_name: str | None = None) -> list[str]:
        """``<site>-<role>-1`` .. ``<site>-<role>-<count>``.

        The role's own name is its key in ``Site.machines``; :meth:`Site.model_post_init`
        records it, so ``role.member_names(site)`` works on a validated site.
        """
        role = role_name or self._role_name
        return [f"{site_name}-{role}-{n}" for n in range(1, self.count + 1)]

    _role_name: str = ""


# -- disaster recovery (``dr``: read by ``pacsinfra dr rebuild``) ----------------------------


class DrS3(_Strict):
    """How ``dr rebuild`` reaches backups in an S3-compatible store (all optional).

    Unset credentials come from the usual AWS environment; given ones are secret
    references, resolved only when the store is contacted (never in state or plans).

    Attributes:
        endpoint: The store's URL, e.g. ``https://minio.example:9000``. ``--s3-endpoint`` on
            the command line wins over it; unset: ``AWS_ENDPOINT_URL``, else AWS.
        access_key: S3 access key; set both keys or neither.
        secret_key: S3 secret key; set both keys or neither.
    """

    endpoint: str | None = None  # https://minio.example:9000 (default: AWS, or AWS_ENDPOINT_URL)
    access_key: SecretRef | None = None  # both or neither
    secret_key: SecretRef | None = None


class DisasterRecovery(_Strict):
    """``dr``: where ``pacsinfra dr rebuild`` takes the site's archive data from.

    ``backups`` is a backup, a directory of backups, or ``s3://bucket/prefix`` (one
    backup or a prefix of them): the newest complete one is restored. ``--from`` on the
    command line overrides it. Checked in :mod:`pacsinfra.blueprint.checks_dr`.

    Attributes:
        s3: How to reach an ``s3://`` location; only for backups in S3-compatible storage.
    """

    # the pattern is for editors (JSON Schema); checks_dr says what is wrong, with a hint
    backups: str = Field(json_schema_extra={
        "pattern": r"^(/|~/|s3://[a-z0-9])",
        "description": "absolute path or s3://bucket/prefix of a backup or of backups"})
    s3: DrS3 | None = None


class StateSettings(_Strict):
    """``state``: where the site's state and its lock live (``--state`` and ``PACSINFRA_STATE``
    win over it). Each site and each overlay has its own state and its own lock.

    Attributes:
        backend: ``local`` (a file; the default), ``postgresql`` or ``s3``.
        path: local: the state file, relative to the blueprint (default
            ``.pacsinfra/<site>[-<overlay>].state.json``).
        dsn: postgresql: a secret reference to the libpq connection string.
        db_schema: postgresql: the schema holding pacsinfra's tables (``schema`` in YAML).
        bucket: s3: the bucket.
        prefix: s3: the key prefix.
        endpoint: s3: the store's URL (default: AWS).
        region: s3: the region.
        access_key: s3: a secret reference to the access key (default: the AWS environment).
        secret_key: s3: a secret reference to the secret key.
        lease: How long a lock lives without a heartbeat, e.g. ``30s``, ``2m`` (default 2m).
    """

    backend: Literal["local", "postgresql", "s3"] = "local"
    path: str | None = None
    dsn: SecretRef | None = None
    db_schema: str = Field(default="pacsinfra", alias="schema",
                           json_schema_extra={"pattern": r"^[a-z_][a-z0-9_]{0,62}$"})
    bucket: str | None = None
    prefix: str | None = None
    endpoint: str | None = None
    region: str | None = None
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None
    lease: str | None = Field(default=None, json_schema_extra={
        "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$"})

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _backend_fields(self) -> StateSettings:
        if self.backend == "postgresql" and self.dsn is None:
            raise ValueError("backend postgresql needs dsn: a secret reference, e.g. "
                             "{env: PACSINFRA_STATE_DSN}")
        if self.backend == "s3" and not self.bucket:
            raise ValueError("backend s3 needs bucket")
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("set both access_key and secret_key, or neither")
        return self


class Site(_Strict):
    """A whole PACS site: the root of a blueprint.

    Attributes:
        api_version: The language version: ``pacsinfra/v1``.
        kind: Always ``Site``.
        images: OS images by name, with where each driver finds them.
        networks: Network segments by name.
        storage: Storage classes by name.
        machines: Machine roles by name; a role's machines are ``<site>-<role>-<n>``.
        services: PACS services by name; ``kind`` selects the service and its ``config``.
        sites: Overlays by name, each merged over the base with ``--site NAME``: a mapping, or
            the path of a YAML file holding one.
        deploy: How services are installed on the machines.
        state: Where the site's state and its lock live (default: a local file).
    """

    api_version: Literal["pacsinfra/v1"] = Field(alias="apiVersion")
    kind: Literal["Site"]
    metadata: Metadata
    provider: Provider
    variables: dict[str, Any] = Field(default_factory=dict)  # defaults for ${var.name}
    images: dict[str, Image] = Field(default_factory=dict)
    networks: dict[str, Network] = Field(default_factory=dict)
    storage: dict[str, StorageClass] = Field(default_factory=dict)
    machines: dict[str, MachineRole] = Field(default_factory=dict)
    services: dict[str, AnyService] = Field(default_factory=dict)
    sites: dict[str, Any] = Field(default_factory=dict)  # overlays, merged by --site
    deploy: DeploySettings | None = None
    dr: DisasterRecovery | None = None  # backups for `pacsinfra dr rebuild`
    state: StateSettings | None = None  # where state and lock live (default: a local file)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def model_post_init(self, context: Any, /) -> None:
        for name, role in self.machines.items():
            role._role_name = name

    def service_hosts(self) -> dict[str, list[str]]:
        """Service name -> the roles that run it."""
        out: dict[str, list[str]] = {s: [] for s in self.services}
        for role_name, role in self.machines.items():
            for s in role.services:
                out.setdefault(s, []).append(role_name)
        return out


__all__ = [
    "AllowRule",
    "Cpu",
    "DeploySettings",
    "DisasterRecovery",
    "Disk",
    "DrS3",
    "Gpu",
    "HostCapacity",
    "Image",
    "MachineRole",
    "Memory",
    "Metadata",
    "Network",
    "Nic",
    "Placement",
    "PortForward",
    "Provider",
    "Service",
    "Site",
    "StorageClass",
]
