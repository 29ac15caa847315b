"""``pacsinfra validate`` and ``pacsinfra schema``.

``validate`` exits 0 when the blueprint is valid (warnings are printed), 2 when it
is not; every problem is printed at once as ``file:line:col: severity: path:
message (hint)``, or as JSON with ``--format json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import click

from pacsinfra.errors import UsageError


def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--var expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


@click.command()
@click.argument("blueprint", type=click.Path(dir_okay=True, allow_dash=False))
@click.option("--site", "site", default=None, help="Merge the named overlay from sites:.")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE",
              help="Set a variable used as ${var.KEY} (repeatable).")
@click.option("--var-file", "var_files", multiple=True, type=click.Path(),
              help="YAML mapping of variables (repeatable; later files win).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(blueprint: str, site: str | None, variables: tuple[str, ...],
             var_files: tuple[str, ...], fmt: str, strict: bool) -> None:
    """Check BLUEPRINT and report every problem with its file:line:col.

    Without --site, the base and every overlay in sites: are checked.
    """
    from pacsinfra.blueprint.load import validate as run

    loaded, diags = run(blueprint, site=site, variables=parse_vars(variables),
                        var_files=list(var_files), strict=strict, all_sites=site is None)
    errors = [d for d in diags if d.severity == "error"]
    warnings = [d for d in diags if d.severity != "error"]
    if fmt == "json":
        click.echo(json.dumps({
            "valid": not errors,
            "errors": [d.to_dict() for d in errors],
            "warnings": [d.to_dict() for d in warnings],
        }, indent=2))
    else:
        for d in diags:
            click.echo(str(d))
        if errors:
            n = len(errors)
            click.echo(f"{n} error{'s' if n != 1 else ''}, {len(warnings)} warning"
                       f"{'s' if len(warnings) != 1 else ''}: {blueprint} is invalid", err=True)
        else:
            assert loaded is not None
            s = loaded.site
            members = sum(r.count for r in s.machines.values())
            click.echo(
                f"{blueprint}: valid ({s.metadata.name}"
                f"{'/' + site if site else ''}: {len(s.networks)} networks, "
                f"{len(s.storage)} storage classes, {len(s.machines)} roles / {members} machines, "
                f"{len(s.services)} services; {len(warnings)} warning"
                f"{'s' if len(warnings) != 1 else ''})"
            )
    if errors:
        raise click.exceptions.Exit(2)


@click.command()
@click.option("--indent", type=int, default=2, show_default=True)
def schema(indent: int) -> None:
    """Print the JSON Schema of the blueprint language."""
    from pacsinfra.blueprint.schema import blueprint_schema

    click.echo(json.dumps(blueprint_schema(), indent=indent or None))
