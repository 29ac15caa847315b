"""Checks on the raw (substituted) data, for rules a model validator would only
report at the level of a whole config.

RouterConfig refuses a rule forwarding to an unknown destination as one error on
``services.<router>.config``; here the same rule is reported at the exact
``rules[i].forward[j]`` node with the closest destination name, and the vaguer model
error is dropped (:data:`SUPERSEDED`).
"""

from __future__ import annotations

from typing import Any

from pacsinfra.blueprint.diagnose import format_path
from pacsinfra.blueprint.overlay import did_you_mean
from pacsinfra.blueprint.yaml_safe import Loc
from pacsinfra.errors import Diagnostic

#: substrings of RouterConfig's own messages that the checks below replace
SUPERSEDED = ("forwards to unknown", "names unknown destination")


def _at(root: Loc | None, parts: tuple[Any, ...]) -> Loc | None:
    node = root
    for p in parts:
        nxt = node.child(p) if node is not None else None
        if nxt is None:
            return node
        node = nxt
    return node


def router_references(data: Any, root: Loc | None, file: str) -> list[Diagnostic]:
    """Rules forwarding to, and groups naming, destinations a router does not define."""
    out: list[Diagnostic] = []
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        return out

    def add(parts: tuple[Any, ...], message: str, hint: str) -> None:
        loc = _at(root, parts)
        out.append(Diagnostic(message=message, path=format_path(parts),
                              file=loc.file if loc else file, line=loc.line if loc else 0,
                              column=loc.col if loc else 0, hint=hint, code="unknown-ref"))

    for name, svc in services.items():
        if not isinstance(svc, dict) or svc.get("kind") != "router":
            continue
        cfg = svc.get("config")
        if not isinstance(cfg, dict):
            continue
        dests = cfg.get("destinations") if isinstance(cfg.get("destinations"), dict) else {}
        groups = cfg.get("groups") if isinstance(cfg.get("groups"), dict) else {}
        assert isinstance(dests, dict) and isinstance(groups, dict)
        known = [str(k) for k in dests] + [str(k) for k in groups]
        base = ("services", name, "config")
        for gname, group in groups.items():
            members = group.get("members") if isinstance(group, dict) else None
            for j, m in enumerate(members if isinstance(members, list) else []):
                if isinstance(m, str) and m not in dests:
                    add(base + ("groups", gname, "members", j),
                        f"group {gname!r} names unknown destination {m!r}",
                        did_you_mean(m, [str(k) for k in dests], "destinations"))
        rules = cfg.get("rules")
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            fwd = rule.get("forward") if isinstance(rule, dict) else None
            for j, target in enumerate(fwd if isinstance(fwd, list) else []):
                if isinstance(target, str) and target not in known:
                    rname = rule.get("name", i) if isinstance(rule, dict) else i
                    add(base + ("rules", i, "forward", j),
                        f"rule {rname!r} forwards to unknown {target!r}",
                        did_you_mean(target, known, "destinations and groups"))
    return out


__all__ = ["SUPERSEDED", "router_references"]
