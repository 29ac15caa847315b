"""``pacsinfra backup`` / ``pacsinfra restore``: archive backups (see docs/dr.md)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the dr modules load only when a command runs
    from pacsinfra.dr.rebuild import ArchiveCheck, BackupContents, RestoreTarget

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
    from pacsinfra.fsutil import private_umask
    from pacsinfra.pacs.archive.config import ArchiveConfig

    if config is None and data is None:
        raise UsageError("give --archive-config FILE or --data DIR")
    private_umask()  # the backup holds patient data: nothing in it readable by others
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
@click.option("--json", "as_json", is_flag=True, help="print what was restored as JSON")
@S3_ENDPOINT
def restore(source: str, target: Path, as_json: bool, s3_endpoint: str | None) -> None:
    """Restore a backup into an empty archive data directory, verifying every checksum."""
    from dataclasses import asdict

    from pacsinfra.dr.restore import run_restore
    from pacsinfra.fsutil import private_umask

    private_umask()  # the restored archive holds patient data
    from pacsinfra.dr.source import BackupSource, local_copy

    where = BackupSource(source, "--from", s3_endpoint)
    with local_copy(where, near=target.resolve().parent, newest=False) as local:
        s = run_restore(local, target)
    if as_json:
        click.echo(json.dumps(asdict(s)))
    else:
        click.echo(f"restored {s.studies} studies, {s.instances} instances, {s.bytes} bytes "
                   f"into {s.target} (tiers: {', '.join(s.tiers) or 'none'})")


@click.group()
def dr() -> None:
    """Disaster recovery: rebuild a site from its blueprint and a backup."""


@dr.command()
@click.argument("blueprint", type=click.Path(path_type=Path))
@click.option("--site", "overlay", help="overlay (sites.NAME) of the site to build "
              "(default: the blueprint's own site)")
@click.option("--from", "source", metavar="DIR|s3://BUCKET/PREFIX",
              help="a backup, or a directory / S3 prefix of backups (the newest complete "
                   "one is used); default: the blueprint's dr.backups")
@click.option("--state", "state_path", type=click.Path(), help="state file of the rebuilt site")
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--parallelism", type=click.IntRange(1, 256), default=None,
              help="steps at once (default: deploy.parallelism, else 10)")
@click.option("--verify/--no-verify", "run_verify", default=True, show_default=True,
              help="run `pacsinfra verify` on the rebuilt site")
@click.option("--receiver-bind", metavar="ADDRESS",
              help="verify: where its C-MOVE receiver listens, when that is not the address "
                   "the archives send to (NAT, e.g. QEMU user-mode networking)")
@S3_ENDPOINT
def rebuild(blueprint: Path, overlay: str | None, source: str | None, state_path: str | None,
            auto_approve: bool, parallelism: int | None, run_verify: bool,
            receiver_bind: str | None, s3_endpoint: str | None) -> None:
    """Restore the archives from a backup, build the site, count every study, verify."""
    from pacsinfra.cli.engine_cmds import _load, _print_warnings
    from pacsinfra.dr.source import choose, local_copy

    bp = _load(str(blueprint), overlay, (), ())
    _print_warnings(bp)
    # --s3-endpoint typed on the command line beats the blueprint; AWS_ENDPOINT_URL does not
    ctx = click.get_current_context()
    typed = ctx.get_parameter_source("s3_endpoint") is click.core.ParameterSource.COMMANDLINE
    where = choose(source, s3_endpoint if typed else None, None if typed else s3_endpoint,
                   bp.site.dr)
    with local_copy(where, near=blueprint.resolve().parent, newest=True) as backup_dir:
        _rebuild(bp, backup_dir, state_path, auto_approve, parallelism)
    if run_verify:
        from pacsinfra.cli.verify_cmds import verify

        ctx.invoke(verify, blueprint=blueprint, overlay=overlay,
                   state_path=Path(state_path) if state_path else None,
                   receiver_bind=receiver_bind)


def _rebuild(bp: Any, backup_dir: Path, state_path: str | None, auto_approve: bool,
             parallelism: int | None) -> None:
    from pacsinfra.apply.events import make_sink
    from pacsinfra.cli.engine_cmds import _confirm, _engine, _run_apply
    from pacsinfra.dr import rebuild as rb
    from pacsinfra.errors import UsageError
    from pacsinfra.plan.render import render_plan
    from pacsinfra.verify.site import service_peer

    contents = rb.read_contents(backup_dir)
    click.echo(f"backup {backup_dir}: {contents.studies} studies, "
               f"{sum(contents.instances_per_study.values())} instances")
    with _engine(bp, state_path, 60.0, make_sink(json_mode=False)) as engine:
        plan = engine.plan()
        targets = rb.restore_targets(plan)
        for target in targets:  # refuse before anything is restored or built
            rb.check_fits(target, contents)
        services = engine.driver.services
        if services is None:
            raise UsageError(f"dr rebuild restores the archives where they run, and the "
                             f"{plan.driver} machines of this site cannot run services: set "
                             "deploy (user, key_file, known_hosts or host_keys)")
        remote = services.remote
        if remote:
            from pacsinfra.dr import remote as rmt

            for target in targets:
                if rmt.existing_host(engine.driver, target.machine_name):
                    rmt.ensure_free(rmt.host_session(engine.driver, target.machine_name),
                                    target.address, rb.check_fits(target, contents))
        click.echo(render_plan(plan))
        _confirm(f"Restore the backup into {len(targets)} archive(s) and build site "
                 f"{plan.name!r}?", auto_approve)

        def apply(p: Any) -> None:
            _run_apply(engine, p, parallelism=parallelism, allow_replace=False,
                       json_mode=False)

        if remote:
            checks = _restore_remote(engine, targets, contents, apply)
        else:
            checks = rb.restore_all(targets, contents, click.echo)
            apply(plan)
    for check, target in zip(checks, targets, strict=True):
        rb.compare(check, contents, rb.count_studies(service_peer(target.config, target.host)))
        click.echo(f"{check.address}: {check.studies_found}/{contents.studies} studies of the "
                   "backup found by C-FIND"
                   + (f"; missing {len(check.missing)}" if check.missing else "")
                   + (f"; {len(check.short)} with fewer instances" if check.short else ""))
    if not all(c.ok for c in checks):
        raise rb.RebuildError("the rebuilt site does not hold every study of the backup")


def _restore_remote(engine: Any, targets: list[RestoreTarget], contents: BackupContents,
                    apply: Callable[[Any], None]) -> list[ArchiveCheck]:
    """Archives on hosts: their machines first (venv with pacsinfra on each host), the
    backup restored on each archive's host, then everything else (the services)."""
    from pacsinfra.dr import rebuild as rb
    from pacsinfra.dr import remote as rmt

    machines = engine.plan(targets=sorted({t.machine for t in targets}))
    if machines.has_changes:
        apply(machines)
    else:  # an earlier rebuild built them and stopped (a failed restore): carry on
        click.echo("the archives' machines exist already")
    checks = [rb.ArchiveCheck(t.address, rb.check_fits(t, contents)) for t in targets]
    near = Path(engine.blueprint.path).resolve().parent  # writable: the state is there too
    sessions = [rmt.host_session(engine.driver, t.machine_name, with_pacsinfra=True)
                for t in targets]
    with tempfile.TemporaryDirectory(prefix=".pacsinfra-dr-pack-", dir=near) as tmp:
        packed = rmt.pack(contents.path, Path(tmp))
        restored = rmt.restore_all_hosts(
            [(s, c.data_dir) for s, c in zip(sessions, checks, strict=True)], packed, click.echo)
    for check, session, summary in zip(checks, sessions, restored, strict=True):
        check.restored = summary
        click.echo(f"restored {summary.studies} studies, {summary.instances} instances into "
                   f"{check.address} on {session.name} at {check.data_dir}")
    rest = engine.plan()
    rb.restore_targets(rest)  # still every archive to create (nothing ran in between)
    apply(rest)
    return checks
