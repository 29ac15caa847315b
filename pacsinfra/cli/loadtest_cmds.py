"""``pacsinfra loadtest BLUEPRINT``: C-STORE load against an applied site's entry AE.

The entry is found from the site's state the way ``pacsinfra verify`` finds it
(:mod:`pacsinfra.verify.site`): the router when the site has one, else the archive.
Studies come from :mod:`pacsinfra.verify.load` (representative CT/MR/CR/tomo sizes,
fresh UIDs per study). Exit 0 when every instance was stored, 1 when any error was
counted, 2 for bad input (an unapplied site, an unknown profile).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

MIX = ("ct", "mr", "cr", "tomo")


def _render(report: Any, entry_address: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"loadtest through {entry_address} ({report.target})")
    for col in ("profile", "conc", "studies", "instances", "inst/s", "MB/s",
                "p50 ms", "p95 ms", "p99 ms", "errors"):
        t.add_column(col, justify="left" if col == "profile" else "right")
    t.add_row("+".join(report.profiles), str(report.concurrency), str(report.studies),
              str(report.instances), f"{report.instances_per_s:.1f}", f"{report.mb_per_s:.1f}",
              f"{report.percentile(50) * 1e3:.1f}", f"{report.percentile(95) * 1e3:.1f}",
              f"{report.percentile(99) * 1e3:.1f}", str(report.errors))
    console = Console()
    if not console.is_terminal:  # piped/logged: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(t)
    for sample in report.error_samples:
        console.print(f"error: {sample}", markup=False)


@click.command()
@click.argument("blueprint", type=click.Path(path_type=Path))
@click.option("--site", "overlay", help="overlay (sites.NAME) the site was applied with")
@click.option("--state", "state_path", type=click.Path(path_type=Path), help="state file")
@click.option("--studies", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1, max=256), default=4, show_default=True)
@click.option("--profile", type=click.Choice([*MIX, "mix"]), default="ct", show_default=True,
              help="study shape; mix cycles through ct, mr, cr, tomo")
@click.option("--scale", type=click.FloatRange(min=0.01, max=1.0), default=1.0, show_default=True,
              help="shrink images (1.0: full representative size)")
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
def loadtest(blueprint: Path, overlay: str | None, state_path: Path | None, studies: int,
             concurrency: int, profile: str, scale: float, as_json: bool) -> None:
    """Send N representative studies at a concurrency to an applied site; report throughput."""
    from pacsinfra.verify.load import run_load
    from pacsinfra.verify.site import deployed_services, entry_endpoint

    _, services = deployed_services(blueprint, overlay, state_path,
                                 fallback="python -m pacsinfra.verify load --target AE@host:port")
    entry_address, entry = entry_endpoint(services)
    profiles = list(MIX) if profile == "mix" else [profile]
    report = run_load(entry, profiles=profiles, concurrency=concurrency, studies=studies,
                      scale=scale, calling_ae="PXLOAD")
    if as_json:
        out = report.to_dict()
        out["entry"] = entry_address
        click.echo(json.dumps(out, indent=2))
    else:
        _render(report, entry_address)
    if report.errors:
        raise click.exceptions.Exit(1)
