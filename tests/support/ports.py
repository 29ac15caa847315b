"""Free loopback ports that parallel test workers do not fight over.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, which is also
where every outgoing connection takes its local port; between "found free" and "the peer
binds it" another worker's client socket can take it (a DCMTK ``storescp`` then exits 1).
So ports come from below the ephemeral range, from a block of its own per xdist worker,
and each is checked with a bind before it is handed out.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

_BASE, _BLOCK = 10000, 2000  # 10000-19999: below Linux's ephemeral range (32768-60999)


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... or "" (no xdist)
    return int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0


def _block() -> range:
    first = _BASE + (_worker_index() % 5) * _BLOCK
    return range(first, first + _BLOCK)


_ports = _block()
_start = random.randrange(len(_ports))  # a rerun in the same block does not retrace the last one
_next = itertools.cycle([*_ports[_start:], *_ports[:_start]])


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now and no other worker will be handed."""
    for _ in range(len(_ports)):
        candidate = next(_next)
        if _bindable(candidate):
            return candidate
    raise RuntimeError(f"no free port in {_ports.start}-{_ports.stop - 1}")
