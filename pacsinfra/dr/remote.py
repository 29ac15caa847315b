"""Restore a backup on the host an archive will run on (``static`` provider).

The archive's data must be in place *before* its service starts, on its own host. With
the host's machine step applied (the host holds ``<root>/venv`` with this pacsinfra):

1. the backup is packed into one uncompressed tar on this machine (one file to send:
   the transport's ``put`` is three round trips per file, and a backup has one file
   per instance), with its SHA-256;
2. the tar goes to ``<parent of data_dir>/.pacsinfra-dr-<random>/`` over the host's
   existing transport (SFTP or ansible ``copy``: temp name, fsync, rename), its SHA-256
   is checked there, it is unpacked and removed;
3. the host's own ``pacsinfra restore --json`` restores it into the archive's data
   directory: every file's size and checksum verified, into a temp directory renamed
   into place (a failed restore leaves nothing at the target);
4. the staging directory is removed, whatever happened.

Credentials never travel: an S3 backup was downloaded on this machine first.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from pacsinfra.dr.restore import RestoreError, RestoreSummary
from pacsinfra.errors import DeployError, PacsinfraError, UsageError

STAGING_PREFIX = ".pacsinfra-dr-"
# time allowed per byte for commands that read the whole backup on the host (unpack,
# restore), on top of a fixed minute: 20 MB/s is a slow disk, not a fast one
_BYTES_PER_SECOND = 20e6


@dataclass(frozen=True)
class Packed:
    """A backup packed into one tar file on this machine."""

    path: Path
    sha256: str
    size: int
    source: Path  # the backup directory it holds (named in messages instead of the copy)


class _HashingWriter:
    """A write-only file that hashes what goes through it (tarfile's stream mode writes only)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)


def pack(backup: Path, into: Path) -> Packed:
    """The backup directory as ``<into>/backup.tar`` (members under ``backup/``)."""
    target = into / "backup.tar"
    with target.open("wb") as raw:
        writer = _HashingWriter(raw)
        # stream mode ("w|"): written once, front to back, never sought or re-read
        stream = cast(IO[bytes], writer)  # the only call tarfile's "w|" mode makes is write()
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(str(backup), arcname="backup", recursive=True)
    return Packed(target, writer.hash.hexdigest(), writer.size, backup)


def host_session(driver: Any, machine: str, *, with_pacsinfra: bool = False) -> Any:
    """The driver's session to ``machine``'s host (a :class:`HostSession`);
    ``with_pacsinfra``: with this pacsinfra installed in the host's venv."""
    opener = getattr(driver, "host_session", None)
    if opener is None:
        raise UsageError(f"provider {getattr(driver, 'name', '?')!r} gives no access to its "
                         "hosts; dr rebuild cannot restore there")
    return opener(machine, with_pacsinfra=with_pacsinfra)


def existing_host(driver: Any, machine: str) -> bool:
    """Whether ``machine`` is there to look at before the rebuild builds anything (a
    host of the static provider always is; a VM only once made, and a new one's disks
    are empty)."""
    running = getattr(driver, "machine_running", None)
    return True if running is None else bool(running(machine))


def data_dir_free(session: Any, data_dir: str) -> bool:
    """Whether ``data_dir`` on the host is absent or an empty directory."""
    q = shlex.quote(data_dir)
    res = session.check(
        f"if [ ! -e {q} ]; then echo free; elif [ -d {q} ] && [ -z \"$(ls -A -- {q})\" ]; "
        f"then echo free; else echo used; fi", 30, what=f"looking at {data_dir}")
    return bool(res.stdout.strip() == "free")


def ensure_free(session: Any, address: str, data_dir: str) -> None:
    """Refuse (exit 2) an archive whose data directory on its host already holds data."""
    if not data_dir_free(session, data_dir):
        raise UsageError(
            f"{address}: {data_dir} on {session.name} is not empty (data kept from an archive "
            "that ran there: the static provider never deletes data); dr rebuild restores only "
            "into an empty directory. Move it away first; if an earlier dr rebuild restored it "
            "and stopped before the services, finish with `pacsinfra apply`")


def _timeout(size: int) -> float:
    return 60.0 + size / _BYTES_PER_SECOND


def restore_on_host(session: Any, packed: Packed, data_dir: str,
                    echo: Callable[[str], None]) -> RestoreSummary:
    """Send ``packed`` to the host and restore it into ``data_dir`` with the host's pacsinfra."""
    host = session.settings
    staging = str(PurePosixPath(data_dir).parent / f"{STAGING_PREFIX}{secrets.token_hex(4)}")
    tar = f"{staging}/backup.tar"
    session.check(["mkdir", "-p", "-m", "0700", "--", staging], 30,
                  what=f"creating {staging}")
    try:
        started = time.monotonic()
        session.transport.put(str(packed.path), tar, 0o600)
        got = session.check(["sha256sum", "--", tar], _timeout(packed.size),
                            what=f"checking {tar}").stdout.split()
        if not got or got[0] != packed.sha256:
            raise RestoreError(f"{session.name}: {tar} arrived with SHA-256 "
                               f"{got[0] if got else '?'}, sent {packed.sha256}")
        echo(f"copied the backup ({packed.size / 2**20:.1f} MiB) to {session.name} in "
             f"{time.monotonic() - started:.1f}s")
        session.check(["tar", "-x", "-f", tar, "-C", staging], _timeout(packed.size),
                      what=f"unpacking {tar}")
        session.check(["rm", "-f", "--", tar], 60, what=f"removing {tar}")
        res = session.run([host.venv_python, "-m", "pacsinfra", "restore", "--from",
                           f"{staging}/backup", "--data", data_dir, "--json"],
                          _timeout(packed.size))
        if res.rc != 0:
            # the host's copy is removed below: name the backup as the admin knows it
            text = (res.stderr or res.stdout).replace(f"{staging}/backup", str(packed.source))
            tail = "\n  ".join(ln.removeprefix("Error: ")
                               for ln in text.strip().splitlines()[-5:])
            cls = UsageError if res.rc == 2 else RestoreError
            raise cls(f"{session.name}: pacsinfra restore into {data_dir} failed (exit "
                      f"{res.rc}); nothing was restored there\n  {tail}")
        return _summary(session.name, res.stdout)
    finally:
        _clean(session, staging, echo)


def restore_all_hosts(jobs: list[tuple[Any, str]], packed: Packed,
                      echo: Callable[[str], None]) -> list[RestoreSummary]:
    """Restore ``packed`` into every ``(session, data_dir)``, all or nothing: when one
    fails, the data directories restored before it in this call are removed again (they
    were empty before, and the backup still holds their content), so running the
    rebuild again starts from empty directories instead of being refused."""
    done: list[tuple[Any, str]] = []
    out: list[RestoreSummary] = []
    try:
        for session, data_dir in jobs:
            out.append(restore_on_host(session, packed, data_dir, echo))
            done.append((session, data_dir))
    except BaseException:
        for session, data_dir in done:
            try:
                session.check(["rm", "-rf", "--", data_dir], 600, what=f"removing {data_dir}")
                echo(f"removed {data_dir} on {session.name} again (restored before the "
                     "failure below)")
            except PacsinfraError as exc:
                echo(f"warning: could not remove {data_dir} on {session.name}: {exc}; "
                     "move it away before the next rebuild")
        raise
    return out


def _summary(where: str, text: str) -> RestoreSummary:
    try:
        data = json.loads(text)
        return RestoreSummary(target=str(data["target"]), studies=int(data["studies"]),
                              instances=int(data["instances"]), bytes=int(data["bytes"]),
                              tiers=[str(t) for t in data["tiers"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise DeployError(f"{where}: unreadable answer from pacsinfra restore: "
                          f"{text.strip()[-300:]!r}") from exc


def _clean(session: Any, staging: str, echo: Callable[[str], None]) -> None:
    """Remove the staging directory; a failure is reported, not raised (it must not hide
    the outcome of the restore, and the archive's data is not in it)."""
    try:
        res = session.run(["rm", "-rf", "--", staging], 600)
        failed = res.stderr.strip() if res.rc != 0 else ""
    except PacsinfraError as exc:
        failed = str(exc)
    if failed:
        echo(f"warning: could not remove {staging} on {session.name}: {failed}")
