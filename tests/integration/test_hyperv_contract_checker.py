"""scripts/check-hyperv-contracts.py (for real hosts) run against the loopback model.

This proves the checker's own logic; its three hand edits (free PowerShell the model cannot
run) are applied to the model directly here.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import need_module

need_module("winrm")

from support.hyperv_model import HypervHost, Vm  # noqa: E402
from support.wsman_server import PASSWORD, USER, WsmanServer  # noqa: E402

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-hyperv-contracts.py"


def load_checker() -> Any:
    spec = importlib.util.spec_from_file_location("check_hyperv_contracts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_hyperv_contracts"] = module
    spec.loader.exec_module(module)
    return module


def hand_edit(host: HypervHost) -> Any:
    """What the checker's raw PowerShell does, done to the model."""

    def raw(self: Any, script: str) -> None:
        if m := re.search(r"Get-VM -Name '([^']+)' \| Get-VMNetworkAdapter \| Set-VMNetworkAdapterVlan -Access -VlanId (\d+);"
                          r" Set-VMProcessor -VMName '[^']+' -RelativeWeight (\d+)", script):
            vm = host.vm(m.group(1))
            for a in vm.adapters:
                a.vlan = int(m.group(2))
            vm.processor["weight"] = int(m.group(3))
        elif m := re.search(r"New-VM -Name '([^']+)'", script):
            host.vms["plain"] = Vm(id="plain", name=m.group(1), path="C:\\",
                                   memory={"dynamic": False, "startup_mib": 512, "minimum_mib": 512, "maximum_mib": 512})
        elif re.search(r"Remove-VM -Name '([^']+)' -Force", script):
            del host.vms["plain"]
        else:
            raise AssertionError(f"unexpected hand edit: {script}")

    return raw


def test_checker_passes_against_the_model(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    mod = load_checker()
    host = HypervHost(memory_mib=32768)
    host.add_image("C:\\Images\\debian12.vhdx", 4096)
    monkeypatch.setenv("PACSINFRA_TEST_HV_PASSWORD", PASSWORD)
    monkeypatch.setattr(mod.Checker, "raw", hand_edit(host))
    with WsmanServer(host.run, USER, PASSWORD) as srv:
        port = int(srv.url.split(":")[2].split("/")[0])
        config = {"host": "127.0.0.1", "port": port, "transport": "basic", "user": USER,
                  "password": {"env": "PACSINFRA_TEST_HV_PASSWORD"}, "ssl": False}
        code = mod.Checker(config, "C:\\Images\\debian12.vhdx", "D:\\pacsinfra-check").run()
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("PASS") == 8 and "FAIL" not in out
    assert host.vms == {} and host.switches == {} and host.vhd_files() == ["C:\\Images\\debian12.vhdx"]


def test_checker_refuses_without_yes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    mod = load_checker()
    monkeypatch.setattr(sys, "argv", ["check", "--host", "h", "--user", "u", "--password-env", "X",
                                      "--image", "C:\\i.vhdx", "--storage", "D:\\s"])
    assert mod.main() == 2
    assert "refusing to touch the host without --yes" in capsys.readouterr().out
