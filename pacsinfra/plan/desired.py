"""Blueprint site -> the specs a driver acts on, with their dependencies.

This is the only place that knows both the blueprint model and the driver specs.
Names and addresses are fixed here:

- machines ``<site>-<role>-<n>`` (n from 1), addresses ``machine.<role>[<i>]`` (i from 0);
- networks ``network.<name>``, storage ``storage.<name>``; their hypervisor object
  name comes from the per-driver mapping (``networks.dicom.kvm.network``,
  ``vsphere.portgroup``, ``hyperv.switch``; ``storage.flash.kvm.pool``,
  ``vsphere.policy``, ``hyperv.path``) or defaults to ``<site>-<name>``;
- services ``service.<name>[i]``: one step per machine running the service, after
  that machine (their configs are rendered by :mod:`pacsinfra.services.render`).

CPU shares are normalised to an int: low=500, normal=1000, high=2000 per vCPU, or
the blueprint's integer as is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pacsinfra.errors import PlanError
from pacsinfra.plan.graph import Graph, Node
from pacsinfra.providers import declaration, provider_class
from pacsinfra.services.guest import GuestLayout
from pacsinfra.services.render import HostLayout, service_resources
from pacsinfra.services.settings import DeployConfig
from pacsinfra.specs import (
    DiskSpec,
    GpuSpec,
    MachineSpec,
    NetworkSpec,
    NicSpec,
    Spec,
    StorageSpec,
)

SHARES_PER_VCPU = {"low": 500, "normal": 1000, "high": 2000}

DATA_SERVICE_KINDS = frozenset({"archive", "database"})


@dataclass(frozen=True)
class Resource:
    """A desired infrastructure object and the addresses it depends on."""

    spec: Spec
    depends_on: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return self.spec.address


@dataclass
class DesiredSite:
    """Everything the blueprint asks of the hypervisor, plus the full graph for drawing."""

    site: str  # the ownership site id: metadata.name, plus "/<overlay>" when one is applied
    name: str  # metadata.name
    overlay: str | None
    driver: str
    resources: dict[str, Resource] = field(default_factory=dict)
    graph: Graph = field(default_factory=Graph)


def site_id(name: str, overlay: str | None) -> str:
    """The ownership site id: ``st-mary`` or ``st-mary/dr``."""
    return f"{name}/{overlay}" if overlay else name


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """Attribute or mapping key (service configs may be models or plain dicts)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _dump(obj: Any) -> dict[str, Any]:
    """A per-driver settings model as a plain dict, unset (None) values left out."""
    if obj is None:
        return {}
    if hasattr(obj, "model_dump"):
        data = obj.model_dump(mode="json", exclude_none=True)
    elif isinstance(obj, Mapping):
        data = {k: v for k, v in obj.items() if v is not None}
    else:
        raise TypeError(f"cannot read settings from {type(obj).__name__}")
    assert isinstance(data, dict)
    return data


def cpu_shares(shares: Any, vcpus: int) -> int | None:
    """``low``/``normal``/``high`` per vCPU, or an int as given."""
    if shares is None:
        return None
    if isinstance(shares, bool):
        raise PlanError(f"invalid cpu shares {shares!r}")
    if isinstance(shares, int):
        return shares
    per = SHARES_PER_VCPU.get(str(shares).lower())
    if per is None:
        raise PlanError(f"invalid cpu shares {shares!r} (low, normal, high or an integer)")
    return per * vcpus


def _object_name(site: str, name: str, settings: Mapping[str, Any], key: str | None) -> str:
    value = settings.get(key) if key else None
    return str(value) if value else f"{site}-{name}"


def member_names(role_name: str, role: Any, site: str) -> list[str]:
    """``<site>-<role>-<n>`` for n = 1..count (the model's own helper when it has one)."""
    helper = getattr(role, "member_names", None)
    if callable(helper):
        return list(helper(site))
    return [f"{site}-{role_name}-{n}" for n in range(1, int(role.count) + 1)]


def network_spec(site: str, name: str, net: Any, driver: str) -> NetworkSpec:
    """The spec of one blueprint network."""
    settings = _dump(getattr(net, driver, None))
    return NetworkSpec(
        address=f"network.{name}",
        name=_object_name(site, name, settings, declaration(driver).network_name_key),
        purpose=str(_get(net, "purpose", "") or ""),
        vlan=_get(net, "vlan"),
        cidr=str(_get(net, "cidr")) if _get(net, "cidr") is not None else None,
        gateway=str(_get(net, "gateway")) if _get(net, "gateway") is not None else None,
        mtu=int(_get(net, "mtu", 1500) or 1500),
        qos=_get(net, "qos"),
        settings=settings,
    )


def storage_spec(site: str, name: str, sc: Any, driver: str) -> StorageSpec:
    """The spec of one blueprint storage class."""
    settings = _dump(getattr(sc, driver, None))
    return StorageSpec(
        address=f"storage.{name}",
        name=_object_name(site, name, settings, declaration(driver).storage_name_key),
        tier=str(_get(sc, "tier", "") or ""),
        encrypted=bool(_get(sc, "encrypted", False)),
        provisioning=str(_get(sc, "provisioning", "thin") or "thin"),
        iops_limit=_get(sc, "iops_limit"),
        iops_reservation=_get(sc, "iops_reservation"),
        settings=settings,
    )


def is_user_network(net: NetworkSpec, driver: str) -> bool:
    """A kvm network declared ``user: true``: QEMU's own NAT, not a hypervisor object."""
    return bool(net.settings.get("user"))  # only a kvm network has the setting


def user_nic_network(forwards: Any, index: int) -> str:
    """``NicSpec.network`` of a user-mode NIC: ``user:hostfwd=...`` (member ``index`` listens
    on each forward's ``host + index``)."""
    opts = [
        f"hostfwd={_get(f, 'protocol', 'tcp')}:{_get(f, 'address', '127.0.0.1')}:"
        f"{int(_get(f, 'host')) + index}-:{int(_get(f, 'guest'))}"
        for f in forwards
    ]
    return "user:" + ",".join(opts)


def _holds_data(role: Any, services: Mapping[str, Any]) -> bool:
    explicit = _get(role, "holds_data")
    if explicit is not None:
        return bool(explicit)
    return any(
        _get(services.get(s), "kind") in DATA_SERVICE_KINDS
        for s in _get(role, "services", []) or []
    )


def machine_specs(
    site: str,
    role_name: str,
    role: Any,
    *,
    images: Mapping[str, Any],
    networks: Mapping[str, NetworkSpec],
    storage: Mapping[str, StorageSpec],
    services: Mapping[str, Any],
    driver: str,
    authorized_keys: Sequence[str] = (),
) -> list[Resource]:
    """One resource per member of ``role``; ``authorized_keys``: public keys the machines
    accept for the deploy login (only on machines the driver makes)."""
    image = images.get(role.image) if role.image else None
    image_settings = _dump(getattr(image, driver, None)) if image is not None else {}
    # local and static machines exist already (this box, hosts over SSH): no image
    if not image_settings and declaration(driver).makes_machines:
        raise PlanError(f"machines.{role_name}: image {role.image!r} has no {driver} entry")
    cpu, mem = role.cpu, role.memory
    gpu = _get(role, "gpu")
    placement = _get(role, "placement")
    hosts = list(_get(placement, "hosts", []) or [])
    holds = _holds_data(role, services)
    authorized = tuple(authorized_keys) if declaration(driver).makes_machines else ()
    out: list[Resource] = []
    for i, name in enumerate(member_names(role_name, role, site)):
        deps: set[str] = set()
        disks = []
        for d in _get(role, "disks", []) or []:
            sc_name = str(d.storage)
            sc = storage.get(sc_name)
            if sc is None:
                raise PlanError(
                    f"machines.{role_name}: disk {d.name!r} uses unknown storage {sc_name!r}"
                )
            deps.add(sc.address)
            disks.append(
                DiskSpec(
                    name=str(d.name),
                    size_mib=int(d.size),
                    storage=sc.name,
                    provisioning=sc.provisioning,
                    mount=_get(d, "mount"),
                    iops_limit=sc.iops_limit,
                )
            )
        nics = []
        for n in _get(role, "nics", []) or []:
            net_name = str(n.network)
            net = networks.get(net_name)
            if net is None:
                raise PlanError(f"machines.{role_name}: NIC on unknown network {net_name!r}")
            if is_user_network(net, driver):
                # QEMU user-mode NAT: no network object, the NIC carries its forwards
                nics.append(NicSpec(network=user_nic_network(_get(n, "forwards", []) or [], i),
                                    mac=_get(n, "mac")))
                continue
            deps.add(net.address)
            addrs = list(_get(n, "addresses", []) or [])
            address = str(addrs[i]) if i < len(addrs) else None
            prefix = ipaddress.ip_network(net.cidr, strict=False).prefixlen if net.cidr else None
            nics.append(
                NicSpec(
                    network=net.name,
                    address=address,
                    prefix=prefix if address else None,
                    gateway=net.gateway if address else None,
                    vlan=net.vlan,
                    mtu=net.mtu,
                    mac=_get(n, "mac"),
                )
            )
        gpu_spec = None
        if gpu is not None:
            gpu_spec = GpuSpec(
                mode=str(gpu.mode),
                profile=_get(gpu, "profile"),
                count=int(_get(gpu, "count", 1) or 1),
                device=_get(gpu, "device"),
            )
        spec = MachineSpec(
            address=f"machine.{role_name}[{i}]",
            name=name,
            role=role_name,
            index=i,
            image=image_settings,
            cpu_count=int(cpu.count),
            memory_mib=int(mem.size),
            cpu_reservation_mhz=_get(cpu, "reservation"),
            cpu_limit_mhz=_get(cpu, "limit"),
            cpu_shares=cpu_shares(_get(cpu, "shares"), int(cpu.count)),
            memory_reservation_mib=_get(mem, "reservation"),
            memory_lock=bool(_get(mem, "lock", False)),
            hugepages=bool(_get(mem, "hugepages", False)),
            disks=tuple(disks),
            nics=tuple(nics),
            gpu=gpu_spec,
            anti_affinity_group=f"{site}-{role_name}" if _get(placement, "anti_affinity") else None,
            host_hint=str(hosts[i % len(hosts)]) if hosts else None,
            cluster_hint=_get(placement, "cluster"),
            holds_data=holds,
            hostname=name,
            ssh_authorized_keys=authorized,
        )
        out.append(Resource(spec=spec, depends_on=tuple(sorted(deps))))
    return out


def desired_site(
    site: Any, *, overlay: str | None = None, driver: str | None = None
) -> DesiredSite:
    """Map a validated blueprint :class:`Site` to specs, dependencies and the drawing graph."""
    name = str(site.metadata.name)
    drv = driver or str(site.provider.driver)
    out = DesiredSite(site=site_id(name, overlay), name=name, overlay=overlay, driver=drv)
    g = out.graph
    networks = {k: network_spec(name, k, v, drv) for k, v in (site.networks or {}).items()}
    storage = {k: storage_spec(name, k, v, drv) for k, v in (site.storage or {}).items()}
    services: Mapping[str, Any] = site.services or {}
    infra: list[NetworkSpec | StorageSpec] = [
        *(n for n in networks.values() if not is_user_network(n, drv)),
        *storage.values(),
    ]
    for spec in infra:
        out.resources[spec.address] = Resource(spec=spec)
        attrs = {"spec": spec}
        g.add_node(
            Node(
                spec.address,
                "network" if isinstance(spec, NetworkSpec) else "storage",
                spec.name,
                attrs,
            )
        )
    hosts_of: dict[str, list[str]] = {s: [] for s in services}
    machine_names: dict[str, str] = {}
    for role_name, role in (site.machines or {}).items():
        for res in machine_specs(
            name,
            role_name,
            role,
            images=site.images or {},
            networks=networks,
            storage=storage,
            services=services,
            driver=drv,
            authorized_keys=tuple(getattr(getattr(site, "deploy", None), "authorized_keys",
                                          None) or ()),
        ):
            out.resources[res.address] = res
            machine_names[res.address] = res.spec.name
            g.add_node(Node(res.address, "machine", res.spec.name, {"spec": res.spec}))
            for dep in res.depends_on:
                g.add_dependency(res.address, dep)
            for svc in _get(role, "services", []) or []:
                hosts_of.setdefault(str(svc), []).append(res.address)
    for svc_name, svc in services.items():
        addr = f"service.{svc_name}"
        g.add_node(
            Node(
                addr,
                "service",
                svc_name,
                {"kind": _get(svc, "kind"), "hosts": hosts_of.get(svc_name, [])},
            )
        )
        for m in hosts_of.get(svc_name, []):
            g.add_dependency(addr, m)
    _add_dicom_flow(g, services)
    g.check_acyclic()
    _add_service_resources(out, site, hosts_of, machine_names)
    return out


def service_layout(site: Any, site_id: str, driver: str,
                   machines: Mapping[str, MachineSpec]) -> HostLayout | None:
    """Where the site's services go and how their machines are reached (plan time); None
    when they cannot run there: a hypervisor's machines need the ``deploy`` login."""
    decl = declaration(driver)
    settings = getattr(site.provider, driver, None)
    if not decl.makes_machines:
        # the local and static hosts know their own layout (no SDK behind them)
        implementation: Any = provider_class(driver)
        layout: HostLayout = implementation.layout(settings, getattr(site, "deploy", None),
                                                   site_id)
        return layout
    deploy = DeployConfig.parse(getattr(site, "deploy", None))
    if decl.reach is None or not deploy.has_key:
        return None
    return GuestLayout(deploy, machines, decl.reach)


def _add_service_resources(
    out: DesiredSite, site: Any, hosts_of: Mapping[str, list[str]], names: Mapping[str, str]
) -> None:
    """One resource per (machine, service) where the services can run (see :func:`service_layout`)."""
    machines = {
        r.spec.name: r.spec for r in out.resources.values() if isinstance(r.spec, MachineSpec)
    }
    layout = service_layout(site, out.site, out.driver, machines)
    if layout is None:
        return
    hosts = {s: [(a, names[a]) for a in addrs] for s, addrs in hosts_of.items()}
    for spec, deps in service_resources(site, layout=layout, hosts_of=hosts):
        out.resources[spec.address] = Resource(spec=spec, depends_on=deps)


def _add_dicom_flow(g: Graph, services: Mapping[str, Any]) -> None:
    """Flow edges modalities -> router -> archive -> viewers (drawn, not ordered by)."""
    by_kind: dict[str, list[str]] = {}
    for svc_name, svc in services.items():
        by_kind.setdefault(str(_get(svc, "kind", "")), []).append(svc_name)
    routers, archives, viewers = (
        by_kind.get("router", []),
        by_kind.get("archive", []),
        by_kind.get("viewer", []),
    )
    if not (routers or archives):
        return
    aes: list[str] = []
    for r in routers or archives:
        aes.extend(str(a) for a in (_get(_get(services[r], "config"), "allowed_calling_aes") or []))
    label = "modalities" + (f" ({', '.join(sorted(set(aes)))})" if aes else "")
    g.add_node(Node("external.modalities", "external", label))
    for r in routers:
        g.add_flow("external.modalities", f"service.{r}", "C-STORE")
        dests = _get(_get(services[r], "config"), "destinations") or {}
        targets = [
            str(_get(d, "service")) for d in dests.values() if _get(d, "service") in services
        ]
        for a in targets or archives:
            g.add_flow(f"service.{r}", f"service.{a}", "C-STORE")
    if not routers:
        for a in archives:
            g.add_flow("external.modalities", f"service.{a}", "C-STORE")
    for a in archives:
        for v in viewers:
            g.add_flow(f"service.{a}", f"service.{v}", "QIDO/WADO")
