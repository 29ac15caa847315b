"""A small directed acyclic graph: dependency order, cycle detection, layers.

Edges point from a node to what it depends on (``machine.archive[0]`` ->
``network.dicom``). :meth:`Graph.layers` returns the nodes in topological layers:
everything in a layer depends only on earlier layers, so a layer's nodes can be
acted on in parallel; destroy walks the layers backwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pacsinfra.errors import PlanError


@dataclass
class Node:
    """One vertex: an address, its kind and free-form attributes for drawing."""

    address: str
    kind: str  # network | storage | machine | service | external
    label: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


class Graph:
    """Nodes keyed by address, dependency edges, and optional non-ordering flow edges."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self._deps: dict[str, set[str]] = {}
        self.flows: list[tuple[str, str, str]] = []  # (from, to, label): drawn, never ordered by

    def add_node(self, node: Node) -> Node:
        """Add (or replace) a node."""
        self.nodes[node.address] = node
        self._deps.setdefault(node.address, set())
        return node

    def add_dependency(self, node: str, depends_on: str) -> None:
        """``node`` must come after ``depends_on``."""
        for a in (node, depends_on):
            if a not in self.nodes:
                raise PlanError(f"dependency on unknown resource {a!r}")
        self._deps[node].add(depends_on)

    def add_flow(self, src: str, dst: str, label: str = "") -> None:
        """A data-flow edge, for drawing only (e.g. the DICOM path)."""
        self.flows.append((src, dst, label))

    def dependencies(self, address: str) -> frozenset[str]:
        """Direct dependencies of ``address``."""
        return frozenset(self._deps.get(address, ()))

    def dependents(self) -> dict[str, set[str]]:
        """Reverse edges: address -> the nodes that depend on it."""
        out: dict[str, set[str]] = {a: set() for a in self.nodes}
        for node, deps in self._deps.items():
            for d in deps:
                out[d].add(node)
        return out

    def edges(self) -> Iterator[tuple[str, str]]:
        """(node, dependency) pairs, sorted."""
        for node in sorted(self._deps):
            for d in sorted(self._deps[node]):
                yield node, d

    def subgraph(self, addresses: Iterable[str]) -> Graph:
        """The induced graph on ``addresses`` (edges between kept nodes only)."""
        keep = set(addresses)
        g = Graph()
        for a in sorted(keep):
            g.add_node(self.nodes[a])
        for node, deps in self._deps.items():
            if node in keep:
                g._deps[node] = {d for d in deps if d in keep}
        return g

    def find_cycle(self) -> list[str] | None:
        """One cycle as a list of addresses (first == last), or None."""
        white, grey, black = 0, 1, 2
        color = {a: white for a in self.nodes}
        stack: list[str] = []
        for start in sorted(self.nodes):
            if color[start] != white:
                continue
            # iterative DFS so a 10,000-node chain does not hit the recursion limit
            work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(self._deps[start])))]
            color[start] = grey
            stack.append(start)
            while work:
                node, it = work[-1]
                nxt = next(it, None)
                if nxt is None:
                    work.pop()
                    stack.pop()
                    color[node] = black
                    continue
                if color[nxt] == grey:
                    return stack[stack.index(nxt):] + [nxt]
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append(nxt)
                    work.append((nxt, iter(sorted(self._deps[nxt]))))
        return None

    def check_acyclic(self) -> None:
        """Raise :class:`PlanError` naming the cycle, if there is one."""
        cycle = self.find_cycle()
        if cycle:
            raise PlanError("dependency cycle: " + " -> ".join(cycle))

    def layers(self) -> list[list[str]]:
        """Topological layers (Kahn's algorithm), each sorted; raises PlanError on a cycle."""
        remaining = {a: len(deps) for a, deps in self._deps.items()}
        rev = self.dependents()
        layer = sorted(a for a, n in remaining.items() if n == 0)
        out: list[list[str]] = []
        seen = 0
        while layer:
            out.append(layer)
            seen += len(layer)
            nxt: list[str] = []
            for a in layer:
                for d in rev[a]:
                    remaining[d] -= 1
                    if remaining[d] == 0:
                        nxt.append(d)
            layer = sorted(nxt)
        if seen != len(self.nodes):
            self.check_acyclic()
            raise PlanError("dependency graph is not acyclic")
        return out

    def order(self) -> list[str]:
        """A deterministic topological order (dependencies first)."""
        return [a for layer in self.layers() for a in layer]
