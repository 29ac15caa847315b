"""Shared test plumbing: prerequisites that skip on a laptop but fail in CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from support import scheduling
from support.ports import free_port as free_port  # re-exported: tests import it from here
from support.record import refusal

REQUIRE_INTEGRATION = os.environ.get("PACSINFRA_REQUIRE_INTEGRATION") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to start when the re-record switch is on under CI (tests/support/record.py);
    record module durations for the order of the next run (tests/support/scheduling.py)."""
    why = refusal()
    if why:
        raise pytest.UsageError(why)
    scheduling.register(config)
    _keep_responses_in_test_clients()


def _keep_responses_in_test_clients() -> None:
    """Every pynetdicom association a test opens gets the workaround pacsinfra's own senders
    use (``pacsinfra.pacs.compat.keep_responses``): without it pynetdicom's reactor can
    swallow a C-STORE response ("Received unexpected C-STORE service message") and the
    test's client waits out its DIMSE timeout, which a loaded machine made happen."""
    try:
        from pynetdicom.ae import ApplicationEntity

        from pacsinfra.pacs.compat import keep_responses
    except ImportError:  # pynetdicom missing: the tests that need it say so
        return
    original = ApplicationEntity.associate
    if getattr(original, "_keeps_responses", False):
        return

    def associate(self: Any, *args: Any, **kwargs: Any) -> Any:
        assoc = original(self, *args, **kwargs)
        if assoc.is_established:
            keep_responses(assoc)
        return assoc

    associate._keeps_responses = True  # type: ignore[attr-defined]
    ApplicationEntity.associate = associate  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long groups first (tests/support/scheduling.py)."""
    scheduling.plan(config, items)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Each group whole on one worker (tests/support/scheduling.py)."""
    return scheduling.make_scheduler(config, log)


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


@pytest.fixture
def require() -> Callable[[bool, str], None]:
    """Fixture form of :func:`need`."""
    return need
