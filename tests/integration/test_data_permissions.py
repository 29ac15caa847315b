"""Files with patient data are private: after a C-STORE and a STOW-RS into a real
archive, a store into a real router, and a ``pacsinfra backup``, every file is at most
0640 and every directory at most 0750, even when the services are started with a
umask of 0 (which would otherwise make them world-writable); a data directory and an
index left with wider modes are narrowed at start."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_module
from dicomweb_support import multipart, part10, start_web_archive, stow_headers
from test_archive_support import REPO, store_studies
from test_router_support import Router, instance, port, send, wait_for

pytestmark = pytest.mark.integration

need_module("httpx")

import httpx  # noqa: E402

from pacsinfra.pacs.archive.synth import make_instance  # noqa: E402


@contextlib.contextmanager
def careless_umask() -> Iterator[None]:
    """Children started inside inherit umask 0: nothing private unless the service says so."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def too_open(root: Path) -> list[str]:
    """Entries under ``root`` (and ``root``) with group-write or any 'other' bits."""
    bad = []
    for dirpath, _dirs, files in os.walk(root):
        for p in [Path(dirpath), *(Path(dirpath, f) for f in files)]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            if mode & 0o027:
                bad.append(f"{p.relative_to(root.parent)} {oct(mode)}")
    return sorted(set(bad))


def test_archive_files_and_backups_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # left wide open by an admin: narrowed at start
    index = data / "index.sqlite"
    index.touch()
    index.chmod(0o666)
    audit = data / "audit.jsonl"
    with careless_umask():
        arch, url, _ = start_web_archive(tmp_path, {}, audit={"file": str(audit)})
    try:
        store_studies(arch.port, 1, 2, prefix="PERM")
        r = httpx.post(url + "/studies", content=multipart([part10(make_instance())]),
                       headers={"Content-Type": stow_headers()["Content-Type"]}, timeout=60)
        assert r.status_code == 200, r.text
        with careless_umask():
            b = subprocess.run([sys.executable, "-m", "pacsinfra", "backup", "--archive-config",
                                str(arch.data.parent / f"{arch.data.name}.yaml"), "--to",
                                str(tmp_path / "backup"), "--copy"], capture_output=True,
                               text=True, cwd=REPO, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
        assert b.returncode == 0, b.stderr
    finally:
        assert arch.stop() == 0
    assert len(list((data / "fast").rglob("*.dcm"))) == 3 and audit.stat().st_size > 0
    assert too_open(data) == []
    assert len(list((tmp_path / "backup").rglob("*.dcm"))) == 3
    assert too_open(tmp_path / "backup") == []
    assert stat.S_IMODE((tmp_path / "backup").stat().st_mode) == 0o700


def test_router_spool_queue_and_audit_are_private(tmp_path: Path) -> None:
    router = Router(tmp_path / "router", {
        # a destination that is down: the instance stays in the spool and the queue
        "destinations": {"down": {"ae_title": "DOWN", "host": "127.0.0.1", "port": port()}},
        "rules": [{"name": "all", "forward": ["down"]}],
        "audit": {"file": str(tmp_path / "router" / "spool" / "audit.jsonl")},
        "retry": {"max_attempts": 50, "initial_backoff": 30}})
    with careless_umask():
        router.start()
    try:
        assert set(send(router.port, [instance()]).values()) == {0}
        wait_for(lambda: sum(router.states().values()) == 1, 20, "the queued instance")
    finally:
        router.stop()
    spool = tmp_path / "router" / "spool"
    assert any(p.is_file() for p in spool.rglob("*") if p.parent.name != ".incoming")
    assert too_open(spool) == []
