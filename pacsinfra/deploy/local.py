"""LocalTransport: the Transport protocol on this machine (the ``local`` provider, tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from pacsinfra.deploy.transport import Command, Result
from pacsinfra.fsutil import fsync_dir


def atomic_copy(src: Path | str, dst: Path | str, mode: int) -> None:
    """Copy ``src`` to ``dst`` via a temp file in the same directory, fsync, rename, fsync dir.

    A reader never sees a half-written file, and after return the content survives a crash.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.pacsinfra-{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


class LocalTransport:
    """Runs commands with ``sh -c`` (strings) or directly (lists) on this machine."""

    def __init__(self, name: str = "localhost", *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self._env = env

    def run(self, cmd: Command, timeout: float = 60.0, *, input: bytes | None = None) -> Result:
        """Run ``cmd``; a timeout kills it and returns rc 124 (as coreutils ``timeout`` does)."""
        args: str | list[str] = cmd if isinstance(cmd, str) else [str(c) for c in cmd]
        env = None if self._env is None else {**os.environ, **self._env}
        # Own session, so a timeout kills the whole process group, not just the shell
        # (a surviving grandchild would keep the pipes open and hang communicate()).
        try:
            proc = subprocess.Popen(
                args, shell=isinstance(args, str), env=env, start_new_session=True,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            return Result(127, "", f"{exc.filename}: command not found")
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return Result(124, out.decode("utf-8", "replace"),
                          err.decode("utf-8", "replace") + f"\ntimed out after {timeout:g}s")
        return Result(proc.returncode, out.decode("utf-8", "replace"),
                      err.decode("utf-8", "replace"))

    def put(self, local: Path | str, remote: str, mode: int = 0o644) -> None:
        """Atomic copy to ``remote`` (which may be the same file system: still a fresh inode)."""
        atomic_copy(local, remote, mode)

    def get(self, remote: str, local: Path | str) -> None:
        """Copy ``remote`` to ``local`` (atomically too)."""
        atomic_copy(remote, local, os.stat(remote).st_mode & 0o7777)

    def exists(self, remote: str) -> bool:
        return os.path.lexists(remote)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
