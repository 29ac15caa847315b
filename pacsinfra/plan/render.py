"""A plan as text a person reads before saying yes.

One block per resource: ``+`` create, ``~`` update in place (or "restart
required" when the driver needs a power-off), ``-/+`` replace with the attribute
that forces it, ``-`` delete, ``=`` adopt, ``#`` forget; changed attributes
below it as ``path: before -> after``; a Terraform-style summary line last.
Colours are ANSI via click.style; click strips them when the output is no TTY.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from pacsinfra.plan.plan import Action, Plan, Step
from pacsinfra.specs import ChangeKind, MachineSpec, NetworkSpec, Spec, StorageSpec

SYMBOL = {
    Action.CREATE: ("+", "green"),
    Action.UPDATE: ("~", "yellow"),
    Action.REPLACE: ("-/+", "red"),
    Action.DELETE: ("-", "red"),
    Action.ADOPT: ("=", "cyan"),
    Action.FORGET: ("#", "blue"),
}

KIND_TEXT = {
    ChangeKind.IN_PLACE: "update in place",
    ChangeKind.NEEDS_POWER_OFF: "update (restart required)",
    ChangeKind.REPLACE: "replace",
}

# Hypervisor-assigned leaves never shown as changes when the blueprint left them open.
_ASSIGNED_LEAVES = frozenset({"mac"})


def _fmt(value: Any) -> str:
    if value == "<absent>":
        return "(none)"
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON values as ``path -> leaf`` (``disks[1].size_mib``)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict) and value:
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def _compact(value: Any) -> Any:
    """A whole added/removed element without its null fields."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


def leaf_changes(name: str, before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    """The leaves of one field that differ (MACs the blueprint left open skipped).

    An element added to or removed from a list (a NIC, a disk) is one line, not
    one line per attribute.
    """
    if isinstance(before, list) and isinstance(after, list):
        out: list[tuple[str, Any, Any]] = []
        for i in range(max(len(before), len(after))):
            path = f"{name}[{i}]"
            if i >= len(before):
                out.append((path, "<absent>", _compact(after[i])))
            elif i >= len(after):
                out.append((path, _compact(before[i]), "<absent>"))
            else:
                out.extend(leaf_changes(path, before[i], after[i]))
        return out
    b, a = flatten(before, name), flatten(after, name)
    changes = []
    for path in sorted(set(b) | set(a), key=lambda p: (p.count("["), p)):
        if path.rsplit(".", 1)[-1] in _ASSIGNED_LEAVES and a.get(path) is None:
            continue
        if b.get(path, "<absent>") != a.get(path, "<absent>"):
            changes.append((path, b.get(path, "<absent>"), a.get(path, "<absent>")))
    return changes


def spec_summary(spec: Spec | None) -> list[str]:
    """The few attributes worth showing for a create."""
    if spec is None:
        return []
    if isinstance(spec, MachineSpec):
        lines = [
            f"cpu: {spec.cpu_count} vCPU"
            + (f", shares {spec.cpu_shares}" if spec.cpu_shares else "")
        ]
        if spec.cpu_reservation_mhz:
            lines[-1] += f", reservation {spec.cpu_reservation_mhz} MHz"
        mem = f"memory: {spec.memory_mib} MiB"
        if spec.memory_reservation_mib:
            mem += f", reservation {spec.memory_reservation_mib} MiB"
        lines.append(mem)
        for d in spec.disks:
            lines.append(f"disk {d.name}: {d.size_mib} MiB on {d.storage} ({d.provisioning})")
        for n in spec.nics:
            where = f"{n.address}/{n.prefix}" if n.address else "dhcp"
            lines.append(f"nic: {n.network} {where}" + (f" vlan {n.vlan}" if n.vlan else ""))
        if spec.gpu:
            lines.append(
                f"gpu: {spec.gpu.mode} {spec.gpu.profile or spec.gpu.device or ''} x{spec.gpu.count}"
            )
        if spec.holds_data:
            lines.append("holds data: yes")
        return lines
    if isinstance(spec, NetworkSpec):
        bits = [f"purpose {spec.purpose}"]
        if spec.cidr:
            bits.append(spec.cidr)
        if spec.vlan:
            bits.append(f"vlan {spec.vlan}")
        bits.append(f"mtu {spec.mtu}")
        return [", ".join(bits)]
    if isinstance(spec, StorageSpec):
        return [
            f"tier {spec.tier}, {spec.provisioning}" + (", encrypted" if spec.encrypted else "")
        ]
    cfg = getattr(spec, "config", None)  # a ServiceSpec (drivers that run services: local)
    if isinstance(cfg, Mapping) and cfg.get("ae_title"):
        where = f"{cfg.get('bind', '0.0.0.0')}:{cfg.get('port')}"
        return [f"{getattr(spec, 'kind', '')} {cfg['ae_title']} on {where}, "
                f"on {getattr(spec, 'machine', '')}"]
    if isinstance(cfg, Mapping) and getattr(spec, "kind", "") == "database":
        where = f"{cfg.get('bind', '0.0.0.0')}:{cfg.get('port')}"
        dbs = ", ".join(str(d) for d in cfg.get("databases", ()))
        return [f"PostgreSQL {cfg.get('version')} on {where}, role {cfg.get('user')}, "
                f"databases {dbs}, on {getattr(spec, 'machine', '')}"]
    if isinstance(cfg, Mapping) and getattr(spec, "kind", "") == "viewer":
        scheme = "https" if (cfg.get("tls") or {}).get("enabled") else "http"
        ohif = (cfg.get("ohif") or {}).get("version", "")
        users = len((cfg.get("auth") or {}).get("users") or {})
        login = (f", {users} user(s)" if users else ", htpasswd users"
                 if (cfg.get("auth") or {}).get("htpasswd") else
                 ", ANONYMOUS" if cfg.get("allow_anonymous") else "")
        return [f"OHIF {ohif} on {scheme}://{cfg.get('bind', '127.0.0.1')}:{cfg.get('port')}"
                f"{login}, reading {cfg.get('upstream')}, on {getattr(spec, 'machine', '')}"]
    return []


def step_header(step: Step) -> tuple[str, str, str]:
    """(symbol, colour, headline) of one step."""
    sym, color = SYMBOL[step.action]
    what = f"{step.address} ({step.name})"
    if step.action is Action.CREATE:
        verb = "create" + (f" — {step.reason}" if step.reason else "")
    elif step.action is Action.UPDATE:
        verb = KIND_TEXT.get(step.kind or ChangeKind.IN_PLACE, "update")
    elif step.action is Action.REPLACE:
        verb = f"replace (forced by {', '.join(step.forces)})"
        if step.holds_data:
            verb += " — HOLDS DATA, needs --allow-replace"
    elif step.action is Action.DELETE:
        verb = "delete" + (f" — {step.reason}" if step.reason else "")
    elif step.action is Action.ADOPT:
        verb = f"adopt — {step.reason}" if step.reason else "adopt"
    else:
        verb = f"forget — {step.reason}" if step.reason else "forget"
    return sym, color, f"{what}: {verb}"


def render_step(step: Step) -> list[str]:
    """The lines of one step."""
    sym, color, head = step_header(step)
    lines = [click.style(f"  {sym:>3} {head}", fg=color, bold=True)]
    if step.action is Action.CREATE:
        lines += [f"        {line}" for line in spec_summary(step.desired)]
    for f in step.fields:
        tag = {
            ChangeKind.REPLACE: "  # forces replacement",
            ChangeKind.NEEDS_POWER_OFF: "  # restart",
        }.get(f.kind, "")
        leaves = leaf_changes(f.name, f.before, f.after) or [(f.name, f.before, f.after)]
        for path, before, after in leaves:
            lines.append(
                click.style(f"        ~ {path}: {_fmt(before)} -> {_fmt(after)}{tag}", fg=color)
            )
    return lines


def render_plan(plan: Plan, *, show_noop: bool = False) -> str:
    """The whole plan as text."""
    target = f"site {plan.site} (driver {plan.driver})"
    out: list[str] = []
    if plan.has_changes:
        title = "destroy" if plan.destroy else "apply"
        out.append(f"pacsinfra will {title} these changes on {target}:")
        out.append("")
        for step in plan.steps:
            if step.changes_something:
                out.extend(render_step(step))
        out.append("")
    elif show_noop:
        out.append(f"{target}: {len(plan.steps)} resources, all up to date.")
    for w in plan.warnings:
        out.append(click.style(f"Warning: {w}", fg="yellow"))
    out.append(click.style(plan.summary(), bold=True))
    return "\n".join(out)
