"""``pacsinfra router ...``: run the DICOM router, explain its rules, manage its queue."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from pacsinfra.errors import PacsinfraError, UsageError


def load_config(path: Path) -> Any:
    """Read and validate a router.yaml (bad input: UsageError, exit 2, every problem listed)."""
    from pacsinfra.pacs.router.config import RouterConfig
    from pacsinfra.pacs.router.rules import validate_rules

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    try:
        cfg = RouterConfig.model_validate(loaded)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(x) for x in e['loc']) or '<top>'}: {e['msg']}"
                 for e in exc.errors()]
        raise UsageError(f"{path}: invalid router configuration:\n" + "\n".join(lines)) from exc
    problems = validate_rules(cfg.rules)
    if problems:
        raise UsageError(f"{path}: invalid router rules:\n" + "\n".join(f"  {p}" for p in problems))
    return cfg


@click.group()
def router() -> None:
    """The DICOM router (receive, match rules, queue durably, forward)."""


@router.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--log-level", default="INFO", show_default=True)
def serve(config: Path, log_level: str) -> None:
    """Run the router until SIGTERM."""
    from pacsinfra.fsutil import private_umask
    from pacsinfra.pacs.router.server import RouterServer

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    cfg = load_config(config)
    private_umask()  # spool, queue, audit log: patient data, never readable by others
    server = _checked(f"cannot open the spool {cfg.spool_dir} or the queue",
                      lambda: RouterServer(cfg))
    try:
        server.serve_forever()
    except OSError as exc:  # the port is taken, the certificate is unreadable, ...
        raise PacsinfraError(f"cannot listen on {cfg.bind}:{cfg.port}: {exc}") from exc


def _checked(what: str, fn: Any) -> Any:
    """Run ``fn``; an OS or database error becomes a one-line message (exit 1)."""
    try:
        return fn()
    except PacsinfraError:
        raise
    except Exception as exc:  # noqa: BLE001 - sqlite3/psycopg/OS errors: say what, no traceback
        raise PacsinfraError(f"{what}: {type(exc).__name__}: {exc}") from exc


@router.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--calling-ae", default="", help="calling AE title to assume")
@click.option("--called-ae", default="", help="called AE title to assume (default: the router's)")
@click.option("--study", "study_uid", help="say why this held study is or is not complete "
              "(reads the running router's queue)")
@click.argument("file", type=click.Path(path_type=Path), required=False)
def explain(config: Path, calling_ae: str, called_ae: str, study_uid: str | None,
            file: Path | None) -> None:
    """Show which rules match FILE and why, and where it would go; or (--study) whether
    a study the rules hold is complete, and what happens to it next."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from pacsinfra.pacs.router.rules import Subject, route

    if (file is None) == (study_uid is None):
        raise UsageError("give a FILE to route, or --study UID (not both)")
    cfg = load_config(config)
    if study_uid is not None:
        from pacsinfra.pacs.router.completion import Completer

        _, q = _open(config)
        try:
            for line in Completer(cfg, q).explain(study_uid):
                click.echo(line)
        finally:
            q.close()
        return
    assert file is not None
    try:
        ds = dcmread(file, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as exc:
        raise UsageError(f"cannot read {file} as DICOM: {exc}") from exc
    decision = route(cfg.rules, Subject(ds, calling_ae, called_ae or cfg.ae_title))
    for t in decision.trace:
        state = "MATCH" if t.verdict.matched else ("skipped" if not t.evaluated else "no match")
        click.echo(f"rule {t.rule.name!r}: {state}")
        if t.evaluated:
            for line in t.verdict.lines(1):
                click.echo(line)
        if t.verdict.matched:
            acts = []
            if t.rule.drop:
                acts.append("drop")
            if t.rule.edits:
                acts.append("edits: " + ", ".join(
                    f"{e.op} {e.tag}" + (f"={e.value}" if e.value is not None else "")
                    + (f" from {e.source}" if e.source else "") for e in t.rule.edits))
            if t.rule.forward:
                acts.append("forward to " + ", ".join(t.rule.forward))
            if t.rule.per_study:
                acts.append("once the study is stable")
            if t.rule.complete is not None:
                c = t.rule.complete
                acts.append(f"once the {c.level} is complete (quiet {c.quiet_seconds:g} s"
                            + (f", series {', '.join(c.expect_series)}" if c.expect_series
                               else "")
                            + f"; after {c.timeout_seconds:g} s: {c.when_incomplete})")
            if t.rule.stop:
                acts.append("stop")
            click.echo("  actions: " + ("; ".join(acts) or "none"))
    if decision.dropped_by:
        click.echo(f"result: dropped by rule {decision.dropped_by!r}")
    elif not decision.deliveries:
        click.echo("result: not forwarded (no matching rule forwards it)")
    else:
        for d in decision.deliveries:
            edits = ", ".join(f"{e.op} {e.tag}" for e in d.edits) or "as received"
            click.echo(f"result: forward to {d.target} ({edits}; rule {d.rule!r}"
                       f"{'; per study' if d.per_study else ''})")


@router.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def check(config: Path, as_json: bool) -> None:
    """C-ECHO every destination from here; exit 1 when one does not answer Success."""
    from pacsinfra.pacs.router.check import check_destinations

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    cfg = load_config(config)
    results = check_destinations(cfg)
    if as_json:
        click.echo(json.dumps({"destinations": [r.as_dict() for r in results]}))
    else:
        for r in results:
            mark = "ok  " if r.ok else "FAIL"
            click.echo(f"{mark} {r.name}: {r.ae_title}@{r.host}:{r.port} "
                       f"({r.seconds * 1000:.0f} ms){'' if r.ok else ': ' + r.problem}")
        if not results:
            click.echo("no destinations configured")
    bad = [r.name for r in results if not r.ok]
    if bad:
        raise PacsinfraError(f"{len(bad)} of {len(results)} destination(s) unreachable: "
                             f"{', '.join(bad)}")


@router.group()
def queue() -> None:
    """Inspect and manage the forwarding queue."""


def _open(config: Path) -> Any:
    from pacsinfra.pacs.router.server import open_queue

    cfg = load_config(config)
    return cfg, _checked("cannot open the queue", lambda: open_queue(cfg))


@queue.command("list")
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--state", type=click.Choice(["held", "pending", "inflight", "committing", "done", "dead"]))
@click.option("--dest", help="destination or group")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1),
              help="rows to show (the total is always counted)")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object: total, shown, truncated and the rows")
def queue_list(config: Path, state: str | None, dest: str | None, limit: int,
               as_json: bool) -> None:
    """Summary per destination, then rows (oldest first), at most --limit of them."""
    _, q = _open(config)
    try:
        now = time.time()
        items = q.rows(state=state, dest=dest, limit=limit)
        total = q.count(state=state, dest=dest) if len(items) == limit else len(items)
        if as_json:
            rows = []
            for it in items:
                row = dict(it.__dict__)
                row["attempt_log"] = [
                    {"at": a, "status": s, "error": e, "next_at": n}
                    for a, s, e, n in q.attempts_of(it.id)]
                rows.append(row)
            click.echo(json.dumps({"total": total, "shown": len(rows), "limit": limit,
                                   "truncated": total > len(rows), "rows": rows}))
            return
        for d, s in sorted(q.stats(now).items()):
            counts = " ".join(f"{k}={int(v)}" for k, v in sorted(s.items()) if k != "oldest_age")
            click.echo(f"{d}: {counts} oldest_active_age={s['oldest_age']:.1f}s")
        for it in items:
            status = "" if it.last_status is None else f" status=0x{it.last_status:04X}"
            wait = max(0.0, it.next_at - now) if it.state == "pending" else 0.0
            click.echo(f"{it.id:>8} {it.state:<8} {it.dest:<16} {it.node or '-':<12} "
                       f"attempts={it.attempts} next_in={wait:.1f}s{status} {it.sop_uid}"
                       + (f"  {it.last_error}" if it.last_error else ""))
        if total > len(items):
            click.echo(f"(showing the oldest {len(items)} of {total} rows; --limit N for more)")
    finally:
        q.close()


@queue.command("retry")
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--dest", help="only this destination or group")
@click.argument("ids", nargs=-1, type=int)
def queue_retry(config: Path, dest: str | None, ids: tuple[int, ...]) -> None:
    """Put dead-lettered rows (all, or IDS) back in the queue with attempts reset."""
    _, q = _open(config)
    try:
        n = q.retry(ids=ids, dest=dest)
    finally:
        q.close()
    click.echo(f"{n} row(s) re-queued")


@queue.command("purge")
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--state", type=click.Choice(["dead", "done"]), default="dead", show_default=True)
@click.option("--dest", help="only this destination or group")
@click.argument("ids", nargs=-1, type=int)
def queue_purge(config: Path, state: str, dest: str | None, ids: tuple[int, ...]) -> None:
    """Delete dead-lettered (or delivered) rows and the spool files nobody needs any more."""
    from pacsinfra.pacs.router.spool import Spool

    cfg, q = _open(config)
    try:
        n, orphans = q.purge(state=state, ids=ids, dest=dest)
    finally:
        q.close()
    spool = Spool(Path(cfg.spool_dir))
    for rel in orphans:
        spool.remove(rel)
    click.echo(f"{n} row(s) purged, {len(orphans)} spool file(s) removed")
