"""The JSON Schema of the blueprint language (for editors and CI linters).

Derived from the pydantic model, with one addition: wherever a value may be written,
a variable reference (``${var.name}``) is accepted too, because the real type is only
known after substitution. ``pacsinfra validate`` remains the full check (references,
addresses, capacity); the schema is for completion and early feedback in an editor.
"""

from __future__ import annotations

from typing import Any

VAR_REF_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\$\{\s*var\.[A-Za-z_][A-Za-z0-9_-]*\s*\}$",
    "description": "a variable reference, substituted before validation",
}


def _allow_vars(node: Any) -> Any:
    """Accept ``${var.name}`` for every property, list item and mapping value."""
    if isinstance(node, list):
        return [_allow_vars(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _allow_vars(v) for k, v in node.items()}
    props = out.get("properties")
    if isinstance(props, dict):
        out["properties"] = {k: _with_var(v) for k, v in props.items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _with_var(out[key])
    return out


def _with_var(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
        return schema  # any string already accepts a reference
    return {"anyOf": [schema, VAR_REF_SCHEMA]}


def blueprint_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a blueprint file."""
    from pacsinfra.blueprint.model import Site

    schema = Site.model_json_schema(by_alias=True, mode="validation")
    top = {k: v for k, v in schema.items() if k != "$defs"}
    top = _allow_vars(top)
    defs = {name: _allow_vars(d) for name, d in schema.get("$defs", {}).items()}
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://pacsinfra.invalid/schema/blueprint-v1.json",
        **top,
        "title": "pacsinfra blueprint (apiVersion pacsinfra/v1, kind Site)",
        "$defs": defs,
    }
    return out


__all__ = ["VAR_REF_SCHEMA", "blueprint_schema"]
