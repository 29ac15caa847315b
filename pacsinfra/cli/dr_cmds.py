"""``pacsinfra backup`` / ``pacsinfra restore``: archive backups (see docs/dr.md)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

S3_ENDPOINT = click.option(
    "--s3-endpoint", metavar="URL", envvar="AWS_ENDPOINT_URL",
    help="S3-compatible endpoint for s3:// locations (credentials: the usual AWS_* "
         "environment, never the command line)")


@click.command()
@click.option("--archive-config", "config", type=click.Path(path_type=Path),
              help="the archive's config file (ArchiveConfig)")
@click.option("--data", type=click.Path(path_type=Path), help="data directory (quick-form archive)")
@click.option("--to", "to", required=True, metavar="DIR|s3://BUCKET/PREFIX",
              help="new directory (must not exist) or empty S3 prefix for the backup")
@click.option("--copy", "force_copy", is_flag=True,
              help="always copy files (default: hard-link when on the same filesystem)")
@click.option("--json", "as_json", is_flag=True, help="print backup.json")
@S3_ENDPOINT
def backup(config: Path | None, data: Path | None, to: str, force_copy: bool,
           as_json: bool, s3_endpoint: str | None) -> None:
    """Back up a running archive: index snapshot, verified files, manifest."""
    from pacsinfra.cli.archive_cmds import load_config
    from pacsinfra.dr import s3
    from pacsinfra.dr.backup import run_backup
    from pacsinfra.errors import UsageError
    from pacsinfra.pacs.archive.config import ArchiveConfig

    if config is None and data is None:
        raise UsageError("give --archive-config FILE or --data DIR")
    cfg = load_config(config, None, None, data, (), None)
    assert isinstance(cfg, ArchiveConfig)
    remote = s3.parse(to)
    if remote is None:
        summary = run_backup(cfg, Path(to), allow_link=not force_copy)
    else:
        client = s3.client(s3_endpoint)
        # staged beside the archive's data (same filesystem: hard links, no second copy)
        near = Path(cfg.data_dir).resolve().parent
        staging = Path(tempfile.mkdtemp(prefix=".pacsinfra-s3-staging-", dir=near))
        try:
            summary = run_backup(cfg, staging / "backup", allow_link=not force_copy,
                                 record_as=str(remote))
            s3.upload(staging / "backup", remote, client)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo(f"backup {summary.path}: {summary.studies} studies, {summary.instances} "
                   f"instances, {summary.bytes} bytes ({summary.linked} linked, "
                   f"{summary.copied} copied) in {summary.finished_at - summary.started_at:.1f}s")


@click.command()
@click.option("--from", "source", required=True, metavar="DIR|s3://BUCKET/PREFIX",
              help="a backup made by pacsinfra backup")
@click.option("--data", "target", required=True, type=click.Path(path_type=Path),
              help="new or empty archive data directory")
@S3_ENDPOINT
def restore(source: str, target: Path, s3_endpoint: str | None) -> None:
    """Restore a backup into an empty archive data directory, verifying every checksum."""
    from pacsinfra.dr.restore import run_restore

    with _local_backup(source, s3_endpoint, near=target.resolve().parent) as local:
        s = run_restore(local, target)
    click.echo(f"restored {s.studies} studies, {s.instances} instances, {s.bytes} bytes "
               f"into {s.target} (tiers: {', '.join(s.tiers) or 'none'})")


@contextmanager
def _local_backup(source: str, s3_endpoint: str | None, *, near: Path,
                  newest: bool = False) -> Iterator[Path]:
    """A backup on disk: ``source`` itself, or a downloaded copy of an S3 one (``newest``:
    ``source`` may hold several; take the newest complete one)."""
    from pacsinfra.dr import s3
    from pacsinfra.dr.rebuild import latest_backup

    remote = s3.parse(source)
    if remote is None:
        yield latest_backup(Path(source)) if newest else Path(source)
        return
    client = s3.client(s3_endpoint)
    if newest:
        remote = s3.latest(remote, client)
    with s3.Staged(remote, client, near) as local:
        yield local


@click.group()
def dr() -> None:
    """Disaster recovery: rebuild a site from its blueprint and a backup."""


@dr.command()
@click.argument("blueprint", type=click.Path(path_type=Path))
@click.option("--site", "overlay", required=True, help="overlay (sites.NAME) of the site to build")
@click.option("--from", "source", required=True, metavar="DIR|s3://BUCKET/PREFIX",
              help="a backup, or a directory / S3 prefix of backups (the newest complete "
                   "one is used)")
@click.option("--state", "state_path", type=click.Path(), help="state file of the rebuilt site")
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--parallelism", type=click.IntRange(1, 256), default=10, show_default=True)
@click.option("--verify/--no-verify", "run_verify", default=True, show_default=True,
              help="run `pacsinfra verify` on the rebuilt site")
@S3_ENDPOINT
def rebuild(blueprint: Path, overlay: str, source: str, state_path: str | None,
            auto_approve: bool, parallelism: int, run_verify: bool,
            s3_endpoint: str | None) -> None:
    """Restore the archives from a backup, build the site, count every study, verify."""
    with _local_backup(source, s3_endpoint, near=blueprint.resolve().parent,
                       newest=True) as backup_dir:
        _rebuild(blueprint, overlay, backup_dir, state_path, auto_approve, parallelism)
    if run_verify:
        from pacsinfra.cli.verify_cmds import verify

        click.get_current_context().invoke(verify, blueprint=blueprint, overlay=overlay,
                                           state_path=Path(state_path) if state_path else None)


def _rebuild(blueprint: Path, overlay: str, backup_dir: Path, state_path: str | None,
             auto_approve: bool, parallelism: int) -> None:
    from pacsinfra.apply.events import make_sink
    from pacsinfra.cli.engine_cmds import _confirm, _engine, _load, _print_warnings, _run_apply
    from pacsinfra.dr import rebuild as rb
    from pacsinfra.plan.render import render_plan
    from pacsinfra.verify.site import service_peer

    contents = rb.read_contents(backup_dir)
    click.echo(f"backup {backup_dir}: {contents.studies} studies, "
               f"{sum(contents.instances_per_study.values())} instances")
    bp = _load(str(blueprint), overlay, (), ())
    _print_warnings(bp)
    with _engine(bp, state_path, 60.0, make_sink(json_mode=False)) as engine:
        plan = engine.plan()
        targets = rb.restore_targets(plan)
        for address, config in targets:  # refuse before anything is restored or built
            rb.check_fits(address, config, contents)
        click.echo(render_plan(plan))
        _confirm(f"Restore the backup into {len(targets)} archive(s) and build site "
                 f"{plan.name!r}?", auto_approve)
        checks = rb.restore_all(targets, contents, click.echo)
        _run_apply(engine, plan, parallelism=parallelism, allow_replace=False, json_mode=False)
    for check, (_, config) in zip(checks, targets, strict=True):
        rb.compare(check, contents, rb.count_studies(service_peer(config)))
        click.echo(f"{check.address}: {check.studies_found}/{contents.studies} studies of the "
                   "backup found by C-FIND"
                   + (f"; missing {len(check.missing)}" if check.missing else "")
                   + (f"; {len(check.short)} with fewer instances" if check.short else ""))
    if not all(c.ok for c in checks):
        raise rb.RebuildError("the rebuilt site does not hold every study of the backup")
