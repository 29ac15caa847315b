"""The archive configuration the ``pacsinfra archive`` commands read (file and flags)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pacsinfra.errors import PacsinfraError, UsageError


def _peer(text: str) -> tuple[str, dict[str, object]]:
    aet, sep, rest = text.partition("=")
    host, sep2, port = rest.rpartition(":")
    if not sep or not sep2 or not aet or not host or not port.isdigit():
        raise UsageError(f"--peer {text!r}: expected AET=host:port")
    return aet, {"ae_title": aet, "host": host, "port": int(port)}


def load_config(
    config: Path | None, aet: str | None, port: int | None, data: Path | None,
    peers: tuple[str, ...], bind: str | None,
) -> object:
    """Build an ArchiveConfig from a YAML file and/or the quick-form flags."""
    from pacsinfra.pacs.archive.config import ArchiveConfig

    raw: dict[str, object] = {}
    if config is not None:
        try:
            loaded = yaml.safe_load(config.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read {config}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise UsageError(f"{config}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"{config}: expected a mapping at the top level")
        raw = dict(loaded or {})
    elif data is None:
        raise UsageError("give --config FILE, or --data DIR (with --aet/--port)")
    if aet:
        raw["ae_title"] = aet
    if port:
        raw["port"] = port
    if bind:
        raw["bind"] = bind
    if data is not None:
        raw["data_dir"] = str(data)
    if peers:
        table = dict(raw.get("peers") or {})  # type: ignore[call-overload]
        for p in peers:
            name, spec = _peer(p)
            table[name] = spec
        raw["peers"] = table
    if config is None:
        # Quick form: no DICOMweb unless configured.
        raw.setdefault("dicomweb", {"enabled": False})
    try:
        return ArchiveConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(x) for x in e['loc']) or '<top>'}: {e['msg']}" for e in exc.errors()
        ]
        raise UsageError("invalid archive configuration:\n" + "\n".join(lines)) from exc


@contextmanager
def opened_index(config: Path | None, data: Path | None) -> Iterator[tuple[Any, Any]]:
    """(the archive's config, its open index database) for a command that works on the
    index of a running or stopped archive; closed afterwards."""
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.archive.db import open_database

    cfg = load_config(config, None, None, data, (), None)
    assert isinstance(cfg, ArchiveConfig)
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"{data_dir}: no such data directory")
    try:
        db = open_database(cfg.index, data_dir)
    except OSError as exc:
        raise PacsinfraError(f"cannot open the archive index in {data_dir}: {exc}") from exc
    try:
        yield cfg, db
    finally:
        db.close()
