"""Build a wheel of this checkout and install it into a venv on a target, idempotently.

The build copies only what a wheel needs (``pyproject.toml``, ``README.md``, the
``pacsinfra`` package) into a temp dir first, so it never writes ``build/`` or
``*.egg-info`` into a working tree others share. With setuptools>=68 importable it
builds without isolation (~2 s); otherwise pip builds in an isolated env (~20 s, needs
the package index).

"Same wheel" means same name, version and *content hash* — a SHA-256 over the sorted
archive members and their bytes — because zip timestamps make two builds of the same
source differ byte-for-byte. The target venv records what it holds in
``<venv>/pacsinfra-wheel.json``; an install is skipped when that record matches and the
package imports.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pacsinfra.deploy.transport import Transport, check, put_text
from pacsinfra.errors import DeployError

MARKER = "pacsinfra-wheel.json"
_COPY = ("pyproject.toml", "README.md", "LICENSE")


@dataclass(frozen=True)
class BuiltWheel:
    """A wheel file and what identifies its content."""

    path: Path
    name: str
    version: str
    content_hash: str

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install_wheel` did on one target."""

    target: str
    changed: bool
    version: str
    content_hash: str
    python: str


def content_hash(wheel: Path) -> str:
    """SHA-256 over (member name, member bytes), sorted: stable across rebuilds of one source."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            h.update(name.encode() + b"\0")
            h.update(zf.read(name))
            h.update(b"\0")
    return h.hexdigest()


def inspect_wheel(path: Path) -> BuiltWheel:
    """Name, version and content hash of an existing wheel file."""
    parts = path.name.split("-")
    if len(parts) < 5 or not path.name.endswith(".whl"):
        raise DeployError(f"{path}: not a wheel file name (name-version-py-abi-platform.whl)")
    return BuiltWheel(path, parts[0], parts[1], content_hash(path))


def _setuptools_ok() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    major = int(setuptools.__version__.split(".")[0])
    return major >= 68


def build_wheel(source: Path, out_dir: Path, *, timeout: float = 300.0) -> BuiltWheel:
    """Build a wheel of the checkout at ``source`` into ``out_dir`` (``pip wheel --no-deps``)."""
    source = source.resolve()
    if not (source / "pyproject.toml").exists():
        raise DeployError(f"{source}: no pyproject.toml (not a pacsinfra checkout)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pacsinfra-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in _COPY:
            if (source / name).exists():
                shutil.copy2(source / name, src / name)
        shutil.copytree(source / "pacsinfra", src / "pacsinfra",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        built = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(built), str(src)]
        if _setuptools_ok():
            cmd.insert(4, "--no-build-isolation")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wheels = sorted(built.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DeployError(f"building the wheel failed (exit {proc.returncode}): "
                              f"{proc.stderr.strip()[-800:]}")
        dest = out_dir / wheels[0].name
        shutil.copy2(wheels[0], dest)
    return inspect_wheel(dest)


def installed(transport: Transport, venv: str) -> dict[str, str] | None:
    """The marker of the wheel installed in ``venv`` on the target, or None."""
    res = transport.run(["cat", f"{venv}/{MARKER}"], 30)
    if res.rc != 0:
        return None
    try:
        data = json.loads(res.stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def install_wheel(
    transport: Transport,
    wheel: BuiltWheel,
    venv: str,
    *,
    python: str = "python3",
    no_deps: bool = False,
    find_links: str | None = None,
    system_site_packages: bool = False,
    extras: Sequence[str] = (),
    timeout: float = 600.0,
) -> InstallResult:
    """Install ``wheel`` into ``venv`` on the target (creating the venv); skip when already there.

    ``no_deps`` installs only pacsinfra (the target provides the rest); ``find_links`` is a
    directory *on the target* holding dependency wheels, used with ``--no-index`` for
    sites without a package index. Otherwise pip resolves dependencies from its index.
    ``system_site_packages`` creates the venv seeing the interpreter's own packages (a host
    whose dependencies come from its OS packages; combine with ``no_deps``). ``extras``:
    pacsinfra's optional dependencies to install too (``postgresql``, ``s3``).
    """
    vpy = f"{venv}/bin/python"
    record = {"name": wheel.name, "version": wheel.version, "content_hash": wheel.content_hash}
    have = installed(transport, venv)
    if have is not None and all(have.get(k) == v for k, v in record.items()) \
            and set(extras) <= set(have.get("extras") or ()):
        probe = transport.run([vpy, "-c", "import pacsinfra"], 60)
        if probe.rc == 0:
            return InstallResult(transport.name, False, wheel.version, wheel.content_hash, vpy)
    if not transport.exists(vpy):
        extra = ["--system-site-packages"] if system_site_packages else []
        check(transport, [python, "-m", "venv", *extra, venv], timeout)
    remote_whl = f"{venv}/wheels/{wheel.filename}"
    transport.put(wheel.path, remote_whl, 0o644)
    cmd = [vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--force-reinstall"]
    if no_deps:
        cmd += ["--no-deps", "--no-index"]
    elif find_links:
        cmd += ["--no-index", "--find-links", find_links]
    target = f"{remote_whl}[{','.join(sorted(extras))}]" if extras else remote_whl
    check(transport, [*cmd, target], timeout)
    # The marker is written last: a failed install leaves no claim that it succeeded.
    put_text(transport, json.dumps({**record, "wheel": wheel.filename,
                                    "extras": sorted(extras)}, sort_keys=True),
             f"{venv}/{MARKER}", 0o644)
    return InstallResult(transport.name, True, wheel.version, wheel.content_hash, vpy)


def result_dict(res: InstallResult) -> dict[str, object]:
    """A JSON-ready form for reports."""
    return asdict(res)


class WheelSource:
    """The pacsinfra wheel a run installs on its hosts: a given file, else one built once
    from this checkout (shared by every host and thread of the run)."""

    def __init__(self, configured: str | None, extras: Sequence[str] = ()) -> None:
        self.configured = configured
        self.extras = tuple(extras)  # optional dependencies installed with it
        self._built: BuiltWheel | None = None
        self._lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def wheel(self) -> BuiltWheel:
        """The wheel to install (built on first use)."""
        with self._lock:
            if self._built is None:
                if self.configured:
                    self._built = inspect_wheel(Path(self.configured).expanduser())
                else:
                    import pacsinfra

                    checkout = Path(pacsinfra.__file__).resolve().parents[1]
                    if not (checkout / "pyproject.toml").exists():
                        raise DeployError(
                            "pacsinfra does not run from a checkout, so it cannot build the "
                            "wheel to install on the hosts; set deploy.wheel to a pacsinfra "
                            "wheel file")
                    self._tmp = tempfile.TemporaryDirectory(prefix="pacsinfra-wheel-")
                    self._built = build_wheel(checkout, Path(self._tmp.name))
            return self._built

    def close(self) -> None:
        """Drop a wheel built for this run."""
        with self._lock:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
                self._built = None
