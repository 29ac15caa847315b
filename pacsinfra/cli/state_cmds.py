"""``pacsinfra state history|pull|push|rollback|migrate``: versions of a site's state.

Added to the ``state`` group of :mod:`pacsinfra.cli.engine_cmds`. Every command
that writes holds the site's lock (``--lock-timeout`` to wait for it); ``migrate``
holds the locks of both backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pacsinfra.cli.engine_cmds import (
    _load,
    _need_state,
    _store,
    blueprint_options,
    state,
    state_option,
    state_options,
)
from pacsinfra.errors import StateError, UsageError


def _history(store: Any) -> list[dict[str, Any]]:
    history = getattr(store, "history", None)
    if history is None:
        raise UsageError(
            f"state {store.describe()} is a local file, which keeps no history; "
            "history, rollback need a postgresql:// or s3:// backend"
        )
    result: list[dict[str, Any]] = history()
    return result


@state.command("history")
@click.argument("blueprint", required=False, type=click.Path())
@blueprint_options
@state_option
@click.option("--json", "json_mode", is_flag=True, help="Print the versions as JSON.")
def state_history(blueprint: str | None, site: str | None, variables: tuple[str, ...],
                  var_files: tuple[str, ...], state_path: str | None, json_mode: bool) -> None:
    """List every stored version of the site's state, oldest first."""
    rows = _history(_store(blueprint, site, variables, var_files, state_path))
    if json_mode:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"serial {r['serial']:<6} {r['written_at']}  lineage {r['lineage']}  "
                   f"token {r['token']}  by {r['holder']}")


@state.command("pull")
@click.argument("blueprint", required=False, type=click.Path())
@blueprint_options
@state_option
def state_pull(blueprint: str | None, site: str | None, variables: tuple[str, ...],
               var_files: tuple[str, ...], state_path: str | None) -> None:
    """Print the current state document (JSON) on stdout."""
    st = _need_state(_store(blueprint, site, variables, var_files, state_path))
    click.echo(json.dumps(st.to_dict(), indent=1))


@state.command("push")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--blueprint", "-b", "blueprint", type=click.Path(), default=None,
              help="The site's blueprint.")
@blueprint_options
@state_options
@click.option("--force", is_flag=True,
              help="Push even when the file's serial is not newer than the stored one.")
def state_push(file: str, blueprint: str | None, site: str | None, variables: tuple[str, ...],
               var_files: tuple[str, ...], state_path: str | None, lock_timeout: float,
               force: bool) -> None:
    """Upload a state document (e.g. an errored copy after review) as the next version."""
    from pacsinfra.state.store import State

    try:
        doc = State.from_dict(json.loads(Path(file).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UsageError(f"state push: no such file {file}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"state push: {file} is not JSON: {exc}") from None
    store = _store(blueprint, site, variables, var_files, state_path)
    with store.lock("state push", timeout=lock_timeout):
        current = store.read()
        if current is not None:
            if current.site != doc.site:
                raise UsageError(f"state push: {file} is for site {doc.site!r}, the store holds "
                                 f"{current.site!r}")
            if current.lineage != doc.lineage:
                raise UsageError(
                    f"state push: {file} has lineage {doc.lineage}, the store {current.lineage}; "
                    "a different lineage is another state: use `state migrate` to move states"
                )
            if doc.serial <= current.serial and not force:
                raise UsageError(
                    f"state push: {file} has serial {doc.serial}, not newer than the stored "
                    f"{current.serial}; review the difference (state pull), then pass --force"
                )
            doc.serial = current.serial
        else:
            doc.serial = max(0, doc.serial - 1)
        store.write(doc)
    click.echo(f"Pushed {file}; serial {doc.serial}.")


@state.command("rollback")
@click.option("--to", "to_serial", type=int, required=True, metavar="SERIAL",
              help="The version to restore (see `state history`).")
@click.option("--blueprint", "-b", "blueprint", type=click.Path(), default=None,
              help="The site's blueprint.")
@blueprint_options
@state_options
def state_rollback(to_serial: int, blueprint: str | None, site: str | None,
                   variables: tuple[str, ...], var_files: tuple[str, ...],
                   state_path: str | None, lock_timeout: float) -> None:
    """Make an earlier version current again (written as a new version; nothing is lost)."""
    store = _store(blueprint, site, variables, var_files, state_path)
    _history(store)  # refuses backends without history
    with store.lock("state rollback", timeout=lock_timeout):
        current = _need_state(store)
        old = store.version(to_serial)
        old.serial = current.serial
        store.write(old)
    click.echo(f"Rolled back to serial {to_serial}; now serial {old.serial}.")


@state.command("migrate")
@click.option("--to", "to_url", required=True, metavar="URL",
              help="The destination backend (as --state).")
@click.argument("blueprint", type=click.Path())
@blueprint_options
@state_options
def state_migrate(to_url: str, blueprint: str, site: str | None, variables: tuple[str, ...],
                  var_files: tuple[str, ...], state_path: str | None,
                  lock_timeout: float) -> None:
    """Copy a site's state to another backend, holding both locks (the source stays as is)."""
    from pacsinfra.plan.desired import desired_site
    from pacsinfra.state.select import open_store

    bp = _load(blueprint, site, variables, var_files)
    d = desired_site(bp.site, overlay=bp.site_name)
    source = _store(blueprint, site, variables, var_files, state_path)
    dest = open_store(to_url, blueprint_path=Path(bp.path), name=d.name, overlay=d.overlay)
    if source.describe() == dest.describe():
        raise UsageError(f"state migrate: source and destination are the same: {to_url}")
    with source.lock("state migrate", timeout=lock_timeout), \
            dest.lock("state migrate", timeout=lock_timeout):
        st = _need_state(source)
        if dest.read() is not None:
            raise StateError(f"state migrate: {dest.describe()} already holds a state for this "
                             "site; refusing to overwrite it")
        serial = st.serial
        st.serial = serial - 1  # the write adds one: the copy keeps its serial
        dest.write(st)
    for store in (source, dest):
        close = getattr(store, "close", None)
        if close is not None:
            close()
    click.echo(f"Migrated serial {serial} to {dest.describe()}; "
               f"point --state / PACSINFRA_STATE / state: at it from now on.")
