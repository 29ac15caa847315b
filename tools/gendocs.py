#!/usr/bin/env python3
"""Write the field references in ``docs/reference/`` from the pydantic models.

    python tools/gendocs.py           # (re)write docs/reference/*.md
    python tools/gendocs.py --check   # exit 1 when a file differs from what the models say

Each reference starts at one root model (the blueprint's ``Site``, the archive's
``ArchiveConfig``, the router's ``RouterConfig``) and walks every model reachable from
it, whatever the models are when this runs: nothing here lists fields. Each model is a
section with the YAML paths where it appears and a table of field, type, default and
description.

A field's description is, first found: its ``Field(description=...)``; a
``description`` in its ``json_schema_extra``; an entry for it under ``Attributes:`` in
the docstring of its model (or of a base model); the comments on and directly above
its line in the source. The output depends only on the models, so it is the same on
every machine.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))  # the models of this checkout, not of an installed copy

import yaml  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

REGENERATE = "python tools/gendocs.py"


# -- what a document is ---------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    """One generated reference: its file, title, opening text and root model."""

    path: str
    title: str
    intro: str
    root: str  # "module:Class"


DOCS = (
    Doc(
        "docs/reference/blueprint.md",
        "Blueprint reference",
        "Every key a blueprint (`apiVersion: pacsinfra/v1`, `kind: Site`) may hold, section by "
        "section, starting at the top of the file. Unknown keys are errors (with the closest "
        "valid key), so a typo is never silently ignored. `pacsinfra schema` prints the same "
        "language as JSON Schema, for editors. How to write a blueprint, with examples: "
        "[the blueprint guide](../blueprint.md).",
        "pacsinfra.blueprint.model:Site",
    ),
    Doc(
        "docs/reference/archive.md",
        "Archive configuration reference",
        "Every key of `archive.yaml`, the file `pacsinfra archive serve --config` reads. "
        "The same model is `config` of a `kind: archive` service in a blueprint. Unknown keys "
        "are errors. What the settings do, by task: [the archive](../archive.md).",
        "pacsinfra.pacs.archive.config:ArchiveConfig",
    ),
    Doc(
        "docs/reference/router.md",
        "Router configuration reference",
        "Every key of `router.yaml`, the file `pacsinfra router serve --config` reads. "
        "The same model is `config` of a `kind: router` service in a blueprint. Unknown keys "
        "are errors. What the settings do, by task: [the router](../router.md).",
        "pacsinfra.pacs.router.config:RouterConfig",
    ),
)


# -- value types with a name of their own ---------------------------------------------------


@dataclass(frozen=True)
class Convention:
    """A value type written the same way wherever it appears (sizes, secret references...)."""

    anchor: str
    label: str  # what the type column says
    heading: str
    text: str
    table_of: type[BaseModel] | None = None  # a model whose fields the section lists


def _conventions() -> tuple[list[tuple[Callable[[Any], bool], Convention]], type[BaseModel],
                            Convention]:
    """Recognisers for the named value types of the models (by identity of their metadata)."""
    from pacsinfra import types as bt
    from pacsinfra.pacs import config_common as cc
    from pacsinfra.secrets import SecretRef

    def marks(alias: Any) -> set[int]:
        return {id(m) for m in typing.get_args(alias)[1:]}

    def schema_text(alias: Any) -> str:
        for m in typing.get_args(alias)[1:]:
            schema = getattr(m, "json_schema", None)
            if isinstance(schema, dict) and schema.get("description"):
                return str(schema["description"])
        return ""

    def by_marks(alias: Any) -> Callable[[Any], bool]:
        ids = marks(alias)
        return lambda meta: any(id(m) in ids for m in meta)

    name_pattern = _pattern_of(typing.get_args(bt.Name)[1:])
    found: list[tuple[Callable[[Any], bool], Convention]] = [
        (by_marks(bt.Size), Convention(
            "sizes", "size", "Sizes",
            f"{schema_text(bt.Size)} Binary units (`KiB`, `MiB`, `GiB`, `TiB`, `PiB`) and "
            "decimal ones (`GB`, `TB`...) are accepted and converted exactly. After validation "
            "a size is an integer number of MiB: that is what plans, state and "
            "`pacsinfra schema` show.")),
        (by_marks(bt.Mhz), Convention(
            "frequencies", "frequency", "Frequencies",
            f"{schema_text(bt.Mhz)} After validation a frequency is an integer number of "
            "MHz.")),
        (by_marks(bt.IpAddress), Convention(
            "addresses", "IP address", "Addresses",
            "An IPv4 or IPv6 address (`10.10.110.11`, `fd00::11`), written without a prefix "
            "length. A network is written in CIDR form (`10.10.110.0/24`) with no host bits "
            "set.")),
        (by_marks(bt.Cidr), Convention(
            "addresses", "network (CIDR)", "Addresses",
            "An IPv4 or IPv6 address (`10.10.110.11`, `fd00::11`), written without a prefix "
            "length. A network is written in CIDR form (`10.10.110.0/24`) with no host bits "
            "set.")),
        (lambda meta: name_pattern is not None and _pattern_of(meta) == name_pattern,
         Convention(
            "names", "name", "Names",
            "Names of sites, disks and other objects that end up in hypervisor object names "
            f"are DNS labels: {_description_of(typing.get_args(bt.Name)[1:])} "
            f"(`{name_pattern}`).")),
        (by_marks(cc.AETitle), Convention(
            "ae-titles", "AE title", "AE titles",
            "A DICOM application entity title: 1 to 16 printable ASCII characters, no "
            "backslash, no leading or trailing spaces (DICOM PS3.5 6.2).")),
    ]
    secret = Convention(
        "secret-references", "secret reference", "Secret references",
        "A password, key or token is never written in a configuration file: the file names "
        "where the secret lives, and it is read only when it is needed (never stored in state, "
        "plans or logs; an error names the reference, never the value). A reference is a "
        "mapping with exactly one of these keys, for example `password: {env: "
        "VSPHERE_PASSWORD}` or `token: {file: /etc/pacsinfra/dicomweb-token}`.",
        table_of=SecretRef,
    )
    return found, SecretRef, secret


def pattern_labels() -> dict[str, str]:
    """Readable names for the long regular expressions of the blueprint model.

    Looked up by the expressions' names in the model module; one that is renamed or gone
    is simply shown as the expression.
    """
    import pacsinfra.services.settings as login
    import pacsinfra.services.static.declaration as static

    labels = {
        "HostKey": "SSH public key line (`ssh-ed25519 AAAA… [comment]`)",
        "_HOST_ADDRESS": "IP address or DNS name",
        "_ABS_PATH": "absolute path (`/…` or `~/…`)",
    }
    out: dict[str, str] = {}
    for name, label in labels.items():
        value = getattr(login, name, None) or getattr(static, name, None)
        pattern = value if isinstance(value, str) else _pattern_of(typing.get_args(value)[1:])
        if pattern:
            out[pattern] = label
    return out


def _pattern_of(metadata: Any) -> str | None:
    for m in metadata:
        pattern = getattr(m, "pattern", None)
        if isinstance(pattern, str):
            return pattern
        for sub in getattr(m, "metadata", ()) or ():
            pattern = getattr(sub, "pattern", None)
            if isinstance(pattern, str):
                return pattern
    return None


def _description_of(metadata: Any) -> str:
    for m in metadata:
        if isinstance(m, FieldInfo) and m.description:
            return m.description
    return ""


def _bounds(metadata: Any) -> str:
    """``ge``/``gt``/``le``/``lt``/length constraints as a short phrase (``1 – 4094``)."""
    lo = hi = None
    lo_open = hi_open = False
    min_len = max_len = None
    for m in metadata:
        for sub in [m, *(getattr(m, "metadata", ()) or ())]:
            if getattr(sub, "ge", None) is not None:
                lo = sub.ge
            if getattr(sub, "gt", None) is not None:
                lo, lo_open = sub.gt, True
            if getattr(sub, "le", None) is not None:
                hi = sub.le
            if getattr(sub, "lt", None) is not None:
                hi, hi_open = sub.lt, True
            if getattr(sub, "min_length", None) is not None:
                min_len = sub.min_length
            if getattr(sub, "max_length", None) is not None:
                max_len = sub.max_length
    parts = []
    if lo is not None and hi is not None and not lo_open and not hi_open:
        parts.append(f"{_num(lo)} – {_num(hi)}")
    else:
        if lo is not None:
            parts.append(f"{'>' if lo_open else '≥'} {_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '≤'} {_num(hi)}")
    if min_len is not None:
        parts.append(f"at least {min_len} item{'s' if min_len != 1 else ''}")
    if max_len is not None:
        parts.append(f"at most {max_len} items")
    return ", ".join(parts)


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and abs(value) >= 100_000:
        return f"{value:,}"
    return str(value)


# -- descriptions from docstrings and comments ----------------------------------------------

_DOC_PATH = re.compile(r"\bdocs/([\w./-]+\.md)\b")  # a page of docs/, from docs/reference/
_ROLE = re.compile(r":(?:mod|class|meth|func|data|attr|obj):`~?([^`]+)`")


def markdown(text: str) -> str:
    """Docstring / comment text as Markdown: RST literals and Sphinx roles become code.

    Outside code spans, ``<`` and ``>`` are escaped (``<name>`` would be an HTML tag)
    and an ASCII arrow becomes one.
    """
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text).replace("``", "`")
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):  # even pieces are outside code spans
        plain = pieces[i].replace(" -> ", " → ")
        plain = plain.replace("<", "&lt;").replace(">", "&gt;")
        pieces[i] = _DOC_PATH.sub(lambda m: f"[{m.group(1)}](../{m.group(1)})", plain)
    return "`".join(pieces)


def split_docstring(cls: type) -> tuple[str, dict[str, str]]:
    """A model's own docstring: its prose, and the ``Attributes:`` entries by field name.

    The section is Google style: ``Attributes:``, then one ``name: text`` entry per field,
    indented under it, continuation lines indented further.
    """
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return "", {}
    prose: list[str] = []
    attrs: dict[str, str] = {}
    section: int | None = None  # indent of the "Attributes:" line while inside the section
    entry: int | None = None  # indent of the section's entries
    current: str | None = None
    for line in inspect.cleandoc(doc).splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() == "Attributes:":
            section, entry, current = indent, None, None
            continue
        if section is not None and line.strip():
            if indent <= section:
                section = None  # back at the margin: the section is over
            else:
                match = re.match(r"^\s*(\w+):\s*(.*)$", line)
                if match and (entry is None or indent == entry):
                    entry, current = indent, match.group(1)
                    attrs[current] = match.group(2).strip()
                elif current is not None:
                    attrs[current] += " " + line.strip()
                continue
        if section is None:
            prose.append(line)
    return "\n".join(prose).strip(), attrs


def source_comments(cls: type) -> dict[str, str]:
    """Field name -> the comments directly above its line and at the end of it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments.get(n, ""))
            n -= 1
        end = node.end_lineno or node.lineno
        trailing = [comments[i] for i in range(node.lineno, end + 1) if i in comments]
        text = " ".join(t for t in [*above, *trailing] if t)
        if text:
            out[node.target.id] = text
    return out


def field_description(model: type[BaseModel], name: str, info: FieldInfo,
                      type_description: str) -> str:
    if info.description and info.description != type_description:
        return info.description
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("description"), str):
        return _as_sentence(str(extra["description"]))
    for cls in model.__mro__:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        _, attrs = split_docstring(cls)
        for key in (name, info.alias):
            if key and key in attrs:
                return attrs[key]
        if name in cls.__dict__.get("__annotations__", {}):
            text = source_comments(cls).get(name)
            if text:
                return _as_sentence(text)
    return ""


def _as_sentence(comment: str) -> str:
    """A source comment as a table sentence: capital first letter, full stop."""
    first = comment.split(" ", 1)[0].rstrip(":;,").replace("-", "")
    if first.isalpha() and first.islower():
        comment = comment[0].upper() + comment[1:]
    return comment if comment[-1] in ".!?" else comment + "."


def first_sentence(model: type[BaseModel]) -> str:
    """The first sentence of a model's docstring (a field of that type may say no more)."""
    prose, _ = split_docstring(model)
    paragraph = prose.split("\n\n")[0].replace("\n", " ").strip()
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


# -- types as text ----------------------------------------------------------------------------


@dataclass
class Walk:
    """What rendering found: models to document (with their paths) and conventions used."""

    recognisers: list[tuple[Callable[[Any], bool], Convention]]
    secret_model: type[BaseModel]
    secret: Convention
    patterns: dict[str, str] = field(default_factory=dict)  # regex -> what it accepts
    models: dict[type[BaseModel], list[str]] = field(default_factory=dict)
    conventions: dict[str, Convention] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # Model.field without a description

    def anchor(self, model: type[BaseModel]) -> str:
        return model.__name__.lower()

    def link(self, model: type[BaseModel]) -> str:
        return f"[{model.__name__}](#{self.anchor(model)})"

    def linked(self, text: str) -> str:
        """``text`` with the names of documented models (outside code spans) as links.

        Only compound names (``GuestLogin``): ``Memory`` or ``Site`` may be plain words.
        """
        names = {m.__name__: m for m in self.models
                 if sum(c.isupper() for c in m.__name__) > 1}
        if not names:
            return text
        word = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
        pieces = text.split("`")
        for i in range(0, len(pieces), 2):
            pieces[i] = word.sub(lambda m: self.link(names[m.group(1)]), pieces[i])
        return "`".join(pieces)

    def convention(self, metadata: Any) -> Convention | None:
        for test, conv in self.recognisers:
            if test(metadata):
                return conv
        return None


def annotation_of(model: type[BaseModel], name: str, info: FieldInfo) -> Any:
    """A field's type, with names the model could not resolve when it was defined resolved."""
    if "ForwardRef" not in repr(info.annotation):
        return info.annotation
    for cls in model.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]),
                                          include_extras=True)
            tp, _ = _split_annotated(hints[name])
            return tp
    return info.annotation


def _split_annotated(tp: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        inner, more = _split_annotated(base)
        return inner, [*meta, *more]
    return tp, []


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _discriminator(metadata: Any) -> str | None:
    for m in metadata:
        d = getattr(m, "discriminator", None)
        if isinstance(d, str):
            return d
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def type_text(tp: Any, metadata: list[Any], walk: Walk) -> str:
    """A field type as a short Markdown phrase, with links to models and conventions."""
    inner, more = _split_annotated(tp)
    metadata = [*metadata, *more]
    tp = inner

    conv = walk.convention(metadata)
    if conv is not None:
        walk.conventions[conv.anchor] = conv
        text = f"[{conv.label}](#{conv.anchor})"
        bounds = _bounds(metadata)
        return f"{text}, {bounds}" if bounds else text

    if _is_union(tp):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:  # X | None: the constraints are X's
            return type_text(members[0], metadata, walk)
        disc = _discriminator(metadata)
        if disc:
            options = []
            for m in members:
                value = _literal_values(m.model_fields[disc].annotation) if _is_model(m) else []
                tag = f" (`{disc}: {value[0]}`)" if len(value) == 1 else ""
                options.append(f"{walk.link(m)}{tag}" if _is_model(m) else type_text(m, [], walk))
            return f"one of, by `{disc}`: " + ", ".join(options)
        parts = [type_text(m, [], walk) for m in members]
        text = " or ".join(parts)
        bounds = _bounds(metadata)
        return f"{text}, {bounds}" if bounds else text

    origin = typing.get_origin(tp)
    if origin is Literal:
        values = ", ".join(f"`{_scalar(v)}`" for v in typing.get_args(tp))
        return f"one of {values}" if len(typing.get_args(tp)) > 1 else values
    if origin in (list, set, frozenset) or tp in (list, set):
        (item,) = typing.get_args(tp) or (Any,)
        text = f"list of {type_text(item, [], walk)}"
        bounds = _bounds(metadata)
        return f"{text}, {bounds}" if bounds else text
    if origin is tuple:
        items = typing.get_args(tp)
        return "[" + ", ".join(type_text(a, [], walk) for a in items) + "]"
    if origin is dict or tp is dict:
        key, value = typing.get_args(tp) or (str, Any)
        key_text = type_text(key, [], walk)
        return f"map of {key_text} → {type_text(value, [], walk)}"

    if tp is walk.secret_model:
        walk.conventions[walk.secret.anchor] = walk.secret
        return f"[{walk.secret.label}](#{walk.secret.anchor})"
    if _is_model(tp):
        return walk.link(tp)

    base = {str: "string", int: "integer", float: "number", bool: "boolean",
            Any: "any value", type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))
    pattern = _pattern_of(metadata)
    bounds = _bounds(metadata)
    if tp is int and bounds == "1 – 65535":
        return "port number"
    if pattern and pattern in walk.patterns:
        base = walk.patterns[pattern]
    elif pattern:
        base += f" matching `{pattern}`"
    return f"{base}, {bounds}" if bounds else base


def _literal_values(tp: Any) -> list[Any]:
    inner, _ = _split_annotated(tp)
    return list(typing.get_args(inner)) if typing.get_origin(inner) is Literal else []


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def nested_models(tp: Any) -> Iterator[tuple[type[BaseModel], str, str]]:
    """Models inside a field type: (model, path suffix, qualifier), in declaration order."""
    inner, metadata = _split_annotated(tp)
    disc = _discriminator(metadata)
    if _is_union(inner):
        for m in typing.get_args(inner):
            for model, suffix, qual in nested_models(m):
                if disc and model is m:
                    value = _literal_values(m.model_fields[disc].annotation)
                    qual = f"`{disc}: {value[0]}`" if len(value) == 1 else qual
                yield model, suffix, qual
        return
    origin = typing.get_origin(inner)
    if origin in (list, set, frozenset, tuple):
        for a in typing.get_args(inner):
            if a is not Ellipsis:
                for model, suffix, qual in nested_models(a):
                    yield model, "[]" + suffix, qual
        return
    if origin is dict:
        _, value = typing.get_args(inner)
        for model, suffix, qual in nested_models(value):
            yield model, ".<name>" + suffix, qual
        return
    if _is_model(inner):
        yield inner, "", ""


# -- defaults ------------------------------------------------------------------------------


def default_text(info: FieldInfo, is_size: bool) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True, validated_data={})
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json", exclude_defaults=True, by_alias=True)
        return "its defaults" if not dumped else f"`{_flow(dumped)}`"
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        value = [v.model_dump(mode="json", exclude_defaults=True, by_alias=True) for v in value]
    if is_size and isinstance(value, int) and not isinstance(value, bool):
        from pacsinfra.units import format_mib

        return f"`{format_mib(value)}`"
    return f"`{_flow(value)}`"


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


# -- documents -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _key(name: str, info: FieldInfo) -> str:
    return info.alias or name


def walk_models(root: type[BaseModel], walk: Walk) -> list[type[BaseModel]]:
    """Every model under ``root`` (depth first, declaration order) with its YAML paths."""
    order: list[type[BaseModel]] = []

    def visit(model: type[BaseModel], path: str, qual: str, stack: tuple[type, ...]) -> None:
        if model not in walk.models:
            walk.models[model] = []
            order.append(model)
        where = f"`{path}`" if path else "the top level of the file"
        if qual:
            where += f" (when {qual})"
        if where not in walk.models[model]:
            walk.models[model].append(where)
        if model in stack:
            return
        for name, info in model.model_fields.items():
            for child, suffix, child_qual in nested_models(annotation_of(model, name, info)):
                if child is walk.secret_model:
                    continue
                key = _key(name, info)
                child_path = f"{path}.{key}{suffix}" if path else f"{key}{suffix}"
                visit(child, child_path, child_qual or qual, (*stack, model))

    visit(root, "", "", ())
    return order


def model_section(model: type[BaseModel], walk: Walk) -> list[str]:
    prose, _ = split_docstring(model)
    out = [f"## {model.__name__}", ""]
    if prose:
        out += [walk.linked(markdown(prose)), ""]
    where = walk.models[model]
    out += ["Where: " + ", ".join(where) + ".", ""]
    out += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        metadata = list(info.metadata)
        conv = walk.convention(metadata)
        type_desc = _description_of([info]) if conv and conv.anchor == "names" else ""
        ttext = type_text(annotation_of(model, name, info), metadata, walk)
        is_size = bool(conv and conv.anchor == "sizes")
        description = field_description(model, name, info, type_desc)
        if not description:
            inner = [m for m, _, _ in nested_models(annotation_of(model, name, info))]
            if len(inner) == 1:
                description = first_sentence(inner[0])
        if not description:
            walk.missing.append(f"{model.__name__}.{name}")
        out.append(
            f"| `{_key(name, info)}` | {_cell(ttext)} | {_cell(default_text(info, is_size))} "
            f"| {_cell(walk.linked(markdown(description)))} |"
        )
    out.append("")
    return out


def convention_sections(walk: Walk) -> list[str]:
    out: list[str] = []
    for anchor in sorted(walk.conventions):
        conv = walk.conventions[anchor]
        out += [f"### {conv.heading}", "", conv.text, ""]
        if conv.table_of is not None:
            out += ["| key | value |", "|---|---|"]
            for name, info in conv.table_of.model_fields.items():
                description = field_description(conv.table_of, name, info, "")
                out.append(f"| `{_key(name, info)}` | {_cell(markdown(description))} |")
            out.append("")
    return out


def load(ref: str) -> type[BaseModel]:
    module, _, name = ref.partition(":")
    model = getattr(importlib.import_module(module), name)
    assert _is_model(model), ref
    return model  # type: ignore[no-any-return]


class DocError(Exception):
    """The models cannot be documented as they are (a clash, a stale docstring entry)."""


def check_docstrings(models: list[type[BaseModel]]) -> None:
    """Every ``Attributes:`` entry must name a field of its model: a renamed field must not
    keep a description that no longer describes anything."""
    for model in models:
        for cls in model.__mro__:
            if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
                continue
            keys = {n for n in cls.model_fields} | {
                f.alias for f in cls.model_fields.values() if f.alias}
            for name in split_docstring(cls)[1]:
                if name not in keys:
                    raise DocError(f"{cls.__module__}.{cls.__name__}: the docstring describes "
                                   f"{name!r}, which is not a field (renamed or removed?)")


def render(doc: Doc) -> tuple[str, list[str]]:
    """The Markdown text of one reference, and the fields that have no description."""
    return render_model(load(doc.root), doc.title, doc.intro)


def render_model(root: type[BaseModel], title: str, intro: str) -> tuple[str, list[str]]:
    """A reference of ``root`` and every model under it; also the undescribed fields."""
    recognisers, secret_model, secret = _conventions()
    walk = Walk(recognisers, secret_model, secret, pattern_labels())
    order = walk_models(root, walk)
    names = [m.__name__ for m in order]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DocError(f"two models named {', '.join(clash)} under {root.__name__}")
    check_docstrings([*order, secret_model])
    body: list[str] = []
    for model in order:
        body += model_section(model, walk)
    head = [
        f"<!-- Generated by tools/gendocs.py from {root.__module__}.{root.__name__}; "
        f"do not edit. Run `{REGENERATE}`. -->",
        "",
        f"# {title}",
        "",
        intro,
        "",
        "Each section below is one mapping: where it appears (`<name>` stands for a key you "
        "choose, `[]` for an item of a list) and its keys. *unset* means the key may be left "
        "out and has no value of its own; the description says what applies then.",
        "",
        "Contents: " + ", ".join(walk.link(m) for m in order) + ".",
        "",
    ]
    conventions = convention_sections(walk)
    if conventions:
        head += ["## How values are written", "", *conventions]
    text = "\n".join(head + body).rstrip() + "\n"
    return text, walk.missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a reference is stale")
    parser.add_argument("--missing", action="store_true",
                        help="list the fields that have no description")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for doc in DOCS:
        try:
            text, missing = render(doc)
        except DocError as exc:
            print(f"gendocs: {exc}", file=sys.stderr)
            return 2
        if args.missing:
            for name in missing:
                print(f"{doc.path}: {name} has no description")
        target = REPO / doc.path
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(doc.path)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {doc.path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run `{REGENERATE}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
