"""The one re-record switch (tests/support/record.py): records on a developer's machine,
compares otherwise, and stops a CI run that has it on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import record

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def developer(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A run outside CI, whatever runs this test."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PACSINFRA_REQUIRE_INTEGRATION", raising=False)
    monkeypatch.delenv(record.SWITCH, raising=False)
    return monkeypatch


def test_without_the_switch_a_difference_fails_and_nothing_is_written(
        developer: pytest.MonkeyPatch, tmp_path: Path) -> None:
    golden = tmp_path / "expected.txt"
    golden.write_bytes(b"old\r\n")
    with pytest.raises(AssertionError, match="PACSINFRA_RECORD=1"):
        record.check_text(golden, "new\n")
    with pytest.raises(AssertionError, match="differs"):
        record.check_text(golden, "old\n")  # compared byte for byte
    assert golden.read_bytes() == b"old\r\n"
    with pytest.raises(AssertionError, match="missing"):
        record.check_text(tmp_path / "absent.txt", "x")
    record.check_text(golden, "old\r\n")


def test_with_the_switch_the_file_is_written(developer: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    developer.setenv(record.SWITCH, "1")
    golden = tmp_path / "expected.txt"
    record.check_text(golden, "new\n")
    assert golden.read_bytes() == b"new\n"


@pytest.mark.parametrize("ci", [{"CI": "true"}, {"PACSINFRA_REQUIRE_INTEGRATION": "1"}])
def test_under_ci_the_switch_fails_instead_of_writing(
        developer: pytest.MonkeyPatch, tmp_path: Path, ci: dict[str, str]) -> None:
    developer.setenv(record.SWITCH, "1")
    for key, value in ci.items():
        developer.setenv(key, value)
    golden = tmp_path / "expected.txt"
    with pytest.raises(pytest.fail.Exception, match="never rewritten by CI"):
        record.check_text(golden, "new\n")
    assert not golden.exists()


def test_a_ci_run_with_the_switch_on_does_not_start() -> None:
    env = {**os.environ, "CI": "true", record.SWITCH: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "tests/unit/test_kvm_render.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "never rewritten by CI" in proc.stderr
