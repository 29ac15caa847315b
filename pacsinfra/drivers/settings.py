"""Reading a driver's settings: the blueprint's provider section as a model object, its
JSON dump (a saved plan), or a plain Mapping (tests), all the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def setting(config: Any, key: str, default: Any = None) -> Any:
    """``config.key`` or ``config[key]``; None counts as unset (``default``)."""
    if config is None:
        return default
    value = config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    return default if value is None else value


def as_dict(value: Any) -> dict[str, Any]:
    """A settings section as a plain dict without its unset (None) entries."""
    if value is None:
        return {}
    if hasattr(value, "model_dump"):
        data = value.model_dump(mode="json", exclude_none=True, by_alias=True)
        assert isinstance(data, dict)
        return data
    return {k: v for k, v in dict(value).items() if v is not None}
