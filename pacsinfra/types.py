"""Field types of the blueprint language: sizes, frequencies, names, addresses.

Each one accepts what an admin writes (``32GiB``, ``2.4GHz``) and normalises to the
internal unit (int MiB, int MHz) so later stages never parse units again.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from pacsinfra.units import parse_mhz, parse_size_mib


def _size(value: Any) -> int:
    return parse_size_mib(value)


def _mhz(value: Any) -> int:
    return parse_mhz(value)


_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "description": "MiB"},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTP]i?B?|B)?\s*$"},
    ],
    "description": "A size: 512MiB, 32GiB, 4TiB (a bare integer is MiB).",
}
_MHZ_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "description": "MHz"},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(MHz|GHz)?\s*$"},
    ],
    "description": "A frequency: 8000MHz, 2.4GHz (a bare integer is MHz).",
}

#: A size in MiB (accepts human units).
Size = Annotated[int, BeforeValidator(_size), WithJsonSchema(_SIZE_SCHEMA)]
#: A frequency in MHz (accepts MHz / GHz).
Mhz = Annotated[int, BeforeValidator(_mhz), WithJsonSchema(_MHZ_SCHEMA)]

#: A name used as a key and inside hypervisor object names: DNS-label-ish.
Name = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="lower-case letters, digits and '-', 1-63 characters",
    ),
]


_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def is_label(name: str) -> bool:
    """Whether ``name`` is a DNS label (what :data:`Name` accepts)."""
    return bool(_LABEL_RE.match(name))


def _ip(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected an IP address such as 10.10.110.11, got {type(value).__name__}")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _cidr(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a CIDR such as 10.10.110.0/24, got {type(value).__name__}")
    text = value.strip()
    if "/" not in text:
        raise ValueError(f"{value!r} is not a CIDR: add the prefix length, e.g. {text}/24")
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        try:
            fixed = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR ({exc})") from None
        raise ValueError(f"{value!r} has host bits set; the network is {fixed}") from None


IpAddress = Annotated[
    str,
    BeforeValidator(_ip),
    WithJsonSchema({"type": "string", "description": "an IPv4 or IPv6 address"}),
]
Cidr = Annotated[
    str,
    BeforeValidator(_cidr),
    WithJsonSchema({"type": "string", "description": "a network in CIDR form, 10.10.110.0/24"}),
]

__all__ = ["Cidr", "IpAddress", "Mhz", "Name", "Size", "is_label"]


class Strict(BaseModel):
    """A settings model that refuses unknown keys: a typo is an error with the closest
    valid key, never a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")
