"""Shared test plumbing: prerequisites that skip on a laptop but fail in CI."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable

import pytest

REQUIRE_INTEGRATION = os.environ.get("PACSINFRA_REQUIRE_INTEGRATION") == "1"


def need(condition: bool, why: str) -> None:
    """Skip (on a laptop) or fail (in CI, PACSINFRA_REQUIRE_INTEGRATION=1) when a prerequisite is missing."""
    if condition:
        return
    if REQUIRE_INTEGRATION:
        pytest.fail(f"integration prerequisite missing: {why}", pytrace=False)
    pytest.skip(f"prerequisite missing: {why}")


def need_binary(*names: str) -> None:
    """Require executables on PATH."""
    for name in names:
        need(shutil.which(name) is not None, f"{name} not on PATH (run scripts/install-system-deps.sh)")


def need_module(name: str) -> None:
    """Require an importable Python module."""
    try:
        __import__(name)
    except ImportError:
        need(False, f"python module {name} not installed (pip install -e '.[dev]')")


def free_port() -> int:
    """A free TCP port on loopback (race-prone by nature; callers retry on bind failure)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def require() -> Callable[[bool, str], None]:
    """Fixture form of :func:`need`."""
    return need
