"""``pacsinfra backup`` / ``pacsinfra restore``: archive backups (see docs/dr.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("--archive-config", "config", type=click.Path(path_type=Path),
              help="the archive's config file (ArchiveConfig)")
@click.option("--data", type=click.Path(path_type=Path), help="data directory (quick-form archive)")
@click.option("--to", "to", required=True, type=click.Path(path_type=Path),
              help="new directory for the backup (must not exist)")
@click.option("--copy", "force_copy", is_flag=True,
              help="always copy files (default: hard-link when on the same filesystem)")
@click.option("--json", "as_json", is_flag=True, help="print backup.json")
def backup(config: Path | None, data: Path | None, to: Path, force_copy: bool,
           as_json: bool) -> None:
    """Back up a running archive: index snapshot, verified files, manifest."""
    from pacsinfra.cli.archive_cmds import load_config
    from pacsinfra.dr.backup import run_backup
    from pacsinfra.errors import UsageError
    from pacsinfra.pacs.archive.config import ArchiveConfig

    if config is None and data is None:
        raise UsageError("give --archive-config FILE or --data DIR")
    cfg = load_config(config, None, None, data, (), None)
    assert isinstance(cfg, ArchiveConfig)
    s = run_backup(cfg, to, allow_link=not force_copy)
    if as_json:
        click.echo(json.dumps(s.to_dict(), indent=2))
    else:
        click.echo(f"backup {s.path}: {s.studies} studies, {s.instances} instances, "
                   f"{s.bytes} bytes ({s.linked} linked, {s.copied} copied) "
                   f"in {s.finished_at - s.started_at:.1f}s")


@click.command()
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="a backup directory made by pacsinfra backup")
@click.option("--data", "target", required=True, type=click.Path(path_type=Path),
              help="new or empty archive data directory")
def restore(source: Path, target: Path) -> None:
    """Restore a backup into an empty archive data directory, verifying every checksum."""
    from pacsinfra.dr.restore import run_restore

    s = run_restore(source, target)
    click.echo(f"restored {s.studies} studies, {s.instances} instances, {s.bytes} bytes "
               f"into {s.target} (tiers: {', '.join(s.tiers) or 'none'})")


@click.group()
def dr() -> None:
    """Disaster recovery: rebuild a site from its blueprint and a backup."""


@dr.command()
@click.argument("blueprint", type=click.Path(path_type=Path))
@click.option("--site", "overlay", required=True, help="overlay (sites.NAME) of the site to build")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="a backup, or a directory of backups (the newest complete one is used)")
@click.option("--state", "state_path", type=click.Path(), help="state file of the rebuilt site")
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--parallelism", type=click.IntRange(1, 256), default=10, show_default=True)
@click.option("--verify/--no-verify", "run_verify", default=True, show_default=True,
              help="run `pacsinfra verify` on the rebuilt site")
def rebuild(blueprint: Path, overlay: str, source: Path, state_path: str | None,
            auto_approve: bool, parallelism: int, run_verify: bool) -> None:
    """Restore the archives from a backup, build the site, count every study, verify."""
    from pacsinfra.apply.events import make_sink
    from pacsinfra.cli.engine_cmds import _confirm, _engine, _load, _print_warnings, _run_apply
    from pacsinfra.dr import rebuild as rb
    from pacsinfra.pacs.config_common import Peer
    from pacsinfra.plan.render import render_plan

    backup_dir = rb.latest_backup(source)
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
        bind = str(config.get("bind") or "")
        peer = Peer(ae_title=str(config["ae_title"]), port=int(config["port"]),
                    host=bind if bind not in ("", "0.0.0.0", "::") else "127.0.0.1")
        rb.compare(check, contents, rb.count_studies(peer))
        click.echo(f"{check.address}: {check.studies_found}/{contents.studies} studies of the "
                   "backup found by C-FIND"
                   + (f"; missing {len(check.missing)}" if check.missing else "")
                   + (f"; {len(check.short)} with fewer instances" if check.short else ""))
    if not all(c.ok for c in checks):
        raise rb.RebuildError("the rebuilt site does not hold every study of the backup")
    if run_verify:
        from pacsinfra.cli.verify_cmds import verify

        click.get_current_context().invoke(verify, blueprint=blueprint, overlay=overlay,
                                           state_path=Path(state_path) if state_path else None)
