"""The ``pacsinfra`` command line.

Commands live in their own modules and are imported only when invoked, so
``pacsinfra validate`` never pays for (or fails on) a hypervisor SDK. Every
:class:`~pacsinfra.errors.PacsinfraError` becomes a message on stderr and its
exit code; anything else is a bug and is reported as one, still without a
traceback unless ``PACSINFRA_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from pacsinfra import __version__
from pacsinfra.errors import PacsinfraError

# name -> "module:attribute". Each module owns its commands; add a line to add one.
COMMANDS: dict[str, str] = {
    "validate": "pacsinfra.cli.blueprint_cmds:validate",
    "schema": "pacsinfra.cli.blueprint_cmds:schema",
    "plan": "pacsinfra.cli.engine_cmds:plan",
    "apply": "pacsinfra.cli.engine_cmds:apply",
    "destroy": "pacsinfra.cli.engine_cmds:destroy",
    "show": "pacsinfra.cli.engine_cmds:show",
    "refresh": "pacsinfra.cli.engine_cmds:refresh",
    "state": "pacsinfra.cli.state_cmds:state",
    "force-unlock": "pacsinfra.cli.engine_cmds:force_unlock",
    "graph": "pacsinfra.cli.engine_cmds:graph",
    "archive": "pacsinfra.cli.archive_cmds:archive",
    "router": "pacsinfra.cli.router_cmds:router",
    "viewer": "pacsinfra.cli.viewer_cmds:viewer",
    "verify": "pacsinfra.cli.verify_cmds:verify",
    "backup": "pacsinfra.cli.dr_cmds:backup",
    "restore": "pacsinfra.cli.dr_cmds:restore",
    "dr": "pacsinfra.cli.dr_cmds:dr",
    "loadtest": "pacsinfra.cli.loadtest_cmds:loadtest",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # the command is not built yet in this checkout
                return None
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pacsinfra")
def cli() -> None:
    """Declare a PACS site in YAML; validate, plan, apply, deploy, verify and rebuild it."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning pacsinfra errors into messages and exit codes."""
    try:
        rv: Any = cli.main(args=argv, prog_name="pacsinfra", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except PacsinfraError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so plainly, keep the traceback for debugging
        if os.environ.get("PACSINFRA_DEBUG"):
            raise
        click.echo(
            f"Internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in pacsinfra; rerun with PACSINFRA_DEBUG=1 for the traceback.",
            err=True,
        )
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)
