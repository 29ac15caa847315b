"""Finding the processes a test started, by what their command lines name."""

from __future__ import annotations

import subprocess
from pathlib import Path


def cmdline(pid: int) -> str:
    """Process ``pid``'s command line, arguments joined by spaces ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def processes_under(*roots: Path) -> list[int]:
    """Live processes whose command line names one of ``roots`` (what pacsinfra started
    there: services, supervisors, postmasters)."""
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and any(str(r) in cmdline(int(p.name)) for r in roots)]


def netns_of(pid: int) -> str:
    """The named network namespace process ``pid`` runs in ("" for the root one)."""
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                          text=True).stdout.strip()
