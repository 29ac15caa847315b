"""Engine commands: plan, apply, destroy, show, refresh, state, force-unlock, graph.

Parse, call :class:`pacsinfra.apply.engine.Engine`, print, exit. Errors are
raised as :class:`~pacsinfra.errors.PacsinfraError` and turned into messages and
exit codes by :func:`pacsinfra.cli.main`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pacsinfra.errors import ApplyError, StateError, UsageError

# -- shared options --------------------------------------------------------------------------


def _parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--var expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def blueprint_options(f: Any) -> Any:
    """--site, --var, --var-file."""
    f = click.option(
        "--var-file", "var_files", multiple=True, type=click.Path(), help="YAML file of variables."
    )(f)
    f = click.option(
        "--var", "variables", multiple=True, metavar="KEY=VALUE", help="Set a blueprint variable."
    )(f)
    f = click.option("--site", "site", default=None, help="Apply the named site overlay.")(f)
    return f


def _duration(ctx: Any, param: Any, value: Any) -> float:
    """Click callback: ``--lock-timeout 120s`` / ``2m`` / ``30`` as seconds."""
    from pacsinfra.state.location import parse_duration

    return parse_duration(value if value is not None else 0, f"--{param.name.replace('_', '-')}")


STATE_HELP = (
    "Where the state lives: a file path, postgresql://USER@HOST:PORT/DB?schema=S or "
    "s3://BUCKET/PREFIX?endpoint=URL&region=R (default: PACSINFRA_STATE, the blueprint's "
    "state: section, else .pacsinfra/<site>[-<overlay>].state.json next to the blueprint)."
)


def state_option(f: Any) -> Any:
    """--state URL."""
    return click.option("--state", "state_path", metavar="URL", default=None, help=STATE_HELP)(f)


def state_options(f: Any) -> Any:
    """--state, --lock-timeout."""
    f = click.option(
        "--lock-timeout",
        default="0",
        show_default=True,
        metavar="DURATION",
        callback=_duration,
        help="How long to wait for the state lock: 120s, 2m (0: fail at once).",
    )(f)
    return state_option(f)


def _load(path: str, site: str | None, variables: Sequence[str], var_files: Sequence[str]) -> Any:
    from pacsinfra.blueprint import load_blueprint

    if not Path(path).exists():
        raise UsageError(f"blueprint not found: {path}")
    return load_blueprint(
        path, site=site, variables=_parse_vars(variables), var_files=list(var_files)
    )


def _engine(blueprint: Any, state_path: str | None, lock_timeout: float, sink: Any = None) -> Any:
    from pacsinfra.apply.engine import Engine

    return Engine(blueprint, state_path, sink=sink, lock_timeout=lock_timeout)


def _print_warnings(bp: Any) -> None:
    for w in getattr(bp, "warnings", []) or []:
        click.echo(str(w), err=True)


def _interactive() -> bool:
    """Whether someone can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()


def _confirm(question: str, auto_approve: bool) -> None:
    """Ask on a terminal; refuse outright when nobody can answer."""
    if auto_approve:
        return
    if not _interactive():
        raise UsageError(
            "refusing to change infrastructure without confirmation: stdin is not a terminal; pass --auto-approve"
        )
    answer = click.prompt(
        f"{question}\n  Only 'yes' will be accepted", default="", show_default=False
    )
    if answer.strip() != "yes":
        click.echo("Cancelled; nothing was changed.", err=True)
        raise click.exceptions.Exit(1)


def _run_apply(
    engine: Any, plan: Any, *, parallelism: int | None, allow_replace: bool, json_mode: bool
) -> None:
    from pacsinfra.apply.executor import ApplyFailed

    try:
        result = engine.apply(plan, parallelism=parallelism, allow_replace=allow_replace)
    except ApplyFailed as exc:
        failed, skipped = exc.result.by_status("failed"), exc.result.by_status("skipped")
        raise ApplyError(
            f"apply did not complete: {len(failed)} failed, {len(skipped)} skipped (details above); "
            "completed steps are saved in the state, run apply again once the cause is fixed"
        ) from None
    if not result.results and not json_mode:
        click.echo("Nothing to do.")


# -- plan ----------------------------------------------------------------------------------------


@click.command()
@click.argument("blueprint", type=click.Path())
@blueprint_options
@state_options
@click.option(
    "--out", "out", type=click.Path(dir_okay=False), default=None, help="Save the plan as JSON."
)
@click.option("--json", "json_mode", is_flag=True, help="Print the plan as JSON.")
@click.option("--destroy", is_flag=True, help="Plan the removal of everything the site owns.")
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="ADDR",
    help="Limit to these addresses (and what they need).",
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0: no changes, 2: changes, 1: error.")
def plan(
    blueprint: str,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
    lock_timeout: float,
    out: str | None,
    json_mode: bool,
    destroy: bool,
    targets: tuple[str, ...],
    detailed_exitcode: bool,
) -> None:
    """Show what apply would change: create +, update ~, replace -/+, delete -."""
    from pacsinfra.plan.render import render_plan

    bp = _load(blueprint, site, variables, var_files)
    _print_warnings(bp)
    with _engine(bp, state_path, lock_timeout) as engine:
        p = engine.plan(destroy=destroy, targets=targets)
    if out:
        p.save(out)
    if json_mode:
        click.echo(p.to_json(), nl=False)
    else:
        click.echo(render_plan(p))
        if out:
            click.echo(f"Saved the plan to {out}; apply it with: pacsinfra apply {out}")
    if detailed_exitcode and p.has_changes:
        raise click.exceptions.Exit(2)


# -- apply / destroy --------------------------------------------------------------------------------


@click.command()
@click.argument("source", metavar="BLUEPRINT|PLAN.json", type=click.Path())
@blueprint_options
@state_options
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--parallelism", type=click.IntRange(1, 256), default=None,
              help="steps at once (default: deploy.parallelism, else 10)")
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="ADDR",
    help="Limit to these addresses (and what they need).",
)
@click.option("--allow-replace", is_flag=True, help="Allow replacing machines that hold data.")
@click.option("--json", "json_mode", is_flag=True, help="Report progress as JSON lines.")
def apply(
    source: str,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
    lock_timeout: float,
    auto_approve: bool,
    parallelism: int | None,
    targets: tuple[str, ...],
    allow_replace: bool,
    json_mode: bool,
) -> None:
    """Make the hypervisor match the blueprint (or carry out a saved plan)."""
    from pacsinfra.apply.engine import Engine
    from pacsinfra.apply.events import make_sink
    from pacsinfra.plan.diff import select_targets
    from pacsinfra.plan.plan import Plan, looks_like_plan
    from pacsinfra.plan.render import render_plan

    sink = make_sink(json_mode=json_mode)
    if looks_like_plan(source):
        saved = select_targets(Plan.load(source), targets)
        if not json_mode:
            click.echo(render_plan(saved))
        # A saved plan was reviewed when it was made (as with Terraform): no second prompt.
        with Engine.from_plan(saved, state_path, sink=sink, lock_timeout=lock_timeout) as engine:
            _run_apply(
                engine,
                saved,
                parallelism=parallelism,
                allow_replace=allow_replace,
                json_mode=json_mode,
            )
        return
    bp = _load(source, site, variables, var_files)
    _print_warnings(bp)
    # One lock from the refresh that builds the plan to the last state write: a concurrent
    # runner waits for it (--lock-timeout) instead of failing later on a stale plan.
    with _engine(bp, state_path, lock_timeout, sink) as engine, engine.locked("apply"):
        p = engine.plan(targets=targets)
        if not json_mode:
            click.echo(render_plan(p))
        if not p.has_changes:
            return
        _confirm("Do you want to perform these actions?", auto_approve)
        _run_apply(
            engine, p, parallelism=parallelism, allow_replace=allow_replace, json_mode=json_mode
        )


@click.command()
@click.argument("blueprint", type=click.Path())
@blueprint_options
@state_options
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@click.option("--parallelism", type=click.IntRange(1, 256), default=None,
              help="steps at once (default: deploy.parallelism, else 10)")
@click.option(
    "--target", "targets", multiple=True, metavar="ADDR", help="Limit to these addresses."
)
@click.option("--json", "json_mode", is_flag=True, help="Report progress as JSON lines.")
def destroy(
    blueprint: str,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
    lock_timeout: float,
    auto_approve: bool,
    parallelism: int | None,
    targets: tuple[str, ...],
    json_mode: bool,
) -> None:
    """Delete every object the site owns, machines first, networks last."""
    from pacsinfra.apply.events import make_sink
    from pacsinfra.plan.render import render_plan

    bp = _load(blueprint, site, variables, var_files)
    with _engine(bp, state_path, lock_timeout, make_sink(json_mode=json_mode)) as engine:
        p = engine.plan(destroy=True, targets=targets)
        if not json_mode:
            click.echo(render_plan(p))
        if not p.has_changes:
            return
        _confirm("Do you really want to destroy these objects? There is no undo.", auto_approve)
        _run_apply(engine, p, parallelism=parallelism, allow_replace=True, json_mode=json_mode)


# -- state inspection ------------------------------------------------------------------------------


def _store(
    blueprint: str | None,
    site: str | None,
    variables: Sequence[str],
    var_files: Sequence[str],
    state_path: str | None,
) -> Any:
    """The state store named by --state / PACSINFRA_STATE, or the one of a blueprint."""
    from pacsinfra.plan.desired import desired_site
    from pacsinfra.state.select import choose_location, open_store

    if not blueprint:
        loc = choose_location(state_path)
        if loc is None:
            raise UsageError("give the blueprint or --state URL")
        if loc.backend != "local":
            raise UsageError(
                f"state {loc.describe()} holds many sites: give the blueprint (and --site) "
                "to say which"
            )
        return open_store(state_path, blueprint_path=Path.cwd() / "blueprint", name="",
                          overlay=None)
    bp = _load(blueprint, site, variables, var_files)
    d = desired_site(bp.site, overlay=bp.site_name)
    return open_store(state_path, blueprint_path=Path(bp.path), name=d.name, overlay=d.overlay,
                      section=getattr(bp.site, "state", None))


def _need_state(store: Any) -> Any:
    state = store.read()
    if state is None:
        raise StateError(f"no state at {store.describe()} (nothing applied yet?)")
    return state


@click.command()
@click.argument("blueprint", required=False, type=click.Path())
@blueprint_options
@state_option
@click.option("--json", "json_mode", is_flag=True, help="Print the state document as JSON.")
def show(
    blueprint: str | None,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
    json_mode: bool,
) -> None:
    """Show what pacsinfra manages for a site (from the state; no hypervisor access)."""
    store = _store(blueprint, site, variables, var_files, state_path)
    state = _need_state(store)
    if json_mode:
        click.echo(json.dumps(state.to_dict(), indent=1))
        return
    click.echo(
        f"site {state.site}  driver {state.driver}  serial {state.serial}  lineage {state.lineage}"
    )
    click.echo(f"state {store.describe()}")
    for addr in sorted(state.resources):
        r = state.resources[addr]
        extra = f"  {', '.join(r.addresses)}" if r.addresses else ""
        click.echo(f"  {addr:<32} {r.type:<8} {r.name:<32} {r.power:<8} id {r.id}{extra}")
    lock = store.lock_info()
    if lock:
        click.echo(f"locked by {lock.describe()}")


@click.command()
@click.argument("blueprint", type=click.Path())
@blueprint_options
@state_options
@click.option("--json", "json_mode", is_flag=True, help="Print the changes as JSON.")
def refresh(
    blueprint: str,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
    lock_timeout: float,
    json_mode: bool,
) -> None:
    """Update the state from the hypervisor (records only; no object is changed)."""
    bp = _load(blueprint, site, variables, var_files)
    with _engine(bp, state_path, lock_timeout) as engine:
        state, notes = engine.refresh()
    if json_mode:
        click.echo(json.dumps({"serial": state.serial, "changes": notes}))
        return
    for n in notes:
        click.echo(n)
    click.echo(
        f"Refreshed {len(state.resources)} resources ({len(notes)} changed); serial {state.serial}."
    )


@click.group()
def state() -> None:
    """Inspect or edit the state file."""


@state.command("list")
@click.argument("blueprint", required=False, type=click.Path())
@blueprint_options
@state_option
def state_list(
    blueprint: str | None,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
) -> None:
    """List the addresses in the state."""
    st = _need_state(_store(blueprint, site, variables, var_files, state_path))
    for addr in sorted(st.resources):
        click.echo(addr)


@state.command("rm")
@click.argument("addresses", nargs=-1, required=True)
@click.option(
    "--blueprint", "-b", "blueprint", type=click.Path(), default=None, help="The site's blueprint."
)
@blueprint_options
@state_options
def state_rm(
    addresses: tuple[str, ...],
    blueprint: str | None,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
    lock_timeout: float,
) -> None:
    """Forget resources (the hypervisor is not touched).

    The objects keep the site's ownership mark: the next plan adopts them again if
    the blueprint still wants them, or deletes them if it does not.
    """
    store = _store(blueprint, site, variables, var_files, state_path)
    with store.lock("state rm", timeout=lock_timeout):
        st = _need_state(store)
        missing = [a for a in addresses if a not in st.resources]
        if missing:
            raise UsageError(f"not in state: {', '.join(missing)}")
        for a in addresses:
            del st.resources[a]
        store.write(st)
    click.echo(f"Removed {len(addresses)} record(s); serial {st.serial}.")


@click.command("force-unlock")
@click.argument("lock_id")
@click.argument("blueprint", required=False, type=click.Path())
@blueprint_options
@state_option
def force_unlock(
    lock_id: str,
    blueprint: str | None,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    state_path: str | None,
) -> None:
    """Remove a state lock left by a process that is gone (ID from the lock error)."""
    holder = _store(blueprint, site, variables, var_files, state_path).force_unlock(lock_id)
    click.echo(f"Unlocked (was held{_age(holder.created)} by {holder.describe()}).")


def _age(created: str) -> str:
    """`` for 3m12s`` since an ISO time ('' when it cannot be read)."""
    import datetime as dt

    try:
        then = dt.datetime.fromisoformat(created)
    except ValueError:
        return ""
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    secs = max(0, int((dt.datetime.now(dt.UTC) - then).total_seconds()))
    return f" for {secs // 60}m{secs % 60:02d}s"


# -- graph ----------------------------------------------------------------------------------------


@click.command()
@click.argument("blueprint", type=click.Path())
@blueprint_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["svg", "png", "dot", "mermaid"]),
    default="dot",
    show_default=True,
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to a file instead of stdout.",
)
def graph(
    blueprint: str,
    site: str | None,
    variables: tuple[str, ...],
    var_files: tuple[str, ...],
    fmt: str,
    out: str | None,
) -> None:
    """Draw networks, machines, services and the DICOM flow (the graph apply orders by)."""
    from pacsinfra.plan.desired import desired_site
    from pacsinfra.plan.draw import render_graph

    bp = _load(blueprint, site, variables, var_files)
    d = desired_site(bp.site, overlay=bp.site_name)
    data = render_graph(d.graph, fmt, title=f"site {d.site}")
    if out:
        Path(out).write_bytes(data)
        click.echo(f"Wrote {out} ({len(data)} bytes).")
    elif fmt == "png":
        raise UsageError("--format png writes binary data: pass --out FILE")
    else:
        click.echo(data.decode(), nl=False)
