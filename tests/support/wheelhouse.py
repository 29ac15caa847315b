"""pacsinfra's dependencies as wheels for a target's Python, downloaded once and cached.

Same cache entry as ``tests/integration/test_static_site.py`` (``wheelhouse-<key>`` under
``~/.cache/pacsinfra-tests``, the key hashing the dependency list and the target's
``(major, minor)``), so the two tests share one download.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from support.locks import file_lock

REPO = Path(__file__).resolve().parents[2]


def requirements() -> list[str]:
    """``[project] dependencies`` of this checkout's pyproject.toml."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [str(d) for d in deps]


def wheelhouse(python_version: tuple[int, int]) -> Path:
    """The directory of wheels (``pip download --only-binary``); raises RuntimeError when
    they cannot be downloaded. Wheels are for this interpreter's tags: ``python_version``
    must match it (binary wheels such as pydantic-core are per ABI)."""
    if tuple(sys.version_info[:2]) != tuple(python_version):
        raise RuntimeError(f"wheels for Python {python_version} cannot be fetched by "
                           f"Python {sys.version_info[:2]}")
    deps = requirements()
    key = hashlib.sha256(json.dumps([sorted(deps), str(tuple(python_version))]).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = cache / "pacsinfra-tests" / f"wheelhouse-{key.hexdigest()[:16]}"
    with file_lock(where.with_name(where.name + ".lock")):  # one download; the others wait
        if (where / ".complete").exists():
            return where
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q",
                            "--only-binary=:all:", "--dest", str(where), *deps],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"cannot download the dependency wheels: {r.stderr[-300:]}")
        (where / ".complete").write_text("\n".join(deps))
        return where
