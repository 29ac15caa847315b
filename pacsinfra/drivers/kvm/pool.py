"""StorageSpec <-> libvirt directory pool, and the pool's ownership marker.

libvirt pools have no ``<metadata>``, ``<title>`` or ``<description>`` (libvirt 9.0,
test:///default drops them), so a pool's ownership mark is a *marker volume*
inside it: a zero-byte raw volume whose name encodes the mark,
``.pacsinfra-owner.<base32 of JSON [site, address, lineage]>``. It lists with the
pool on every backend (system daemon, test driver, plain directories for
qemu:///embed), survives a lost state file, and a foreign pool simply has none.

Fields libvirt does not model (tier, encryption, IOPS numbers, provisioning
default) are not observable: the driver reports them as such.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

from pacsinfra.drivers.kvm import templating
from pacsinfra.drivers.kvm.domain import disk_volume_name
from pacsinfra.errors import CapabilityError
from pacsinfra.specs import DiskSpec, MachineSpec, Ownership, StorageSpec

MARKER_PREFIX = ".pacsinfra-owner."
DEFAULT_POOL_ROOT = "/var/lib/pacsinfra/pools"
UNOBSERVABLE = frozenset({"tier", "encrypted", "provisioning", "iops_limit", "iops_reservation"})


def pool_path(spec: StorageSpec, default_root: str = DEFAULT_POOL_ROOT) -> str:
    """The directory of the pool: ``settings.path``, else ``<default_root>/<name>``."""
    path = spec.settings.get("path")
    return str(path) if path else f"{default_root.rstrip('/')}/{spec.name}"


def pool_inputs(spec: StorageSpec, default_root: str = DEFAULT_POOL_ROOT) -> dict[str, Any]:
    """The values ``pool.xml.j2`` renders (pure)."""
    return {"name": spec.name, "path": pool_path(spec, default_root)}


def render_pool(spec: StorageSpec, default_root: str = DEFAULT_POOL_ROOT) -> str:
    """The pool XML for ``spec`` (pure)."""
    return templating.render("pool.xml.j2", p=pool_inputs(spec, default_root))


# Namespace of the UUIDs pacsinfra gives the libvirt pools it defines (see pool_uuid).
POOL_UUID_NS = uuid.UUID("0b3f6c1e-6a2d-4d57-9a7e-3c1f2b8d4e90")


def pool_uuid(spec: StorageSpec) -> str:
    """The UUID pacsinfra defines pool ``spec`` with (derived from its name and address).

    A libvirt pool can carry its marker volume only once it is defined and running,
    and loses it before it is undefined; in between (a create or delete killed
    half-way) the pool is empty and unmarked. This UUID, part of the definition
    from the first call on, lets the driver recognise such a pool as its own
    half-done one and complete it, instead of refusing it as someone else's.
    """
    return str(uuid.uuid5(POOL_UUID_NS, json.dumps([spec.name, spec.address])))


def with_uuid(xml: str, value: str) -> str:
    """``xml`` (a pool definition) with ``<uuid>value</uuid>`` after its name."""
    root = ET.fromstring(xml)
    for old in root.findall("uuid"):
        root.remove(old)
    el = ET.Element("uuid")
    el.text = value
    name = root.find("name")
    root.insert(list(root).index(name) + 1 if name is not None else 0, el)
    el.tail = name.tail if name is not None else None
    return ET.tostring(root, encoding="unicode") + "\n"


def marker_name(owner: Ownership) -> str:
    """The marker volume name that carries ``owner`` (fits a 255-byte file name)."""
    payload = json.dumps([owner.site, owner.address, owner.lineage], separators=(",", ":"))
    encoded = base64.b32encode(payload.encode()).decode().rstrip("=").lower()
    name = MARKER_PREFIX + encoded
    if len(name) > 250:
        raise ValueError(f"ownership mark too long for a volume name: {owner}")
    return name


def owner_from_marker(name: str) -> Ownership | None:
    """The ownership a marker volume name carries, or None for any other volume."""
    if not name.startswith(MARKER_PREFIX):
        return None
    encoded = name[len(MARKER_PREFIX) :].upper()
    encoded += "=" * (-len(encoded) % 8)
    try:
        site, address, lineage = json.loads(base64.b32decode(encoded).decode())
    except (ValueError, TypeError):
        return None
    return Ownership(site=str(site), address=str(address), lineage=str(lineage))


MAKING_PREFIX = ".pacsinfra-making."


def making_name(owner: Ownership, machine: str) -> str:
    """The marker volume a machine's create leaves in its first disk's pool until its
    domain is defined: whose volumes these are, should the create be killed."""
    payload = json.dumps([owner.site, owner.address, owner.lineage, machine],
                         separators=(",", ":"))
    name = MAKING_PREFIX + base64.b32encode(payload.encode()).decode().rstrip("=").lower()
    if len(name) > 250:
        raise ValueError(f"machine mark too long for a volume name: {owner} {machine}")
    return name


def making_from_name(name: str) -> tuple[Ownership, str] | None:
    """(ownership, machine name) of a making marker, or None for any other volume."""
    if not name.startswith(MAKING_PREFIX):
        return None
    encoded = name[len(MAKING_PREFIX):].upper()
    encoded += "=" * (-len(encoded) % 8)
    try:
        site, address, lineage, machine = json.loads(base64.b32decode(encoded).decode())
    except (ValueError, TypeError):
        return None
    return Ownership(site=str(site), address=str(address), lineage=str(lineage)), str(machine)


def marker_volume_xml(owner: Ownership) -> str:
    """The XML of the zero-byte raw marker volume."""
    return render_volume(name=marker_name(owner), capacity=0, allocation=0, fmt="raw")


def render_volume(
    *,
    name: str,
    capacity: int,
    allocation: int,
    fmt: str,
    backing: tuple[str, str] | None = None,
) -> str:
    """Volume XML (capacity/allocation in bytes; ``backing`` = (path, format))."""
    v = {
        "name": name,
        "capacity": capacity,
        "allocation": allocation,
        "format": fmt,
        "backing": {"path": backing[0], "format": backing[1]} if backing else None,
    }
    return templating.render("volume.xml.j2", v=v)


MIB = 1024 * 1024


@dataclass(frozen=True)
class DiskVolume:
    """How one machine disk is created: where, how big, and from what."""

    pool: str
    name: str
    xml: str
    capacity: int  # bytes
    thick: bool
    backing: tuple[str, str] | None  # (path, format) of a backing file
    clone_from: tuple[str, str] | None  # (pool, volume) copied into the new volume


def image_source(
    image: Any,
) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(backing (path, format), clone (pool, volume)) for a MachineSpec.image mapping.

    ``{path: P}`` becomes a qcow2 overlay on P (``format`` defaults to qcow2);
    ``{volume: V, pool: P}`` a full copy of that volume; ``{}`` a blank disk, and so
    is an image that is only a ``kernel`` (+ ``initrd``) booted directly.
    """
    if not image or (image.get("kernel") and not (image.get("path") or image.get("volume"))):
        return None, None
    if image.get("path"):
        return (str(image["path"]), str(image.get("format", "qcow2"))), None
    if image.get("volume"):
        if not image.get("pool"):
            raise CapabilityError(f"image volume {image['volume']} needs a pool")
        return None, (str(image["pool"]), str(image["volume"]))
    raise CapabilityError(f"kvm image needs 'path' or 'volume'+'pool', got {sorted(image)}")


def disk_volume(spec: MachineSpec, disk: DiskSpec, *, from_image: bool) -> DiskVolume:
    """The volume for ``disk`` of ``spec`` (pure): thick = allocation equal to capacity."""
    capacity = disk.size_mib * MIB
    thick = disk.provisioning == "thick"
    backing, clone = image_source(spec.image) if from_image else (None, None)
    name = disk_volume_name(spec.name, disk.name)
    xml = render_volume(
        name=name,
        capacity=capacity,
        allocation=capacity if thick else 0,
        fmt="qcow2",
        backing=backing,
    )
    return DiskVolume(disk.storage, name, xml, capacity, thick, backing, clone)


def parse_pool(
    name: str, path: str | None, owner: Ownership | None, desired: StorageSpec | None
) -> StorageSpec:
    """A StorageSpec for an existing pool; unobservable fields come from ``desired``."""
    base = desired or StorageSpec(address=owner.address if owner else "", name=name, tier="")
    settings: dict[str, Any] = dict(base.settings)
    # A default path (settings.path unset) is not asked for, so it is not compared.
    if path is not None and (desired is None or settings.get("path") is not None):
        settings["path"] = path
    return StorageSpec(
        address=base.address or (owner.address if owner else ""),
        name=name,
        tier=base.tier,
        encrypted=base.encrypted,
        provisioning=base.provisioning,
        iops_limit=base.iops_limit,
        iops_reservation=base.iops_reservation,
        settings=settings,
    )
