"""The OHIF viewer's static build: fetched once from the npm registry, verified, cached.

``@ohif/app`` on npm ships a complete production build in ``package/dist/``. It is
downloaded at most once per version into ``$XDG_CACHE_HOME/pacsinfra/ohif/<version>/``
(or ``ohif.cache_dir``), checked against the Subresource Integrity (``sha512-…``) that
pacsinfra pins for its release (or that the config gives, or the registry publishes for
other versions), and only ``package/dist/`` is unpacked — regular files and directories
only, no absolute paths, no ``..``, no links, bounded in size.

Air-gapped sites stage the tarball (``npm pack @ohif/app@<version>`` elsewhere) and name
it in ``ohif.tarball`` or ``PACSINFRA_OHIF_TARBALL``; it must match the same integrity.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote, urlsplit

from pacsinfra.viewer.config import OhifPackage
from pacsinfra.viewer.errors import ViewerError

LOG = logging.getLogger("pacsinfra.viewer.ohif")
PACKAGE = "@ohif/app"
#: dist.integrity of the releases pacsinfra has tested (from the npm registry)
PINNED_INTEGRITY: dict[str, str] = {
    "3.13.2": "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+"
              "jd5xXZB9E8EA==",
}
STAGED_ENV = "PACSINFRA_OHIF_TARBALL"
# A build is ~250 files and ~210 MB; far more than that is not an OHIF build.
MAX_FILES = 20_000
MAX_BYTES = 2 * 1024**3
_CHUNK = 1 << 20
_TIMEOUT = 60.0
_MARK = ".complete"  # holds the integrity the unpacked dist/ came from


def cache_root(pkg: OhifPackage) -> Path:
    """Where versions are cached: ``ohif.cache_dir`` or ``$XDG_CACHE_HOME/pacsinfra/ohif``."""
    if pkg.cache_dir:
        return Path(pkg.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pacsinfra" / "ohif"


def expected_integrity(pkg: OhifPackage) -> str | None:
    """The integrity the tarball must have: the config's, else the pinned one (or None)."""
    return pkg.integrity or PINNED_INTEGRITY.get(pkg.version)


def integrity_of(path: Path) -> str:
    """The file's SRI string, ``sha512-<base64 digest>``."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def staged_tarball(pkg: OhifPackage) -> Path | None:
    """A staged tarball named by the config or ``PACSINFRA_OHIF_TARBALL``, if any."""
    given = pkg.tarball or os.environ.get(STAGED_ENV)
    return Path(given).expanduser() if given else None


def dist_dir(pkg: OhifPackage) -> Path:
    """Where the unpacked build of ``pkg.version`` lives (whether or not it is there yet)."""
    return cache_root(pkg) / pkg.version / "dist"


def cached(pkg: OhifPackage) -> Path | None:
    """The unpacked build if it is complete and came from the expected tarball."""
    version_dir = cache_root(pkg) / pkg.version
    try:
        mark = (version_dir / _MARK).read_text().strip()
    except OSError:
        return None
    want = expected_integrity(pkg)
    if want is not None and mark != want:
        return None
    dist = version_dir / "dist"
    return dist if (dist / "index.html").is_file() else None


def ensure(pkg: OhifPackage) -> Path:
    """The unpacked ``dist/`` of ``pkg.version``: from the cache, a staged tarball, or npm.

    Raises :class:`ViewerError` when the package cannot be had or does not verify.
    """
    found = cached(pkg)
    if found is not None:
        return found
    version_dir = cache_root(pkg) / pkg.version
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ViewerError(f"cannot create the OHIF cache {version_dir}: {exc.strerror}") from None
    with _locked(version_dir.parent / f"{pkg.version}.lock"):
        found = cached(pkg)  # another process may have finished while we waited
        if found is not None:
            return found
        source, got = _verified_tarball(pkg, version_dir)
        try:
            _unpack(source, version_dir, pkg.version)
            (version_dir / _MARK).write_text(got + "\n")
        except OSError as exc:
            raise ViewerError(f"cannot read or unpack OHIF {pkg.version} from {source}: "
                              f"{exc.strerror or exc}") from None
    LOG.info("OHIF %s ready in %s", pkg.version, version_dir / "dist")
    return version_dir / "dist"


def kept_tarball(pkg: OhifPackage) -> Path:
    """Where a downloaded tarball of ``pkg.version`` is kept (to ship it to other hosts)."""
    return cache_root(pkg) / pkg.version / f"app-{pkg.version}.tgz"


def tarball(pkg: OhifPackage) -> tuple[Path, str]:
    """A verified tarball of ``pkg.version`` and its integrity: the staged one, else the
    one kept in the cache (downloaded when missing). For hosts that cannot reach the
    registry: pacsinfra copies it to them. Raises :class:`ViewerError`."""
    version_dir = cache_root(pkg) / pkg.version
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ViewerError(f"cannot create the OHIF cache {version_dir}: {exc.strerror}") from None
    with _locked(version_dir.parent / f"{pkg.version}.lock"):
        return _verified_tarball(pkg, version_dir)


def _verified_tarball(pkg: OhifPackage, version_dir: Path) -> tuple[Path, str]:
    """(tarball, its integrity), checked against the expected integrity; the caller holds
    the version's lock. A download is kept as :func:`kept_tarball`."""
    staged = staged_tarball(pkg)
    want = expected_integrity(pkg)
    if staged is not None:
        if want is None:
            raise ViewerError(
                f"no integrity is known for OHIF {pkg.version}: set ohif.integrity to the "
                f"registry's dist.integrity to use the staged tarball {staged}")
        return staged, _check_integrity(pkg, staged, want)
    kept = kept_tarball(pkg)
    if kept.is_file() and want is not None:
        with contextlib.suppress(ViewerError):
            return kept, _check_integrity(pkg, kept, want)
    part, published = _download(pkg, version_dir)
    if want is None:  # an unpinned version: the registry's word, as npm takes it
        LOG.warning("OHIF %s is not pinned by pacsinfra: trusting the registry's "
                    "integrity %s; set ohif.integrity to pin it", pkg.version, published)
        want = published
    try:
        got = _check_integrity(pkg, part, want)
        part.replace(kept)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return kept, got


def _check_integrity(pkg: OhifPackage, path: Path, want: str) -> str:
    try:
        got = integrity_of(path)
    except OSError as exc:
        raise ViewerError(f"cannot read OHIF {pkg.version} tarball {path}: "
                          f"{exc.strerror or exc}") from None
    if got != want:
        raise ViewerError(
            f"OHIF {pkg.version} tarball {path} does not match its integrity: "
            f"expected {want}, got {got}; refusing to use it")
    return got


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes preparing the same version."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _get(url: str) -> IO[bytes]:
    if urlsplit(url).scheme not in ("http", "https"):
        raise ViewerError(f"refusing to fetch {url!r}: not an http(s) URL")
    req = urllib.request.Request(url, headers={"Accept": "application/json, */*"})
    try:
        resp: IO[bytes] = urllib.request.urlopen(req, timeout=_TIMEOUT)  # noqa: S310
    except urllib.error.HTTPError as exc:
        raise ViewerError(f"{url}: the registry answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ViewerError(
            f"cannot reach {url}: {reason}; for an air-gapped site stage the tarball and "
            f"set ohif.tarball or {STAGED_ENV}") from None
    return resp


def _registry_dist(pkg: OhifPackage) -> tuple[str, str]:
    """(tarball URL, integrity) the registry publishes for ``pkg.version``."""
    url = f"{pkg.registry}/{quote(PACKAGE, safe='@')}/{quote(pkg.version)}"
    with _get(url) as resp:
        try:
            meta = json.load(resp)
            dist = meta["dist"]
            return str(dist["tarball"]), str(dist["integrity"])
        except (ValueError, KeyError, TypeError):
            raise ViewerError(f"{url}: not an npm package document with dist.tarball and "
                              "dist.integrity") from None


def _download(pkg: OhifPackage, version_dir: Path) -> tuple[Path, str]:
    """Fetch the tarball into the cache: (its path, the integrity the registry publishes).

    The published integrity must match the expected one when there is one.
    """
    tarball_url, published = _registry_dist(pkg)
    want = expected_integrity(pkg)
    if want is not None and published != want:
        raise ViewerError(
            f"the registry publishes integrity {published} for {PACKAGE}@{pkg.version}, "
            f"but pacsinfra expects {want}: refusing the download")
    dest = version_dir / f"app-{pkg.version}.tgz.part"
    LOG.info("downloading %s@%s from %s", PACKAGE, pkg.version, tarball_url)
    started = time.monotonic()
    with _get(tarball_url) as resp, dest.open("wb") as out:
        shutil.copyfileobj(resp, out, _CHUNK)
    LOG.info("downloaded %.1f MB in %.1f s", dest.stat().st_size / 1e6,
             time.monotonic() - started)
    return dest, published


def _dist_relative(name: str) -> PurePosixPath | None:
    """The path under ``dist/`` a member lands at; None for members outside ``package/dist``.

    Raises ViewerError for a name that could escape the tree.
    """
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ViewerError(f"unsafe path in the OHIF tarball: {name!r}")
    parts = path.parts
    if len(parts) < 2 or parts[:2] != ("package", "dist"):
        return None
    return PurePosixPath(*parts[2:]) if len(parts) > 2 else PurePosixPath(".")


def _unpack(tarball: Path, version_dir: Path, version: str) -> None:
    """Unpack ``package/dist`` into ``version_dir/dist`` (atomically: temp dir, rename).

    Written by hand rather than ``extractall``: only regular files and directories are
    created, every path is checked, and sizes are bounded.
    """
    staging = version_dir / f".dist.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    files = total = 0
    seen_version = None
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if member.name in ("package/package.json", "./package/package.json"):
                    seen_version = _package_version(tar, member)
                    continue
                rel = _dist_relative(member.name)
                if rel is None:
                    continue
                if not (member.isfile() or member.isdir()):
                    raise ViewerError(f"the OHIF tarball holds a link or device "
                                      f"({member.name!r}): refusing it")
                target = staging / rel
                if not target.resolve().is_relative_to(staging.resolve()):
                    raise ViewerError(f"unsafe path in the OHIF tarball: {member.name!r}")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o755)
                    continue
                files += 1
                total += member.size
                if files > MAX_FILES or total > MAX_BYTES:
                    raise ViewerError("the OHIF tarball is far larger than a build: refusing it")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has content
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                # npm tarballs date every file 1985-10-26; keeping the unpack time instead
                # gives each version's files their own Last-Modified/ETag in nginx.
                target.chmod(0o644)
        if seen_version != version:
            raise ViewerError(f"the tarball is {PACKAGE} {seen_version or '(no package.json)'}, "
                              f"not {version}")
        if not (staging / "index.html").is_file():
            raise ViewerError("the OHIF tarball has no package/dist/index.html")
        final = version_dir / "dist"
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except tarfile.TarError as exc:
        raise ViewerError(f"{tarball} is not a readable npm tarball: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _package_version(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
    """The ``version`` of ``package/package.json`` when it names ``@ohif/app``."""
    src = tar.extractfile(member)
    if src is None or member.size > 1_000_000:
        return None
    try:
        meta = json.loads(src.read())
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("name") != PACKAGE:
        return None
    version = meta.get("version")
    return version if isinstance(version, str) else None


__all__ = [
    "PACKAGE",
    "PINNED_INTEGRITY",
    "STAGED_ENV",
    "cache_root",
    "cached",
    "dist_dir",
    "ensure",
    "expected_integrity",
    "integrity_of",
    "staged_tarball",
]
