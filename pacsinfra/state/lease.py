"""Leases: who holds a remote state lock, and the heartbeat that keeps it alive.

A remote lock is a lease, not a connection: it names its holder (user, host,
pid, operation, command line), ends at ``expires_at`` unless renewed, and carries
a fencing token that grows by one at every acquisition. A holder killed with
``kill -9`` stops renewing, so its lease runs out and the next runner takes over
with a higher token; the dead holder's writes (if it was only frozen) are then
refused because their token is no longer the current one.
"""

from __future__ import annotations

import getpass
import os
import random
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pacsinfra.errors import StateLockedError
from pacsinfra.state.store import LockInfo


@dataclass(frozen=True)
class Holder:
    """The process asking for a lease."""

    user: str
    host: str
    pid: int
    cmdline: str

    @classmethod
    def me(cls) -> Holder:
        """This process (the command line is cut to 300 characters)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        args = redact([os.path.basename(sys.argv[0]), *sys.argv[1:]])
        cmd = " ".join(shlex.quote(a) for a in args)
        return cls(user=user, host=socket.gethostname(), pid=os.getpid(), cmdline=cmd[:300])


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def redact(argv: list[str]) -> list[str]:
    """A command line fit to store and show: ``--var`` values and URL passwords masked."""
    out: list[str] = []
    after_var = False
    for arg in argv:
        if after_var and "=" in arg:
            arg = arg.split("=", 1)[0] + "=***"
        elif arg.startswith("--var=") and arg.count("=") >= 2:
            arg = "--var=" + arg[6:].split("=", 1)[0] + "=***"
        after_var = arg == "--var"
        out.append(_URL_PASSWORD.sub(r"\1***@", arg))
    return out


class Heartbeat:
    """Calls ``renew`` every ``interval`` seconds in a daemon thread until stopped.

    ``renew`` returns False when the lease is gone (taken over); the heartbeat
    then stops and :attr:`lost` is set, so the holder's next write fails fast.
    An exception from ``renew`` (database briefly away) is retried next beat.
    """

    def __init__(self, renew: Callable[[], bool], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-lease", daemon=True)

    def start(self) -> Heartbeat:
        """Start beating; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                alive = self._renew()
            except Exception:  # noqa: BLE001 - a failed beat is retried; expiry decides
                continue
            if not alive:
                self.lost.set()
                return

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


def wait_for_lease(acquire: Callable[[], LockInfo | None],
                   current: Callable[[], LockInfo | None], where: str, timeout: float,
                   jitter: float = 0.2) -> LockInfo:
    """Take a lease with ``acquire`` (None while another runner holds it), retrying with a
    little random wait for up to ``timeout`` seconds; then StateLockedError naming the
    holder that ``current`` reports and how to get past it."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        info = acquire()
        if info is not None:
            return info
        if time.monotonic() >= deadline:
            held = current()
            who = held.describe() if held else "another runner"
            hint = f"pacsinfra force-unlock {held.id}" if held else "pacsinfra force-unlock ID"
            raise StateLockedError(
                f"state {where} is locked by {who}; wait for it (--lock-timeout 2m), "
                f"or let its lease run out if it was killed; if it hangs for good run: {hint}")
        time.sleep(min(0.1 + random.random() * jitter, max(0.01, deadline - time.monotonic())))
