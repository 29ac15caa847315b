"""An inter-process lock for what tests share across processes: caches under
``~/.cache/pacsinfra-tests``, the vcsim build, the choice of a free lab subnet.

Parallel workers (pytest-xdist) and other checkouts' test runs on the same machine take
the same lock file, so one builds or chooses while the others wait, then find the result.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
