"""Ownership marks as small JSON documents: written atomically to a file here, or as text
for a driver that stores them elsewhere (the ``static`` driver keeps them on its hosts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pacsinfra.fsutil import write_atomic
from pacsinfra.specs import Ownership, Spec, spec_from_dict, spec_to_dict

MARK_FORMAT = "pacsinfra-local/1"


def encode_mark(spec: Spec, owner: Ownership, fmt: str = MARK_FORMAT) -> str:
    """The mark document: format, pacsinfra's ownership and the spec as recorded."""
    data = {"format": fmt, "owner": owner.to_dict(), "spec": spec_to_dict(spec)}
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def decode_mark(text: str, fmt: str = MARK_FORMAT) -> tuple[Spec, Ownership | None] | None:
    """The spec and mark in ``text``; None when it is not a mark of format ``fmt`` (not ours)."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != fmt:
        return None
    try:
        spec = spec_from_dict(data["spec"])
        raw = data.get("owner")
        owner = Ownership(**raw) if isinstance(raw, dict) else None
    except (KeyError, TypeError, ValueError):
        return None
    return spec, owner


def write_mark(path: Path, spec: Spec, owner: Ownership) -> None:
    """Record ``spec`` and pacsinfra's mark at ``path``."""
    write_atomic(path, encode_mark(spec, owner))


def read_mark(path: Path) -> tuple[Spec, Ownership | None] | None:
    """The spec and mark at ``path``; None when absent or unreadable (not ours)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return decode_mark(text)
