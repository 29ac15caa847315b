"""Structure of ``pacsinfra.pacs``: no import cycles, pynetdicom internals in one module.

Read from the source (``ast``), not by importing: a module-level import that closes a
cycle, or a pynetdicom private name used outside :mod:`pacsinfra.pacs.compat`, fails
here with the file and line that did it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACS = Path(__file__).resolve().parents[2] / "pacsinfra" / "pacs"
COMPAT = PACS / "compat.py"
# pynetdicom modules whose use is an implementation detail of pynetdicom
PRIVATE_MODULES = ("pynetdicom.pdu", "pynetdicom.pdu_primitives", "pynetdicom.pdu_items",
                   "pynetdicom.transport", "pynetdicom.dsutils", "pynetdicom._config",
                   "pynetdicom.dul", "pynetdicom.acse", "pynetdicom.dimse",
                   "pynetdicom.dimse_messages", "pynetdicom.service_class")
# attributes of pynetdicom objects (associations, AEs) that are not its public API
PRIVATE_ATTRIBUTES = {"_server", "_servers", "_serve_request", "_run_loop_delay", "acse", "dul",
                      "dimse", "_accepted_cx"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACS.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Modules imported at import time (not inside functions or TYPE_CHECKING)."""
    out: list[tuple[str, int]] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                out += [(a.name, sub.lineno) for a in sub.names]
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                out.append((sub.module, sub.lineno))
                out += [(f"{sub.module}.{a.name}", sub.lineno) for a in sub.names]
    return out


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in PACS.rglob("*.py")}


def test_no_import_cycles_in_pacs() -> None:
    sources = _sources()
    graph = {name: sorted({m for m, _ in _top_level_imports(tree) if m in sources and m != name})
             for name, (_, tree) in sources.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_pynetdicom_internals_only_in_compat() -> None:
    offences: list[str] = []
    for path in PACS.rglob("*.py"):
        if path == COMPAT:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith(PRIVATE_MODULES) or (
                        name.startswith("pynetdicom") and "._" in name):
                    offences.append(f"{path.name}:{node.lineno} imports {name}")
            if (isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                # ``self._server``: the class's own attribute of that name
                offences.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    assert not offences, "pynetdicom internals outside compat.py:\n" + "\n".join(offences)
