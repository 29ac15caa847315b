"""Choosing the state backend: --state URLs, PACSINFRA_STATE, the blueprint's state: section."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from memdriver import fake_blueprint, fake_site

from pacsinfra.apply.engine import Engine
from pacsinfra.errors import UsageError
from pacsinfra.state.local import LocalStateStore
from pacsinfra.state.location import lease_seconds, parse_duration, parse_state_url
from pacsinfra.state.select import open_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("500ms", 0.5), ("120", 120.0), (15, 15.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2 minutes", "-1s", "1d", "", "s"])
def test_bad_durations_say_what_would_be_right(text: str) -> None:
    with pytest.raises(UsageError, match="e.g. 30s, 2m"):
        parse_duration(text, "--lock-timeout")


def test_urls() -> None:
    pg = parse_state_url("postgresql://ci@db.example:5433/infra?schema=pacs_ci&lease=30s"
                         "&sslmode=require")
    assert (pg.backend, pg.schema, pg.lease) == ("postgresql", "pacs_ci", 30.0)
    assert pg.conninfo == "postgresql://ci@db.example:5433/infra?sslmode=require"
    s3 = parse_state_url("s3://bucket/teams/ci?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert (s3.backend, s3.bucket, s3.prefix, s3.endpoint, s3.region) == (
        "s3", "bucket", "teams/ci", "http://127.0.0.1:9000", "eu-west-1")
    assert parse_state_url("state/site.json").path == "state/site.json"
    assert parse_state_url("file:///srv/site.json").path == "/srv/site.json"
    assert parse_state_url(r"C:\state\site.json").backend == "local"


@pytest.mark.parametrize(("text", "match"), [
    ("postgres:/db", "write postgres://"),
    ("mysql://u@h/db", "unknown state backend 'mysql'"),
    ("gs://bucket/p", "unknown state backend 'gs'"),
    ("postgresql://u:hunter2@h/db", "PGPASSWORD"),
    ("postgresql://u@h:5432/", "name the database"),
    ("postgresql://u@h/db?schema=Bad-Name", "plain identifier"),
    ("s3://b/p?acl=public", "unknown s3 parameter"),
])
def test_bad_urls_are_refused(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        parse_state_url(text)
    assert "hunter2" not in str(info.value)


def test_lease_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACSINFRA_STATE_LEASE", raising=False)
    assert lease_seconds(None) == 120.0
    assert lease_seconds(None, "45s") == 45.0
    monkeypatch.setenv("PACSINFRA_STATE_LEASE", "1m")
    assert lease_seconds(None, "45s") == 60.0
    assert lease_seconds(5.0, "45s") == 5.0
    with pytest.raises(UsageError, match="at least 1s"):
        lease_seconds(0.2)


def test_selection_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACSINFRA_STATE", raising=False)
    bp = tmp_path / "site.yaml"
    default = open_store(None, blueprint_path=bp, name="st-mary", overlay="north")
    assert isinstance(default, LocalStateStore)
    assert default.path == tmp_path / ".pacsinfra" / "st-mary-north.state.json"
    section = {"backend": "local", "path": "shared/st.json"}
    from_bp = open_store(None, blueprint_path=bp, name="st-mary", overlay=None, section=section)
    assert isinstance(from_bp, LocalStateStore) and from_bp.path == tmp_path / "shared/st.json"
    monkeypatch.setenv("PACSINFRA_STATE", str(tmp_path / "env.json"))
    from_env = open_store(None, blueprint_path=bp, name="st-mary", overlay=None, section=section)
    assert isinstance(from_env, LocalStateStore) and from_env.path == tmp_path / "env.json"
    cli = open_store(str(tmp_path / "cli.json"), blueprint_path=bp, name="x", overlay=None)
    assert isinstance(cli, LocalStateStore) and cli.path == tmp_path / "cli.json"
    monkeypatch.setenv("PACSINFRA_STATE", "ftp://nowhere/x")
    with pytest.raises(UsageError, match="PACSINFRA_STATE 'ftp://nowhere/x': unknown"):
        open_store(None, blueprint_path=bp, name="st-mary", overlay=None)


def test_engine_refuses_an_unknown_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="unknown state backend 'postgresq'"):
        Engine(fake_blueprint(tmp_path, fake_site()), "postgresq://u@h/db")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir() if ":" in p.name) == []


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("PACSINFRA_STATE", None) if "PACSINFRA_STATE" not in env else None
    return subprocess.run([sys.executable, "-m", "pacsinfra", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=60)


def test_cli_refuses_unknown_schemes_with_exit_2(tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples" / "quickstart.yaml", tmp_path / "site.yaml")
    r = _cli(["plan", "site.yaml", "--state", "postgresql:/db"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "write postgresql://" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["show", "site.yaml"], tmp_path, PACSINFRA_STATE="redis://h/0")
    assert r.returncode == 2 and "PACSINFRA_STATE 'redis://h/0': unknown state backend 'redis'" \
        in r.stderr, r.stderr
    r = _cli(["apply", "site.yaml", "--state", "x.json", "--lock-timeout", "soon"], tmp_path)
    assert r.returncode == 2 and "--lock-timeout: 'soon' is not a duration" in r.stderr, r.stderr
    assert not any(":" in p.name for p in tmp_path.iterdir())
    assert not (tmp_path / ".pacsinfra").exists()


def test_blueprint_state_section_is_checked(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "quickstart.yaml").read_text()
    (tmp_path / "site.yaml").write_text(text + "\nstate:\n  backend: postgresql\n  schema: ops\n")
    r = _cli(["validate", "site.yaml"], tmp_path)
    assert r.returncode == 2 and "needs dsn" in r.stderr + r.stdout, r.stderr
    (tmp_path / "site.yaml").write_text(
        text + "\nstate:\n  backend: postgresql\n  dsn: {env: ST_DSN}\n  lease: 30s\n")
    r = _cli(["validate", "site.yaml"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_lease_holder_command_line_hides_secrets() -> None:
    from pacsinfra.state.lease import redact

    argv = ["pacsinfra", "apply", "s.yaml", "--var", "db_password=hunter2", "--var=k=v2",
            "--state", "postgresql://u:pw@h/db"]
    shown = " ".join(redact(argv))
    assert "hunter2" not in shown and "v2" not in shown and ":pw@" not in shown
    assert "--var db_password=*** --var=k=***" in shown and "s.yaml" in shown
