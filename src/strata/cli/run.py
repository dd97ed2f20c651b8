"""Container commands: ``run``, ``create``, ``start``, ``ps [-a]``, ``rm [-f]`` (docker's).

``run`` exits like ``docker run``: with the container's exit code, 125 when strata itself
fails (no such image, bad option...), 126 when the command cannot be executed and 127 when
it does not exist, with the runtime's message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from strata.cli import render
from strata.cli.context import engine_of
from strata.errors import InvalidArgument, StrataError
from strata.runtime import ContainerRecord, RunOptions

__all__ = ["register"]

_RUNTIMES_ENV = "STRATA_RUNTIME"


def _fail(exc: StrataError) -> None:
    click.echo(f"strata: Error: {exc}.", err=True)
    sys.exit(exc.exit_code if exc.exit_code in (126, 127) else 125)


def read_env_files(paths: tuple[str, ...]) -> tuple[str, ...]:
    """``--env-file`` lines as docker reads them: ``KEY=VALUE`` or ``KEY``; blank lines and
    ``#`` comments skipped.

    Raises:
        InvalidArgument: an unreadable file or a line with an empty name.
    """
    out: list[str] = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidArgument(f"open {path}: {(exc.strerror or str(exc)).lower()}") from exc
        for number, line in enumerate(text.splitlines(), 1):
            line = line.lstrip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("="):
                raise InvalidArgument(f"invalid environment variable at {path}:{number}: "
                                      f"{line!r}")
            out.append(line)
    return tuple(out)


def _options(command: tuple[str, ...], opts: dict[str, Any]) -> RunOptions:
    """RunOptions from the parsed container options (``-i`` is handled by the command)."""
    return RunOptions(
        command=command, entrypoint=opts["entrypoint"],
        env=read_env_files(opts["env_files"]) + opts["env"], workdir=opts["workdir"],
        user=opts["user"], name=opts["name"], hostname=opts["hostname"],
        remove=opts["remove"],
        runtime=opts["runtime"] or os.environ.get(_RUNTIMES_ENV) or "builtin",
        read_only=opts["read_only"], tmpfs=opts["tmpfs"], cap_add=opts["cap_add"],
        cap_drop=opts["cap_drop"], host_env=dict(os.environ))


def _container_options(f: click.decorators.FC) -> click.decorators.FC:
    for decorator in reversed((
        click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE",
                     help="Set environment variables."),
        click.option("--env-file", "env_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Read in a file of environment variables."),
        click.option("-w", "--workdir", help="Working directory inside the container."),
        click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])."),
        click.option("--entrypoint", help="Overwrite the default ENTRYPOINT of the image."),
        click.option("--name", help="Assign a name to the container."),
        click.option("-h", "--hostname", help="Container host name."),
        click.option("--rm", "remove", is_flag=True,
                     help="Automatically remove the container when it exits."),
        click.option("--runtime", help="builtin (default, or $STRATA_RUNTIME) or an installed"
                                       " OCI runtime such as runc."),
        click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open."),
        click.option("--read-only", is_flag=True,
                     help="Mount the container's root filesystem as read only."),
        click.option("--tmpfs", multiple=True, metavar="PATH[:OPTIONS]",
                     help="Mount a tmpfs directory."),
        click.option("--cap-add", multiple=True, help="Add Linux capabilities."),
        click.option("--cap-drop", multiple=True, help="Drop Linux capabilities."),
    )):
        f = decorator(f)
    return f


_NO_HELP_SHORT = {"help_option_names": ["--help"], "allow_interspersed_args": False}


@click.command("run", context_settings=_NO_HELP_SHORT)
@_container_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, /, image: str, command: tuple[str, ...], interactive: bool,
            **opts: Any) -> None:
    """Create and run a new container from an image, in the foreground."""
    if not interactive:
        _stdin_from_null()
    try:
        code = engine_of(ctx).run(image, _options(command, opts))
    except StrataError as exc:
        _fail(exc)
    sys.exit(code)


@click.command("create", context_settings=_NO_HELP_SHORT)
@_container_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create_cmd(ctx: click.Context, /, image: str, command: tuple[str, ...], interactive: bool,
               **opts: Any) -> None:
    """Create a new container (print its ID) without starting it."""
    try:
        record = engine_of(ctx).container_create(image, _options(command, opts))
    except StrataError as exc:
        _fail(exc)
    click.echo(record.id)


@click.command("start")
@click.option("-a", "--attach", is_flag=True, required=True,
              help="Attach STDOUT/STDERR (required: detached containers come later).")
@click.option("-i", "--interactive", is_flag=True, help="Attach STDIN.")
@click.argument("container")
@click.pass_context
def start_cmd(ctx: click.Context, attach: bool, interactive: bool, container: str) -> None:
    """Start a stopped container in the foreground; exits with its exit code."""
    if not interactive:
        _stdin_from_null()
    try:
        code = engine_of(ctx).container_start(container)
    except StrataError as exc:
        _fail(exc)
    sys.exit(code)


def _stdin_from_null() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def _status(record: ContainerRecord, now: dt.datetime) -> str:
    if record.state == "running" and record.started:
        started = dt.datetime.fromtimestamp(record.started, dt.UTC)
        return f"Up {render.human_duration(now - started)}"
    if record.state == "exited" and record.finished:
        finished = dt.datetime.fromtimestamp(record.finished, dt.UTC)
        return f"Exited ({record.exit_code}) {render.human_duration(now - finished)} ago"
    return "Created"


@click.command("ps")
@click.option("-a", "--all", "all_containers", is_flag=True,
              help="Show all containers (default shows just running).")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="table (docker's columns) or json (one object per line).")
@click.pass_context
def ps_cmd(ctx: click.Context, all_containers: bool, quiet: bool, no_trunc: bool,
           fmt: str) -> None:
    """List containers."""
    records = engine_of(ctx).containers_list(all_containers=all_containers)
    if quiet:
        for r in records:
            click.echo(r.id if no_trunc else r.id[:12])
        return
    now = dt.datetime.now(dt.UTC)
    if fmt == "json":
        for r in records:
            click.echo(json.dumps({
                "ID": r.id if no_trunc else r.id[:12], "Names": r.name, "Image": r.image,
                "Command": " ".join(r.command), "State": r.state, "Status": _status(r, now),
                "ExitCode": r.exit_code, "Runtime": r.runtime}))
        return
    rows = []
    for r in records:
        command = json.dumps(" ".join(r.command), ensure_ascii=False)
        if not no_trunc:
            command = json.dumps(render.ellipsis(" ".join(r.command), 20), ensure_ascii=False)
        created = dt.datetime.fromtimestamp(r.created, dt.UTC)
        rows.append([r.id if no_trunc else r.id[:12], r.image, command,
                     render.since(created, now), _status(r, now), "", r.name])
    click.echo(render.table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS",
                             "NAMES"], rows), nl=False)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force the removal of a running container.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm_cmd(ctx: click.Context, force: bool, containers: tuple[str, ...]) -> None:
    """Remove one or more containers."""
    engine = engine_of(ctx)
    failed: StrataError | None = None
    for ref in containers:
        try:
            engine.container_remove([ref], force=force)
        except StrataError as exc:
            click.echo(f"Error response from daemon: {exc}", err=True)
            failed = exc
            continue
        click.echo(ref)
    if failed is not None:
        sys.exit(1)


def register(group: click.Group) -> None:
    """Attach the container commands at top level (docker style) and under ``container``."""
    for cmd in (run_cmd, create_cmd, start_cmd, ps_cmd, rm_cmd):
        group.add_command(cmd)
    container = click.Group("container", help="Manage containers.")
    container.add_command(run_cmd)
    container.add_command(create_cmd)
    container.add_command(start_cmd)
    container.add_command(ps_cmd, "ls")
    container.add_command(rm_cmd)
    group.add_command(container)
