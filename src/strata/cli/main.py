"""The ``strata`` command: global options, the error handler, and the command tree.

Every command parses its arguments, calls one :class:`strata.engine.Engine` method, and
renders the result.  A :class:`strata.errors.StrataError` ends the command with a one-line
message on stderr and its ``exit_code`` (1); usage errors exit 2 (click); ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from strata import __version__
from strata.cli import build as build_cmds
from strata.cli import images as images_cmds
from strata.cli import registry as registry_cmds
from strata.cli import remote as remote_cmds
from strata.cli import run as run_cmds
from strata.cli import system as system_cmds
from strata.cli.context import State
from strata.errors import StrataError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(path_type=Path), envvar="STRATA_ROOT",
              help="Store root (default /var/lib/strata as root, ~/.local/share/strata otherwise).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="strata")
@click.pass_context
def cli(ctx: click.Context, root: Path | None, debug: bool) -> None:
    """strata: a daemonless container image engine."""
    ctx.obj = State(root=root, debug=debug)


images_cmds.register(cli)
system_cmds.register(cli)
registry_cmds.register(cli)
remote_cmds.register(cli)
run_cmds.register(cli)
build_cmds.register(cli)


def main() -> None:
    """Entry point: run the CLI and map strata errors to exit codes."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except StrataError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
