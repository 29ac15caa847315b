"""``pacsinfra archive cluster ...``: the nodes of a clustered archive, from its index."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pacsinfra.errors import PacsinfraError, UsageError


@click.group()
def cluster() -> None:
    """Several archive nodes on one index and one store."""


@cluster.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path),
              help="archive.yaml of any node")
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
def status(config: Path, as_json: bool) -> None:
    """Nodes, their last heartbeat, and the leader; exit 1 when a node known to the
    cluster has stopped beating or no node leads."""
    from pacsinfra.cli.archive_config import load_config
    from pacsinfra.pacs.archive import cluster as cl
    from pacsinfra.pacs.archive.config import ArchiveConfig
    from pacsinfra.pacs.archive.db import open_database

    cfg = load_config(config, None, None, None, (), None)
    assert isinstance(cfg, ArchiveConfig)
    if not cfg.cluster.enabled:
        raise UsageError(f"{config}: cluster.enabled is not set: this archive is not a cluster "
                         "node")
    try:
        db = open_database(cfg.index, Path(cfg.data_dir))
    except OSError as exc:
        raise PacsinfraError(f"cannot open the cluster's index: {exc}") from exc
    try:
        now, nodes, leases = cl.status(db)
        queued = cl.queues(db)
    finally:
        db.close()
    report = cl.describe(now, nodes, leases, cfg.cluster.heartbeat_seconds, queued)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"{'node':<24} {'address':<24} {'version':<10} {'heartbeat':>10} "
                   f"{'up':>8} {'stored':>8} {'to upload':>9}  role")
        for n in report["nodes"]:
            role = "leader" if n["leader"] else ("" if n["alive"] else "NOT BEATING")
            click.echo(f"{n['node']:<24} {n['address'] or '-':<24} {n['version'] or '-':<10} "
                       f"{n['heartbeat_age_s']:>9.1f}s {n['up_s']:>7.0f}s "
                       f"{n['stored_since_start']:>8} {n['not_uploaded']:>9}  {role}")
        click.echo(f"leader: {report['leader'] or 'none (the lease is free or expired)'}")
    if not report["leader"] or not all(n["alive"] for n in report["nodes"]):
        raise SystemExit(1)
