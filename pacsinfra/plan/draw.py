"""Draw a site's graph: networks, machines on them, services, the DICOM flow.

The picture is the engine's own dependency graph (:class:`pacsinfra.plan.graph.Graph`):
machines point at the networks and storage they use (labelled with their static
address), services at the machines that host them; the DICOM data path
(modalities -> router -> archive -> viewers) is drawn as bold flow edges that
the engine never orders by. ``dot`` and ``mermaid`` are text; svg/png come from
Graphviz's ``dot`` command when it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from pacsinfra.errors import UsageError
from pacsinfra.plan.graph import Graph, Node
from pacsinfra.specs import MachineSpec, NetworkSpec, StorageSpec
from pacsinfra.units import format_mib

FORMATS = ("dot", "mermaid", "svg", "png")


def _id(address: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", address)


def node_label(node: Node) -> list[str]:
    """The lines shown for a node."""
    spec = node.attrs.get("spec")
    if isinstance(spec, NetworkSpec):
        bits = [f"network {node.address.split('.', 1)[1]}", spec.name]
        detail = ", ".join(
            x for x in (spec.cidr, f"vlan {spec.vlan}" if spec.vlan else "", f"mtu {spec.mtu}") if x
        )
        return bits + [detail]
    if isinstance(spec, StorageSpec):
        return [
            f"storage {node.address.split('.', 1)[1]}",
            spec.name,
            f"{spec.tier}, {spec.provisioning}",
        ]
    if isinstance(spec, MachineSpec):
        cpu = f"{spec.cpu_count} vCPU"
        if spec.cpu_reservation_mhz:
            cpu += f", res {spec.cpu_reservation_mhz} MHz"
        if spec.cpu_shares:
            cpu += f", shares {spec.cpu_shares}"
        mem = format_mib(spec.memory_mib)
        if spec.memory_reservation_mib:
            mem += f", res {format_mib(spec.memory_reservation_mib)}"
        lines = [spec.name, node.address, cpu, mem]
        if spec.gpu:
            lines.append(
                f"GPU {spec.gpu.mode} {spec.gpu.profile or spec.gpu.device or ''} x{spec.gpu.count}"
            )
        if spec.holds_data:
            lines.append("holds data")
        return lines
    if node.kind == "service":
        return [f"service {node.label}", f"({node.attrs.get('kind') or '?'})"]
    return [node.label or node.address]


def _edge_label(g: Graph, src: str, dst: str) -> str:
    spec = g.nodes[src].attrs.get("spec")
    target = g.nodes[dst].attrs.get("spec")
    if isinstance(spec, MachineSpec) and isinstance(target, NetworkSpec):
        addrs = [n.address for n in spec.nics if n.network == target.name and n.address]
        return ", ".join(addrs) if addrs else "dhcp"
    if isinstance(spec, MachineSpec) and isinstance(target, StorageSpec):
        return ", ".join(
            f"{d.name} {format_mib(d.size_mib)}" for d in spec.disks if d.storage == target.name
        )
    return ""


SHAPES = {
    "network": "hexagon",
    "storage": "cylinder",
    "machine": "box",
    "service": "component",
    "external": "house",
}


def to_dot(g: Graph, title: str = "") -> str:
    """Graphviz source."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace('"', '\\"')

    out = [
        "digraph pacsinfra {",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    if title:
        out.append(f'  label="{esc(title)}"; labelloc=t;')
    for a in sorted(g.nodes):
        n = g.nodes[a]
        label = "\\n".join(esc(x) for x in node_label(n))
        out.append(f'  {_id(a)} [shape={SHAPES.get(n.kind, "ellipse")}, label="{label}"];')
    for node, dep in g.edges():
        lab = _edge_label(g, node, dep)
        style = ", style=dashed" if g.nodes[node].kind == "service" else ""
        out.append(f'  {_id(node)} -> {_id(dep)} [label="{esc(lab)}"{style}];')
    for src, dst, lab in g.flows:
        out.append(
            f'  {_id(src)} -> {_id(dst)} [label="{esc(lab)}", color=blue, penwidth=2, constraint=false];'
        )
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(g: Graph) -> str:
    """Mermaid flowchart source."""
    shape = {
        "network": ("{{", "}}"),
        "storage": ("[(", ")]"),
        "machine": ("[", "]"),
        "service": ("[[", "]]"),
        "external": ("((", "))"),
    }
    out = ["flowchart LR"]
    for a in sorted(g.nodes):
        n = g.nodes[a]
        left, right = shape.get(n.kind, ("(", ")"))
        label = "<br/>".join(node_label(n)).replace('"', "'")
        out.append(f'  {_id(a)}{left}"{label}"{right}')
    for node, dep in g.edges():
        lab = _edge_label(g, node, dep).replace('"', "'")
        arrow = "-.->" if g.nodes[node].kind == "service" else "-->"
        out.append(f"  {_id(node)} {arrow}{f'|{lab}|' if lab else ''} {_id(dep)}")
    for src, dst, lab in g.flows:
        out.append(f"  {_id(src)} ==>{f'|{lab}|' if lab else ''} {_id(dst)}")
    return "\n".join(out) + "\n"


def render_graph(g: Graph, fmt: str, title: str = "") -> bytes:
    """The graph in ``fmt`` (dot, mermaid, svg, png)."""
    if fmt == "dot":
        return to_dot(g, title).encode()
    if fmt == "mermaid":
        return to_mermaid(g).encode()
    if fmt in ("svg", "png"):
        dot = shutil.which("dot")
        if dot is None:
            raise UsageError(
                f"--format {fmt} needs Graphviz's dot command (apt-get install graphviz); "
                "--format dot and --format mermaid work without it"
            )
        proc = subprocess.run(
            [dot, f"-T{fmt}"], input=to_dot(g, title).encode(), capture_output=True, timeout=120
        )
        if proc.returncode != 0:
            raise UsageError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    raise UsageError(f"unknown graph format {fmt!r} (one of {', '.join(FORMATS)})")
