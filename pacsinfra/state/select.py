"""Choosing a site's state backend: ``--state``, else ``PACSINFRA_STATE``, else the
blueprint's ``state:`` section, else the local file next to the blueprint.

Each site (and each overlay) gets its own key, ``<site>[-<overlay>]``: its own
row or object, its own lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacsinfra.errors import UsageError
from pacsinfra.state.local import LocalStateStore, default_state_path
from pacsinfra.state.location import (
    DEFAULT_SCHEMA,
    StateLocation,
    check_schema,
    from_environment,
    lease_seconds,
    parse_state_url,
)
from pacsinfra.state.store import StateStore


def site_key(name: str, overlay: str | None) -> str:
    """The key of a site's state in a shared backend: ``<site>[-<overlay>]``."""
    return f"{name}-{overlay}" if overlay else name


def _section(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if hasattr(section, "model_dump"):
        data = section.model_dump(mode="python", exclude_none=True, by_alias=True)
    else:
        data = dict(section)
    assert isinstance(data, dict)
    return data


def location_from_section(section: Any) -> StateLocation | None:
    """The blueprint's ``state:`` section as a location (secret references resolved later)."""
    data = _section(section)
    backend = data.get("backend", "local")
    if not data or (backend == "local" and not data.get("path")):
        return None
    if backend == "local":
        return StateLocation("local", path=str(data["path"]))
    if backend == "postgresql":
        return StateLocation("postgresql", schema=check_schema(data.get("schema", DEFAULT_SCHEMA)),
                             extra={"dsn": "ref"})
    return StateLocation("s3", bucket=str(data.get("bucket", "")),
                         prefix=str(data.get("prefix", "")).strip("/"),
                         endpoint=data.get("endpoint"), region=data.get("region"))


def choose_location(state_arg: str | None, section: Any = None) -> StateLocation | None:
    """The location named by ``--state``, ``PACSINFRA_STATE`` or ``state:`` (None: default)."""
    if state_arg:
        return parse_state_url(state_arg)
    env = from_environment()
    if env is not None:
        return env
    return location_from_section(section)


def open_store(
    state_arg: str | None,
    *,
    blueprint_path: Path,
    name: str,
    overlay: str | None,
    section: Any = None,
) -> StateStore:
    """The state store of one site (no I/O until it is used)."""
    loc = choose_location(state_arg, section)
    data = _section(section)
    if loc is None:
        return LocalStateStore(default_state_path(blueprint_path, name, overlay))
    if loc.backend == "local":
        path = Path(loc.path)
        if not path.is_absolute() and state_arg is None and data.get("path") == loc.path:
            path = blueprint_path.resolve().parent / path  # blueprint paths: next to it
        return LocalStateStore(path)
    lease = lease_seconds(loc.lease, data.get("lease"))
    key = site_key(name, overlay)
    if loc.backend == "postgresql":
        from pacsinfra.state.postgres import PostgresStateStore

        conninfo = loc.conninfo
        if not conninfo:
            dsn = data.get("dsn")
            if dsn is None:
                raise UsageError("state: backend postgresql needs dsn: {env: NAME} (a secret "
                                 "reference to a libpq connection string)")
            conninfo = _resolve(dsn)
        return PostgresStateStore(conninfo, loc.schema, key, lease=lease)
    from pacsinfra.state.s3 import S3StateStore

    ak, sk = data.get("access_key"), data.get("secret_key")
    return S3StateStore(loc.bucket, loc.prefix, key, endpoint=loc.endpoint, region=loc.region,
                        access_key=_resolve(ak) if ak is not None and not state_arg else None,
                        secret_key=_resolve(sk) if sk is not None and not state_arg else None,
                        lease=lease)


def _resolve(ref: Any) -> str:
    from pacsinfra.secrets import SecretRef

    secret = ref if isinstance(ref, SecretRef) else SecretRef.model_validate(ref)
    return secret.resolve()
