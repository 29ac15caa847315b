"""The Transport protocol: how deploy code reaches a machine, whatever the channel.

A transport runs a command and moves files. Three implementations share it:
:class:`~pacsinfra.deploy.ssh.SSHTransport` (paramiko, a few hosts),
:class:`~pacsinfra.deploy.local.LocalTransport` (this machine) and, for fleets,
:class:`~pacsinfra.deploy.ansible.AnsibleFleet` (which speaks to many hosts at once
and so has its own, plural, shape).

Commands are a list of arguments (quoted here, once) or a shell string; a non-zero
exit status is *returned*, not raised: callers decide what failure means.
:meth:`Transport.check` is the raising form.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from pacsinfra.errors import DeployError

Command = str | Sequence[str]


class Result(NamedTuple):
    """What a command did: exit status and its output, decoded as UTF-8 (lossy).

    A tuple, so ``rc, out, err = transport.run(...)`` works.
    """

    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def to_shell(cmd: Command) -> str:
    """A command as one shell string; a list is quoted argument by argument."""
    if isinstance(cmd, str):
        return cmd
    return shlex.join(str(part) for part in cmd)


@runtime_checkable
class Transport(Protocol):
    """One machine, reached somehow. Implementations must be safe to reuse for many calls."""

    name: str

    def run(self, cmd: Command, timeout: float = 60.0, *, input: bytes | None = None) -> Result:
        """Run ``cmd`` (through ``sh -c`` when it is a string); return its status and output."""
        ...

    def put(self, local: Path | str, remote: str, mode: int = 0o644) -> None:
        """Copy a local file to ``remote`` atomically (temp file, fsync, rename) with ``mode``."""
        ...

    def get(self, remote: str, local: Path | str) -> None:
        """Copy ``remote`` to a local path."""
        ...

    def exists(self, remote: str) -> bool:
        """Whether ``remote`` exists on the target."""
        ...

    def close(self) -> None:
        """Release connections; the transport may be reused after (it reconnects)."""
        ...


def check(transport: Transport, cmd: Command, timeout: float = 60.0, *,
          input: bytes | None = None) -> Result:
    """Run ``cmd`` and raise :class:`DeployError` with its stderr when it fails."""
    res = transport.run(cmd, timeout, input=input)
    if res.rc != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise DeployError(
            f"{transport.name}: command failed (exit {res.rc}): {to_shell(cmd)[:200]}"
            + ("\n  " + "\n  ".join(tail) if tail else "")
        )
    return res


def put_text(transport: Transport, text: str | bytes, remote: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``remote`` through ``transport.put`` (via a private temp file)."""
    import tempfile

    data = text.encode() if isinstance(text, str) else text
    with tempfile.NamedTemporaryFile(prefix="pacsinfra-put-") as tmp:
        tmp.write(data)
        tmp.flush()
        transport.put(tmp.name, remote, mode)
