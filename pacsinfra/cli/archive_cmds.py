"""``pacsinfra archive ...``: run the embedded PACS archive."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from pacsinfra.cli.archive_cluster import cluster
from pacsinfra.cli.archive_config import load_config
from pacsinfra.cli.archive_rejections import rejections
from pacsinfra.cli.archive_worklist import worklist
from pacsinfra.errors import PacsinfraError, UsageError

__all__ = ["archive", "load_config"]


@click.group()
def archive() -> None:
    """The embedded PACS archive (storage SCP, query/retrieve, DICOMweb)."""


@archive.command()
@click.option("--config", "config", type=click.Path(path_type=Path), help="archive.yaml")
@click.option("--aet", help="AE title (quick form)")
@click.option("--port", type=int, help="DICOM port (quick form)")
@click.option("--bind", help="listen address")
@click.option("--data", type=click.Path(path_type=Path), help="data directory (quick form)")
@click.option("--peer", "peers", multiple=True, help="C-MOVE destination AET=host:port")
@click.option("--log-level", default="INFO", show_default=True)
def serve(
    config: Path | None, aet: str | None, port: int | None, bind: str | None,
    data: Path | None, peers: tuple[str, ...], log_level: str,
) -> None:
    """Run the archive until SIGTERM."""
    from pacsinfra.fsutil import private_umask
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.archive.server import ArchiveServer

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    cfg = load_config(config, aet, port, data, peers, bind)
    assert isinstance(cfg, ArchiveConfig)
    private_umask()  # index, files, logs: patient data, never readable by others
    try:
        ArchiveServer(cfg).serve_forever()
    except OSError as exc:  # port taken, data dir not writable, certificate unreadable, ...
        raise PacsinfraError(f"cannot run the archive: {exc}") from exc


@archive.command()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
def lifecycle(config: Path) -> None:
    """Run one storage lifecycle pass (move studies between tiers) and exit."""
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.archive.db import open_database
    from pacsinfra.pacs.archive.index import Index
    from pacsinfra.pacs.archive.lifecycle import run_lifecycle
    from pacsinfra.pacs.archive.objects import archive_tiers

    cfg = load_config(config, None, None, None, (), None)
    assert isinstance(cfg, ArchiveConfig)
    data = Path(cfg.data_dir)
    tiers = archive_tiers(cfg, data)
    index = Index(open_database(cfg.index, data))
    audit = _audit(cfg)
    try:
        report = run_lifecycle(cfg, index, tiers, audit=audit)
    finally:
        index.close()
        if audit is not None:
            audit.close()
    if cfg.retention_days is not None:
        click.echo(f"retention ({cfg.retention_days} days): deleted "
                   f"{len(report.deleted_studies)} studies ({report.deleted_instances} instances)")
    click.echo(f"moved {len(report.moved_studies)} studies ({report.moved_instances} instances)")
    for study, reason in report.failed_studies.items():
        click.echo(f"not moved: {study}: {reason}", err=True)


def _audit(cfg: object) -> Any:
    """The configured audit log, or None."""
    from pacsinfra.pacs.archive.audit import AuditLog
    from pacsinfra.pacs.archive.config import ArchiveConfig

    assert isinstance(cfg, ArchiveConfig)
    if cfg.audit.file or cfg.audit.syslog:
        return AuditLog(cfg.audit, cfg.ae_title)
    return None


@archive.command()
@click.option("--config", "config", type=click.Path(path_type=Path), help="archive.yaml")
@click.option("--data", type=click.Path(path_type=Path), help="data directory (quick form)")
@click.option("--series", "series_uid", help="delete only this series of the study")
@click.argument("study_uid")
def delete(config: Path | None, data: Path | None, series_uid: str | None,
           study_uid: str) -> None:
    """Delete a study (index rows first, then its files) and exit; 1 if it is not stored."""
    from pacsinfra.pacs.archive.audit import AuditLog
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.archive.db import open_database
    from pacsinfra.pacs.archive.delete import delete_study
    from pacsinfra.pacs.archive.index import Index
    from pacsinfra.pacs.archive.objects import archive_tiers
    from pacsinfra.pacs.dicom import valid_uid

    for uid in (study_uid, series_uid):
        if uid is not None and not valid_uid(uid):
            raise UsageError(f"{uid!r} is not a valid DICOM UID")
    cfg = load_config(config, None, None, data, (), None)
    assert isinstance(cfg, ArchiveConfig)
    data_dir = Path(cfg.data_dir)
    tiers = archive_tiers(cfg, data_dir)
    try:
        index = Index(open_database(cfg.index, data_dir))
    except OSError as exc:
        raise PacsinfraError(f"cannot open the archive index in {data_dir}: {exc}") from exc
    audit = _audit(cfg)
    try:
        report = delete_study(index, tiers, study_uid, series_uid=series_uid)
        if report is not None and isinstance(audit, AuditLog):
            audit.study_deleted("pacsinfra archive delete", study_uid, report.instances)
    finally:
        index.close()
        if isinstance(audit, AuditLog):
            audit.close()
    what = f"series {series_uid} of study {study_uid}" if series_uid else f"study {study_uid}"
    if report is None:
        raise PacsinfraError(f"{what} is not in the archive")
    click.echo(f"deleted {what}: {report.instances} instances, "
               f"{report.files_removed} files removed")
    for rel in report.files_kept:
        click.echo(f"file not removed yet (the next lifecycle pass retries): {rel}", err=True)


@archive.command()
@click.option("--config", "config", type=click.Path(path_type=Path), help="archive.yaml")
@click.option("--data", type=click.Path(path_type=Path), help="data directory (quick form)")
@click.option("--verify", is_flag=True, help="also recompute every file's SHA-256")
@click.option("--remove-orphans", is_flag=True,
              help="delete files no index row points at (the archive must be stopped)")
@click.option("--min-age", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="seconds: unindexed files younger than this are never orphans")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
def check(config: Path | None, data: Path | None, verify: bool, remove_orphans: bool,
          min_age: float, as_json: bool) -> None:
    """Compare the index with the files on every tier; exit 1 if an indexed file is
    missing, has the wrong size or (--verify) checksum, or an orphan is left."""
    import json

    from pacsinfra.pacs.archive.check import check_archive
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.archive.datalock import ArchiveRunning, exclusive
    from pacsinfra.pacs.archive.db import open_database
    from pacsinfra.pacs.archive.index import Index
    from pacsinfra.pacs.archive.objects import archive_tiers

    cfg = load_config(config, None, None, data, (), None)
    assert isinstance(cfg, ArchiveConfig)
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"{data_dir}: no such data directory")
    tiers = archive_tiers(cfg, data_dir)
    try:
        index = Index(open_database(cfg.index, data_dir))
    except OSError as exc:
        raise PacsinfraError(f"cannot open the archive index in {data_dir}: {exc}") from exc
    try:
        if remove_orphans:
            try:
                with exclusive(data_dir):
                    report = check_archive(index, tiers, verify=verify, remove_orphans=True,
                                           min_age=min_age)
            except ArchiveRunning as exc:
                raise PacsinfraError(
                    f"an archive is serving from {data_dir} (it holds "
                    f"{data_dir}/archive.lock): stop it before --remove-orphans, or check "
                    "without it") from exc
        else:
            report = check_archive(index, tiers, verify=verify, min_age=min_age)
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_check(report)
    if not report.clean:
        raise SystemExit(1)


def _print_check(report: object) -> None:
    from pacsinfra.pacs.archive.check import CheckReport

    assert isinstance(report, CheckReport)
    click.echo(f"{report.instances} indexed instances, {report.files} files"
               + (f", {report.verified} checksums verified" if report.verified else ""))
    for title, problems in (("missing", report.missing), ("wrong size", report.wrong_size),
                            ("bad checksum", report.bad_checksum),
                            ("flagged by a retrieve", report.flagged),
                            ("orphan", report.orphans)):
        for p in problems:
            who = f" ({p.sop_uid})" if p.sop_uid else ""
            click.echo(f"{title}: {p.tier}:{p.rel_path}{who}: {p.detail}", err=True)
    if report.young:
        click.echo(f"{len(report.young)} unindexed files younger than --min-age (a store may "
                   "still be in flight): left alone")
    if report.pending:
        click.echo(f"{report.pending} files of interrupted deletions: the next start removes them")
    for node, n in sorted(report.elsewhere.items()):
        click.echo(f"{n} instances not uploaded yet, in node {node}'s receive cache "
                   "(start that node, or one rebuilt with its name and cache, to upload them)")
    if report.removed:
        click.echo(f"removed {report.removed} orphans")
    click.echo("clean" if report.clean else "problems found")


archive.add_command(rejections)
archive.add_command(cluster)
archive.add_command(worklist)
