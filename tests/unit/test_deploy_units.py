"""systemd units: rendered from the templates, checked by systemd-analyze itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_binary

from pacsinfra.errors import DeployError
from pacsinfra.services.systemd import UnitSpec, render_unit

VENV = str(Path(sys.executable).parent.parent)  # has bin/pacsinfra, so ExecStart resolves


def _spec(service: str = "archive", **kw: object) -> UnitSpec:
    args: dict[str, object] = {
        "service": service, "ae_title": "ARCHIVE", "port": 11112, "venv": VENV,
        "config_path": f"/etc/pacsinfra/{service}.yaml",
        "rw_paths": [f"/var/lib/pacsinfra/{service}"], "user": "root", "group": "root",
    }
    args.update(kw)
    return UnitSpec(**args)  # type: ignore[arg-type]


def _verify(text: str, tmp_path: Path, name: str) -> str:
    need_binary("systemd-analyze")
    unit = tmp_path / name
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    return (proc.stdout + proc.stderr).strip()


@pytest.mark.parametrize("service", ["archive", "router"])
def test_units_are_clean_for_systemd(service: str, tmp_path: Path) -> None:
    text = render_unit(_spec(service, environment_file="/etc/pacsinfra/secrets.env",
                             after=["postgresql.service"]))
    assert "Restart=on-failure" in text and "NoNewPrivileges=yes" in text
    assert "ProtectSystem=strict" in text and f"ReadWritePaths=/var/lib/pacsinfra/{service}" in text
    assert f"ExecStart={VENV}/bin/pacsinfra {service} serve --config" in text
    assert "CapabilityBoundingSet=\n" in text  # unprivileged port: no capabilities at all
    assert _verify(text, tmp_path, f"pacsinfra-{service}.service") == ""


def test_systemd_analyze_does_catch_mistakes(tmp_path: Path) -> None:
    # The check above can fail: a unit with a typo is reported.
    bad = render_unit(_spec()).replace("Restart=on-failure", "Restart=sometimes")
    assert "restart specifier" in _verify(bad, tmp_path, "bad.service")


def test_privileged_port_gets_only_net_bind_service() -> None:
    text = render_unit(_spec(port=104))
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in text
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text


def test_unsafe_values_are_refused_all_at_once() -> None:
    with pytest.raises(DeployError) as info:
        render_unit(_spec(config_path="relative.yaml", user="pacs\nExecStartPre=/bin/sh",
                          rw_paths=[]))
    msg = str(info.value)
    assert "config_path 'relative.yaml' must be an absolute path" in msg
    assert "user" in msg and "cannot carry safely" in msg and "rw_paths is empty" in msg
