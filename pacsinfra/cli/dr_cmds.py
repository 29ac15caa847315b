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
