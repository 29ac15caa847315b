"""Load a blueprint: YAML -> overlay -> variables -> model -> cross-field checks.

:func:`load_blueprint` collects every problem from every stage it can reach and
raises one :class:`~pacsinfra.errors.BlueprintError` carrying all of them, each
located at file:line:col (inside the blueprint, a separate overlay file or a var
file). It never raises anything else for bad input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsinfra.blueprint.diagnose import format_path, pydantic_diagnostics
from pacsinfra.blueprint.overlay import Substituter, did_you_mean, merge
from pacsinfra.blueprint.yaml_safe import Loc, load_yaml
from pacsinfra.errors import BlueprintError, Diagnostic

_VAR_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass
class LoadedBlueprint:
    """A validated site, with where each field came from."""

    site: Any  # pacsinfra.blueprint.model.Site
    path: Path
    site_name: str | None = None
    warnings: list[Diagnostic] = field(default_factory=list)
    loc: Loc | None = None

    def locate(self, field_path: str) -> tuple[str, int, int] | None:
        """``(file, line, col)`` of a field such as ``machines.archive.disks[0].size``."""
        node = locate_in(self.loc, split_path(field_path))
        if node is None:
            return None
        return node.file, node.line, node.col


def split_path(field_path: str) -> list[Any]:
    """``a.b[0].c`` -> ``["a", "b", 0, "c"]``."""
    parts: list[Any] = []
    for m in _PATH_PART.finditer(field_path):
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return parts


def locate_in(loc: Loc | None, parts: Sequence[Any]) -> Loc | None:
    """The deepest known Loc along ``parts`` (None when even the first part is unknown)."""
    node = loc
    for p in parts:
        if node is None:
            return None
        nxt = node.child(p)
        if nxt is None:
            return node if node is not loc else None
        node = nxt
    return node


def _diag(file: str, message: str, *, path: str = "", loc: Loc | None = None, hint: str = "",
          code: str = "invalid", key: bool = False) -> Diagnostic:
    line = col = 0
    if loc is not None:
        line, col = (loc.key_line, loc.key_col) if key and loc.key_line else (loc.line, loc.col)
        file = loc.file
    return Diagnostic(message=message, path=path, file=file, line=line, column=col, hint=hint, code=code)


def _display(path: Path) -> str:
    return str(path)


def _load_overlay(base: dict[str, Any], base_loc: Loc | None, site: str, file: str,
                  bp_dir: Path, diags: list[Diagnostic]) -> tuple[Any, Loc | None]:
    sites = base.get("sites")
    sites_loc = base_loc.child("sites") if base_loc else None
    if not isinstance(sites, dict) or site not in sites:
        names = sorted(sites) if isinstance(sites, dict) else []
        diags.append(
            _diag(file, f"unknown site {site!r}", path="sites", loc=sites_loc, key=True,
                  hint=did_you_mean(site, names, "sites in this blueprint"), code="unknown-site")
        )
        return None, None
    over = sites[site]
    over_loc = sites_loc.child(site) if sites_loc else None
    if isinstance(over, str) and over.strip():  # its own file, relative to the blueprint
        opath = (bp_dir / over).resolve() if not Path(over).is_absolute() else Path(over)
        over, over_loc, odiags = load_yaml(opath, _display(opath))
        diags.extend(odiags)
        if over is None and not odiags:
            diags.append(_diag(str(opath), "the overlay file is empty", code="empty"))
            return None, None
    if over is None:
        return {}, over_loc
    if not isinstance(over, dict):
        diags.append(_diag(file, f"site overlay {site!r} must be a mapping (or a file name)",
                           path=f"sites.{site}", loc=over_loc, code="type"))
        return None, None
    for bad in ("sites", "apiVersion", "kind"):
        if bad in over:
            diags.append(_diag(file, f"an overlay cannot change {bad!r}", path=f"sites.{site}.{bad}",
                               loc=over_loc.child(bad) if over_loc else None, key=True,
                               code="overlay"))
    over = {k: v for k, v in over.items() if k not in ("sites", "apiVersion", "kind")}
    return over, over_loc


def _variables(merged: dict[str, Any], merged_loc: Loc | None, file: str,
               variables: Mapping[str, str] | None, var_files: Sequence[str | Path],
               diags: list[Diagnostic], value_locs: dict[str, Loc]
               ) -> tuple[dict[str, Any], set[str]]:
    values: dict[str, Any] = {}
    given: set[str] = set()
    declared = merged.get("variables")
    vsec = merged_loc.child("variables") if merged_loc else None
    if isinstance(declared, dict):
        values.update(declared)
        for k in declared:
            kl = vsec.child(k) if vsec else None
            if kl is not None:
                value_locs[str(k)] = kl
    for vf in var_files:
        vpath = Path(vf)
        data, vloc, vdiags = load_yaml(vpath, _display(vpath))
        diags.extend(vdiags)
        if data is None:
            if not vdiags:
                diags.append(_diag(str(vpath), "the var file is empty", code="empty"))
            continue
        if not isinstance(data, dict):
            diags.append(_diag(str(vpath), "a var file is a mapping of name: value", loc=vloc,
                               code="type"))
            continue
        for k, v in data.items():
            if not _VAR_KEY.match(str(k)):
                diags.append(_diag(str(vpath), f"invalid variable name {k!r}",
                                   loc=vloc.child(k) if vloc else None, key=True, code="var-name",
                                   hint="letters, digits, '_' and '-', starting with a letter"))
                continue
            values[str(k)] = v
            given.add(str(k))
            kl = vloc.child(k) if vloc else None
            if kl is not None:
                value_locs[str(k)] = kl
    for k, v in (variables or {}).items():
        if not _VAR_KEY.match(str(k)):
            diags.append(_diag("<command line>", f"invalid variable name {k!r} in --var",
                               code="var-name",
                               hint="letters, digits, '_' and '-', starting with a letter"))
            continue
        values[str(k)] = v
        given.add(str(k))
        value_locs.pop(str(k), None)  # the command line wins and has no file position
    return values, given


def _parse_yaml_root(path: Path, diags: list[Diagnostic]) -> tuple[Any, Loc | None, str]:
    file = _display(path)
    data, loc, ydiags = load_yaml(path, file)
    diags.extend(ydiags)
    if data is None and not ydiags:
        diags.append(_diag(file, "the blueprint is empty",
                           hint="start from examples/quickstart.yaml", code="empty"))
    elif data is not None and not isinstance(data, dict):
        diags.append(_diag(file, f"a blueprint is a mapping (apiVersion, kind, metadata, ...), "
                                 f"not a {type(data).__name__}", loc=loc, code="type"))
        data = None
    return data, loc, file


def validate(path: str | Path, *, site: str | None = None,
             variables: Mapping[str, str] | None = None,
             var_files: Sequence[str | Path] = (), strict: bool = False,
             all_sites: bool = False) -> tuple[LoadedBlueprint | None, list[Diagnostic]]:
    """Every diagnostic (errors and warnings) and the loaded site when there is no error.

    With ``all_sites`` (and no ``site``), every overlay in ``sites:`` is validated too;
    its diagnostics that the base does not already have are added, marked
    ``[site NAME]``. The returned site is still the base.
    """
    root_diags: list[Diagnostic] = []
    data, loc, file = _parse_yaml_root(Path(path), root_diags)
    root = (data, loc, file, root_diags)  # parsed once, shared by every overlay's run
    loaded, diags = _validate_one(path, site=site, variables=variables, var_files=var_files,
                                  strict=strict, root=root)
    if not all_sites or site is not None:
        return loaded, diags
    names = [str(k) for k in data["sites"]] if (
        isinstance(data, dict) and isinstance(data.get("sites"), dict) and not root_diags
    ) else []
    if not names:
        return loaded, diags
    seen = {(d.file, d.line, d.column, d.path, d.message) for d in diags}
    extra: list[Diagnostic] = []
    for name in names:
        _, odiags = _validate_one(path, site=name, variables=variables, var_files=var_files,
                                  strict=strict, root=root)
        for d in odiags:
            key = (d.file, d.line, d.column, d.path, d.message)
            if key in seen or d.code == "unused-var":
                continue
            seen.add(key)
            extra.append(Diagnostic(message=f"[site {name}] {d.message}", path=d.path,
                                    file=d.file, line=d.line, column=d.column, hint=d.hint,
                                    severity=d.severity, code=d.code))
    if any(d.severity == "error" for d in extra):
        loaded = None
    return loaded, _finish(diags + extra, strict)


def _validate_one(path: str | Path, *, site: str | None,
                  variables: Mapping[str, str] | None,
                  var_files: Sequence[str | Path], strict: bool,
                  root: tuple[Any, Loc | None, str, list[Diagnostic]] | None = None,
                  ) -> tuple[LoadedBlueprint | None, list[Diagnostic]]:
    from pydantic import ValidationError

    from pacsinfra.blueprint.checks import run_checks
    from pacsinfra.blueprint.checks_raw import SUPERSEDED, router_references
    from pacsinfra.blueprint.model import Site
    from pacsinfra.blueprint.repair import repair_unknown_keys

    bp = Path(path)
    diags: list[Diagnostic] = []
    if root is None:
        data, loc, file = _parse_yaml_root(bp, diags)
    else:
        data, loc, file, root_diags = root
        diags.extend(root_diags)
    if data is None:
        return None, diags
    if any(d.code == "yaml-bomb" for d in diags):
        return None, diags
    merged, merged_loc = data, loc
    if site is not None:
        over, over_loc = _load_overlay(data, loc, site, file, bp.parent, diags)
        if over is None:
            return None, diags
        base = {k: v for k, v in data.items() if k != "sites"}
        merged_any, merged_loc = merge(base, loc, over, over_loc)
        merged = dict(merged_any)
        if "sites" in data:
            merged["sites"] = data["sites"]
            if merged_loc is not None and isinstance(merged_loc.children, dict) and loc:
                sl = loc.child("sites")
                if sl is not None:
                    merged_loc.children["sites"] = sl
    value_locs: dict[str, Loc] = {}
    values, given = _variables(merged, merged_loc, file, variables, var_files, diags, value_locs)
    sub = Substituter(values, value_locs)
    body = {k: v for k, v in merged.items() if k not in ("variables", "sites")}
    substituted, merged_loc = sub.run_located(body, merged_loc)
    for k in ("variables", "sites"):
        if k in merged:
            substituted[k] = merged[k]
    diags.extend(sub.diags)
    for name in sorted(given - sub.used):
        diags.append(Diagnostic(message=f"variable {name!r} is set but never used", code="unused-var",
                                severity="warning", file="<command line>",
                                hint=did_you_mean(name, sorted(sub.used), "used variables")))
    precise = router_references(substituted, merged_loc, file)
    diags.extend(precise)
    try:
        model = Site.model_validate(substituted)
    except ValidationError as exc:
        # A node the YAML reader or the variable stage already flagged (and replaced)
        # needs no second, vaguer message from the model.
        flagged = {(d.file, d.line, d.column) for d in diags if d.line}
        diags.extend(
            d for d in pydantic_diagnostics(exc, substituted, merged_loc, Site, file)
            if (d.file, d.line, d.column) not in flagged
            and not (precise and any(s in d.message for s in SUPERSEDED))
        )
        # Still run the cross-field checks over the entries that are valid, so a
        # typo in one role does not hide a dangling reference in another.
        fixed, fixed_loc, changed = repair_unknown_keys(
            substituted, merged_loc, list(exc.errors(include_url=False)), Site
        )
        first_exc: Any = exc
        if changed:
            try:
                Site.model_validate(fixed)
                first_exc = None
            except ValidationError as again:
                first_exc = again
        if first_exc is None:
            partial: tuple[Any, dict[str, Any]] | None = (Site.model_validate(fixed), {})
        else:
            partial = partial_site(fixed, first_exc)
        if partial is not None:
            site_model, dropped = partial
            known = {(x.file, x.line, x.column, x.message) for x in diags}
            diags.extend(
                d for d in run_checks(site_model, fixed_loc, file, dropped=dropped)
                if (d.file, d.line, d.column, d.message) not in known
            )
        return None, _finish(diags, strict)
    diags.extend(run_checks(model, merged_loc, file))
    diags = _finish(diags, strict)
    if any(d.severity == "error" for d in diags):
        return None, diags
    loaded = LoadedBlueprint(site=model, path=bp, site_name=site,
                             warnings=[d for d in diags if d.severity == "warning"], loc=merged_loc)
    return loaded, diags


MAX_DIAGNOSTICS = 500
SECTIONS = ("images", "networks", "storage", "machines", "services")


def partial_site(data: dict[str, Any], exc: Any) -> tuple[Any, dict[str, Any]] | None:
    """The site without its invalid entries, and what was dropped (None if nothing is usable).

    ``dropped`` maps a section (``machines``...) to the names present in the file but
    invalid, plus ``"*"`` for top-level parts replaced by placeholders; checks use it
    to stay silent about references to things that exist but did not validate.
    """
    from pydantic import ValidationError

    from pacsinfra.blueprint.model import Site

    bad_entries: dict[str, set[str]] = {s: set() for s in SECTIONS}
    bad_top: set[str] = set()
    for err in exc.errors(include_url=False):
        loc = err.get("loc", ())
        if len(loc) >= 2 and loc[0] in SECTIONS and isinstance(data.get(loc[0]), dict) and (
            loc[1] in data[loc[0]]
        ):
            bad_entries[str(loc[0])].add(str(loc[1]))
        elif loc:
            bad_top.add(str(loc[0]))
        else:
            return None
    fixed: dict[str, Any] = dict(data)
    for sec in SECTIONS:
        if sec in bad_top:
            fixed[sec] = {}
            raw = data.get(sec)
            bad_entries[sec] = {str(k) for k in raw} if isinstance(raw, dict) else set()
        elif bad_entries[sec]:
            fixed[sec] = {k: v for k, v in data[sec].items() if k not in bad_entries[sec]}
    placeholders = {"apiVersion": "pacsinfra/v1", "kind": "Site", "metadata": {"name": "site"},
                    "provider": {"driver": "local"}, "variables": {}, "sites": {}, "deploy": None}
    for key in bad_top:
        if key in placeholders:
            fixed[key] = placeholders[key]
        elif key not in SECTIONS:
            fixed.pop(key, None)
    try:
        site = Site.model_validate(fixed)
    except ValidationError:
        return None
    dropped: dict[str, Any] = {k: v for k, v in bad_entries.items() if v}
    if bad_top & {"provider", "metadata", "deploy"}:
        dropped["*"] = bad_top & {"provider", "metadata", "deploy"}
    raw_uses: set[str] = set()
    machines = data.get("machines")
    if isinstance(machines, dict):
        for role in machines.values():
            if isinstance(role, dict) and isinstance(role.get("services"), list):
                raw_uses.update(str(x) for x in role["services"] if isinstance(x, str))
    dropped["service-users"] = raw_uses
    return site, dropped


def _finish(diags: list[Diagnostic], strict: bool) -> list[Diagnostic]:
    out = []
    seen: set[tuple[Any, ...]] = set()
    for d in diags:
        if strict and d.severity == "warning":
            d = Diagnostic(message=d.message, path=d.path, file=d.file, line=d.line,
                           column=d.column, hint=d.hint, severity="error", code=d.code)
        key = (d.file, d.line, d.column, d.path, d.message)
        if key in seen:
            continue
        seen.add(key)
        out.append(d)
    out.sort(key=lambda d: (d.severity != "error", d.file, d.line, d.column))
    if len(out) > MAX_DIAGNOSTICS:
        # a generated file with 10^5 bad entries needs a fix, not a 10^5-line report
        hidden = len(out) - MAX_DIAGNOSTICS
        first = out[0]
        out = out[:MAX_DIAGNOSTICS]
        out.append(Diagnostic(message=f"{hidden} more problems not shown", file=first.file,
                              severity=first.severity, code="truncated",
                              hint="fix the ones above and validate again"))
    return out


def load_blueprint(path: str | Path, *, site: str | None = None,
                   variables: Mapping[str, str] | None = None,
                   var_files: Sequence[str | Path] = (), strict: bool = False) -> LoadedBlueprint:
    """The validated blueprint; raises :class:`BlueprintError` with every problem at once."""
    loaded, diags = validate(path, site=site, variables=variables, var_files=var_files,
                             strict=strict)
    if loaded is None:
        raise BlueprintError(diagnostics=diags)
    return loaded


__all__ = ["LoadedBlueprint", "format_path", "load_blueprint", "locate_in", "split_path", "validate"]
