"""``pacsinfra router check``: one C-ECHO per destination, from where the router runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_router_support import REPO, StoreSCP, port

pytestmark = [pytest.mark.integration]


def _check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsinfra", "router", "check", "--config",
                           str(cfg), "--json"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_check_reports_each_destination(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path / "scp", "ARCH1")  # DCMTK storescp: answers C-ECHO
    scp.start()
    closed = port()  # nothing listens here
    cfg = tmp_path / "router.yaml"
    try:
        cfg.write_text(yaml.safe_dump({
            "ae_title": "ROUTER", "spool_dir": str(tmp_path / "spool"),
            "destinations": {"up": scp.dest(),
                             "down": {"ae_title": "GONE", "host": "127.0.0.1", "port": closed}},
            "groups": {"both": {"members": ["up", "down"]}},
            "rules": [{"name": "all", "forward": ["both"]}],
        }))
        r = _check(cfg)
        assert r.returncode == 1, r.stderr
        results = {d["name"]: d for d in json.loads(r.stdout)["destinations"]}
        assert set(results) == {"up", "down"}
        assert results["up"]["ok"] and results["up"]["problem"] == ""
        assert not results["down"]["ok"]
        assert f"GONE@127.0.0.1:{closed}" in results["down"]["problem"]
        assert "1 of 2 destination(s) unreachable: down" in r.stderr
        assert "Traceback" not in r.stderr

        cfg.write_text(yaml.safe_dump({
            "ae_title": "ROUTER", "spool_dir": str(tmp_path / "spool"),
            "destinations": {"up": scp.dest()}, "rules": [{"name": "all", "forward": ["up"]}],
        }))
        r = _check(cfg)
        assert r.returncode == 0, r.stderr
        assert [d["ok"] for d in json.loads(r.stdout)["destinations"]] == [True]
    finally:
        scp.stop()
    assert not (tmp_path / "spool").exists(), "check must not create the router's spool"
