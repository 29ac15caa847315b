"""Best-effort repair of misspelled keys, so cross-field checks can run on the rest.

When validation fails, ``load`` still runs the cross-field checks over what is usable.
An unknown key is the most common mistake and the least ambiguous: it is renamed to
the closest valid key when that key is absent (``cpus`` -> ``cpu``), else removed.
The unknown-key error itself is always reported; the repair only lets the checks see
the intended site. Inputs are never modified: containers and Loc nodes along each
edited path are copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pacsinfra.blueprint.diagnose import fields_at, resolve
from pacsinfra.blueprint.overlay import closest
from pacsinfra.blueprint.yaml_safe import Loc


def _copy_loc(loc: Loc | None) -> Loc | None:
    if loc is None:
        return None
    c = loc.with_key(loc.key_line, loc.key_col)
    if isinstance(loc.children, dict):
        c.children = dict(loc.children)
    elif isinstance(loc.children, list):
        c.children = list(loc.children)
    return c


def _rewrite(data: Any, loc: Loc | None, parent: Sequence[Any], bad: str,
             new: str | None) -> tuple[Any, Loc | None]:
    """Copy of ``data``/``loc`` with key ``bad`` under ``parent`` renamed to ``new`` (or removed)."""
    if not parent:
        if not isinstance(data, dict) or bad not in data:
            return data, loc
        out = dict(data)
        value = out.pop(bad)
        nloc = _copy_loc(loc)
        child = nloc.children.get(bad) if nloc is not None and isinstance(nloc.children, dict) else None
        if new and new not in out:
            out[new] = value
            if nloc is not None and isinstance(nloc.children, dict) and child is not None:
                nloc.children[new] = child  # still points at the misspelled key
        return out, nloc
    head, rest = parent[0], parent[1:]
    if isinstance(data, dict) and head in data:
        sub, subloc = _rewrite(data[head], loc.child(head) if loc else None, rest, bad, new)
        out_d = dict(data)
        out_d[head] = sub
        nloc = _copy_loc(loc)
        if nloc is not None and isinstance(nloc.children, dict) and subloc is not None:
            nloc.children[head] = subloc
        return out_d, nloc
    if isinstance(data, list) and isinstance(head, int) and 0 <= head < len(data):
        sub, subloc = _rewrite(data[head], loc.child(head) if loc else None, rest, bad, new)
        out_l = list(data)
        out_l[head] = sub
        nloc = _copy_loc(loc)
        if nloc is not None and isinstance(nloc.children, list) and subloc is not None:
            nloc.children[head] = subloc
        return out_l, nloc
    return data, loc


def repair_unknown_keys(data: Any, loc: Loc | None, errors: Sequence[Any],
                        model: Any) -> tuple[Any, Loc | None, bool]:
    """(data, loc, changed): every ``extra_forbidden`` key renamed to its closest valid key
    (when that one is absent) or removed."""
    changed = False
    for err in errors:
        if err.get("type") != "extra_forbidden":
            continue
        eloc = tuple(err.get("loc", ()))
        path, _, _ = resolve(data, loc, eloc, missing_last=False)
        if not path or not isinstance(path[-1], str):
            continue
        valid = fields_at(model, eloc[:-1]) or []
        best = closest(path[-1], valid)
        data, loc = _rewrite(data, loc, path[:-1], path[-1], best)
        changed = True
    return data, loc, changed


__all__ = ["repair_unknown_keys"]
