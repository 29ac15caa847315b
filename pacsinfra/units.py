"""Human units in blueprints (``32GiB``, ``4TiB``, ``8000MHz``) and their one internal unit.

Sizes normalise to MiB (integers: no VM or disk is sized below a MiB), frequencies
to MHz. Bare integers are taken as the internal unit, so ``memory: 4096`` is 4 GiB.
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_FREQ_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(MHz|GHz)?\s*$", re.IGNORECASE)

# Binary prefixes are what admins mean for memory and disks; decimal ones (GB) are
# accepted and converted exactly, because vendors' datasheets use them.
_SIZE_FACTORS_BYTES: dict[str, int] = {
    "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
    "p": 1000**5, "pb": 1000**5, "pib": 1024**5, "pi": 1024**5,
}
MIB = 1024**2
MAX_MIB = 1024**3 * 64  # 64 PiB: anything larger is a typo, not a radiology site


def parse_size_mib(value: object) -> int:
    """Return ``value`` in MiB; raise ``ValueError`` with a readable reason if it is not a size."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 32GiB, got a boolean")
    if isinstance(value, int):
        mib = value
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a size such as 32GiB")
        mib = int(value)
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size; write it like 512MiB, 32GiB or 4TiB")
        number, unit = m.group(1), (m.group(2) or "mib").lower()
        factor = _SIZE_FACTORS_BYTES.get(unit)
        if factor is None:
            raise ValueError(f"unknown size unit in {value!r}; use MiB, GiB or TiB")
        nbytes = float(number) * factor
        if nbytes > MAX_MIB * MIB:
            raise ValueError(f"{value!r} is larger than 64PiB")
        if nbytes and nbytes < MIB:
            raise ValueError(f"{value!r} is smaller than 1MiB")
        mib = int(round(nbytes / MIB))
    else:
        raise ValueError(f"expected a size such as 32GiB, got {type(value).__name__}")
    if mib < 0:
        raise ValueError("a size cannot be negative")
    if mib > MAX_MIB:
        raise ValueError("size is larger than 64PiB")
    return mib


def parse_mhz(value: object) -> int:
    """Return ``value`` in MHz (``8000MHz``, ``2.4GHz`` or a bare integer of MHz)."""
    if isinstance(value, bool):
        raise ValueError("expected a frequency such as 2000MHz, got a boolean")
    if isinstance(value, int):
        mhz = value
    elif isinstance(value, float):
        mhz = int(value)
    elif isinstance(value, str):
        m = _FREQ_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a frequency; write it like 2000MHz or 2.4GHz")
        number, unit = float(m.group(1)), (m.group(2) or "mhz").lower()
        mhz = int(round(number * (1000 if unit == "ghz" else 1)))
    else:
        raise ValueError(f"expected a frequency such as 2000MHz, got {type(value).__name__}")
    if mhz < 0:
        raise ValueError("a frequency cannot be negative")
    if mhz > 10_000_000:
        raise ValueError("frequency is implausibly large (over 10 THz)")
    return mhz


def format_mib(mib: int) -> str:
    """Render MiB the way an admin writes it: ``32GiB``, ``1536MiB``, ``4TiB``."""
    for unit, factor in (("TiB", 1024 * 1024), ("GiB", 1024)):
        if mib >= factor and mib % factor == 0:
            return f"{mib // factor}{unit}"
    return f"{mib}MiB"
