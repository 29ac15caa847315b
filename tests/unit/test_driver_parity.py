"""One declaration per provider, and everything agrees with it.

Walks every provider x capability x setting:

- the blueprint model, the JSON Schema and the driver classes take the declared
  settings models and capabilities (nothing declared twice);
- ``validate`` passes a feature exactly where the provider declares it and warns or
  refuses elsewhere;
- a declared capability reaches what the driver sends (the evidence below, per driver:
  the element, property or parameter that carries it out) — what validate passes, apply
  does.
- every declared setting is read by its implementation (found in its source).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from pacsinfra.blueprint import validate
from pacsinfra.blueprint.model import Image, Network, Provider, StorageClass
from pacsinfra.drivers.base import Capability
from pacsinfra.providers import DECLARATIONS, NAMES, provider_class
from pacsinfra.specs import DiskSpec, GpuSpec, MachineSpec, NetworkSpec, NicSpec, Ownership

HYPERVISORS = [n for n in NAMES if DECLARATIONS[n].makes_machines]
OWNER = Ownership(site="par", address="machine.pacs[0]", lineage="l")


def _annotation_types(model: type, field: str) -> set[Any]:
    ann = model.model_fields[field].annotation  # type: ignore[attr-defined]
    return set(typing.get_args(ann)) or {ann}


@pytest.mark.parametrize("name", NAMES)
def test_the_model_takes_the_declared_settings(name: str) -> None:
    decl = DECLARATIONS[name]
    assert decl.settings in _annotation_types(Provider, name)
    for model, declared in ((Image, decl.image), (Network, decl.network),
                            (StorageClass, decl.storage)):
        if declared is None:
            assert name not in model.model_fields, f"{model.__name__}.{name} is declared by nobody"
        else:
            assert declared in _annotation_types(model, name)


def test_the_driver_choice_is_the_declared_providers() -> None:
    assert set(typing.get_args(Provider.model_fields["driver"].annotation)) == set(NAMES)
    assert set(Provider.model_fields) == {*NAMES, "driver", "hosts"}


@pytest.mark.parametrize("name", NAMES)
def test_the_schema_shows_the_declared_settings(name: str) -> None:
    from pacsinfra.blueprint.schema import blueprint_schema

    schema = json.loads(json.dumps(blueprint_schema()))
    defs = schema.get("$defs") or schema.get("definitions") or {}
    title = DECLARATIONS[name].settings.__name__
    assert set(defs[title]["properties"]) == set(DECLARATIONS[name].settings.model_fields)


@pytest.mark.parametrize("name", HYPERVISORS)
def test_the_driver_class_has_the_declared_capabilities(name: str) -> None:
    pytest.importorskip(DECLARATIONS[name].sdk[0] if DECLARATIONS[name].sdk else "pacsinfra")
    assert provider_class(name).capabilities == DECLARATIONS[name].capabilities


# -- validate: a feature passes exactly where it is declared --------------------------------

_IMAGES = {"kvm": {"path": "/images/debian12.qcow2"}, "vsphere": {"template": "debian12-tpl"},
           "hyperv": {"vhdx": "C:\\Images\\debian12.vhdx"}}
_PROVIDERS = {"kvm": {"uri": "test:///default"}, "vsphere": {"server": "vc.example"},
              "hyperv": {"host": "hv01", "password": {"env": "HV_PW"}}}

#: how a blueprint asks for each capability: (section, path, value)
_ASKS: dict[Capability, tuple[str, tuple[str, ...], Any]] = {
    Capability.CPU_RESERVATION: ("machine", ("cpu", "reservation"), "2000MHz"),
    Capability.CPU_LIMIT: ("machine", ("cpu", "limit"), "3000MHz"),
    Capability.CPU_SHARES: ("machine", ("cpu", "shares"), "high"),
    Capability.MEMORY_RESERVATION: ("machine", ("memory", "reservation"), "1GiB"),
    Capability.MEMORY_LOCK: ("machine", ("memory", "lock"), True),
    Capability.HUGEPAGES: ("machine", ("memory", "hugepages"), True),
    Capability.VGPU: ("machine", ("gpu",), {"mode": "vgpu", "profile": "grid_a40-8q"}),
    Capability.GPU_PARTITION: ("machine", ("gpu",), {"mode": "partition"}),
    Capability.GPU_PASSTHROUGH: ("machine", ("gpu",), {"mode": "passthrough",
                                                        "device": "0000:65:00.0"}),
    Capability.VLAN: ("network", ("vlan",), 110),
    Capability.JUMBO_FRAMES: ("network", ("mtu",), 9000),
    Capability.IOPS_LIMIT: ("storage", ("iops_limit",), 500),
    Capability.IOPS_RESERVATION: ("storage", ("iops_reservation",), 100),
    Capability.ANTI_AFFINITY: ("machine", ("placement", "anti_affinity"), True),
}


def test_every_capability_has_a_way_to_ask_for_it() -> None:
    assert set(_ASKS) == set(Capability)


def _blueprint(driver: str, capability: Capability) -> dict[str, Any]:
    site: dict[str, Any] = {
        "apiVersion": "pacsinfra/v1", "kind": "Site", "metadata": {"name": "par"},
        "provider": {"driver": driver, driver: _PROVIDERS[driver]},
        "images": {"debian12": {driver: _IMAGES[driver]}},
        "networks": {"lan": {"purpose": "dicom", "cidr": "10.9.0.0/24"}},
        "storage": {"flash": {"tier": "performance"}},
        "machines": {"pacs": {"image": "debian12", "cpu": {"count": 2},
                              "memory": {"size": "2GiB"},
                              "disks": [{"name": "os", "size": "8GiB", "storage": "flash"}],
                              "nics": [{"network": "lan", "addresses": ["10.9.0.5"]}]}},
    }
    if driver == "kvm" and capability is Capability.VLAN:
        site["networks"]["lan"]["kvm"] = {"openvswitch": True, "bridge": "br0",
                                          "forward": "bridge"}
    section, path, value = _ASKS[capability]
    node = {"machine": site["machines"]["pacs"], "network": site["networks"]["lan"],
            "storage": site["storage"]["flash"]}[section]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    if driver == "vsphere" and section == "machine" and path == ("gpu",):
        site["machines"]["pacs"]["memory"]["lock"] = True  # vSphere: a GPU's memory reserved
    return site


def _where(capability: Capability) -> str:
    """The blueprint path a capability's diagnostics point at."""
    section, path, _ = _ASKS[capability]
    head = {"machine": "machines.pacs", "network": "networks.lan", "storage": "storage.flash"}
    return ".".join((head[section], *path))


@pytest.mark.parametrize("capability", list(Capability), ids=lambda c: c.value)
@pytest.mark.parametrize("driver", HYPERVISORS)
def test_validate_passes_a_feature_exactly_where_it_is_declared(
        driver: str, capability: Capability, tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(_blueprint(driver, capability)))
    _, diags = validate(path)
    about = [d for d in diags if d.code == "capability" and d.path.startswith(_where(capability))]
    if DECLARATIONS[driver].can(capability):
        assert about == [], f"{driver} declares {capability.value} but validate says {about}"
    else:
        assert about, f"{driver} does not declare {capability.value}, validate said nothing"
        assert all(driver in d.message for d in about)
    assert not [d for d in diags if d.severity == "error" and d.code != "capability"], diags


# -- apply: a declared capability reaches what the driver sends -------------------------------

_BASE = MachineSpec(address="machine.pacs[0]", name="par-pacs-1", role="pacs", index=0,
                    image={"path": "/images/debian12.qcow2", "template": "debian12-tpl",
                           "vhdx": "C:\\Images\\debian12.vhdx"},
                    cpu_count=2, memory_mib=2048,
                    disks=(DiskSpec("os", 8192, "par-flash"),),
                    nics=(NicSpec("par-lan", address="10.9.0.5", prefix=24),))
_NET = NetworkSpec(address="network.lan", name="par-lan", purpose="dicom", cidr="10.9.0.0/24")

#: (spec change, text the rendered payload then holds) per driver and capability: the
#: mechanism that carries the capability out, not only a record of it
_EVIDENCE: dict[str, dict[Capability, tuple[dict[str, Any], str]]] = {
    "kvm": {
        Capability.CPU_RESERVATION: ({"cpu_reservation_mhz": 2000}, "<shares>2000</shares>"),
        Capability.CPU_LIMIT: ({"cpu_limit_mhz": 1400}, "<global_quota>"),
        Capability.CPU_SHARES: ({"cpu_shares": 4000}, "<shares>4000</shares>"),
        Capability.MEMORY_LOCK: ({"memory_lock": True}, "<locked/>"),
        Capability.HUGEPAGES: ({"hugepages": True}, "<hugepages/>"),
        Capability.VGPU: ({"gpu": GpuSpec("vgpu", profile="nvidia-558")}, "type='mdev'"),
        Capability.GPU_PASSTHROUGH: ({"gpu": GpuSpec("passthrough", device="0000:65:00.0")},
                                     "type='pci'"),
        Capability.IOPS_LIMIT: ({"disks": (DiskSpec("os", 8192, "par-flash", iops_limit=500),)},
                                "<total_iops_sec>500</total_iops_sec>"),
    },
    "vsphere": {
        Capability.CPU_RESERVATION: ({"cpu_reservation_mhz": 2000}, '"reservation": 2000'),
        Capability.CPU_LIMIT: ({"cpu_limit_mhz": 3000}, '"limit": 3000'),
        Capability.CPU_SHARES: ({"cpu_shares": 4000}, '"shares": 4000'),
        Capability.MEMORY_RESERVATION: ({"memory_reservation_mib": 1024}, '"reservation": 1024'),
        Capability.MEMORY_LOCK: ({"memory_lock": True}, '"memoryReservationLockedToMax": true'),
        Capability.VGPU: ({"gpu": GpuSpec("vgpu", profile="grid_a40-8q"),
                           "memory_reservation_mib": 2048}, "grid_a40-8q"),
        Capability.GPU_PASSTHROUGH: ({"gpu": GpuSpec("passthrough", device="0000:65:00.0"),
                                     "memory_reservation_mib": 2048}, "0000:65:00.0"),
        Capability.IOPS_LIMIT: ({"disks": (DiskSpec("os", 8192, "par-flash", iops_limit=500),)},
                                '"limit": 500'),
        Capability.ANTI_AFFINITY: ({"anti_affinity_group": "par-pacs"}, '"drs_rule"'),
    },
    "hyperv": {
        Capability.CPU_RESERVATION: ({"cpu_reservation_mhz": 2000}, '"reserve": 36'),
        Capability.CPU_LIMIT: ({"cpu_limit_mhz": 3000}, '"maximum": 54'),
        Capability.CPU_SHARES: ({"cpu_shares": 4000}, '"weight": 200'),
        Capability.MEMORY_RESERVATION: ({"memory_reservation_mib": 1024}, '"minimum_mib": 1024'),
        Capability.GPU_PARTITION: ({"gpu": GpuSpec("partition", device="PCI#GPU0")}, "PCI#GPU0"),
        Capability.IOPS_LIMIT: ({"disks": (DiskSpec("os", 8192, "par-flash", iops_limit=500),)},
                                '"maximum_iops": 500'),
    },
}

#: capabilities carried by networks and storage classes (and tested there, below)
_NOT_MACHINE = {Capability.VLAN, Capability.JUMBO_FRAMES, Capability.IOPS_RESERVATION}


def _driver(name: str) -> Any:
    decl = DECLARATIONS[name]
    if decl.sdk:
        pytest.importorskip(decl.sdk[0])
    return provider_class(name)({**_PROVIDERS[name], "host_mhz": 2800})


def _rendered(drv: Any, spec: Any) -> str:
    out = drv.render(spec, OWNER)
    return out.text + json.dumps(out.parameters, default=str)


@pytest.mark.parametrize("driver", HYPERVISORS)
def test_a_declared_machine_capability_reaches_what_the_driver_sends(driver: str) -> None:
    declared = DECLARATIONS[driver].capabilities - _NOT_MACHINE
    assert set(_EVIDENCE[driver]) == declared, "evidence for every declared machine capability"
    drv = _driver(driver)
    plain = _rendered(drv, _BASE)
    for cap, (change, text) in _EVIDENCE[driver].items():
        spec = dataclasses.replace(_BASE, **change)
        assert drv.check(spec) == [], (cap, drv.check(spec))
        got = _rendered(drv, spec)
        assert text in got and text not in plain, f"{driver}: {cap.value} not in what it sends"


#: machine capabilities validate only warns about ("it will be ignored") where undeclared
_IGNORED = {
    Capability.CPU_RESERVATION: {"cpu_reservation_mhz": 2000},
    Capability.CPU_LIMIT: {"cpu_limit_mhz": 3000},
    Capability.CPU_SHARES: {"cpu_shares": 4000},
    Capability.MEMORY_RESERVATION: {"memory_reservation_mib": 1024},
    Capability.MEMORY_LOCK: {"memory_lock": True},
    Capability.HUGEPAGES: {"hugepages": True},
    Capability.IOPS_LIMIT: {"disks": (DiskSpec("os", 8192, "par-flash", iops_limit=500),)},
    Capability.ANTI_AFFINITY: {"anti_affinity_group": "par-pacs"},
}


@pytest.mark.parametrize("driver", HYPERVISORS)
def test_what_validate_says_is_ignored_the_driver_does_not_refuse(driver: str) -> None:
    """A warning in validate is a promise that apply goes ahead: the driver must not
    refuse at plan time what validate passed with "it will be ignored"."""
    drv = _driver(driver)
    for cap, change in _IGNORED.items():
        if not DECLARATIONS[driver].can(cap):
            spec = dataclasses.replace(_BASE, **change)
            assert drv.check(spec) == [], f"{driver} refuses {cap.value}: {drv.check(spec)}"


@pytest.mark.parametrize("driver", HYPERVISORS)
def test_network_capabilities_reach_what_the_driver_sends(driver: str) -> None:
    drv = _driver(driver)
    settings = {"openvswitch": True, "bridge": "br0", "forward": "bridge"} if driver == "kvm" \
        else {}
    base = dataclasses.replace(_NET, settings=settings)
    plain = _rendered(drv, base)
    vlan = _rendered(drv, dataclasses.replace(base, vlan=110))
    assert DECLARATIONS[driver].can(Capability.VLAN) == ("110" in vlan and "110" not in plain)
    jumbo = _rendered(drv, dataclasses.replace(_BASE, nics=(
        NicSpec("par-lan", address="10.9.0.5", prefix=24, mtu=9000),)))
    assert DECLARATIONS[driver].can(Capability.JUMBO_FRAMES) == ("9000" in jumbo)


# -- settings: every declared setting is read by its implementation ---------------------------

def _keys_read(package: Path) -> set[str]:
    """The setting names an implementation reads: ``setting(config, "name")``,
    ``config.get("name")`` and ``config["name"]`` in its modules (not its declaration)."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        if path.name != "declaration.py":
            found |= _keys_read_in(path)
    return found


def _keys_read_in(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            args = node.args[1:2] if name == "setting" else node.args[:1] if name == "get" else []
            found |= {a.value for a in args
                      if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        elif (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
              and isinstance(node.slice.value, str)):
            found.add(node.slice.value)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_setting_is_read_by_its_implementation(name: str) -> None:
    import importlib

    decl = DECLARATIONS[name]
    module = importlib.import_module(decl.implementation.partition(":")[0])
    package = Path(module.__file__ or "").parent
    # the planner reads the object names and kvm's user-mode switch (plan/desired.py)
    planner = Path(importlib.import_module("pacsinfra.plan.desired").__file__ or "")
    read = _keys_read(package) | _keys_read_in(planner) | {
        k for k in (decl.network_name_key, decl.storage_name_key) if k}
    for section, model in (("provider", decl.settings), ("images.<i>", decl.image),
                           ("networks.<n>", decl.network), ("storage.<s>", decl.storage)):
        unread = set(model.model_fields) - read if model is not None else set()
        assert not unread, (f"{section}.{name} declares {sorted(unread)}, which nothing in "
                            f"{package.name}/ reads")
