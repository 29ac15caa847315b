"""``pacsinfra archive rejections ...``: list and undo what rejection notes took away."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pacsinfra.cli.archive_config import opened_index
from pacsinfra.errors import PacsinfraError, UsageError


@contextmanager
def _opened(config: Path | None, data: Path | None) -> Iterator[Any]:
    """The archive's rejections (index and tiers of ``config``), closed afterwards."""
    from pacsinfra.pacs.archive.index import Index
    from pacsinfra.pacs.archive.objects import archive_tiers
    from pacsinfra.pacs.archive.rejection import Rejections

    with opened_index(config, data) as (cfg, db):
        # a store of the same UID by a running archive is serialised by the index: the
        # rejection row goes in the transaction that puts the instance back
        one = threading.Lock()
        yield Rejections(Index(db), archive_tiers(cfg, Path(cfg.data_dir)), lambda uid: one)


@click.group()
def rejections() -> None:
    """Instances taken away by rejection notes (IHE IOCM Key Object Selection documents)."""


_CONFIG = click.option("--config", "config", type=click.Path(path_type=Path),
                       help="archive.yaml")
_DATA = click.option("--data", type=click.Path(path_type=Path),
                     help="data directory (quick form)")


@rejections.command("list")
@_CONFIG
@_DATA
@click.option("--json", "as_json", is_flag=True, help="one JSON object per rejected instance")
def list_(config: Path | None, data: Path | None, as_json: bool) -> None:
    """Every rejected instance: the note, its code, and whether its file is kept."""
    from pacsinfra.pacs.archive.rejection import TITLES

    with _opened(config, data) as rej:
        rows = rej.listing()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows]))
        return
    note = None
    for r in rows:
        if r.note_uid != note:
            note = r.note_uid
            when = datetime.fromtimestamp(r.rejected_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            click.echo(f"note {r.note_uid}  {r.code} {TITLES.get(r.code, '')}  {when}")
        kept = (f"file kept: {r.tier}:{r.rel_path}" if r.rel_path else
                "deleted" if r.code == "113039" else "not received (refused if it comes)")
        click.echo(f"  {r.sop_uid}  study {r.study_uid}  {kept}")
    click.echo(f"{len(rows)} rejected instance(s)")


@rejections.command()
@_CONFIG
@_DATA
@click.argument("uid")
def restore(config: Path | None, data: Path | None, uid: str) -> None:
    """Undo a rejection: UID is a rejection note (everything it rejected) or one rejected
    instance. Exit 1 if nothing matches or something could not come back."""
    from pacsinfra.pacs.dicom import valid_uid

    if not valid_uid(uid):
        raise UsageError(f"{uid!r} is not a valid DICOM UID")
    with _opened(config, data) as rej:
        back, problems = rej.restore(uid, "pacsinfra archive rejections restore")
    if not back and not problems:
        raise PacsinfraError(f"{uid} is neither a rejection note nor a rejected instance "
                             "(see `pacsinfra archive rejections list`)")
    click.echo(f"{back} instance(s) no longer rejected")
    for p in problems:
        click.echo(f"not restored: {p}", err=True)
    if problems:
        raise SystemExit(1)
