"""No-op networks and storage classes, kept as marks on the pacsinfra machine.

Providers whose machines already exist (``local``, ``static``) have no network or
storage object to make, but a plan, the state, adoption and orphan deletion work as
with the hypervisor drivers when each one is a small marked record:
``<base>/<site>/{networks,storage}/<name>.json`` (an overlay's ``/`` becomes ``--``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pacsinfra.fsutil import write_atomic
from pacsinfra.services.marks import decode_mark, encode_mark
from pacsinfra.specs import NetworkSpec, Observed, Ownership, PowerState, StorageSpec


def site_dir(base: Path, site: str) -> Path:
    """``<base>/<site>``; an overlay's ``name/overlay`` becomes ``name--overlay``."""
    return base / site.replace("/", "--")


class Records:
    """The records of one provider under ``base``, in mark format ``fmt``."""

    def __init__(self, base: Path, fmt: str) -> None:
        self.base, self.fmt = base, fmt

    def path(self, site: str, spec: NetworkSpec | StorageSpec) -> Path:
        kind = "networks" if isinstance(spec, NetworkSpec) else "storage"
        return site_dir(self.base, site) / kind / f"{spec.name}.json"

    def read_path(self, path: Path) -> Observed | None:
        """The record at ``path`` (None when absent or not ours)."""
        try:
            found = decode_mark(path.read_text(), self.fmt)
        except OSError:
            return None
        if found is None:
            return None
        spec, owner = found
        return Observed(spec=spec, id=str(path), owner=owner, power=PowerState.ON)

    def list(self, site: str) -> list[Observed]:
        """Every record of ``site``."""
        out = []
        for sub in ("networks", "storage"):
            for path in sorted((site_dir(self.base, site) / sub).glob("*.json")):
                obs = self.read_path(path)
                if obs is not None:
                    out.append(obs)
        return out

    def find(self, spec: NetworkSpec | StorageSpec) -> Observed | None:
        """The record of ``spec`` in any site (a name another site already uses)."""
        if not self.base.is_dir():
            return None
        for d in sorted(self.base.iterdir()):
            if d.is_dir():
                obs = self.read_path(self.path(d.name.replace("--", "/"), spec))
                if obs is not None:
                    return obs
        return None

    def write(self, spec: NetworkSpec | StorageSpec, owner: Ownership) -> Observed:
        path = self.path(owner.site, spec)
        write_atomic(path, encode_mark(spec, owner, self.fmt))
        obs = self.read_path(path)
        assert obs is not None
        return obs

    def delete(self, site: str, spec: NetworkSpec | StorageSpec) -> None:
        """Remove the record, then its directory and the site's when they became empty."""
        path = self.path(site, spec)
        path.unlink(missing_ok=True)
        for d in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                d.rmdir()
