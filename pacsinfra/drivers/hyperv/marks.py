"""pacsinfra's ownership mark on Hyper-V objects: one JSON line ``pacsinfra:{...}``.

VMs and virtual switches carry it in their Notes; a storage directory carries it in the
file ``.pacsinfra-storage.json``. Besides the :class:`Ownership` it records the fields of
a spec that Hyper-V does not model (a machine's role, its guest addresses, disk mount
points...), so a spec read back from the host round-trips exactly. Those recorded fields
are pacsinfra's memory of what it asked for, not something Hyper-V enforces (see
docs/drivers/hyperv.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pacsinfra.specs import Ownership

MARK_PREFIX = "pacsinfra:"


def make_mark(owner: Ownership, recorded: Mapping[str, Any]) -> str:
    """The Notes line for an object owned by ``owner`` (one line, compact JSON)."""
    doc = {"owner": owner.to_dict(), "recorded": dict(recorded)}
    return MARK_PREFIX + json.dumps(doc, sort_keys=True, separators=(",", ":"))


def parse_mark(notes: Any) -> tuple[Ownership, dict[str, Any]] | None:
    """The owner and recorded fields in ``notes``, or None when it carries no valid mark."""
    if not isinstance(notes, str):
        return None
    text = notes.strip()
    if not text.startswith(MARK_PREFIX):
        return None
    try:
        doc = json.loads(text[len(MARK_PREFIX) :].splitlines()[0])
        owner = doc["owner"]
        mark = Ownership(site=str(owner["site"]), address=str(owner["address"]), lineage=str(owner["lineage"]))
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    recorded = doc.get("recorded")
    return mark, dict(recorded) if isinstance(recorded, dict) else {}
