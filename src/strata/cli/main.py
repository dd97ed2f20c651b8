"""The ``strata`` command: global options, the error handler, and the command tree.

Every command parses its arguments, calls one :class:`strata.engine.Engine` method, and
renders the result.  A :class:`strata.errors.StrataError` ends the command with a one-line
message on stderr and its ``exit_code`` (1); usage errors exit 2 (click); ``--debug`` shows
the traceback.

Each command module is imported only when one of its commands runs (or for ``--help``):
``strata run`` must not pay for the registry client, rich or the image loader.  A module is
listed in :data:`COMMAND_MODULES` with the top-level names its ``register(group)`` adds
(``tests/runtime/test_fastpath_imports.py`` checks the lists).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from strata import __version__
from strata.cli.context import State
from strata.errors import StrataError

__all__ = ["COMMAND_MODULES", "cli", "main"]

#: Command modules (each has ``register(group)``) → the top-level commands they add.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "strata.cli.images": ("history", "image", "images", "import", "inspect", "load", "rmi",
                          "save", "tag", "unpack"),
    "strata.cli.system": ("system",),
    "strata.cli.registry": ("registry",),
    "strata.cli.remote": ("copy", "login", "logout", "manifest", "pull", "push"),
    "strata.cli.run": ("container", "create", "exec", "kill", "logs", "ps", "restart", "rm",
                       "run", "start", "stop", "wait"),
    "strata.cli.network": ("port",),
    "strata.cli.volume": ("volume",),
    "strata.cli.containers": ("commit", "container", "cp", "diff", "inspect", "top"),
    "strata.cli.build": ("build", "builder"),
}


class _LazyGroup(click.Group):
    """The top-level group: a command's module is imported when the command is looked up;
    listing the commands (``--help``) imports them all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()
        self.looked_up: list[str] = []  # the command names resolved, in order

    def _load(self, module: str) -> None:
        if module not in self._loaded:
            self._loaded.add(module)
            importlib.import_module(module).register(self)

    def _load_all(self) -> None:
        for module in COMMAND_MODULES:
            self._load(module)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # Every module that adds (or adds to) the name, in table order: a later one's
        # registration wins, as when they were all imported up front.
        self.looked_up.append(cmd_name)
        owners = [m for m, names in COMMAND_MODULES.items() if cmd_name in names]
        for owner in owners:
            self._load(owner)
        if not owners and cmd_name not in self.commands:
            self._load_all()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_all()
        return super().list_commands(ctx)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(path_type=Path), envvar="STRATA_ROOT",
              help="Store root (default /var/lib/strata as root, ~/.local/share/strata otherwise).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="strata")
@click.pass_context
def cli(ctx: click.Context, root: Path | None, debug: bool) -> None:
    """strata: a daemonless container image engine."""
    ctx.obj = State(root=root, debug=debug)



#: Commands after which the process ends at once (``os._exit`` once stdout and stderr are
#: flushed), without the interpreter's teardown: finalising every module and closing each
#: store's database (a WAL checkpoint with an fsync per database) cost more than the
#: container did.  Their work is done and recorded when they return; SQLite's WAL is
#: complete without the checkpoint (the next connection uses it).
_QUICK_EXIT = frozenset({"run", "create", "start", "exec", "rm", "ps"})


def main() -> None:
    """Entry point: run the CLI and map strata errors to exit codes."""
    try:
        _main()
    except SystemExit as exc:
        if _quick_exit():
            _exit_now(exc.code)
        raise
    if _quick_exit():
        _exit_now(0)


def _quick_exit() -> bool:
    looked_up = cli.looked_up if isinstance(cli, _LazyGroup) else []
    return bool(looked_up) and looked_up[0] in _QUICK_EXIT


def _exit_now(code: object) -> None:
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # what the interpreter exits with when the flush fails
    os._exit(status)


def _main() -> None:
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
