"""The blueprint language: YAML that declares a PACS site, validated with locations.

Public API (docs/blueprint-contract.md)::

    from pacsinfra.blueprint import load_blueprint
    bp = load_blueprint("site.yaml", site="dr", variables={"n": "3"})
    bp.site.machines["archive"].member_names(bp.site.metadata.name)

Importing this package is cheap: the model (pydantic) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacsinfra.blueprint.load import LoadedBlueprint, load_blueprint, validate

if TYPE_CHECKING:
    from pacsinfra.blueprint.model import Site


def __getattr__(name: str) -> Any:
    if name in ("Site",):
        from pacsinfra.blueprint import model

        return getattr(model, name)
    raise AttributeError(name)


__all__ = ["LoadedBlueprint", "Site", "load_blueprint", "validate"]
