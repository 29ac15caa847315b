"""One switch for re-recording what tests compare against: ``PACSINFRA_RECORD=1``.

Golden renders (tests/golden/kvm, tests/golden/hyperv) and the expectations of the data
cases (tests/cases/blueprint, tests/cases/plan) are written by the code under test when
this switch is on, and compared otherwise; a recording is then reviewed like any change
(``git diff tests/golden tests/cases``).

Under CI (``CI=true`` or ``PACSINFRA_REQUIRE_INTEGRATION=1``) the switch fails the run
instead: CI checks what was recorded, it never records.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SWITCH = "PACSINFRA_RECORD"
REPO = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    """Whether this run is CI's (where nothing is ever re-recorded)."""
    return (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or os.environ.get("PACSINFRA_REQUIRE_INTEGRATION") == "1")


def refusal() -> str | None:
    """Why this run must not start (the switch is on under CI), or None."""
    if os.environ.get(SWITCH) == "1" and in_ci():
        return (f"{SWITCH}=1 under CI: expected files are recorded on a developer's machine "
                "and reviewed, never rewritten by CI")
    return None


def recording() -> bool:
    """Whether this run rewrites expected files (fails the test under CI)."""
    why = refusal()
    if why:
        pytest.fail(why, pytrace=False)
    return os.environ.get(SWITCH) == "1"


def check_text(path: Path, actual: str, what: str = "") -> None:
    """Compare ``actual`` with the file at ``path`` byte for byte (recorded first when
    :func:`recording`)."""
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    if recording():
        path.write_bytes(actual.encode("utf-8"))
    assert path.is_file(), f"{where} is missing: record it with {SWITCH}=1 and review it"
    expected = path.read_bytes().decode("utf-8")
    assert actual == expected, (f"{what or 'the output'} differs from {where} "
                                f"(an intended change: record with {SWITCH}=1, review the diff)")
