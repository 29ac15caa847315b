"""A driver whose SDK is missing fails only when used, with the install hint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacsinfra.errors import UsageError
from pacsinfra.providers import provider_class

REPO = Path(__file__).resolve().parents[2]

# Hide one SDK from the import system, then run the CLI as a user would.
_RUNNER = """
import sys
sys.modules[{sdk!r}] = None  # as if the package were not installed
from pacsinfra.cli import main
main({argv!r})
"""


def _run_without(sdk: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = _RUNNER.format(sdk=sdk, argv=argv)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("driver", "sdk", "extra"), [
    ("kvm", "libvirt", "kvm"), ("vsphere", "pyVmomi", "vsphere"), ("hyperv", "winrm", "hyperv")])
def test_missing_sdk_names_the_extra(driver: str, sdk: str, extra: str) -> None:
    code = (f"import sys; sys.modules[{sdk!r}] = None\n"
            "from pacsinfra.providers import provider_class\n"
            "from pacsinfra.errors import DriverUnavailable\n"
            f"try:\n    provider_class({driver!r})\n"
            "except DriverUnavailable as exc:\n    print(exc); sys.exit(exc.exit_code)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"pip install 'pacsinfra[{extra}]'" in proc.stdout


def test_validate_works_and_plan_explains_without_libvirt() -> None:
    ok = _run_without("libvirt", ["validate", "examples/kvm-quickstart.yaml"])
    assert ok.returncode == 0, ok.stderr
    plan = _run_without("libvirt", ["plan", "examples/kvm-quickstart.yaml"])
    assert plan.returncode == 2
    assert "pip install 'pacsinfra[kvm]'" in plan.stderr
    assert "Traceback" not in plan.stderr


def test_unknown_driver_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="known providers"):
        provider_class("xen")
