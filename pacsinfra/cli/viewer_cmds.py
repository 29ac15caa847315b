"""``pacsinfra viewer ...``: run and check the web viewer (OHIF behind nginx)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click
import yaml
from pydantic import ValidationError

from pacsinfra.errors import UsageError


def load_config(path: Path) -> object:
    """A ViewerConfig from a YAML file; UsageError (exit 2) listing every problem."""
    from pacsinfra.viewer.config import ViewerConfig

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    try:
        return ViewerConfig.model_validate(loaded or {})
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(x) for x in e['loc']) or '<top>'}: {e['msg']}" for e in exc.errors()
        ]
        raise UsageError(f"invalid viewer configuration {path}:\n" + "\n".join(lines)) from exc


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group()
def viewer() -> None:
    """The web viewer: OHIF served by nginx, the archive's DICOMweb proxied behind a login."""


@viewer.command()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True,
              help="viewer.yaml")
@click.option("--log-level", default="INFO", show_default=True)
def serve(config: Path, log_level: str) -> None:
    """Prepare OHIF and nginx's files, then run nginx in the foreground until SIGTERM."""
    from pacsinfra.viewer.config import ViewerConfig
    from pacsinfra.viewer.serve import serve as run

    _logging(log_level)
    cfg = load_config(config)
    assert isinstance(cfg, ViewerConfig)
    run(cfg)


@viewer.command()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True,
              help="viewer.yaml")
@click.option("--log-level", default="INFO", show_default=True)
def prepare(config: Path, log_level: str) -> None:
    """Fetch/verify OHIF and write nginx's files without starting it (nginx -t checks them)."""
    from pacsinfra.viewer.config import ViewerConfig
    from pacsinfra.viewer.runtime import prepare as do_prepare
    from pacsinfra.viewer.serve import nginx_argv, test_config

    _logging(log_level)
    cfg = load_config(config)
    assert isinstance(cfg, ViewerConfig)
    prepared = do_prepare(cfg)
    test_config(prepared.layout)
    click.echo(f"OHIF {cfg.ohif.version}: {prepared.dist}")
    click.echo(f"nginx.conf: {prepared.layout.conf}")
    click.echo("run: " + " ".join(repr(a) if " " in a else a
                                  for a in nginx_argv(prepared.layout)))


@viewer.command()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True,
              help="viewer.yaml")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option("--user", help="log in as this user (default: the first of auth.users)")
@click.option("--password-env", metavar="VAR",
              help="environment variable holding --user's password (htpasswd-only configs)")
@click.option("--password-stdin", is_flag=True,
              help="read --user's password from the first line of standard input")
@click.option("--study", metavar="UID",
              help="also open this study through the proxy (series, metadata, one frame)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
def check(config: Path, as_json: bool, user: str | None, password_env: str | None,
          password_stdin: bool, study: str | None, timeout: float) -> None:
    """Probe a running viewer: page, app-config.js, DICOMweb through the proxy, refusal
    without credentials. Exit 0 healthy, 1 not."""
    from pacsinfra.viewer.check import check as run_check
    from pacsinfra.viewer.config import ViewerConfig

    cfg = load_config(config)
    assert isinstance(cfg, ViewerConfig)
    password = None
    if password_env and password_stdin:
        raise UsageError("give the password with --password-env or --password-stdin, not both")
    if password_stdin:
        if user is None:
            raise UsageError("--password-stdin needs --user")
        import sys

        password = sys.stdin.readline().rstrip("\r\n")
    if password_env:
        password = os.environ.get(password_env)
        if password is None:
            raise UsageError(f"--password-env {password_env}: the variable is not set")
        if user is None:
            raise UsageError("--password-env needs --user")
    if study is not None:
        from pacsinfra.pacs.dicom import valid_uid

        if not valid_uid(study):
            raise UsageError(f"--study {study!r} is not a valid DICOM UID")
    report = run_check(cfg, user=user, password=password, timeout=timeout, study=study)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.text())
    raise click.exceptions.Exit(0 if report.healthy else 1)
