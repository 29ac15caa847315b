"""Turn pydantic's validation errors into located, readable diagnostics.

A pydantic error location is a tuple of field names, list indices and (for unions)
branch labels. Walking it over the loaded data and its Loc tree finds the YAML node
at fault; segments that are not in the data (union tags, the name of a missing
field) are skipped or named in the path.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from pacsinfra.blueprint.overlay import did_you_mean
from pacsinfra.blueprint.yaml_safe import Loc
from pacsinfra.errors import Diagnostic

SECRET_KEYS = frozenset({"password", "token", "secret_key", "access_key", "ssh_key", "secret"})
SECRET_HINT = "reference it instead: {env: NAME}, {file: /path/to/secret} or {keyring: service/user}"

_CODES = {
    "extra_forbidden": "unknown-field",
    "missing": "missing",
    "literal_error": "invalid-choice",
    "union_tag_invalid": "invalid-kind",
    "union_tag_not_found": "missing",
    "value_error": "invalid",
}
_BOUNDS = {
    "less_than_equal": ("out of range: the maximum is", "le"),
    "less_than": ("out of range: it must be less than", "lt"),
    "greater_than_equal": ("out of range: the minimum is", "ge"),
    "greater_than": ("out of range: it must be greater than", "gt"),
}
_TYPE_ERRORS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
}
_QUOTED = re.compile(r"'([^']*)'")


#: settings that have moved, by (parent, field): where they are now. Since one home for
#: the deploy login (``deploy``), the per-provider copies are gone.
_MOVED = {
    ("deploy", "ssh_user"): "deploy.user",
    ("deploy", "ssh_port"): "deploy.port",
    ("deploy", "ssh_key"): "deploy.key_file (a path) or deploy.key (a secret reference)",
    ("kvm", "ssh"): "deploy (user, key_file, known_hosts, host_keys, ...: one login for "
                    "the whole site)",
    ("vsphere", "ssh"): "deploy (user, key_file, known_hosts, host_keys, ...: one login "
                        "for the whole site)",
    ("hyperv", "ssh"): "deploy (user, key_file, known_hosts, host_keys, ...: one login for "
                       "the whole site)",
    **{("static", f): f"deploy.{f} (the site's login; a host entry may override it)"
       for f in ("port", "user", "key_file", "key", "known_hosts", "python", "root",
                 "find_links", "system_site_packages", "wheel", "engine",
                 "ansible_threshold", "init")},
}


def moved_hint(loc: Sequence[Any]) -> str:
    """Where a field that moved is set now (empty when it did not move)."""
    if len(loc) < 2:
        return ""
    now = _MOVED.get((str(loc[-2]), str(loc[-1])))
    return f"moved: set it as {now}" if now else ""


def format_path(parts: Sequence[Any]) -> str:
    """``("machines", "archive", "disks", 0, "size")`` -> ``machines.archive.disks[0].size``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _unwrap(t: Any) -> Any:
    while typing.get_origin(t) is typing.Annotated:
        t = typing.get_args(t)[0]
    return t


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _field_names(model: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        out[f.alias or name] = f.annotation
    return out


def _tag_of(model: type[BaseModel]) -> str | None:
    f = model.model_fields.get("kind")
    if f is None:
        return None
    args = typing.get_args(f.annotation)
    return str(args[0]) if args and typing.get_origin(f.annotation) is typing.Literal else None


def _step(t: Any, seg: Any) -> Any:
    t = _unwrap(t)
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        members = [_unwrap(a) for a in typing.get_args(t) if a is not type(None)]
        for m in members:
            if _is_model(m) and _tag_of(m) == seg:
                return m  # a discriminated union's branch label
        models = [m for m in members if _is_model(m)]
        if len(models) == 1:
            return _step(models[0], seg)
        containers = [m for m in members if typing.get_origin(m) in (dict, list)]
        if len(containers) == 1:
            return _step(containers[0], seg)
        return t
    if origin is dict:
        return typing.get_args(t)[1]
    if origin is list:
        return typing.get_args(t)[0]
    if _is_model(t):
        fields = _field_names(t)
        if isinstance(seg, str) and seg in fields:
            return fields[seg]
        return t  # a branch label: stay on this model
    return t


def fields_at(root: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The valid keys of the model reached by ``loc`` from ``root`` (None if not a model)."""
    t: Any = root
    for seg in loc:
        t = _step(t, seg)
    t = _unwrap(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        models = [m for m in typing.get_args(t) if _is_model(_unwrap(m))]
        if len(models) == 1:
            t = _unwrap(models[0])
    if _is_model(t):
        return sorted(_field_names(t))
    return None


def resolve(data: Any, root: Loc | None, loc: Sequence[Any], missing_last: bool) -> tuple[list[Any], Loc | None, bool]:
    """Walk ``loc`` over the data: (data path, Loc of the deepest node found, key-position?)."""
    cur, cur_loc = data, root
    path: list[Any] = []
    at_key = False
    for i, seg in enumerate(loc):
        if isinstance(cur, dict) and isinstance(seg, str) and seg in cur:
            cur = cur[seg]
            cur_loc = cur_loc.child(seg) if cur_loc else None
            path.append(seg)
            at_key = True
        elif isinstance(cur, list) and isinstance(seg, int) and 0 <= seg < len(cur):
            cur = cur[seg]
            cur_loc = cur_loc.child(seg) if cur_loc else None
            path.append(seg)
            at_key = False
        elif missing_last and i == len(loc) - 1:
            path.append(seg)
        # else: a union branch label or validator name: not part of the data
    return path, cur_loc, at_key


def pydantic_diagnostics(
    exc: Any, data: Any, root: Loc | None, model: type[BaseModel], file: str
) -> list[Diagnostic]:
    """One diagnostic per problem (union alternatives at one place merged into one)."""
    grouped: dict[str, Diagnostic] = {}
    order: list[str] = []
    for err in exc.errors(include_url=False):
        etype = err.get("type", "")
        loc = tuple(err.get("loc", ()))
        missing = etype in ("missing", "union_tag_not_found")
        path, node, at_key = resolve(data, root, loc, missing_last=etype == "missing")
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, ") :]
        hint = ""
        code = _CODES.get(etype, etype or "invalid")
        inp = err.get("input")
        ctx = err.get("ctx") or {}
        last_key = next((p for p in reversed(path) if isinstance(p, str)), "")
        if etype == "extra_forbidden":
            name = str(path[-1]) if path else "?"
            msg = f"unknown field {name!r}"
            valid = fields_at(model, loc[:-1]) or []
            hint = moved_hint(loc) or (did_you_mean(name, valid, "valid fields") if valid else "")
        elif etype == "missing":
            msg = f"missing required field {path[-1]!r}" if path else "missing required field"
        elif etype == "literal_error":
            expected = _QUOTED.findall(str(ctx.get("expected", "")))
            msg = f"{_short(inp)} is not one of {', '.join(expected)}" if expected else msg
            if isinstance(inp, str) and expected:
                hint = did_you_mean(inp, expected, "valid values")
        elif etype == "union_tag_invalid":
            expected = _QUOTED.findall(str(ctx.get("expected_tags", "")))
            msg = f"unknown {str(ctx.get('discriminator', 'kind')).strip(chr(39))} {_short(inp and ctx.get('tag'))}"
            hint = did_you_mean(str(ctx.get("tag", "")), expected, "valid kinds")
        elif etype == "string_pattern_mismatch":
            pattern = str(ctx.get("pattern", ""))
            if pattern.startswith("^[a-z0-9]([a-z0-9-]"):
                msg = f"{_short(inp)} is not a valid name"
                hint = "lower-case letters, digits and '-' (1-63, no leading/trailing '-')"
                if isinstance(inp, str):
                    fixed = re.sub(r"[^a-z0-9-]+", "-", inp.lower()).strip("-")[:63]
                    if fixed:
                        hint += f", e.g. {fixed!r}"
            elif pattern.startswith("^(ssh-ed25519"):
                msg = f"{_short(inp)} is not an SSH public key"
                hint = "write it as known_hosts does: 'ssh-ed25519 AAAAC3Nza... [comment]'"
            elif pattern.startswith("^(/|~/)"):
                msg = f"{_short(inp)} is not an absolute path"
                hint = "start it with / (or ~/ on the pacsinfra machine), no spaces"
            elif pattern.startswith("^([A-Za-z0-9]([A-Za-z0-9.-]"):
                msg = f"{_short(inp)} is not a host address"
                hint = "an IP address or a DNS name"
            elif pattern.startswith("^[a-z_][a-z0-9_.-]"):
                msg = f"{_short(inp)} is not a user name"
            else:
                msg = f"{_short(inp)} does not match the pattern {pattern}"
        elif etype in _BOUNDS:
            limit = ctx.get(_BOUNDS[etype][1])
            msg = f"{_short(inp)} is {_BOUNDS[etype][0]} {limit}"
            code = "range"
        elif etype in _TYPE_ERRORS:
            msg = f"expected {_TYPE_ERRORS[etype]}, got {_describe(inp)}"
            code = "type"
        elif etype == "union_tag_not_found":
            expected = ["archive", "router", "database", "viewer"]
            msg = "missing required field 'kind'"
            hint = "kind is one of " + ", ".join(expected)
        if last_key in SECRET_KEYS and isinstance(inp, str) and etype != "missing":
            msg = f"a literal secret is not allowed in a blueprint ({last_key!r} is a plain string)"
            hint = SECRET_HINT
            code = "literal-secret"
        key = format_path(path) or "<root>"
        line = col = 0
        if node is not None:
            if at_key and node.key_line and (etype == "extra_forbidden" or missing):
                line, col = node.key_line, node.key_col
            else:
                line, col = node.line, node.col
            file_ = node.file
        else:
            file_ = file
        if key in grouped:
            old = grouped[key]
            if msg in old.message:
                continue
            grouped[key] = Diagnostic(
                message=f"{old.message}; or {msg}",
                path=old.path,
                file=old.file,
                line=old.line,
                column=old.column,
                hint=old.hint or hint,
                code=old.code,
            )
            continue
        grouped[key] = Diagnostic(
            message=msg, path=format_path(path), file=file_, line=line, column=col, hint=hint, code=code
        )
        order.append(key)
    out = [grouped[k] for k in order]
    # "unknown field 'cpus' (did you mean 'cpu'?)" already says what "missing 'cpu'" would
    typos = {
        (d.path.rsplit(".", 1)[0], d.hint.split("'")[1])
        for d in out
        if d.code == "unknown-field" and d.hint.startswith("did you mean '")
    }
    return [
        d for d in out
        if not (d.code == "missing" and tuple(d.path.rsplit(".", 1)) in typos)
    ]


def _describe(value: Any) -> str:
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _short(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["SECRET_KEYS", "fields_at", "format_path", "pydantic_diagnostics", "resolve"]
