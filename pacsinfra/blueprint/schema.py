"""The JSON Schema of the blueprint language (for editors and CI linters)."""

from __future__ import annotations

from typing import Any


def blueprint_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a blueprint file, as pydantic derives it from the model."""
    from pacsinfra.blueprint.model import Site

    schema = Site.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://pacsinfra.invalid/schema/blueprint-v1.json"
    schema["title"] = "pacsinfra blueprint (apiVersion pacsinfra/v1, kind Site)"
    return schema


__all__ = ["blueprint_schema"]
