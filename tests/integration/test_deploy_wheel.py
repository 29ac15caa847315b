"""Build a wheel of this checkout and install it over SSH into venvs on namespace hosts."""

from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path

import pytest
from conftest import need
from support.netns_hosts import NetnsHost, netns_hosts  # noqa: F401 - fixture

from pacsinfra import __version__
from pacsinfra.deploy.ssh import SSHTarget, SSHTransport
from pacsinfra.errors import DeployError
from pacsinfra.services.wheel import build_wheel, inspect_wheel, install_wheel, installed

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PY = "/usr/bin/python3"  # the target's interpreter, not this venv's


def test_build_and_install_idempotent(netns_hosts: list[NetnsHost], tmp_path: Path) -> None:  # noqa: F811
    need(Path(SYSTEM_PY).exists(), "no system python3 to build a target venv with")
    wheel = build_wheel(REPO, tmp_path / "dist")
    assert wheel.name == "pacsinfra" and wheel.version == __version__
    with zipfile.ZipFile(wheel.path) as zf:
        names = zf.namelist()
    assert "pacsinfra/services/wheel.py" in names and not any("__pycache__" in n for n in names)
    rebuilt = build_wheel(REPO, tmp_path / "dist2")
    assert rebuilt.content_hash == wheel.content_hash  # zip timestamps do not matter

    for h in netns_hosts[:1]:  # one host: a venv costs ~6 s on a busy 2-core machine
        venv = str(h.workdir / "venv")
        with SSHTransport(SSHTarget(host=h.address, key_file=h.key_file,
                                    known_hosts=h.known_hosts)) as t:
            first = install_wheel(t, wheel, venv, python=SYSTEM_PY, no_deps=True)
            assert first.changed
            out = t.run([f"{venv}/bin/python", "-c",
                         "import pacsinfra; print(pacsinfra.__version__, pacsinfra.__file__)"])
            version, path = out.stdout.split()
            assert version == __version__ and path.startswith(venv)  # not the checkout
            assert installed(t, venv) == {"content_hash": wheel.content_hash, "name": "pacsinfra",
                                          "version": __version__, "wheel": wheel.filename,
                                          "extras": []}
            started = time.monotonic()
            again = install_wheel(t, wheel, venv, python=SYSTEM_PY, no_deps=True)
            assert not again.changed and time.monotonic() - started < 3

    # Same version, different content: installed again.
    changed_path = tmp_path / "changed" / wheel.filename
    changed_path.parent.mkdir()
    shutil.copy(wheel.path, changed_path)
    with zipfile.ZipFile(changed_path, "a") as zf:
        zf.writestr("pacsinfra/_build_note.py", "NOTE = 'rebuilt'\n")
    changed = inspect_wheel(changed_path)
    assert changed.version == wheel.version and changed.content_hash != wheel.content_hash
    h = netns_hosts[0]
    venv = str(h.workdir / "venv")
    with SSHTransport(SSHTarget(host=h.address, key_file=h.key_file,
                                known_hosts=h.known_hosts)) as t:
        assert install_wheel(t, changed, venv, python=SYSTEM_PY, no_deps=True).changed
        assert t.run([f"{venv}/bin/python", "-c",
                      "from pacsinfra._build_note import NOTE; print(NOTE)"]).stdout == "rebuilt\n"
        # A broken install raises and leaves the old marker (no false claim of success).
        bogus = tmp_path / "pacsinfra-0.1.0-py3-none-any.whl"
        bogus.write_bytes(b"not a zip")
        with pytest.raises(DeployError, match="command failed"):
            install_wheel(t, inspect_wheel_unchecked(bogus), venv, python=SYSTEM_PY, no_deps=True)
        assert installed(t, venv)["content_hash"] == changed.content_hash  # type: ignore[index]


def inspect_wheel_unchecked(path: Path):  # type: ignore[no-untyped-def]
    from pacsinfra.services.wheel import BuiltWheel

    return BuiltWheel(path, "pacsinfra", "0.1.0", "bogus")


def test_bad_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="no pyproject.toml"):
        build_wheel(tmp_path, tmp_path / "out")
    with pytest.raises(DeployError, match="not a wheel"):
        inspect_wheel(tmp_path / "x.tar.gz")


def test_the_wheel_builds_without_warnings(tmp_path: Path) -> None:
    """Every install builds this project: its metadata must not make setuptools warn
    (a TOML-table ``project.license`` did, on every install)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-v", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "Warning" not in out and "deprecated" not in out.lower(), out[-4000:]
