"""The blueprint model: what an admin declares about a PACS site (pydantic v2).

Shape and names are binding (docs/blueprint-contract.md). After validation sizes
are int MiB and frequencies int MHz. Every model forbids unknown keys, so a typo is
an error with the closest valid key, never a silently ignored setting.

Per-driver settings (``provider.kvm``, ``networks.x.vsphere``...) default every field
to ``None``: the engine dumps them with ``exclude_none`` and the drivers apply their
own defaults, so "not written" and "driver default" stay the same thing.

Cross-field rules (references, addresses, capacity, policy) are in
:mod:`pacsinfra.blueprint.checks`, which reports all problems at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pacsinfra.blueprint.services import AnyService, Service
from pacsinfra.blueprint.types import Cidr, IpAddress, Mhz, Name, Size
from pacsinfra.secrets import SecretRef

DRIVERS = ("kvm", "vsphere", "hyperv", "local", "static")
PURPOSES = ("dicom", "database", "viewer", "management", "backup", "storage")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- metadata and provider ---------------------------------------------------------------


class Metadata(_Strict):
    """The site's name (used in every object name: ``<name>-<role>-<n>``), labels, description."""

    name: Name
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class KvmProvider(_Strict):
    """libvirt connection and KVM host settings."""

    uri: str | None = None  # qemu:///system by default; test:///default for the fake hypervisor
    domain_type: Literal["kvm", "qemu"] | None = None
    machine: str | None = None  # q35 by default
    host_mhz: Mhz | None = None  # per-core clock, for CPU reservations and limits
    cpu_pinning: dict[str, str] | None = None  # role -> cpuset ("2-5")
    cloud_init: bool | None = None
    seed_pool: str | None = None
    pool_root: str | None = None
    shutdown_timeout: float | None = Field(None, gt=0, le=3600)
    console_log: str | None = None  # directory: the serial console also goes to <name>.console.log
    # how pacsinfra logs in to the machines it makes, to run their services (see KvmGuestLogin)
    ssh: KvmGuestLogin | None = None


class VsphereProvider(_Strict):
    """vCenter connection and placement defaults."""

    server: str | None = None
    user: str | None = None
    password: SecretRef | None = None
    insecure: bool | None = None
    ca_file: str | None = None
    datacenter: str | None = None
    cluster: str | None = None
    resource_pool: str | None = None
    folder: str | None = None
    datastore: str | None = None
    task_timeout: float | None = Field(None, gt=0, le=86_400)
    connections: int | None = Field(None, ge=1, le=256)
    vgpu_profiles: list[str] | None = None  # offered profiles, when the hosts cannot be asked
    latency_sensitivity: str | dict[str, str] | None = None  # one value, or role -> value
    guest_id: str | None = None
    hot_add: bool | None = None
    cloud_init: bool | None = None
    shutdown_timeout: float | None = Field(None, gt=0, le=3600)
    # how pacsinfra logs in to the VMs it makes, to run their services (see GuestLogin)
    ssh: GuestLogin | None = None


class HypervProvider(_Strict):
    """WinRM connection to a Hyper-V host."""

    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    transport: Literal["ntlm", "kerberos", "credssp", "basic", "certificate"] | None = None
    user: str | None = None
    password: SecretRef | None = None
    ssl: bool | None = None
    verify_ssl: bool | None = None
    ca_file: str | None = None
    vm_path: str | None = None
    switch: str | None = None  # default virtual switch
    generation: Literal[1, 2] | None = None
    shutdown_timeout: float | None = Field(None, gt=0, le=3600)
    host_mhz: Mhz | None = None  # core clock, for MHz -> reserve %
    storage_root: str | None = None  # where storage classes without a path live
    # how pacsinfra logs in to the VMs it makes, to run their services (see GuestLogin)
    ssh: GuestLogin | None = None


class LocalProvider(_Strict):
    """Everything on this one box (no hypervisor)."""

    root: str | None = None


_HOST_KEY = r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}( .*)?$"
# an IPv4/IPv6 address or a DNS name
_HOST_ADDRESS = r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]+)$"
_ABS_PATH = r"^(/|~/)[^\s]*$"
HostKey = Annotated[str, Field(pattern=_HOST_KEY)]


# What keeps services running on a remote host: systemd units where PID 1 is systemd
# (``auto`` finds out per host, as sd_booted() does), else pacsinfra's own supervisor.
InitSystem = Literal["auto", "systemd", "supervisor"]


class StaticLogin(_Strict):
    """How to log in to existing hosts and where pacsinfra lives there (all optional).

    Set once under ``provider.static`` as defaults, or per host to override them.
    """

    port: int | None = Field(None, ge=1, le=65535)
    user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")  # root by default
    key_file: str | None = None  # private key file on the pacsinfra machine (~ expanded)
    key: SecretRef | None = None  # or the private key itself, from a secret reference
    known_hosts: str | None = None  # an OpenSSH known_hosts file holding the host key
    python: str | None = Field(None, pattern=_ABS_PATH)  # interpreter that builds the venv
    root: str | None = Field(None, pattern=_ABS_PATH)  # venv, configs, data, run dirs
    find_links: str | None = None  # a wheelhouse *on the host*: install offline (--no-index)
    system_site_packages: bool | None = None  # dependencies from the host's python (no-deps)


class StaticHost(StaticLogin):
    """One existing host (bare metal, a pre-made VM) that a machine of the site is.

    Its SSH host key is pinned here (``host_keys``) or in ``known_hosts``: pacsinfra never
    trusts a key on first use.
    """

    address: str = Field(pattern=_HOST_ADDRESS)
    host_keys: list[HostKey] = Field(default_factory=list)


class StaticProvider(StaticLogin):
    """Hosts that already exist, reached over SSH: machine name -> host."""

    hosts: dict[str, StaticHost] = Field(default_factory=dict)
    wheel: str | None = None  # a pacsinfra wheel to install (default: built from this checkout)
    records: str | None = None  # where the no-op network/storage marks are kept, on this machine
    # The transport: paramiko (ssh) or ansible-runner; auto = ansible above the threshold.
    # Usually set site-wide as deploy.engine / deploy.ansible_threshold (copied here, so a
    # saved plan applies with the engine it was made for).
    engine: Literal["auto", "ssh", "ansible"] | None = None
    ansible_threshold: int | None = Field(None, ge=0, le=100000)
    # What keeps the services running on the hosts (usually set as deploy.init; see InitSystem).
    init: InitSystem | None = None


class KvmGuestLogin(StaticLogin):
    """``provider.kvm.ssh``: how pacsinfra reaches the machines the KVM driver makes.

    With it, machines that list ``services`` get them deployed over SSH after they boot
    (as on ``static`` hosts: wheel, config, supervisor, C-ECHO). The address is the
    machine's first static NIC address, or the host side of a user-mode NIC's forward to
    guest port 22 (``port`` is then the forward's host port). Host keys are never trusted
    on first use: pinned here per machine (``<site>-<role>-<n>``) or role, in
    ``known_hosts``, or learnt from the machine's serial console (``console_log``), where
    cloud-init prints them between ``-----BEGIN SSH HOST KEY KEYS-----`` markers.
    """

    host_keys: dict[str, list[HostKey]] = Field(default_factory=dict)  # machine or role -> keys
    wheel: str | None = None  # a pacsinfra wheel to install (default: built from this checkout)
    boot_timeout: float | None = Field(None, gt=0, le=3600)  # first boot -> SSH answering (300 s)
    init: InitSystem | None = None  # what keeps the services running (usually deploy.init)


class GuestLogin(StaticLogin):
    """``provider.vsphere.ssh`` / ``provider.hyperv.ssh``: how pacsinfra reaches the VMs it makes.

    With it, machines that list ``services`` get them deployed over SSH after they boot
    (as on ``static`` hosts: wheel, config, systemd unit or supervisor, C-ECHO), at the
    machine's first static NIC address (``nics[].addresses``) on ``port`` (22). Host keys
    are never trusted on first use: pinned here per machine (``<site>-<role>-<n>``) or
    role, or in ``known_hosts``.
    """

    host_keys: dict[str, list[HostKey]] = Field(default_factory=dict)  # machine or role -> keys
    wheel: str | None = None  # a pacsinfra wheel to install (default: built from this checkout)
    boot_timeout: float | None = Field(None, gt=0, le=3600)  # power on -> SSH answering (300 s)
    init: InitSystem | None = None  # what keeps the services running (usually deploy.init)


class HostCapacity(_Strict):
    """A host's capacity, declared so reservations can be checked before anything exists."""

    name: str
    cpu_mhz: Mhz | None = None  # total: cores x clock
    core_mhz: Mhz | None = None  # one core's clock (bounds a VM's per-vCPU reservation)
    cores: int | None = Field(None, ge=1, le=4096)
    memory: Size | None = None
    gpus: list[str] = Field(default_factory=list)  # vGPU profiles / devices the host offers


class Provider(_Strict):
    """Which hypervisor, and how to reach it. Secrets are references, never values."""

    driver: Literal["kvm", "vsphere", "hyperv", "local", "static"]
    kvm: KvmProvider | None = None
    vsphere: VsphereProvider | None = None
    hyperv: HypervProvider | None = None
    local: LocalProvider | None = None
    static: StaticProvider | None = None
    hosts: list[HostCapacity] = Field(default_factory=list)


# -- images, networks, storage -----------------------------------------------------------


class KvmImage(_Strict):
    path: str | None = None
    format: Literal["qcow2", "raw"] | None = None
    volume: str | None = None
    pool: str | None = None
    # direct kernel boot (files on the KVM host); with no path/volume the disk starts blank
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KvmImage:
        if self.path and self.volume:
            raise ValueError("a kvm image is either 'path' or 'volume' (+ 'pool'), not both")
        if self.volume and not self.pool:
            raise ValueError("a kvm image 'volume' needs its 'pool'")
        if not (self.path or self.volume or self.kernel):
            raise ValueError("a kvm image needs 'path', 'volume' + 'pool', or 'kernel'")
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ValueError("a kvm image 'initrd' or 'cmdline' needs its 'kernel'")
        return self


class VsphereImage(_Strict):
    template: str
    guest_id: str | None = None
    datastore: str | None = None


class HypervImage(_Strict):
    vhdx: str
    generation: Literal[1, 2] | None = None
    mode: Literal["copy", "differencing"] | None = None  # how the OS disk is made from the image
    os: Literal["linux", "windows"] | None = None  # picks the Secure Boot template
    secure_boot: bool | None = None
    secure_boot_template: str | None = None


class LocalImage(_Strict):
    path: str | None = None


class Image(_Strict):
    """One OS image, with where each driver finds it."""

    description: str | None = None
    kvm: KvmImage | None = None
    vsphere: VsphereImage | None = None
    hyperv: HypervImage | None = None
    local: LocalImage | None = None


class KvmNetwork(_Strict):
    network: str | None = None  # libvirt network name (default <site>-<name>)
    bridge: str | None = None
    portgroup: str | None = None
    forward: Literal["nat", "route", "open", "bridge", "none"] | None = None
    openvswitch: bool | None = None
    dhcp: bool | None = None
    # QEMU user-mode NAT (slirp) instead of a libvirt network: no network object is made;
    # each NIC on it is reached through its ``forwards`` (guest 10.0.2.15, host at 10.0.2.2)
    user: bool | None = None

    @model_validator(mode="after")
    def _user_alone(self) -> KvmNetwork:
        if self.user:
            given = [k for k in ("network", "bridge", "portgroup", "forward", "openvswitch", "dhcp")
                     if getattr(self, k) is not None]
            if given:
                raise ValueError(f"a user-mode network (user: true) is no libvirt network: drop "
                                 f"{', '.join(given)}")
        return self


class VsphereNetwork(_Strict):
    portgroup: str | None = None
    switch: str | None = None
    distributed: bool | None = None


class HypervNetwork(_Strict):
    switch: str | None = None
    type: Literal["internal", "external", "private"] | None = None
    adapter: str | None = None  # the host NIC an external switch binds to


class AllowRule(_Strict):
    """Micro-segmentation: traffic admitted into a network from another one."""

    from_: str = Field(alias="from")  # a network name
    ports: list[int] = Field(default_factory=list)  # empty: any port
    protocol: Literal["tcp", "udp", "any"] = "tcp"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Network(_Strict):
    """A segment: purpose, VLAN, addressing, MTU, QoS and who may talk into it."""

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
    endpoint: str
    bucket: str
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None


class KvmStorage(_Strict):
    pool: str | None = None
    path: str | None = None


class VsphereStorage(_Strict):
    policy: str | None = None
    datastore: str | None = None


class HypervStorage(_Strict):
    path: str | None = None


class StorageClass(_Strict):
    """A storage tier: performance (flash), capacity (nearline), archive (object)."""

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
    count: int = Field(ge=1, le=768)
    reservation: Mhz | None = None  # for the whole VM
    shares: Literal["low", "normal", "high"] | int | None = None
    limit: Mhz | None = None


class Memory(_Strict):
    size: Size
    reservation: Size | None = None
    lock: bool = False
    hugepages: bool = False


class Disk(_Strict):
    name: Name
    size: Size
    storage: str  # a storage class name
    mount: str | None = None


class PortForward(_Strict):
    """A port forward of a NIC on a user-mode network (``kvm: {user: true}``).

    Member k of a role listens on ``host + k`` (so every member gets its own port).
    """

    guest: int = Field(ge=1, le=65535)  # the port in the guest
    host: int = Field(ge=1, le=65535)  # the port on the KVM host (member k: host + k)
    address: IpAddress = "127.0.0.1"  # where on the KVM host it listens
    protocol: Literal["tcp", "udp"] = "tcp"


class Nic(_Strict):
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
    """A vGPU profile (mdev, NVIDIA GRID), a partition (Hyper-V GPU-P), or a passed-through device."""

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
    anti_affinity: bool = False
    hosts: list[str] = Field(default_factory=list)
    cluster: str | None = None


class MachineRole(_Strict):
    """A role: ``count`` identical machines named ``<site>-<role>-<n>``."""

    count: int = Field(1, ge=0, le=10_000)
    image: str
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


class DeploySettings(_Strict):
    """How services are installed on the machines (used by the deploy stage).

    SSH host keys are never trusted on first use: they come from ``known_hosts`` or are
    pinned here per machine (``<site>-<role>-<n>``) or per role (all its members).
    """

    engine: Literal["auto", "ssh", "ansible", "local"] = "auto"
    ssh_user: str = "pacs"
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_key: SecretRef | None = None  # the private key file (a secret reference)
    known_hosts: str | None = None  # an OpenSSH known_hosts file
    host_keys: dict[str, list[Annotated[str, Field(pattern=_HOST_KEY)]]] = Field(
        default_factory=dict
    )
    python: str | None = None  # interpreter on the targets
    parallelism: int = Field(10, ge=1, le=1000)
    # engine auto: ansible-runner when the site has more hosts than this, else ssh
    ansible_threshold: int = Field(10, ge=0, le=100000)
    # systemd units where the host's PID 1 is systemd (auto), always (systemd), or never
    # (supervisor); copied into provider.static.init / provider.kvm.ssh.init at load time
    init: InitSystem = "auto"


# -- disaster recovery (``dr``: read by ``pacsinfra dr rebuild``) ----------------------------


class DrS3(_Strict):
    """How ``dr rebuild`` reaches backups in an S3-compatible store (all optional).

    Unset credentials come from the usual AWS environment; given ones are secret
    references, resolved only when the store is contacted (never in state or plans).
    """

    endpoint: str | None = None  # https://minio.example:9000 (default: AWS, or AWS_ENDPOINT_URL)
    access_key: SecretRef | None = None  # both or neither
    secret_key: SecretRef | None = None


class DisasterRecovery(_Strict):
    """``dr``: where ``pacsinfra dr rebuild`` takes the site's archive data from.

    ``backups`` is a backup, a directory of backups, or ``s3://bucket/prefix`` (one
    backup or a prefix of them): the newest complete one is restored. ``--from`` on the
    command line overrides it. Checked in :mod:`pacsinfra.blueprint.checks_dr`.
    """

    # the pattern is for editors (JSON Schema); checks_dr says what is wrong, with a hint
    backups: str = Field(json_schema_extra={
        "pattern": r"^(/|~/|s3://[a-z0-9])",
        "description": "absolute path or s3://bucket/prefix of a backup or of backups"})
    s3: DrS3 | None = None


class Site(_Strict):
    """A whole PACS site: the root of a blueprint."""

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

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def model_post_init(self, context: Any, /) -> None:
        for name, role in self.machines.items():
            role._role_name = name
        static = self.provider.static
        if self.deploy is not None and static is not None:
            # The static driver is built from provider.static alone (and a saved plan keeps
            # only the provider section): it carries the site's deploy engine. A value set
            # in both places and different is reported by checks_static.
            given = self.deploy.model_fields_set
            if static.engine is None and "engine" in given and self.deploy.engine != "local":
                static.engine = self.deploy.engine  # type: ignore[assignment]
            if static.ansible_threshold is None and "ansible_threshold" in given:
                static.ansible_threshold = self.deploy.ansible_threshold
        self._copy_deploy_init()

    def _init_targets(self) -> list[tuple[str, StaticProvider | KvmGuestLogin | GuestLogin]]:
        """The provider sections that carry ``deploy.init`` to their driver, by where."""
        p = self.provider
        found: list[tuple[str, Any]] = [("static", p.static)]
        found += [(f"{d}.ssh", getattr(getattr(p, d), "ssh", None))
                  for d in ("kvm", "vsphere", "hyperv")]
        return [(where, t) for where, t in found if t is not None]

    def _copy_deploy_init(self) -> None:
        # as for the engine: a driver (and a saved plan) sees only the provider section
        if self.deploy is not None and "init" in self.deploy.model_fields_set:
            for _, target in self._init_targets():
                if target.init is None:
                    target.init = self.deploy.init

    @model_validator(mode="after")
    def _one_init(self) -> Site:
        if self.deploy is not None and "init" in self.deploy.model_fields_set:
            for where, target in self._init_targets():
                if target.init != self.deploy.init:
                    raise ValueError(f"provider.{where}.init {target.init!r} contradicts "
                                     f"deploy.init {self.deploy.init!r}: set it in one place")
        return self

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
    "GuestLogin",
    "HostCapacity",
    "HypervProvider",
    "Image",
    "KvmGuestLogin",
    "KvmProvider",
    "LocalProvider",
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
    "StaticHost",
    "StaticLogin",
    "StaticProvider",
    "StorageClass",
    "VsphereProvider",
]
