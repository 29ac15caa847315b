"""State in a local JSON file, written atomically, guarded by a lock file.

Writing: the new document goes to a temp file in the same directory, which is
fsynced, renamed over the state file, and the directory is fsynced, so a crash
(kill -9, power loss) leaves either the old or the new state, never a torn one.

Locking: ``<state>.lock`` is held with ``flock(2)``. The kernel drops the lock
when its holder dies, so a crashed apply never blocks the next one; the file's
content (JSON: id, operation, user, host, pid, time) names the holder for the
error message of a second process. ``force_unlock`` removes the file when a
holder hangs (or the file system does not honour flock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pacsinfra.errors import StateError, StateLockedError
from pacsinfra.fsutil import fsync_dir
from pacsinfra.state.store import LockInfo, ResourceState, State, assert_no_secrets, utcnow

DEFAULT_DIR = ".pacsinfra"


def default_state_path(blueprint: Path, site: str, overlay: str | None) -> Path:
    """``.pacsinfra/<site>[-<overlay>].state.json`` in the blueprint's directory.

    Next to the blueprint rather than the working directory, so running from
    another directory (CI, cron) finds the same state.
    """
    stem = f"{site}-{overlay}" if overlay else site
    return blueprint.resolve().parent / DEFAULT_DIR / f"{stem}.state.json"


class LocalStateStore:
    """A state file on a local file system (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._write_mutex = threading.Lock()
        self._lines: dict[str, tuple[ResourceState, str]] = {}

    def describe(self) -> str:
        return str(self.path)

    # -- reading / writing ------------------------------------------------------
    def read(self) -> State | None:
        """The state, or None when the file does not exist."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(f"corrupt state file {self.path}: {exc}") from None
        return State.from_dict(data)

    def _render(self, state: State) -> str:
        """The state document: one JSON line per resource, each cached until its record changes.

        Records are replaced, never mutated, when a step completes, so an
        identity check tells whether a cached line is still valid; this keeps a
        write after every step cheap on a 1,000-machine site.
        """
        lines = []
        for addr in sorted(state.resources):
            rec = state.resources[addr]
            cached = self._lines.get(addr)
            if cached is None or cached[0] is not rec:
                data = rec.to_dict()
                assert_no_secrets(data, addr)
                cached = (rec, json.dumps(data, separators=(", ", ": ")))
                self._lines[addr] = cached
            lines.append(cached[1])
        for addr in set(self._lines) - set(state.resources):
            del self._lines[addr]
        text = json.dumps(state.to_dict(with_resources=False), indent=1)
        body = "[\n  " + ",\n  ".join(lines) + "\n ]" if lines else "[]"
        return text[:-2] + f',\n "resources": {body}\n}}\n'

    def write(self, state: State) -> None:
        """Increment ``state.serial`` and persist atomically (temp + fsync + rename + dir fsync)."""
        with self._write_mutex:
            state.serial += 1
            try:
                payload = self._render(state)
            except Exception:
                state.serial -= 1
                raise
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(
                f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            )
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, payload.encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
                fsync_dir(self.path.parent)
            except OSError as exc:
                state.serial -= 1
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise StateError(f"cannot write state {self.path}: {exc.strerror}") from None

    # -- locking ----------------------------------------------------------------
    def lock_info(self) -> LockInfo | None:
        """The holder recorded in the lock file, if the lock is held."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                return self._read_info()  # held by someone
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _read_info(self) -> LockInfo | None:
        try:
            data = json.loads(self.lock_path.read_text(encoding="utf-8") or "null")
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        try:
            return LockInfo(**data)
        except TypeError:
            return None

    @contextlib.contextmanager
    def lock(self, operation: str, *, timeout: float = 0.0) -> Iterator[LockInfo]:
        """Hold the state lock for the block; wait up to ``timeout`` seconds for it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StateError(f"cannot lock {self.lock_path}: {exc.strerror}") from None
                if time.monotonic() >= deadline:
                    holder = self._read_info()
                    who = holder.describe() if holder else "another process"
                    hint = (
                        f"pacsinfra force-unlock {holder.id}"
                        if holder
                        else "pacsinfra force-unlock ID"
                    )
                    raise StateLockedError(
                        f"state {self.path} is locked by {who}; wait for it to finish "
                        f"(--lock-timeout), or if that process is gone for good run: {hint}"
                    ) from None
                time.sleep(0.1)
                continue
            # force-unlock may have removed the file between open and flock: lock the live one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        info = LockInfo(
            id=str(uuid.uuid4()),
            operation=operation,
            user=_user(),
            host=socket.gethostname(),
            pid=os.getpid(),
            created=utcnow(),
            path=str(self.path),
        )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info.to_dict()) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
            yield info
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # unlocked: no holder to name
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock file if its recorded id is ``lock_id``."""
        holder = self._read_info()
        if holder is None:
            raise StateError(f"state {self.path} is not locked")
        if holder.id != lock_id:
            raise StateError(
                f"lock id {lock_id!r} does not match the holder of {self.path}: {holder.describe()}"
            )
        with contextlib.suppress(FileNotFoundError):
            self.lock_path.unlink()
        return holder


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
