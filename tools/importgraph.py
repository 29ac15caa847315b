#!/usr/bin/env python3
"""Print pacsinfra's import graph between its top-level parts, and check it has no cycles.

A *part* is a top-level subpackage (``services``, ``drivers``, ...) or a top-level module
(``specs``, ``providers``, ...) of the ``pacsinfra`` package. Every ``import`` and
``from ... import`` in a part's files counts: at module level, under ``if TYPE_CHECKING:``
and inside functions alike (a lazy import is still a dependency). Imports are read from the
source with :mod:`ast`; nothing is imported.

Usage::

    python tools/importgraph.py                  # table: layer, part, the parts it imports
    python tools/importgraph.py --format mermaid # the same as a mermaid graph
    python tools/importgraph.py --within drivers # between drivers/kvm, drivers/base, ...
    python tools/importgraph.py --modules        # also cycles between single modules
    python tools/importgraph.py --root OTHER/pacsinfra

Exit status: 0 when the graph between parts has no cycle, 1 when it has one (each cycle is
listed), 2 for bad arguments. ``--modules`` also looks for cycles between single modules,
first through the imports that run when a module is first imported (module level, not
under ``TYPE_CHECKING``), then through every import; any of them makes the status 1.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "pacsinfra"
EAGER, TYPING, LAZY = "eager", "typing", "lazy"


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` module imports ``target`` module, ``kind`` of import."""

    source: str
    target: str
    kind: str
    line: int
    #: False: an edge to a package above the imported module (its ``__init__`` runs first)
    direct: bool = True


def module_name(root: Path, path: Path) -> str:
    """``pacsinfra.a.b`` for ``<root>/a/b.py`` (``pacsinfra.a`` for ``a/__init__.py``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import node with its kind (eager, typing, lazy)."""

    def walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, kind
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, LAZY if kind == EAGER else kind)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), TYPING)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                yield from walk(child, kind)

    yield from walk(tree, EAGER)


def _resolve(node: ast.Import | ast.ImportFrom, importer: str, is_pkg: bool,
             modules: set[str]) -> Iterator[str]:
    """The pacsinfra modules ``node`` imports (``from a import b``: ``a.b`` when a module)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                yield alias.name
        return
    if node.level:
        base = importer.split(".") if is_pkg else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if not (prefix == PACKAGE or prefix.startswith(PACKAGE + ".")):
        return
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        yield sub if sub in modules else prefix


def _ancestors(module: str) -> Iterator[str]:
    parts = module.split(".")
    for i in range(2, len(parts)):
        yield ".".join(parts[:i])


def read_edges(root: Path) -> tuple[set[str], list[Edge]]:
    """Every module under ``root`` (the pacsinfra package directory) and its imports.

    Importing ``a.b.c`` runs the ``__init__`` of ``a.b`` first, so such an import is also an
    edge to every package above the target (within pacsinfra) that the importer is not in.
    """
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    edges: list[Edge] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_pkg = path.name == "__init__.py"
        for node, kind in _imports(tree):
            for target in _resolve(node, name, is_pkg, modules):
                if target not in modules:
                    continue
                for t in [*_ancestors(target), target]:
                    if t != name and t in modules and not name.startswith(t + "."):
                        edges.append(Edge(name, t, kind, node.lineno, t == target))
    return modules, edges


def part(module: str, within: str | None = None) -> str:
    """The top-level part a module belongs to (``pacsinfra.services.x`` -> ``services``).

    ``within`` a part, the parts are that part's own subpackages and modules
    (``within="drivers"``: ``pacsinfra.drivers.kvm.port`` -> ``drivers.kvm``); modules
    outside it are ``(outside)``.
    """
    parts = module.split(".")
    if within is None:
        return parts[1] if len(parts) > 1 else "(pacsinfra)"
    inner = within.split(".")
    if parts[1:1 + len(inner)] != inner:
        return "(outside)"
    rest = parts[1 + len(inner):]
    return ".".join([*inner, rest[0]]) if rest else within


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (or a self-loop), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for start in nodes:
        if start in index:
            continue
        # iterative Tarjan: (node, iterator over its successors)
        work: list[tuple[str, Iterator[str]]] = []
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph.get(start, ())))))
        while work:
            node, succ = work[-1]
            advanced = False
            for nxt in succ:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    n = stack.pop()
                    on_stack.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                if len(comp) > 1 or node in graph.get(node, ()):
                    found.append(sorted(comp))
    return sorted(found)


def part_graph(edges: Iterable[Edge], within: str | None = None
               ) -> dict[str, dict[str, set[str]]]:
    """part -> imported part -> the kinds of import seen."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for e in edges:
        a, b = part(e.source, within), part(e.target, within)
        if a != b:
            out[a][b].add(e.kind)
    return out


def layers(graph: dict[str, set[str]], nodes: Iterable[str]) -> list[list[str]]:
    """Nodes by layer: 0 imports nothing, n imports only layers below n (a DAG only)."""
    level: dict[str, int] = {}

    def depth(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n in level:
            return level[n]
        if n in seen:
            return 0
        level[n] = 1 + max((depth(m, seen | {n}) for m in graph.get(n, ())), default=-1)
        return level[n]

    for n in nodes:
        depth(n)
    by: dict[int, list[str]] = defaultdict(list)
    for n, d in level.items():
        by[d].append(n)
    return [sorted(by[d]) for d in sorted(by, reverse=True)]


def _label(kinds: set[str]) -> str:
    return "" if EAGER in kinds else " (" + ", ".join(sorted(kinds)) + ")"


def render_table(pg: dict[str, dict[str, set[str]]], nodes: list[str]) -> str:
    """Markdown: the parts from the top layer down (a part imports only parts below it),
    each with what it imports; an import that is only lazy or only for type checking says so."""
    plain = {a: set(bs) for a, bs in pg.items()}
    ranked = layers(plain, nodes)
    order = [n for layer in ranked for n in layer]
    rows = ["| layer | part | imports |", "|---|---|---|"]
    for depth, layer in enumerate(ranked):
        for n in layer:
            targets = pg.get(n, {})
            text = ", ".join(f"{t}{_label(targets[t])}" for t in sorted(targets, key=order.index))
            rows.append(f"| {depth} | `{n}` | {text or '—'} |")
    return "\n".join(rows)


def render_mermaid(pg: dict[str, dict[str, set[str]]], nodes: list[str]) -> str:
    lines = ["graph TD"]
    for a in sorted(pg):
        for b in sorted(pg[a]):
            arrow = "-->" if EAGER in pg[a][b] else "-.->"
            lines.append(f"  {a} {arrow} {b}")
    for n in nodes:
        if n not in pg and not any(n in bs for bs in pg.values()):
            lines.append(f"  {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path,
                    default=Path(__file__).resolve().parent.parent / PACKAGE,
                    help="the pacsinfra package directory (default: this checkout's)")
    ap.add_argument("--format", choices=("table", "mermaid"), default="table")
    ap.add_argument("--within", metavar="PART",
                    help="the graph between the subpackages and modules of one part "
                         "(e.g. drivers, services)")
    ap.add_argument("--modules", action="store_true",
                    help="also look for cycles between single modules")
    args = ap.parse_args(argv)
    if not (args.root / "__init__.py").is_file():
        print(f"{args.root}: not a package directory", file=sys.stderr)
        return 2
    modules, edges = read_edges(args.root)
    within = args.within
    nodes = sorted({part(m, within) for m in modules}
                   - {"(pacsinfra)", "__main__", "(outside)", within or ""})
    if not nodes:
        print(f"{within}: no such part with subpackages or modules", file=sys.stderr)
        return 2
    if within:  # edges between this part's pieces only
        edges = [e for e in edges
                 if part(e.source, within) in nodes and part(e.target, within) in nodes]
    pg = part_graph((e for e in edges
                     if part(e.source, within) in nodes and part(e.target, within) in nodes),
                    within)
    print(render_table(pg, nodes) if args.format == "table" else render_mermaid(pg, nodes))
    found = cycles({a: set(bs) for a, bs in pg.items()})
    status = 0
    print()
    if found:
        status = 1
        for comp in found:
            print("cycle between parts: " + " <-> ".join(comp))
            shown = sorted({(e.source, e.line, e.target, e.kind) for e in edges
                            if e.direct and part(e.source, within) in comp
                            and part(e.target, within) in comp
                            and part(e.source, within) != part(e.target, within)})
            for source, line, target, kind in shown:
                print(f"  {source}:{line} -> {target} ({kind})")
    else:
        print(f"no cycles between the {len(nodes)} parts")
    if args.modules:
        for kinds, what in (({EAGER}, "import-time"), ({EAGER, TYPING, LAZY}, "any")):
            graph: dict[str, set[str]] = defaultdict(set)
            for e in edges:
                if e.kind in kinds:
                    graph[e.source].add(e.target)
            mod_cycles = cycles(graph)
            for comp in mod_cycles:
                status = 1
                print(f"cycle between modules ({what} imports): " + " <-> ".join(comp))
            if not mod_cycles:
                print(f"no cycles between the {len(modules)} modules ({what} imports)")
    return status


if __name__ == "__main__":
    sys.exit(main())
