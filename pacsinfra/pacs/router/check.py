"""Can the router reach its destinations? One C-ECHO each, from where the router runs.

``pacsinfra router check --config router.yaml`` runs this; deploy runs it on the
router's machine after the router itself answers, so an unreachable archive (wrong
address, firewall, AE title not accepted, TLS trust) fails the apply instead of
filling the queue.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from pacsinfra.pacs.router.config import RouterConfig
from pacsinfra.pacs.router.sender import Sender


@dataclass(frozen=True)
class DestinationCheck:
    """One destination's C-ECHO from the router's host."""

    name: str
    ae_title: str
    host: str
    port: int
    ok: bool
    seconds: float
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _check(cfg: RouterConfig, name: str) -> DestinationCheck:
    dest = cfg.destinations[name]
    started = time.monotonic()
    problem = Sender(name, dest, cfg.ae_title, cfg.limits).echo_problem()
    return DestinationCheck(name=name, ae_title=dest.ae_title, host=dest.host or "",
                            port=dest.port, ok=problem is None,
                            seconds=time.monotonic() - started, problem=problem or "")


def check_destinations(cfg: RouterConfig, *, parallel: int = 8) -> list[DestinationCheck]:
    """C-ECHO every destination (group members are destinations too), in parallel;
    results in name order."""
    names = sorted(cfg.destinations)
    if not names:
        return []
    with ThreadPoolExecutor(min(parallel, len(names)), thread_name_prefix="check") as pool:
        return list(pool.map(lambda n: _check(cfg, n), names))
