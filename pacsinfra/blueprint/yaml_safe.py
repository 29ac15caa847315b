"""A YAML reader for untrusted blueprints: plain values plus the file:line:col of every node.

PyYAML's loaders are not enough on their own: they silently accept duplicate keys,
expand aliases without bound (a "billion laughs" file exhausts memory in later
passes), recurse on deep nesting and construct arbitrary tags. This module reads
the *event* stream of libyaml (pure-Python PyYAML when libyaml is missing) with an
explicit stack, so:

- every mapping, sequence and scalar gets a :class:`Loc` (1-based line and column of
  the value, and of its key inside a mapping);
- duplicate keys, unsupported tags, complex keys, recursive aliases, nesting deeper
  than :data:`MAX_DEPTH` and alias expansion beyond :data:`MAX_EXPANDED_NODES` are
  diagnostics, never exceptions;
- aliases are shared, not copied, and their expanded size is counted;
- scalars resolve like YAML 1.1 (``yes``/``no`` are booleans, as PyYAML does) except
  sexagesimal numbers: ``52:54:00:12:34:56`` stays a string.

Nothing here raises for bad input: :func:`load_yaml` returns the value (or ``None``)
and a list of :class:`~pacsinfra.errors.Diagnostic`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import ScalarNode

from pacsinfra.errors import Diagnostic

try:  # libyaml is ~10x faster; the pure-Python loader is the fallback, same events
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    _Parser = yaml.BaseLoader  # type: ignore[assignment,misc]

MAX_BYTES = 32 * 1024 * 1024  # a blueprint is text written by people
MAX_DEPTH = 64  # the schema is ~12 levels deep; deeper is garbage or an attack
MAX_EXPANDED_NODES = 2_000_000  # nodes after alias expansion (a 1,000-machine site is ~60,000)

_T = "tag:yaml.org,2002:"
_SUPPORTED_SCALAR_TAGS = {_T + t for t in ("str", "int", "float", "bool", "null", "timestamp")}


class Loc:
    """Where a value sits: file, 1-based line/col of the value and of its key; children by key/index."""

    __slots__ = ("file", "line", "col", "key_line", "key_col", "children")

    def __init__(self, file: str, line: int, col: int) -> None:
        self.file = file
        self.line = line
        self.col = col
        self.key_line = 0
        self.key_col = 0
        self.children: dict[Any, Loc] | list[Loc] | None = None

    def child(self, key: Any) -> Loc | None:
        """The location of ``key`` (a mapping key or a list index), if known."""
        ch = self.children
        if isinstance(ch, dict):
            return ch.get(key)
        if isinstance(ch, list) and isinstance(key, int) and 0 <= key < len(ch):
            return ch[key]
        return None

    def with_key(self, line: int, col: int) -> Loc:
        """A shallow copy carrying a key position (aliases share their anchor's Loc)."""
        c = Loc(self.file, self.line, self.col)
        c.key_line, c.key_col, c.children = line, col, self.children
        return c


@dataclass(slots=True)
class _Frame:
    kind: str  # "map" | "seq"
    value: Any
    loc: Loc
    anchor: str | None
    size: int = 1
    key: Any = None
    key_loc: tuple[int, int] = (0, 0)
    have_key: bool = False
    skip_value: bool = False  # the key was invalid: drop the value that follows
    merges: list[tuple[Any, Loc]] = field(default_factory=list)


class _Resolver(yaml.resolver.Resolver):
    """PyYAML's YAML 1.1 resolver (only used for plain scalars)."""


_RESOLVER = _Resolver()
_RESOLVABLE_FIRST = frozenset(k for k in _Resolver.yaml_implicit_resolvers if k)
_FAST_STR = None not in _Resolver.yaml_implicit_resolvers  # no resolver matches any first char
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _mark(m: Any) -> tuple[int, int]:
    return (m.line + 1, m.column + 1) if m is not None else (0, 0)


class _Reader:
    """One pass over the event stream of one document."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.diags: list[Diagnostic] = []
        self.anchors: dict[str, tuple[Any, Loc, int]] = {}
        self.open_anchors: set[str] = set()
        self.expanded = 0
        self.too_big = False
        self.stack: list[_Frame] = []

    def error(self, line: int, col: int, message: str, hint: str = "", code: str = "yaml",
              key: str | None = None) -> None:
        path = self.path()
        if key is not None:
            path = f"{path}.{key}" if path else key
        self.diags.append(
            Diagnostic(message=message, path=path, file=self.file, line=line, column=col,
                       hint=hint, code=code)
        )

    def path(self) -> str:
        """The dotted path of the node being read (for diagnostics)."""
        out = ""
        for f in self.stack:
            if f.kind == "map":
                if f.have_key:
                    out += f".{f.key}" if out else str(f.key)
            else:
                out += f"[{len(f.value)}]"
        return out

    # -- scalars ---------------------------------------------------------------------------
    def scalar(self, ev: Any, line: int, col: int) -> Any:
        value: str = ev.value
        tag = ev.tag
        if tag is None or tag == "!":
            if tag == "!" or not ev.implicit[0]:
                return value  # quoted (or the non-specific '!'): a string
            if value and _FAST_STR and value[0] not in _RESOLVABLE_FIRST:
                return value  # no implicit type starts with this character: a string
            tag = _RESOLVER.resolve(ScalarNode, value, (True, False))
        if tag not in _SUPPORTED_SCALAR_TAGS:
            self.error(
                line,
                col,
                f"unsupported YAML tag {tag!r}",
                "blueprints use plain YAML: strings, numbers, booleans, lists and mappings",
                code="yaml-tag",
            )
            return None
        if tag == _T + "str" or tag == _T + "timestamp":
            return value
        if tag in (_T + "int", _T + "float") and ":" in value:
            return value  # YAML 1.1 base-60 (12:30) is never meant in a blueprint: MACs, times
        node = ScalarNode(tag, value)
        try:
            if tag == _T + "null":
                return None
            if tag == _T + "bool":
                return _CONSTRUCTOR.construct_yaml_bool(node)
            if tag == _T + "int":
                return _CONSTRUCTOR.construct_yaml_int(node)
            return _CONSTRUCTOR.construct_yaml_float(node)
        except ValueError:
            # Python refuses int() of more than 4300 digits; no blueprint number is that long.
            self.error(line, col, f"number is too large ({len(value)} characters)", code="yaml-number")
            return None
        except yaml.YAMLError as exc:
            self.error(line, col, f"invalid {tag[len(_T):]} value: {getattr(exc, 'problem', exc)}")
            return None

    # -- the event loop ----------------------------------------------------------------------
    def read(self, parser: Any) -> tuple[Any, Loc | None, bool]:
        """Read one document's node; returns (value, loc, got_a_document)."""
        stack: list[_Frame] = self.stack
        result: Any = None
        result_loc: Loc | None = None
        done = False
        file = self.file
        # locals: this loop runs once per YAML event (~70,000 for a 1,000-machine site)
        scalar_ev, get_event = yaml.ScalarEvent, parser.get_event
        fast_first = _RESOLVABLE_FIRST if _FAST_STR else None
        while not done:
            ev = get_event()
            cls = type(ev)
            mark = ev.start_mark
            line, col = mark.line + 1, mark.column + 1
            value: Any
            loc: Loc
            if cls is scalar_ev:
                if stack:
                    top = stack[-1]
                    if top.kind == "map" and not top.have_key:
                        # a key is a name: keep its text ("on", "80") whatever YAML 1.1 says
                        top.have_key, top.key, top.key_loc = True, ev.value, (line, col)
                        top.skip_value = False
                        continue
                text = ev.value
                if (ev.tag is None and ev.implicit[0] and fast_first is not None and text
                        and text[0] not in fast_first):
                    value = text  # plain scalar no implicit type can match: a string
                else:
                    value = self.scalar(ev, line, col)
                loc = Loc(file, line, col)
                if ev.anchor is not None:
                    self._anchor(ev.anchor, value, loc, 1)
                if not stack:
                    result, result_loc = value, loc
                    continue
                self._add(stack[-1], value, loc, 1)
                continue
            if cls is yaml.StreamStartEvent or cls is yaml.DocumentStartEvent:
                continue
            if cls is yaml.DocumentEndEvent or cls is yaml.StreamEndEvent:
                return result, result_loc, cls is yaml.DocumentEndEvent
            size = 1
            if cls is yaml.AliasEvent:
                if stack and stack[-1].kind == "map" and not stack[-1].have_key:
                    self.error(line, col, "an alias cannot be a mapping key", code="yaml-key")
                    top = stack[-1]
                    top.have_key, top.skip_value = True, True
                    continue
                name = ev.anchor
                if name in self.open_anchors:
                    self.error(line, col, f"recursive alias *{name}", code="yaml-alias")
                    value, loc = None, Loc(file, line, col)
                elif name not in self.anchors:
                    self.error(line, col, f"undefined alias *{name}", code="yaml-alias")
                    value, loc = None, Loc(file, line, col)
                else:
                    value, aloc, size = self.anchors[name]
                    loc = aloc.with_key(0, 0)  # the anchor's Loc is shared; keys differ
                    self.expanded += size
                    if self.expanded > MAX_EXPANDED_NODES and not self.too_big:
                        self.too_big = True
                        self.error(
                            line,
                            col,
                            f"aliases expand to more than {MAX_EXPANDED_NODES:,} nodes",
                            "this looks like a YAML bomb; write the values out or use fewer aliases",
                            code="yaml-bomb",
                        )
                    if self.too_big:
                        value, size = None, 1
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                is_map = cls is yaml.MappingStartEvent
                if ev.tag not in (None, "!", _T + ("map" if is_map else "seq")):
                    self.error(line, col, f"unsupported YAML tag {ev.tag!r}", code="yaml-tag")
                if stack and stack[-1].kind == "map" and not stack[-1].have_key:
                    self.error(
                        line,
                        col,
                        "a mapping key must be a plain value, not a list or mapping",
                        code="yaml-key",
                    )
                    self._skip(parser)
                    stack[-1].have_key, stack[-1].skip_value = True, True
                    continue
                if len(stack) >= MAX_DEPTH:
                    self.error(
                        line,
                        col,
                        f"nesting deeper than {MAX_DEPTH} levels",
                        "a blueprint is at most a dozen levels deep",
                        code="yaml-depth",
                    )
                    self._skip(parser)
                    value, loc = None, Loc(file, line, col)
                else:
                    loc = Loc(file, line, col)
                    loc.children = {} if is_map else []
                    if ev.anchor is not None:
                        self.open_anchors.add(ev.anchor)
                    stack.append(
                        _Frame("map" if is_map else "seq", {} if is_map else [], loc, ev.anchor)
                    )
                    continue
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                frame = stack.pop()
                if frame.kind == "map" and frame.merges:
                    self._apply_merges(frame)
                value, loc, size = frame.value, frame.loc, frame.size
                if frame.anchor is not None:
                    self.open_anchors.discard(frame.anchor)
                    self._anchor(frame.anchor, value, loc, size)
            else:  # pragma: no cover - every event type is handled above
                continue
            if not stack:
                result, result_loc = value, loc
                continue
            self._add(stack[-1], value, loc, size)
        return result, result_loc, True  # pragma: no cover

    def _anchor(self, name: str | None, value: Any, loc: Loc, size: int) -> None:
        if name is not None:
            self.anchors[name] = (value, loc, size)

    def _add(self, top: _Frame, value: Any, loc: Loc, size: int) -> None:
        top.size += size
        if top.kind == "seq":
            top.value.append(value)
            assert isinstance(top.loc.children, list)
            top.loc.children.append(loc)
            return
        top.have_key = False
        if top.skip_value:
            top.skip_value = False
            return
        key = top.key
        kline, kcol = top.key_loc
        if key == "<<":
            sources = value if isinstance(value, list) else [value]
            locs = loc.children if isinstance(value, list) else [loc]
            for i, src in enumerate(sources):
                sloc = locs[i] if isinstance(locs, list) and i < len(locs) else loc
                if isinstance(src, dict):
                    top.merges.append((src, sloc))
                else:
                    self.error(kline, kcol, "'<<' merges mappings only", code="yaml-merge")
            return
        children = top.loc.children
        assert isinstance(children, dict)
        if key in top.value:
            self.error(
                kline,
                kcol,
                f"duplicate key {key!r} (first defined on line {children[key].key_line})",
                "each key may appear once in a mapping; remove or rename one of them",
                code="duplicate-key",
                key=str(key),
            )
        top.value[key] = value
        loc.key_line, loc.key_col = kline, kcol
        children[key] = loc

    def _apply_merges(self, frame: _Frame) -> None:
        # YAML merge keys: explicit keys win, then earlier merged mappings win.
        merged: dict[Any, Any] = {}
        merged_locs: dict[Any, Loc] = {}
        for src, sloc in frame.merges:
            for k, v in src.items():
                if k not in merged:
                    merged[k] = v
                    c = sloc.child(k)
                    merged_locs[k] = c if c is not None else sloc
                    frame.size += 1
        assert isinstance(frame.loc.children, dict)
        for k, v in merged.items():
            if k not in frame.value:
                frame.value[k] = v
                frame.loc.children[k] = merged_locs[k]

    def _skip(self, parser: Any) -> None:
        """Consume the events of the collection just opened (too deep to keep)."""
        depth = 1
        while depth:
            ev = parser.get_event()
            if isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(ev, yaml.StreamEndEvent):  # pragma: no cover - parser guarantees
                return


def _decode(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        return None, [
            Diagnostic(
                message=f"not UTF-8 text (byte 0x{data[exc.start]:02x})",
                file=file,
                line=line,
                column=col,
                hint="save the blueprint as UTF-8 text; a blueprint is YAML, not a binary file",
                code="encoding",
            )
        ]
    if "\x00" in text:
        i = text.index("\x00")
        line = text.count("\n", 0, i) + 1
        return None, [
            Diagnostic(
                message="binary content (NUL byte) in a YAML file",
                file=file,
                line=line,
                column=i - (text.rfind("\n", 0, i) + 1) + 1,
                code="encoding",
            )
        ]
    return text, []


def load_yaml_text(text: str, file: str) -> tuple[Any, Loc | None, list[Diagnostic]]:
    """Parse one YAML document held in ``text``; see :func:`load_yaml`."""
    reader = _Reader(file)
    parser = _Parser(text)
    try:
        value, loc, got = reader.read(parser)
        if got:
            # a second document is a mistake (a stray '---'), not something to ignore
            ev = parser.get_event()
            while isinstance(ev, yaml.DocumentEndEvent):
                ev = parser.get_event()
            if isinstance(ev, yaml.DocumentStartEvent):
                line, col = _mark(ev.start_mark)
                reader.error(
                    line,
                    col,
                    "more than one YAML document in the file",
                    "a blueprint is one document; remove the extra '---'",
                    code="yaml-documents",
                )
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = _mark(mark)
        problem = exc.problem or "invalid YAML"
        hint = ""
        if mark is not None and 0 <= mark.index < len(text) and text[mark.index] == "\t" or "tab" in problem.lower():
            hint = "YAML indents with spaces, never tabs"
        msg = f"invalid YAML: {problem}"
        if exc.context:
            msg += f" ({exc.context})"
        reader.error(line, col, msg, hint, code="yaml-syntax")
        return None, None, reader.diags
    except yaml.YAMLError as exc:  # reader errors (control characters) carry no mark
        reader.error(0, 0, f"invalid YAML: {exc}", code="yaml-syntax")
        return None, None, reader.diags
    except RecursionError:  # pragma: no cover - the stack above is explicit; belt and braces
        reader.error(0, 0, "YAML nested too deeply", code="yaml-depth")
        return None, None, reader.diags
    finally:
        dispose = getattr(parser, "dispose", None)
        if dispose is not None:
            dispose()
    return value, loc, reader.diags


def read_file_text(path: Path, display: str) -> tuple[str | None, list[Diagnostic]]:
    """The text of ``path`` or a diagnostic saying why it cannot be read (never raises)."""

    def diag(message: str, hint: str = "") -> tuple[None, list[Diagnostic]]:
        return None, [Diagnostic(message=message, file=display, hint=hint, code="file")]

    try:
        if path.is_dir():
            return diag("is a directory, not a blueprint file", "name a .yaml file")
        if not path.exists():
            return diag("file not found")
        size = path.stat().st_size
        if size > MAX_BYTES:
            return diag(f"file is too large ({size:,} bytes; the limit is {MAX_BYTES:,})")
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        return diag(f"cannot read file: {exc.strerror or exc}")
    if len(data) > MAX_BYTES:
        return diag(f"file is too large (more than {MAX_BYTES:,} bytes)")
    return _decode(data, display)


def load_yaml(path: Path, display: str | None = None) -> tuple[Any, Loc | None, list[Diagnostic]]:
    """Read one YAML file: (value, its Loc tree, diagnostics). Never raises for bad input."""
    name = display if display is not None else str(path)
    text, diags = read_file_text(path, name)
    if text is None:
        return None, None, diags
    return load_yaml_text(text, name)
