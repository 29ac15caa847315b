"""``dr rebuild`` without ``--from``: the backups the blueprint names (``dr.backups``).

On the local provider (the blueprint of ``test_dr_rebuild`` plus a ``dr`` section):
a blueprint without ``dr`` and no ``--from`` is refused (exit 2); ``dr.backups`` with
no backup in it yet is refused naming ``dr.backups``; ``--from`` overrides the
blueprint; then the rebuild from the blueprint's backups brings every study back.
And from S3: ``dr.backups: s3://...`` with ``dr.s3`` naming the endpoint and the
credentials as secret references (an environment variable and a file), run with no
AWS variable in the environment at all; the secret never shows in output or state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, need_module
from s3_fixture import CREDS, S3Server, s3_server  # noqa: F401 - fixture
from test_archive_support import store_studies, study_counts
from test_dr_rebuild import blueprint

pytestmark = pytest.mark.integration

PORTS = ("a_archive", "a_router", "a_recv", "b_archive", "b_router", "b_recv")


def _run(env: dict[str, str], *args: str, rc: int = 0) -> str:
    r = subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=env,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == rc, f"pacsinfra {' '.join(args)} -> {r.returncode}\n{out}"
    assert "Traceback" not in out, out
    return out


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any AWS setting (credentials must come from the blueprint)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k != "PACSINFRA_DEBUG"}
    return {**env, **extra}


def test_rebuild_from_the_backups_the_blueprint_names(tmp_path: Path) -> None:
    need_module("pynetdicom")
    ports = {k: free_port() for k in PORTS}
    root = tmp_path / "root"
    env = _clean_env(PACSINFRA_LOCAL_ROOT=str(root))
    backups = tmp_path / "backups"
    bare = tmp_path / "bare.yaml"
    bare.write_text(blueprint(ports))
    bp = tmp_path / "site.yaml"
    bp.write_text(blueprint(ports) + f"dr:\n  backups: {backups}\n")

    out = _run(env, "dr", "rebuild", str(bare), "--site", "dr", "--auto-approve", rc=2)
    assert "no backup to rebuild from" in out and "dr: {backups: ...}" in out, out
    out = _run(env, "dr", "rebuild", str(bp), "--site", "dr", "--auto-approve", rc=2)
    assert f"dr.backups {backups}: no such backup" in out, out
    try:
        _run(env, "apply", str(bp), "--auto-approve")
        sent = store_studies(ports["a_archive"], studies=3, per_study=2, prefix="BPS")
        (config,) = root.glob("drtest/machines/*/services/archive/config.yaml")
        backups.mkdir()
        _run(env, "backup", "--archive-config", str(config), "--to", str(backups / "b1"))
        _run(env, "destroy", str(bp), "--auto-approve")

        # --from beats the blueprint: an empty directory is refused although dr.backups is fine
        (tmp_path / "empty").mkdir()
        out = _run(env, "dr", "rebuild", str(bp), "--site", "dr", "--from",
                   str(tmp_path / "empty"), "--auto-approve", rc=2)
        assert f"--from {tmp_path / 'empty'}: no complete backup" in out, out
        assert not (root / "drtest-b").exists()

        out = _run(env, "dr", "rebuild", str(bp), "--site", "dr", "--auto-approve")
        assert f"backup {backups / 'b1'}: 3 studies, 6 instances" in out, out
        assert "3/3 studies of the backup found by C-FIND" in out, out
        assert "smoke test PASSED" in out, out
        assert {uid: study_counts(ports["b_archive"]).get(uid) for uid in sent} == sent
    finally:
        _run(env, "destroy", str(bp), "--auto-approve")
        _run(env, "destroy", str(bp), "--site", "dr", "--auto-approve")


def test_rebuild_from_s3_with_credentials_from_the_blueprint(
        s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    need_module("pynetdicom")
    ports = {k: free_port() for k in PORTS}
    root = tmp_path / "root"
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(CREDS["AWS_SECRET_ACCESS_KEY"] + "\n")
    secret_file.chmod(0o600)
    bp = tmp_path / "site.yaml"
    bp.write_text(blueprint(ports) + f"""\
dr:
  backups: s3://pacs/bp-site-a
  s3:
    endpoint: {s3_server.endpoint}
    access_key: {{env: DR_S3_KEY_ID}}
    secret_key: {{file: {secret_file}}}
""")
    # site A and its backup upload use the usual AWS environment ...
    env_a = {**_clean_env(PACSINFRA_LOCAL_ROOT=str(root)), **s3_server.env()}
    # ... the rebuild has no AWS variable: endpoint and credentials come from the blueprint
    env_b = _clean_env(PACSINFRA_LOCAL_ROOT=str(root),
                       DR_S3_KEY_ID=CREDS["AWS_ACCESS_KEY_ID"])
    try:
        _run(env_a, "apply", str(bp), "--auto-approve")
        sent = store_studies(ports["a_archive"], studies=2, per_study=3, prefix="BPS3")
        (config,) = root.glob("drtest/machines/*/services/archive/config.yaml")
        _run(env_a, "backup", "--archive-config", str(config), "--to",
             "s3://pacs/bp-site-a/2026-12-05")
        _run(env_a, "destroy", str(bp), "--auto-approve")

        # a secret reference that does not resolve: exit 2, named, nothing built
        out = _run({k: v for k, v in env_b.items() if k != "DR_S3_KEY_ID"}, "dr", "rebuild",
                   str(bp), "--site", "dr", "--auto-approve", rc=2)
        assert "environment variable DR_S3_KEY_ID is not set" in out, out
        assert not (root / "drtest-b").exists()

        out = _run(env_b, "dr", "rebuild", str(bp), "--site", "dr", "--auto-approve")
        assert "2/2 studies of the backup found by C-FIND" in out, out
        assert "smoke test PASSED" in out, out
        assert {uid: study_counts(ports["b_archive"]).get(uid) for uid in sent} == sent
        texts = [out] + [p.read_text() for p in (tmp_path / ".pacsinfra").glob("*.json")]
        assert not any(CREDS["AWS_SECRET_ACCESS_KEY"] in t for t in texts)
        assert not list(tmp_path.glob(".s3-backup-*")), "downloaded copy left behind"
    finally:
        _run(env_a, "destroy", str(bp), "--auto-approve")
        _run(env_a, "destroy", str(bp), "--site", "dr", "--auto-approve")
