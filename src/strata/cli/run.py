"""Container commands: ``run [-d] [-it]``, ``create``, ``start``, ``stop``, ``kill``,
``restart``, ``wait``, ``logs``, ``exec``, ``ps [-a]``, ``rm [-f]`` (docker's).

``run`` exits like ``docker run``: with the container's exit code, 125 when strata itself
fails (no such image, bad option...), 126 when the command cannot be executed and 127 when
it does not exist, with the runtime's message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from strata.cli import limits as _limits
from strata.cli import network as _network
from strata.cli import render
from strata.cli import volume as _volume
from strata.cli.context import engine_of
from strata.errors import InvalidArgument, StrataError
from strata.runtime import ContainerRecord, ExecOptions, RunOptions

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


def _options(command: tuple[str, ...], opts: dict[str, Any], *, interactive: bool = False
             ) -> RunOptions:
    """RunOptions from the parsed container options (``-i`` is handled by the command)."""
    return RunOptions(
        command=command, entrypoint=opts["entrypoint"], tty=opts["tty"],
        interactive=interactive,
        env=read_env_files(opts["env_files"]) + opts["env"], workdir=opts["workdir"],
        user=opts["user"], name=opts["name"], hostname=opts["hostname"],
        remove=opts["remove"],
        runtime=opts["runtime"] or os.environ.get(_RUNTIMES_ENV) or "builtin",
        read_only=opts["read_only"], tmpfs=opts["tmpfs"], cap_add=opts["cap_add"],
        cap_drop=opts["cap_drop"], host_env=dict(os.environ), **_limits.fields(opts),
        **_network.fields(opts), **_volume.fields(opts))


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
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY."),
        click.option("--read-only", is_flag=True,
                     help="Mount the container's root filesystem as read only."),
        click.option("--tmpfs", multiple=True, metavar="PATH[:OPTIONS]",
                     help="Mount a tmpfs directory."),
        click.option("--cap-add", multiple=True, help="Add Linux capabilities."),
        click.option("--cap-drop", multiple=True, help="Drop Linux capabilities."),
        *_limits.OPTIONS,  # --memory, --cpus, --pids-limit, --privileged... (strata.cli.limits)
        *_network.OPTIONS,  # --network, -p (strata.cli.network)
        *_volume.OPTIONS,  # -v, --mount (strata.cli.volume)
    )):
        f = decorator(f)
    return f


_NO_HELP_SHORT = {"help_option_names": ["--help"], "allow_interspersed_args": False}


@click.command("run", context_settings=_NO_HELP_SHORT)
@_container_options
@click.option("-d", "--detach", is_flag=True,
              help="Run container in background and print container ID.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, /, image: str, command: tuple[str, ...], interactive: bool,
            detach: bool, **opts: Any) -> None:
    """Create and run a new container from an image (``-d``: in the background)."""
    if not interactive:
        _stdin_from_null()
    engine = engine_of(ctx)
    try:
        options = _options(command, opts, interactive=interactive)
        if detach:
            record = engine.container_run_detached(image, options)
            click.echo(record.id)
            return
        code = engine.run(image, options)
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
        record = engine_of(ctx).container_create(
            image, _options(command, opts, interactive=interactive))
    except StrataError as exc:
        _fail(exc)
    click.echo(record.id)


@click.command("start")
@click.option("-a", "--attach", is_flag=True,
              help="Attach STDOUT/STDERR and exit with the container's code.")
@click.option("-i", "--interactive", is_flag=True, help="Attach STDIN.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def start_cmd(ctx: click.Context, attach: bool, interactive: bool,
              containers: tuple[str, ...]) -> None:
    """Start stopped containers (in the background; ``-a``: one, in the foreground)."""
    engine = engine_of(ctx)
    if attach or interactive:
        if len(containers) != 1:
            raise click.UsageError("you cannot start and attach multiple containers at once")
        if not interactive:
            _stdin_from_null()
        try:
            code = engine.container_start(containers[0])
        except StrataError as exc:
            _fail(exc)
        sys.exit(code)
    _each(containers, engine.container_start_detached)


def _each(refs: tuple[str, ...], action: Callable[[str], object], *,
          show: Callable[[Any], str] | None = None) -> None:
    """Apply ``action`` to each container, echoing the reference (or ``show(result)``) as
    docker does; errors are reported per container and make the exit code 1."""
    failed = False
    for ref in refs:
        try:
            result = action(ref)
        except StrataError as exc:
            click.echo(f"Error response from daemon: {exc}", err=True)
            failed = True
            continue
        click.echo(ref if show is None else show(result))
    if failed:
        sys.exit(1)


@click.command("stop")
@click.option("-t", "--time", "timeout", type=int, default=None,
              help="Seconds to wait for stop before killing it (default 10).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stop_cmd(ctx: click.Context, timeout: int | None, containers: tuple[str, ...]) -> None:
    """Stop running containers: the stop signal, then SIGKILL after the grace period."""
    engine = engine_of(ctx)
    _each(containers, lambda ref: engine.container_stop(ref, timeout=timeout))


@click.command("restart")
@click.option("-t", "--time", "timeout", type=int, default=None,
              help="Seconds to wait for stop before killing it (default 10).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def restart_cmd(ctx: click.Context, timeout: int | None, containers: tuple[str, ...]) -> None:
    """Restart containers."""
    engine = engine_of(ctx)
    _each(containers, lambda ref: engine.container_restart(ref, timeout=timeout))


@click.command("kill")
@click.option("-s", "--signal", "signal_name", default="KILL",
              help="Signal to send to the container (default KILL).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill_cmd(ctx: click.Context, signal_name: str, containers: tuple[str, ...]) -> None:
    """Kill running containers (or send them another signal)."""
    engine = engine_of(ctx)
    _each(containers, lambda ref: engine.container_kill(ref, signal=signal_name))


@click.command("wait")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait_cmd(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Block until containers stop, then print their exit codes."""
    engine = engine_of(ctx)
    _each(containers, engine.container_wait, show=str)


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("-n", "--tail", default="all",
              help="Number of lines to show from the end of the logs (default all).")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.argument("container")
@click.pass_context
def logs_cmd(ctx: click.Context, follow: bool, tail: str, timestamps: bool,
             container: str) -> None:
    """Fetch the logs of a container (its stdout to stdout, its stderr to stderr)."""
    if tail == "all":
        lines = None
    else:
        try:
            lines = int(tail)
        except ValueError:
            raise click.BadParameter(f"invalid value for tail: {tail!r}",
                                     param_hint="--tail") from None
        lines = None if lines < 0 else lines
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        for entry in engine_of(ctx).container_logs(container, follow=follow, tail=lines):
            stream = err if entry.stream == "stderr" else out
            if timestamps:
                stream.write(entry.time.encode() + b" ")
            stream.write(entry.data)
            stream.flush()
    except StrataError as exc:
        click.echo(f"Error response from daemon: {exc}", err=True)
        sys.exit(1)


@click.command("exec", context_settings=_NO_HELP_SHORT)
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Set environment variables.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>]).")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_cmd(ctx: click.Context, /, interactive: bool, tty: bool, env: tuple[str, ...],
             workdir: str | None, user: str | None, container: str,
             command: tuple[str, ...]) -> None:
    """Execute a command in a running container; exits with the command's code."""
    if not interactive:
        _stdin_from_null()
    try:
        code = engine_of(ctx).container_exec(container, ExecOptions(
            args=command, env=env, workdir=workdir, user=user, tty=tty,
            interactive=interactive, host_env=dict(os.environ)))
    except StrataError as exc:
        click.echo(f"Error response from daemon: {exc}", err=True)
        sys.exit(exc.exit_code if exc.exit_code in (126, 127) else 1)
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
                "ExitCode": r.exit_code, "Runtime": r.runtime,
                "Ports": _network.ports_text(engine_of(ctx).containers_ports().get(r.id, ()))}))
        return
    rows = []
    ports = engine_of(ctx).containers_ports()  # R3: the PORTS column
    for r in records:
        command = json.dumps(" ".join(r.command), ensure_ascii=False)
        if not no_trunc:
            command = json.dumps(render.ellipsis(" ".join(r.command), 20), ensure_ascii=False)
        created = dt.datetime.fromtimestamp(r.created, dt.UTC)
        rows.append([r.id if no_trunc else r.id[:12], r.image, command,
                     render.since(created, now), _status(r, now),
                     _network.ports_text(ports.get(r.id, ()) if r.state == "running" else ()),
                     r.name])
    click.echo(render.table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS",
                             "NAMES"], rows), nl=False)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force the removal of a running container.")
@click.option("-v", "--volumes", is_flag=True,
              help="Remove anonymous volumes associated with the container.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm_cmd(ctx: click.Context, force: bool, volumes: bool, containers: tuple[str, ...]
           ) -> None:
    """Remove one or more containers."""
    engine = engine_of(ctx)
    failed: StrataError | None = None
    for ref in containers:
        try:
            engine.container_remove([ref], force=force, volumes=volumes)
        except StrataError as exc:
            click.echo(f"Error response from daemon: {exc}", err=True)
            failed = exc
            continue
        click.echo(ref)
    if failed is not None:
        sys.exit(1)


def register(group: click.Group) -> None:
    """Attach the container commands at top level (docker style) and under ``container``."""
    lifecycle = (stop_cmd, kill_cmd, wait_cmd, restart_cmd, logs_cmd, exec_cmd)
    for cmd in (run_cmd, create_cmd, start_cmd, ps_cmd, rm_cmd, *lifecycle):
        group.add_command(cmd)
    container = click.Group("container", help="Manage containers.")
    container.add_command(run_cmd)
    container.add_command(create_cmd)
    container.add_command(start_cmd)
    container.add_command(ps_cmd, "ls")
    container.add_command(rm_cmd)
    for cmd in lifecycle:
        container.add_command(cmd)
    group.add_command(container)
