"""Small helpers shared by the domain and network parsers: the ownership mark and units."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from markupsafe import Markup

from pacsinfra.drivers.kvm.templating import OWNER_NS
from pacsinfra.specs import Ownership

_OWNER_TAG = f"{{{OWNER_NS}}}owner"
_INTENT_TAG = f"{{{OWNER_NS}}}intent"

# libvirt's size units, to KiB (libvirt writes KiB back, but hand-written XML may use others).
_UNIT_KIB = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "k": 1,
    "kib": 1,
    "kb": 1000 / 1024,
    "m": 1024,
    "mib": 1024,
    "mb": 1000**2 / 1024,
    "g": 1024**2,
    "gib": 1024**2,
    "gb": 1000**3 / 1024,
    "t": 1024**3,
    "tib": 1024**3,
}


def size_mib(node: ET.Element | None, default_unit: str = "KiB") -> int:
    """A libvirt size element (``<memory unit='KiB'>``) in MiB, rounded down."""
    if node is None or not (node.text or "").strip():
        return 0
    unit = (node.get("unit") or default_unit).lower()
    kib = float(node.text or 0) * _UNIT_KIB.get(unit, 1)
    return int(kib // 1024)


def owner_element(root: ET.Element) -> ET.Element | None:
    """The ``<pacsinfra:owner>`` element under ``<metadata>``, if any."""
    meta = root.find("metadata")
    return meta.find(_OWNER_TAG) if meta is not None else None


def owner_of(root: ET.Element) -> Ownership | None:
    """pacsinfra's ownership mark on a domain or network, or None when unmarked."""
    el = owner_element(root)
    if el is None:
        return None
    site, address, lineage = el.get("site"), el.get("address"), el.get("lineage")
    if not site or not address:
        return None
    return Ownership(site=site, address=address, lineage=lineage or "")


def intent_of(root: ET.Element) -> dict[str, Any]:
    """The recorded intent (fields the hypervisor does not model), or {} when absent/corrupt."""
    el = owner_element(root)
    node = el.find(_INTENT_TAG) if el is not None else None
    if node is None or not (node.text or "").strip():
        return {}
    try:
        value = json.loads(node.text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def owner_fragment(xml: str) -> str | None:
    """The ``<pacsinfra:owner>`` element of a domain's XML as text (with its namespace
    declared, as ``setMetadata`` takes it), or None when the domain is unmarked."""
    el = owner_element(ET.fromstring(xml))
    return ET.tostring(el, encoding="unicode") if el is not None else None


def intent_json(data: dict[str, Any]) -> Markup:
    """Canonical JSON for the intent element (sorted, compact: stable across renders).

    Escaped here for element text (``&``, ``<``, ``>``) and marked safe, so the
    autoescaping template leaves the quotes readable.
    """
    return Markup(escape(json.dumps(data, sort_keys=True, separators=(",", ":"))))
