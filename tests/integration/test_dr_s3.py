"""Backups in an S3-compatible store: upload with the marker last, restore, newest-of-many.

The store is a real S3 HTTP server in its own process (moto's server, on a free
loopback port); pacsinfra talks to it with boto3 like to any S3-compatible endpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need_module
from s3_fixture import CREDS, S3Server, s3_server  # noqa: F401 - fixture
from test_archive_support import REPO, Archive, store_studies, study_counts

pytestmark = pytest.mark.integration

need_module("pynetdicom")
need_module("boto3")
need_module("moto")




@pytest.fixture(scope="module")
def s3_endpoint(s3_server: S3Server) -> str:  # noqa: F811
    return s3_server.endpoint


def _s3(endpoint: str) -> Any:
    return S3Server(endpoint).client()


def cli(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.run([sys.executable, "-m", "pacsinfra", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=env)


def test_backup_to_s3_and_restore(s3_endpoint: str, tmp_path: Path) -> None:
    arch = Archive(tmp_path / "data").start()
    try:
        first = store_studies(arch.port, 2, 2, prefix="S3")
        r = cli(s3_endpoint, "backup", "--data", str(arch.data), "--to", "s3://pacs/site-a/b1")
        assert r.returncode == 0, r.stderr
        assert "backup s3://pacs/site-a/b1: 2 studies, 4 instances" in r.stdout, r.stdout
        # the same prefix again is refused; nothing is overwritten
        again = cli(s3_endpoint, "backup", "--data", str(arch.data), "--to", "s3://pacs/site-a/b1")
        assert again.returncode == 2 and "not empty" in again.stderr
        second = {**first, **store_studies(arch.port, 1, 2, prefix="S3")}
        time.sleep(0.01)
        r = cli(s3_endpoint, "backup", "--data", str(arch.data), "--to", "s3://pacs/site-a/b2")
        assert r.returncode == 0, r.stderr
    finally:
        arch.stop()
    assert not list(tmp_path.glob(".pacsinfra-s3-staging-*")), "staging left behind"
    s3 = _s3(s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="pacs", Prefix="site-a/b1/")["Contents"]]
    assert "site-a/b1/backup.json" in keys and "site-a/b1/index.sqlite" in keys
    assert sum(k.startswith("site-a/b1/tiers/") for k in keys) == 4

    r = cli(s3_endpoint, "restore", "--from", "s3://pacs/site-a/b1", "--data", str(tmp_path / "r1"))
    assert r.returncode == 0, r.stderr
    restored = Archive(tmp_path / "r1").start()
    try:
        assert study_counts(restored.port) == first
    finally:
        restored.stop()

    # an upload that never finished (no backup.json) is not a backup
    s3.put_object(Bucket="pacs", Key="site-a/b3/index.sqlite", Body=b"partial")
    r = cli(s3_endpoint, "restore", "--from", "s3://pacs/site-a/b3", "--data", str(tmp_path / "r3"))
    assert r.returncode == 2 and "not a complete" in r.stderr, r.stderr
    assert not (tmp_path / "r3").exists()

    # newest-of-many is what dr rebuild picks from a prefix of backups
    from pacsinfra.dr import s3 as s3mod

    assert s3mod.latest(s3mod.S3Location("pacs", "site-a"), s3).prefix == "site-a/b2"
    assert len(second) == 3
    for out in (r.stdout, r.stderr):
        assert CREDS["AWS_SECRET_ACCESS_KEY"] not in out


def test_dr_rebuild_from_the_newest_backup_in_s3(s3_endpoint: str, tmp_path: Path) -> None:
    from test_dr_rebuild import blueprint

    root = tmp_path / "root"
    ports = {k: free_port() for k in ("a_archive", "a_router", "a_recv", "b_archive",
                                      "b_router", "b_recv")}
    bp = tmp_path / "site.yaml"
    bp.write_text(blueprint(ports))
    env_root = {"PACSINFRA_LOCAL_ROOT": str(root)}

    def run(*args: str, rc: int = 0) -> str:
        env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL": s3_endpoint, **env_root}
        r = subprocess.run([sys.executable, "-m", "pacsinfra", *args], capture_output=True,
                           text=True, timeout=300, cwd=REPO, env=env)
        assert r.returncode == rc, f"{args} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    try:
        run("apply", str(bp), "--auto-approve")
        older = store_studies(ports["a_archive"], studies=1, per_study=2)
        (config,) = root.glob("drtest/machines/*/services/archive/config.yaml")
        run("backup", "--archive-config", str(config), "--to", "s3://pacs/drsite/monday")
        newer = {**older, **store_studies(ports["a_archive"], studies=2, per_study=2)}
        run("backup", "--archive-config", str(config), "--to", "s3://pacs/drsite/tuesday")
        run("destroy", str(bp), "--auto-approve")
        out = run("dr", "rebuild", str(bp), "--site", "dr", "--from", "s3://pacs/drsite",
                  "--auto-approve")
        assert "3/3 studies of the backup found by C-FIND" in out, out
        assert "smoke test PASSED" in out, out
        assert set(newer) <= set(study_counts(ports["b_archive"]))
        assert not list(tmp_path.glob(".s3-backup-*")), "downloaded copy left behind"
    finally:
        run("destroy", str(bp), "--auto-approve")
        run("destroy", str(bp), "--site", "dr", "--auto-approve")
