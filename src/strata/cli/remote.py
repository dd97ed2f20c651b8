"""Registry commands: pull, push, login, logout, copy, manifest inspect.

Each parses its arguments, calls one :class:`strata.engine.Engine` method, and prints what
docker (or skopeo, for ``copy``) prints.  Progress: one rich bar per layer on a terminal;
otherwise one line per finished layer (``9492a2599fb9: Pull complete``), as docker does
when its output is not a terminal.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import click

from strata.cli import render
from strata.cli.context import engine_of
from strata.engine import Engine
from strata.errors import InvalidArgument
from strata.oci import Platform, Reference
from strata.progress import ProgressEvent, Stage

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., object])

#: Stages that end a layer's line in non-terminal output.
_FINAL = {
    Stage.EXISTS: "Already exists",
    Stage.PULL_COMPLETE: "Pull complete",
    Stage.PUSHED: "Pushed",
    Stage.LAYER_EXISTS: "Layer already exists",
    Stage.MOUNTED: "Mounted from",
}


class _LineProgress:
    """docker's non-terminal progress: one line per layer when it is done."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet or event.stage not in _FINAL:
            return
        with self._lock:
            if event.id in self._done:
                return
            self._done.add(event.id)
            word = _FINAL[event.stage]
            if event.stage is Stage.MOUNTED and event.detail:
                word = f"{word} {event.detail}"
            click.echo(f"{event.id}: {word}")


class _Progress:
    """Rich bars on a terminal (stderr), docker's lines otherwise; nothing with ``quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.tty = sys.stderr.isatty() and not quiet
        self.lines = _LineProgress(quiet or self.tty)
        self.bars = render.LayerProgress() if self.tty else None
        self._totals: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        if self.bars is not None:
            self.bars.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bars is not None:
            self.bars.__exit__(exc_type, exc, tb)

    def __call__(self, event: ProgressEvent) -> None:
        if self.bars is not None:
            if event.total is not None:
                self._totals[event.id] = event.total
            elif event.id in self._totals:
                # Extraction events carry no byte counts: show the layer's size, full.
                total = self._totals[event.id]
                event = ProgressEvent(event.id, event.stage, total, total, event.detail)
            if event.total is not None:
                self.bars(event)
        self.lines(event)


def _registry_options(fn: F) -> F:
    fn = click.option("--insecure-registry", "insecure", multiple=True, metavar="HOST[:PORT]",
                      help="Talk plain HTTP to this registry (also: [[registry]] insecure ="
                      " true in STRATA_ROOT/registries.toml; loopback registries always).")(fn)
    fn = click.option("--ca-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                      default=None, help="Trust this CA bundle for TLS (besides"
                      " /etc/docker/certs.d/HOST:PORT/*.crt).")(fn)
    fn = click.option("--docker-config", type=click.Path(path_type=Path, dir_okay=False),
                      default=None, envvar="STRATA_DOCKER_CONFIG",
                      help="The docker config.json holding credentials (default:"
                      " $DOCKER_CONFIG/config.json or ~/.docker/config.json).")(fn)
    return fn


def _engine(ctx: click.Context, insecure: tuple[str, ...], ca_cert: Path | None,
            docker_config: Path | None, *, chunk_size: int | None = None) -> Engine:
    engine = engine_of(ctx)
    for host in insecure:
        if "/" in host or not host:
            raise InvalidArgument(f"--insecure-registry {host!r}: expected HOST[:PORT]")
    engine.configure_registries(insecure=insecure, ca_file=ca_cert, docker_config=docker_config,
                                chunk_size=chunk_size)
    return engine


def _platform(value: str | None) -> Platform | None:
    return Platform.parse(value) if value else None


@click.command("pull")
@click.argument("name")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output.")
@click.option("--platform", default=None, help="Set platform if server is multi-platform"
              " capable (os/arch[/variant]).")
@_registry_options
@click.pass_context
def pull_cmd(ctx: click.Context, name: str, quiet: bool, platform: str | None,
             insecure: tuple[str, ...], ca_cert: Path | None, docker_config: Path | None) -> None:
    """Download an image from a registry."""
    engine = _engine(ctx, insecure, ca_cert, docker_config)
    ref = Reference.parse(name)
    if not quiet:
        what = ref.tag if ref.tag else str(ref.digest)
        click.echo(f"{what}: Pulling from {ref.repository}")
    with _Progress(quiet) as progress:
        result = engine.pull(name, platform=_platform(platform), progress=progress)
    if quiet:
        click.echo(str(result.reference))
        return
    click.echo(f"Digest: {result.digest}")
    familiar = result.reference.familiar()
    if result.updated:
        click.echo(f"Status: Downloaded newer image for {familiar}")
    else:
        click.echo(f"Status: Image is up to date for {familiar}")
    click.echo(str(result.reference))


@click.command("push")
@click.argument("name")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output.")
@click.option("--chunk-size", type=int, default=None, metavar="BYTES",
              help="Upload blobs in chunks of this size (PATCH) instead of one PUT.")
@_registry_options
@click.pass_context
def push_cmd(ctx: click.Context, name: str, quiet: bool, chunk_size: int | None,
             insecure: tuple[str, ...], ca_cert: Path | None, docker_config: Path | None) -> None:
    """Upload an image to a registry."""
    engine = _engine(ctx, insecure, ca_cert, docker_config, chunk_size=chunk_size)
    ref = Reference.parse(name)
    if not quiet:
        click.echo(f"The push refers to repository [{ref.name}]")
    with _Progress(quiet) as progress:
        result = engine.push(name, progress=progress)
    if quiet:
        click.echo(str(result.reference))
        return
    label = result.reference.tag or str(result.digest)
    click.echo(f"{label}: digest: {result.digest} size: {result.size}")


@click.command("login")
@click.argument("server", required=False, default="")
@click.option("-u", "--username", default=None, help="Username.")
@click.option("-p", "--password", default=None, help="Password.")
@click.option("--password-stdin", is_flag=True, help="Take the password from stdin.")
@_registry_options
@click.pass_context
def login_cmd(ctx: click.Context, server: str, username: str | None, password: str | None,
              password_stdin: bool, insecure: tuple[str, ...], ca_cert: Path | None,
              docker_config: Path | None) -> None:
    """Log in to a registry (credentials are kept in docker's config.json)."""
    engine = _engine(ctx, insecure, ca_cert, docker_config)
    if password is not None and not password_stdin:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
                   err=True)
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        if username is None:
            raise click.UsageError("Must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    if username is None:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    engine.login(_server_name(server), username or "", password or "")
    click.echo("Login Succeeded")


@click.command("logout")
@click.argument("server", required=False, default="")
@_registry_options
@click.pass_context
def logout_cmd(ctx: click.Context, server: str, insecure: tuple[str, ...],
               ca_cert: Path | None, docker_config: Path | None) -> None:
    """Log out from a registry."""
    engine = _engine(ctx, insecure, ca_cert, docker_config)
    key = engine.logout(_server_name(server))
    click.echo(f"Removing login credentials for {key}")


def _server_name(server: str) -> str:
    """``https://host:5000/`` or ``host:5000`` -> ``host:5000``; empty -> Docker Hub."""
    for prefix in ("https://", "http://"):
        server = server.removeprefix(prefix)
    server = server.split("/", 1)[0]
    return "docker.io" if server in ("", "index.docker.io", "registry-1.docker.io") else server


@click.command("copy")
@click.argument("source")
@click.argument("destination")
@click.option("-q", "--quiet", is_flag=True, help="Suppress output.")
@click.option("--platform", default=None, help="Which image of a multi-platform source.")
@_registry_options
@click.pass_context
def copy_cmd(ctx: click.Context, source: str, destination: str, quiet: bool,
             platform: str | None, insecure: tuple[str, ...], ca_cert: Path | None,
             docker_config: Path | None) -> None:
    """Copy an image between docker://, oci:, oci-archive: and docker-archive: locations."""
    engine = _engine(ctx, insecure, ca_cert, docker_config)
    with _Progress(True) as progress:
        result = engine.copy(source, destination, platform=_platform(platform),
                             progress=progress)
    if not quiet:
        click.echo(f"Copied {source} to {destination}")
        click.echo(f"Digest: {result.digest}")


@click.group("manifest")
def manifest_group() -> None:
    """Inspect manifests in a registry."""


@manifest_group.command("inspect")
@click.argument("name")
@click.option("--raw", is_flag=True, help="Print the exact bytes the registry serves.")
@_registry_options
@click.pass_context
def manifest_inspect_cmd(ctx: click.Context, name: str, raw: bool, insecure: tuple[str, ...],
                         ca_cert: Path | None, docker_config: Path | None) -> None:
    """Display an image manifest, or manifest list."""
    engine = _engine(ctx, insecure, ca_cert, docker_config)
    fetched = engine.manifest_inspect(name)
    if raw:
        sys.stdout.buffer.write(fetched.raw)
        sys.stdout.flush()
        return
    click.echo(json.dumps(json.loads(fetched.raw), indent="\t"))


def register(group: click.Group) -> None:
    """Attach the registry commands at top level (docker style)."""
    for cmd in (pull_cmd, push_cmd, login_cmd, logout_cmd, copy_cmd, manifest_group):
        group.add_command(cmd)
    image = group.commands.get("image")
    if isinstance(image, click.Group):
        image.add_command(pull_cmd)
        image.add_command(push_cmd)
