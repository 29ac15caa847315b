"""AnsibleTransport: the Transport protocol for one host, carried out by ansible-runner.

So code written against a :class:`~pacsinfra.deploy.transport.Transport` (the static
driver's sessions, the supervisor client, the wheel installer) runs unchanged with
``deploy: {engine: ansible}``, and does exactly what it does over paramiko:

- ``run``: the ``shell`` module (``/bin/sh -c``), output kept byte for byte
  (``strip_empty_ends: false``), stdin through the module's ``stdin``; rc as the
  command returned it, 124 on timeout;
- ``put``: ``mkdir -p`` the directory, the ``copy`` module to a temp name beside the
  target (mode set), then ``sync TMP && mv -f TMP DEST && sync DIR`` — the same
  fsync-and-rename sequence as :meth:`SSHTransport.put`, so a reader sees the old file or
  the new one, and a crash after ``put`` keeps the new one (``copy`` alone renames
  without fsync);
- ``get``: ``fetch`` (flat); ``exists``: ``stat`` without following links.

Each call is one ansible-runner invocation (one ``ansible-playbook`` process, about a
second of start-up; the SSH connection itself is multiplexed and reused). Host keys are
checked by OpenSSH against the pinned keys with ``StrictHostKeyChecking=yes``; a refused
key is an :class:`~pacsinfra.errors.SSHError` naming the host and the pinned fingerprint.
Commands and data are passed as ``!unsafe`` values, so ansible never templates them, and
each run's directory (its artifacts hold the commands' output) is removed after it.
"""

from __future__ import annotations

import re
import secrets
import shlex
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from pacsinfra.deploy.ansible import AnsibleFleet, FleetHost, TaskEvent, Unsafe
from pacsinfra.deploy.transport import Command, Result, to_shell
from pacsinfra.errors import SSHError

# ansible-playbook's own start-up (imports, inventory, plugins) comes on top of a command's
# timeout: the runner is only killed when the command itself had its time.
_STARTUP_SLACK = 20.0
_OFFERED = re.compile(r"(SHA256:[A-Za-z0-9+/]{43})")


def _task(name: str, module: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, module: args, **extra}


class AnsibleTransport:
    """Commands and files on one host, each call one ansible-runner run (see module doc)."""

    def __init__(self, host: FleetHost, work_dir: Path | None = None, *, name: str = "") -> None:
        self.host = host
        self.name = name or f"{host.user}@{host.address}:{host.port}"
        self._fleet = AnsibleFleet([host], work_dir, forks=1, keep_runs=False)

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> None:
        """Nothing up front: the first call connects (and verifies the host key)."""

    def close(self) -> None:
        """Stop the multiplexed SSH master (the next call starts a new one)."""
        self._fleet.close()

    def __enter__(self) -> AnsibleTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, tasks: list[dict[str, Any]], timeout: float) -> tuple[str, list[TaskEvent]]:
        status, events = self._fleet.tasks(tasks, timeout + _STARTUP_SLACK)
        for ev in events:
            if ev.outcome == "unreachable":
                raise self._unreachable(str(ev.res.get("msg", "unreachable")))
        return status, events

    def _unreachable(self, msg: str) -> SSHError:
        """The reason OpenSSH gave, as SSHTransport words it (host key refusals first)."""
        from pacsinfra.deploy.ssh import fingerprint, parse_public_key

        pinned = ", ".join(sorted({fingerprint(parse_public_key(k)) for k in self.host.host_keys}))
        pinned = pinned or f"the keys in {self.host.known_hosts}"
        lowered = msg.lower()
        if "host key verification failed" in lowered or "identification has changed" in lowered:
            offered = _OFFERED.search(msg)
            told = (f"the server offered {offered.group(1)} but " if offered else
                    "the server's key is not ")
            return SSHError(
                f"{self.name}: HOST KEY MISMATCH: {told}{pinned} is pinned (OpenSSH under "
                "ansible, StrictHostKeyChecking=yes). The machine was rebuilt, or someone is "
                "intercepting the connection; refusing to connect")
        tail = " ".join(msg.strip().splitlines()[-3:])[-400:]
        return SSHError(f"{self.name}: cannot connect (ansible): {tail}")

    # -- commands -------------------------------------------------------------------------
    def run(self, cmd: Command, timeout: float = 60.0, *, input: bytes | None = None) -> Result:
        """Run ``cmd`` with ``/bin/sh -c``; rc 124 when it did not finish in ``timeout``."""
        args: dict[str, Any] = {"cmd": Unsafe(to_shell(cmd)), "strip_empty_ends": False}
        if input is not None:
            args["stdin"] = Unsafe(input.decode("utf-8", "replace"))
            args["stdin_add_newline"] = False
        # ``timeout`` on the task: ansible kills the command itself, not just its connection
        status, events = self._one([_task("run", "shell", args, timeout=max(1, int(timeout)))],
                                   timeout)
        for ev in events:
            if ev.outcome in ("ok", "failed"):
                res = ev.res
                if "rc" not in res:  # the module itself failed (a timeout, no python, ...)
                    msg = str(res.get("msg", "failed"))
                    rc = 124 if "time" in msg.lower() and ("frame" in msg.lower() or "timed out" in msg.lower()) else 1
                    return Result(rc, str(res.get("stdout", "")), str(res.get("stderr", "")) or msg)
                return Result(int(res["rc"]), str(res.get("stdout", "")), str(res.get("stderr", "")))
        return Result(124, "", f"no result from ansible ({status}) after {timeout:g}s")

    # -- files ------------------------------------------------------------------------------
    def put(self, local: Path | str, remote: str, mode: int = 0o644) -> None:
        """Upload to a temp name beside ``remote``, fsync it, rename over ``remote``, fsync the dir."""
        rpath = PurePosixPath(remote)
        tmp = str(rpath.with_name(f".{rpath.name}.pacsinfra-{secrets.token_hex(4)}.tmp"))
        q = shlex.quote
        tasks = [
            _task("directory", "command", {"argv": ["mkdir", "-p", "--", str(rpath.parent)]}),
            _task("upload", "copy", {"src": Unsafe(str(Path(local).resolve())), "dest": Unsafe(tmp),
                                     "mode": f"{mode:04o}"}),
            _task("install", "shell", {"cmd": Unsafe(
                f"sync -- {q(tmp)} && mv -f -- {q(tmp)} {q(remote)} && sync -- {q(str(rpath.parent))}"
            )}),
        ]
        status, events = self._one(tasks, 120)
        failed = [ev for ev in events if ev.outcome == "failed"]
        if failed or sum(ev.outcome == "ok" for ev in events) != len(tasks):
            self.run(["rm", "-f", "--", tmp], 30)
            why = (f"{failed[0].task}: {failed[0].res.get('stderr') or failed[0].res.get('msg')}"
                   if failed else f"ansible {status}")
            raise SSHError(f"{self.name}: uploading {local} to {remote} failed: {str(why).strip()}")

    def get(self, remote: str, local: Path | str) -> None:
        """Download ``remote`` to ``local``."""
        _, events = self._one([_task("fetch", "fetch", {
            "src": Unsafe(remote), "dest": Unsafe(str(Path(local).resolve())), "flat": True,
            "fail_on_missing": True})], 120)
        if not any(ev.outcome == "ok" for ev in events):
            why = next((ev.res.get("msg") for ev in events if ev.outcome == "failed"), "no result")
            raise SSHError(f"{self.name}: downloading {remote} failed: {why}")

    def exists(self, remote: str) -> bool:
        """Whether ``remote`` exists (a dangling symlink counts)."""
        _, events = self._one([_task("stat", "stat", {
            "path": Unsafe(remote), "follow": False, "get_checksum": False,
            "get_mime": False, "get_attributes": False})], 60)
        for ev in events:
            if ev.outcome == "ok":
                return bool((ev.res.get("stat") or {}).get("exists"))
            if ev.outcome == "failed":
                raise SSHError(f"{self.name}: stat {remote} failed: {ev.res.get('msg')}")
        raise SSHError(f"{self.name}: stat {remote}: no result from ansible")


def key_file_from_secret(text: str, directory: Path) -> Path:
    """Write a private key (resolved from a secret reference) to a 0600 file for OpenSSH.

    OpenSSH reads keys from files only. The file lives in a private directory of this run
    and is removed with it; the key never reaches a message, the state or a plan.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="key-", dir=directory)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(text.rstrip("\n") + "\n")
    return Path(name)
