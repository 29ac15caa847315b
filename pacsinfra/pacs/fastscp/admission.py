"""Connections that have not associated yet: their own slots, deadline and per-address cap.

A new connection takes a *pending* slot, not an association slot, until its
A-ASSOCIATE-RQ has arrived and been decided; it must deliver the request (and finish
its TLS handshake) within ``request_timeout`` seconds. There are ``max_pending``
slots; when they are all taken, the oldest pending connection of the address that
holds the most is closed to make room, so a flood of idle or trickling connections
only ever pushes out its own kind (a real modality sends its request within
milliseconds of connecting and leaves the pool at once). One address may hold at
most ``max_per_address`` connections, pending and associated together; beyond that
a new one is refused at once with an A-ASSOCIATE-RJ (transient, local limit
exceeded).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pacsinfra.pacs.refusals import Refusal


@dataclass(frozen=True)
class GateLimits:
    """The limits of :class:`ConnectionGate` (see the module docstring)."""

    max_pending: int
    max_per_address: int
    request_timeout: float


class Pending:
    """One connection that has not associated yet."""

    __slots__ = ("address", "deadline", "evicted", "sock", "since")

    def __init__(self, sock: socket.socket, address: str, timeout: float) -> None:
        self.sock = sock
        self.address = address
        self.since = time.monotonic()
        self.deadline = self.since + timeout
        self.evicted = False


class ConnectionGate:
    """The pending pool of one listener. ``associated(address)``: how many established
    associations that address holds; ``refused``: where refusals are reported."""

    def __init__(self, limits: GateLimits, associated: Callable[[str], int],
                 refused: Callable[[Refusal], None]) -> None:
        self.limits = limits
        self.associated = associated
        self.refused = refused
        self._lock = threading.Lock()
        self._by_address: dict[str, list[Pending]] = {}
        self._count = 0

    @property
    def pending(self) -> int:
        """Connections in the pool now."""
        return self._count

    def admit(self, sock: socket.socket, address: str) -> Pending | None:
        """Take a slot for a new connection; None when its address holds too many (the
        caller refuses it). May close another pending connection to make room."""
        held = self.associated(address)  # outside the lock: it walks the threads
        victim: Pending | None = None
        with self._lock:
            mine = self._by_address.get(address, [])
            if len(mine) + held >= self.limits.max_per_address:
                return None
            if self._count >= self.limits.max_pending:
                victim = self._take_victim()
            entry = Pending(sock, address, self.limits.request_timeout)
            self._by_address.setdefault(address, []).append(entry)
            self._count += 1
        if victim is not None:
            victim.evicted = True
            try:  # wakes the victim's thread, which is waiting for its request
                victim.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.refused(Refusal(victim.address, "evicted",
                                 f"no association request yet, closed to make room "
                                 f"({self.limits.max_pending} connections were waiting)"))
        return entry

    def _take_victim(self) -> Pending:
        """The oldest pending connection of the address holding the most (lock held)."""
        address = max(self._by_address, key=lambda a: (len(self._by_address[a]),
                                                         -self._by_address[a][0].since))
        queue = self._by_address[address]
        victim = queue.pop(0)
        if not queue:
            del self._by_address[address]
        self._count -= 1
        return victim

    def done(self, entry: Pending) -> None:
        """The connection associated, was handed on, or closed: its slot is free
        (idempotent)."""
        with self._lock:
            queue = self._by_address.get(entry.address)
            if queue is None or entry not in queue:
                return
            queue.remove(entry)
            if not queue:
                del self._by_address[entry.address]
            self._count -= 1
