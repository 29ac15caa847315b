"""Every benchmark starts from a clean checkout: its imports resolve and it explains itself.

``make bench`` runs each ``bench/bench_*.py`` in turn after installing the ``bench``
extra; running them all takes most of an hour, so the suite checks the part that breaks
silently: a script whose imports or arguments are broken fails here at ``--help``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "bench").glob("bench_*.py"))


def test_there_are_benchmarks() -> None:
    assert len(SCRIPTS) >= 10, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script: Path) -> None:
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "usage:" in r.stdout, r.stdout


def test_make_bench_installs_the_peers_and_runs_every_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    rule = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert rule, "no bench target"
    assert "system-deps" in rule.group(0) and ".bench" in rule.group(0)
    assert "bench/bench_*.py" in rule.group(1) and "exit 1" in rule.group(1)
    installs = re.search(r"^\$\(VENV\)/\.bench:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert installs and "[dev,bench]" in installs.group(1)
