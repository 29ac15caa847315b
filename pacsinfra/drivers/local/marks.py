"""The local driver's ownership marks: small JSON files, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pacsinfra.drivers.base import Ownership, Spec, spec_from_dict, spec_to_dict
from pacsinfra.fsutil import write_atomic

MARK_FORMAT = "pacsinfra-local/1"


def write_mark(path: Path, spec: Spec, owner: Ownership) -> None:
    """Record ``spec`` and pacsinfra's mark at ``path``."""
    data = {"format": MARK_FORMAT, "owner": owner.to_dict(), "spec": spec_to_dict(spec)}
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_mark(path: Path) -> tuple[Spec, Ownership | None] | None:
    """The spec and mark at ``path``; None when absent or unreadable (not ours)."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MARK_FORMAT:
        return None
    try:
        spec = spec_from_dict(data["spec"])
        raw = data.get("owner")
        owner = Ownership(**raw) if isinstance(raw, dict) else None
    except (KeyError, TypeError, ValueError):
        return None
    return spec, owner
