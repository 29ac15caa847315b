"""Volume backends behind one interface: libvirt pools (in client.py) and plain directories.

``qemu:///embed`` has no libvirt storage driver, so there a pool is a directory and a
volume a file, made with ``qemu-img`` — the same meaning (thin or preallocated qcow2,
a backing file, a clone) without libvirt. This module does not touch libvirt.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

from pacsinfra.drivers.kvm.pool import MARKER_PREFIX
from pacsinfra.errors import AlreadyExists, CapabilityError, NotFound, TaskFailed

STAGING_SUFFIX = ".pacsinfra-staging"


class Volumes(abc.ABC):
    """Pools and volumes: created, sized, filled and removed by name."""

    @abc.abstractmethod
    def pool_exists(self, pool: str) -> bool: ...

    @abc.abstractmethod
    def pool_names(self) -> list[str]: ...

    @abc.abstractmethod
    def pool_path(self, pool: str) -> str | None: ...

    @abc.abstractmethod
    def pool_uuid(self, pool: str) -> str: ...

    @abc.abstractmethod
    def create_pool(self, name: str, path: str, xml: str, marker: str) -> None:
        """Create pool ``name`` carrying the zero-byte volume ``marker`` (its ownership mark).

        Completes a half-done earlier create of the same pool (a killed process runs
        no cleanup): calling it again converges.
        """
        ...

    @abc.abstractmethod
    def delete_pool(self, name: str) -> None:
        """Remove pool ``name`` and its marker volumes (nothing else may be left in it).

        The pool goes first and its marker with it or after it, so a delete killed
        half-way never leaves an unmarked pool behind.
        """
        ...

    @abc.abstractmethod
    def volume_names(self, pool: str) -> list[str]: ...

    @abc.abstractmethod
    def volume_capacity(self, pool: str, name: str) -> int | None:
        """Capacity in bytes, or None when the volume is absent."""
        ...

    @abc.abstractmethod
    def volume_path(self, pool: str, name: str) -> str | None: ...

    @abc.abstractmethod
    def create_volume(
        self,
        pool: str,
        name: str,
        xml: str,
        *,
        capacity: int,
        fmt: str,
        thick: bool,
        backing: tuple[str, str] | None = None,
        clone_from: tuple[str, str] | None = None,
    ) -> None:
        """Create a volume from ``xml`` (or the same meaning on a directory backend).

        ``backing`` is (path, format) of a backing file; ``clone_from`` is (pool, volume).
        """
        ...

    @abc.abstractmethod
    def resize_volume(self, pool: str, name: str, capacity: int) -> None: ...

    @abc.abstractmethod
    def upload(self, pool: str, name: str, data: bytes) -> bool:
        """Write ``data`` into the volume; False when the hypervisor cannot store content."""
        ...

    @abc.abstractmethod
    def delete_volume(self, pool: str, name: str) -> None: ...

    @property
    def uses_files(self) -> bool:
        """True when domains must reference disks by path (no libvirt storage driver)."""
        return False

    def pool_active(self, pool: str) -> bool:
        """Whether the pool's volumes can be listed now (a stopped libvirt pool's cannot)."""
        return self.pool_exists(pool)


class DirVolumes(Volumes):
    """Directories as pools, files as volumes, for ``qemu:///embed`` (no libvirt storage driver).

    A pool ``name`` lives at ``<root>/pools/<name>`` unless created with another path;
    the mapping is kept in ``<root>/pools.json``. ``qemu-img`` does what the storage driver
    would: create (thin or preallocated, with a backing file), clone, resize.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    @property
    def uses_files(self) -> bool:
        return True

    def _index_file(self) -> Path:
        return self.root / "pools.json"

    def _index(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._index_file().read_text()))
        except FileNotFoundError:
            return {}

    def _dir(self, pool: str) -> Path:
        return Path(self._index().get(pool, str(self.root / "pools" / pool)))

    def pool_exists(self, pool: str) -> bool:
        return self._dir(pool).is_dir()

    def pool_names(self) -> list[str]:
        """Indexed pools, plus directories at the default place of pools not indexed.

        A directory that is an indexed pool's own (``kvm.path: <root>/pools/flashdir``
        for pool ``site-flash``) is that pool, not a second one; dot-directories are
        staging areas (see :meth:`create_pool`), never pools.
        """
        index = self._index()
        names = {n for n in index if self.pool_exists(n)}
        taken = {os.path.realpath(index[n]) for n in names}
        base = self.root / "pools"
        if base.is_dir():
            for p in base.iterdir():
                if (
                    p.is_dir()
                    and not p.name.startswith(".")
                    and p.name not in index
                    and os.path.realpath(p) not in taken
                ):
                    names.add(p.name)
        return sorted(names)

    def pool_path(self, pool: str) -> str | None:
        d = self._dir(pool)
        return str(d) if d.is_dir() else None

    def pool_uuid(self, pool: str) -> str:
        import uuid

        return str(uuid.uuid5(uuid.NAMESPACE_URL, str(self._dir(pool))))

    @staticmethod
    def _staging(path: Path) -> Path:
        """Where a pool directory is assembled before it appears, and taken apart after."""
        return path.parent / f".{path.name}{STAGING_SUFFIX}"

    @staticmethod
    def _clear_staging(staging: Path, keep: str | None = None) -> None:
        """Remove markers (all but ``keep``) from a staging directory left by a killed process.

        The directory is pacsinfra's by its name, and only ever holds markers; anything
        else in it is refused rather than deleted.
        """
        if not staging.is_dir():
            return
        for f in staging.iterdir():
            if not f.name.startswith(MARKER_PREFIX):
                raise TaskFailed(f"staging directory {staging} holds {f.name}; remove it by hand")
        for f in staging.iterdir():
            if f.name != keep:
                f.unlink()
        if keep is None:
            staging.rmdir()

    def _write_index(self, index: dict[str, str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._index_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(tmp, self._index_file())

    def create_pool(self, name: str, path: str, xml: str, marker: str) -> None:
        """The pool directory appears with its marker in it, or not at all.

        It is assembled in ``.<dir>.pacsinfra-staging`` next to it (marker first), the
        index entry is written, then the directory is renamed into place: a kill at
        any point leaves either nothing visible under the pool's name or the marked
        pool, and a rerun reuses the staging directory. An existing directory (made
        by hand, or a pool renamed into place before its index entry) gets the marker.
        """
        with self._lock:
            target = Path(path)
            if target.is_dir():
                if not (target / marker).exists():
                    (target / marker).touch()
            else:
                staging = self._staging(target)
                self._clear_staging(staging, keep=marker)
                staging.mkdir(parents=True, exist_ok=True)
                (staging / marker).touch()
            index = self._index()
            if index.get(name) != path:
                index[name] = path
                self._write_index(index)
            if not target.is_dir():
                self._staging(target).rename(target)

    def delete_pool(self, name: str) -> None:
        """Rename the directory away (the pool and its mark vanish together), then remove it."""
        with self._lock:
            d = self._dir(name)
            staging = self._staging(d)
            if d.is_dir():
                others = [f.name for f in d.iterdir() if not f.name.startswith(MARKER_PREFIX)]
                if others:
                    raise TaskFailed(f"pool directory {d} is not empty; remove its volumes first")
                self._clear_staging(staging)
                d.rename(staging)
            self._clear_staging(staging)
            index = self._index()
            if index.pop(name, None) is not None:
                self._write_index(index)

    def volume_names(self, pool: str) -> list[str]:
        d = self._dir(pool)
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def _file(self, pool: str, name: str) -> Path:
        if "/" in name or name in (".", ".."):
            raise TaskFailed(f"bad volume name {name!r}")
        return self._dir(pool) / name

    def volume_capacity(self, pool: str, name: str) -> int | None:
        f = self._file(pool, name)
        if not f.exists():
            return None
        info = json.loads(_qemu_img("info", "--output=json", "-U", str(f)))
        return int(info["virtual-size"])

    def volume_path(self, pool: str, name: str) -> str | None:
        f = self._file(pool, name)
        return str(f) if f.exists() else None

    def create_volume(
        self,
        pool: str,
        name: str,
        xml: str,
        *,
        capacity: int,
        fmt: str,
        thick: bool,
        backing: tuple[str, str] | None = None,
        clone_from: tuple[str, str] | None = None,
    ) -> None:
        if not self.pool_exists(pool):
            raise NotFound(f"storage pool {pool} does not exist")
        f = self._file(pool, name)
        if f.exists():
            raise AlreadyExists(f"volume {pool}/{name} exists")
        args = ["create", "-f", fmt]
        if thick and fmt == "qcow2":
            args += ["-o", "preallocation=falloc"]
        if clone_from is not None:
            src = self.volume_path(*clone_from)
            if src is None:
                raise NotFound(f"image volume {clone_from[1]} not found in pool {clone_from[0]}")
            _qemu_img("convert", "-O", fmt, src, str(f))
            _qemu_img("resize", "-f", fmt, str(f), str(capacity))
            return
        if backing is not None:
            args += ["-b", backing[0], "-F", backing[1]]
        if fmt == "raw" and capacity == 0:
            f.write_bytes(b"")
            return
        _qemu_img(*args, str(f), str(capacity))

    def resize_volume(self, pool: str, name: str, capacity: int) -> None:
        _qemu_img("resize", str(self._file(pool, name)), str(capacity))

    def upload(self, pool: str, name: str, data: bytes) -> bool:
        f = self._file(pool, name)
        tmp = f.with_name(f.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, f)
        return True

    def delete_volume(self, pool: str, name: str) -> None:
        f = self._file(pool, name)
        # with the staging file of an upload killed before its rename
        for path in (f, f.with_name(f.name + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _qemu_img(*args: str) -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise CapabilityError("qemu-img not found (apt-get install qemu-utils)")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TaskFailed(f"qemu-img {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout
