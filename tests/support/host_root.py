"""A test host's pacsinfra root that the service account can reach.

Logged in as root, pacsinfra runs services as an unprivileged account, which must be
able to traverse every directory above ``<root>/venv``. pytest's temporary directories
are private (0700, and pytest makes them so again at every start), so the roots of the
test hosts (which share this machine's file system) live under :data:`BASE` instead, in
a directory per call removed when the test process exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

BASE = Path("/var/lib/pacsinfra-test")
#: roots older than this are what a killed test run left behind
STALE_SECONDS = 24 * 3600


def _sweep() -> None:
    if not BASE.is_dir():
        return
    for old in BASE.iterdir():
        try:
            if time.time() - old.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


_MADE: dict[str, Path] = {}


def host_root(name: str | Path) -> Path:
    """A fresh directory ``<BASE>/<unique>/<name's last part>`` (0755 up to /); the same
    one again for the same ``name`` (a test and its helpers agree on a host's root)."""
    if str(name) in _MADE:
        return _MADE[str(name)]
    BASE.mkdir(parents=True, exist_ok=True)
    BASE.chmod(0o755)
    _sweep()
    holder = Path(tempfile.mkdtemp(prefix="run-", dir=BASE))
    holder.chmod(0o755)
    atexit.register(shutil.rmtree, holder, True)
    root = holder / Path(name).name
    root.mkdir(mode=0o755)
    _MADE[str(name)] = root
    return root
