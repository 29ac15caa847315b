"""Site overlays (``sites:`` merged by ``--site``) and variables (``${var.name}``).

Overlay merge rules (documented in docs/blueprint.md):

- mappings merge key by key, recursively;
- anything else (scalars, lists) in the overlay replaces the base value;
- ``null`` in the overlay deletes the key (drop a role, a network, a setting).

Variables: ``${var.name}`` anywhere in a string value. A value that is exactly one
reference takes the variable's value with its type (``count: ${var.n}`` with
``n: 3`` from a var file is the integer 3); inside a longer string it is
interpolated as text. ``$${`` writes a literal ``${``. Values come from, lowest
precedence first: the blueprint's ``variables:`` section, ``--var-file`` files in
order, ``--var key=value``. An unknown variable is an error at the place it is used.

Both work on plain values plus their :class:`~pacsinfra.blueprint.yaml_safe.Loc`
trees, so every diagnostic still points into the file the value came from.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from pacsinfra.blueprint.yaml_safe import Loc
from pacsinfra.errors import Diagnostic

VAR_RE = re.compile(r"\$(\$?)\{\s*([^}]*?)\s*\}")
VAR_NAME_RE = re.compile(r"^var\.([A-Za-z_][A-Za-z0-9_-]*)$")
DELETE = None  # an overlay value of null deletes the key
# What a value with an unresolvable reference becomes: its error is reported once, at
# the reference; a null keeps the raw text from causing follow-up errors elsewhere.
UNRESOLVED = None


def merge(base: Any, base_loc: Loc | None, over: Any, over_loc: Loc | None) -> tuple[Any, Loc | None]:
    """``over`` deep-merged onto ``base``; new values and Loc trees (inputs are not modified)."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over, over_loc
    out = dict(base)
    loc = Loc(base_loc.file, base_loc.line, base_loc.col) if base_loc else None
    if loc is not None and base_loc is not None:
        loc.key_line, loc.key_col = base_loc.key_line, base_loc.key_col
        loc.children = dict(base_loc.children) if isinstance(base_loc.children, dict) else {}
    for key, value in over.items():
        child_over = over_loc.child(key) if over_loc else None
        if value is DELETE:
            out.pop(key, None)
            if loc is not None and isinstance(loc.children, dict):
                loc.children.pop(key, None)
            continue
        child_base = base_loc.child(key) if base_loc else None
        merged, mloc = merge(out.get(key), child_base, value, child_over)
        out[key] = merged
        if loc is not None and isinstance(loc.children, dict) and mloc is not None:
            loc.children[key] = mloc
    return out, loc


def closest(name: str, choices: list[str] | set[str] | Mapping[str, Any]) -> str | None:
    """The closest valid name to ``name`` (difflib), or None."""
    names = [str(c) for c in choices]
    found = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: str, choices: list[str] | set[str] | Mapping[str, Any], what: str) -> str:
    """A hint: ``did you mean 'x'?`` plus the valid names (shortened)."""
    names = sorted(str(c) for c in choices)
    best = closest(name, names)
    listing = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    if not names:
        return f"there are no {what}"
    if best:
        return f"did you mean {best!r}? {what}: {listing}"
    return f"{what}: {listing}"


class Substituter:
    """Replaces ``${var.name}`` in string values; records unknown names as diagnostics."""

    def __init__(self, values: Mapping[str, Any], locs: Mapping[str, Loc] | None = None) -> None:
        self.values = dict(values)
        # where each variable's value was written (var file or variables:), so a bad
        # value is reported where it can be fixed; --var values have none
        self.locs = dict(locs or {})
        self.used: set[str] = set()
        self.diags: list[Diagnostic] = []

    def run(self, value: Any, loc: Loc | None, path: str = "") -> Any:
        """A copy of ``value`` with every reference substituted."""
        return self.run_located(value, loc, path)[0]

    def run_located(self, value: Any, loc: Loc | None, path: str = "") -> tuple[Any, Loc | None]:
        """Like :meth:`run`, plus the Loc tree of the result.

        A value that is exactly one reference takes the Loc of the variable's value
        (keeping the key position of the place it is used).
        """
        if isinstance(value, str):
            if "$" not in value:
                return value, loc
            whole = VAR_RE.fullmatch(value)
            if whole and not whole.group(1):
                ok, result = self._lookup(whole.group(2), loc, path)
                if not ok:
                    return UNRESOLVED, loc
                vloc = self.locs.get(whole.group(2)[4:].strip())
                if vloc is not None and loc is not None:
                    return result, vloc.with_key(loc.key_line, loc.key_col)
                return result, loc
            before = len(self.diags)
            text = self._string(value, loc, path)
            return (UNRESOLVED if len(self.diags) > before else text), loc
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            new_children: dict[Any, Loc] = {}
            for k, v in value.items():
                cl = loc.child(k) if loc else None
                nv, nl = self.run_located(v, cl, f"{path}.{k}" if path else str(k))
                out[k] = nv
                if nl is not cl and nl is not None:
                    new_children[k] = nl
            if new_children and loc is not None and isinstance(loc.children, dict):
                copy = loc.with_key(loc.key_line, loc.key_col)
                copy.children = {**loc.children, **new_children}
                return out, copy
            return out, loc
        if isinstance(value, list):
            items: list[Any] = []
            changed = False
            locs: list[Loc] = list(loc.children) if loc and isinstance(loc.children, list) else []
            for i, v in enumerate(value):
                cl = loc.child(i) if loc else None
                nv, nl = self.run_located(v, cl, f"{path}[{i}]")
                items.append(nv)
                if nl is not cl and nl is not None and i < len(locs):
                    locs[i] = nl
                    changed = True
            if changed and loc is not None:
                copy = loc.with_key(loc.key_line, loc.key_col)
                copy.children = locs
                return items, copy
            return items, loc
        return value, loc

    def _lookup(self, expr: str, loc: Loc | None, path: str) -> tuple[bool, Any]:
        m = VAR_NAME_RE.match(expr)
        if not m:
            self._error(
                loc,
                path,
                f"invalid reference ${{{expr}}}",
                "write variables as ${var.name}; use $${ for a literal ${",
                "var-syntax",
            )
            return False, None
        name = m.group(1)
        if name not in self.values:
            self._error(
                loc,
                path,
                f"unknown variable {name!r}",
                did_you_mean(name, self.values, "defined variables")
                + "; set it with --var, --var-file or the blueprint's variables:",
                "unknown-var",
            )
            return False, None
        self.used.add(name)
        return True, self.values[name]

    def _string(self, text: str, loc: Loc | None, path: str) -> Any:
        whole = VAR_RE.fullmatch(text)
        if whole and not whole.group(1):
            ok, value = self._lookup(whole.group(2), loc, path)
            return value if ok else text

        def repl(m: re.Match[str]) -> str:
            if m.group(1):  # $${...} is a literal ${...}
                return m.group(0)[1:]
            ok, value = self._lookup(m.group(2), loc, path)
            if not ok:
                return m.group(0)
            if isinstance(value, dict | list):
                self._error(
                    loc,
                    path,
                    f"variable {m.group(2)[4:]!r} is a {type(value).__name__} and cannot be "
                    "part of a longer string",
                    "use it as the whole value",
                    "var-type",
                )
                return m.group(0)
            if isinstance(value, bool):
                return "true" if value else "false"
            return "" if value is None else str(value)

        return VAR_RE.sub(repl, text)

    def _error(self, loc: Loc | None, path: str, message: str, hint: str, code: str) -> None:
        self.diags.append(
            Diagnostic(
                message=message,
                path=path,
                file=loc.file if loc else "",
                line=loc.line if loc else 0,
                column=loc.col if loc else 0,
                hint=hint,
                code=code,
            )
        )


__all__ = ["Substituter", "closest", "did_you_mean", "merge"]
