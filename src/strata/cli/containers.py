"""Container filesystem commands: ``inspect`` (containers and images), ``diff``, ``commit``,
``cp``, ``top`` and ``container prune`` (docker's words and output).

``-f/--format`` takes the subset of Go templates docker users write most: literal text with
``{{.Field.Sub}}``, ``{{json .Field}}`` and ``{{.}}`` actions (:func:`format_template`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from strata.cli import render
from strata.cli.context import engine_of
from strata.errors import StrataError
from strata.oci import Platform

__all__ = ["format_template", "register", "render_inspect"]

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


def _go_value(value: Any) -> str:
    """How Go's text/template prints a value: strings as they are, nil as ``<nil>``,
    booleans and numbers plainly, maps and lists in Go's ``map[k:v]`` / ``[a b]`` shape."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{_go_value(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    return str(value)


def _lookup(obj: Any, path: str) -> Any:
    if path in (".", ""):
        return obj
    value = obj
    for part in path.removeprefix(".").split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise click.UsageError(f"template: no field {part!r}")
        value = value[part]
    return value


def format_template(template: str, obj: Any) -> str:
    """Render ``template`` (a Go-template subset) against an inspect object.

    Raises:
        click.UsageError: an unknown field or function.
    """

    def action(match: re.Match[str]) -> str:
        words = match.group(1).split()
        if len(words) == 1 and words[0].startswith("."):
            return _go_value(_lookup(obj, words[0]))
        if len(words) == 2 and words[0] == "json" and words[1].startswith("."):
            return json.dumps(_lookup(obj, words[1]), ensure_ascii=False)
        raise click.UsageError(f"template: unsupported action {{{{{match.group(1)}}}}}")

    return _ACTION.sub(action, template)


def render_inspect(items: Sequence[Any], fmt: str | None) -> None:
    """Print inspect results as docker does: a JSON array, or each rendered by ``fmt``."""
    if fmt:
        for item in items:
            click.echo(format_template(fmt, item))
        return
    click.echo(json.dumps(list(items), indent=4, ensure_ascii=False))


def _inspect(ctx: click.Context, names: Sequence[str], kind: str | None, size: bool,
             fmt: str | None, remote: bool = False, platform: str | None = None) -> None:
    engine = engine_of(ctx)
    found: list[Any] = []
    errors: list[StrataError] = []
    plat = Platform.parse(platform) if platform else None
    for name in names:
        try:
            if remote:
                found.append(engine.inspect_remote(name, platform=plat).to_json())
            else:
                found.append(engine.inspect_any(name, kind=kind, size=size))
        except StrataError as exc:
            errors.append(exc)
    render_inspect(found, fmt)
    for error in errors:
        click.echo(f"Error: {error}", err=True)
    if errors:
        sys.exit(1)


_inspect_options = (
    click.argument("names", nargs=-1, required=True),
    click.option("-s", "--size", is_flag=True,
                 help="Display total file sizes (containers: SizeRw and SizeRootFs)."),
    click.option("-f", "--format", "fmt", default=None,
                 help="Format the output using a Go template subset ('{{.State.Status}}',"
                      " '{{json .Config}}')."),
)


def _with(options: Sequence[Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorate(f: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@click.command("inspect")
@_with(_inspect_options)
@click.option("--type", "kind", type=click.Choice(["container", "image"]), default=None,
              help="Return JSON for the specified type (default: a container, else an image).")
@click.option("--remote", is_flag=True, help="Inspect the image in its registry (as skopeo"
              " inspect), without pulling it.")
@click.option("--platform", default=None, help="With --remote: which image of a"
              " multi-platform index (os/arch[/variant]).")
@click.pass_context
def inspect_cmd(ctx: click.Context, names: tuple[str, ...], size: bool, fmt: str | None,
                kind: str | None, remote: bool, platform: str | None) -> None:
    """Return low-level information on containers or images."""
    _inspect(ctx, names, kind, size, fmt, remote, platform)


@click.command("inspect")
@_with(_inspect_options)
@click.pass_context
def container_inspect_cmd(ctx: click.Context, names: tuple[str, ...], size: bool,
                          fmt: str | None) -> None:
    """Display detailed information on one or more containers."""
    _inspect(ctx, names, "container", size, fmt)


@click.command("diff")
@click.argument("container")
@click.pass_context
def diff_cmd(ctx: click.Context, container: str) -> None:
    """Inspect changes to files or directories on a container's filesystem."""
    for change in engine_of(ctx).container_diff(container):
        click.echo(str(change))


@click.command("commit")
@click.option("-a", "--author", default="", help='Author (e.g., "John Hannibal Smith'
              ' <hannibal@a-team.com>").')
@click.option("-c", "--change", "changes", multiple=True,
              help="Apply Dockerfile instruction to the created image.")
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("-p", "--pause", type=bool, default=True, show_default=True,
              help="Pause container during commit.")
@click.argument("container")
@click.argument("reference", required=False)
@click.pass_context
def commit_cmd(ctx: click.Context, author: str, changes: tuple[str, ...], message: str,
               pause: bool, container: str, reference: str | None) -> None:
    """Create a new image from a container's changes."""
    result = engine_of(ctx).container_commit(container, reference, message=message,
                                             author=author, changes=changes, pause=pause)
    click.echo(str(result.image_id))


@click.command("cp")
@click.option("-a", "--archive", is_flag=True, help="Archive mode (copy all uid/gid"
              " information).")
@click.option("-L", "--follow-link", is_flag=True, help="Always follow symbol link in"
              " SRC_PATH.")
@click.argument("source")
@click.argument("destination")
@click.pass_context
def cp_cmd(ctx: click.Context, archive: bool, follow_link: bool, source: str,
           destination: str) -> None:
    """Copy files/folders between a container and the local filesystem.

    \b
    strata cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-
    strata cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH
    """
    if destination == "-" and sys.stdout.isatty():
        raise click.UsageError("cannot copy to a terminal: redirect the tar stream")
    engine_of(ctx).container_copy(source, destination, follow_link=follow_link,
                                  archive=archive, stdin=sys.stdin.buffer,
                                  stdout=sys.stdout.buffer)


@click.command("top", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.argument("container")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def top_cmd(ctx: click.Context, container: str, ps_args: tuple[str, ...]) -> None:
    """Display the running processes of a container (host ps options, default -ef)."""
    result = engine_of(ctx).container_top(container, ps_args)
    click.echo(render.table(list(result.titles), [list(p) for p in result.processes]),
               nl=False)


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.pass_context
def container_prune_cmd(ctx: click.Context, force: bool) -> None:
    """Remove all stopped containers."""
    if not force and not click.confirm("WARNING! This will remove all stopped containers.\n"
                                       "Are you sure you want to continue?", default=False):
        return
    deleted, reclaimed = engine_of(ctx).container_prune()
    if deleted:
        click.echo("Deleted Containers:")
        for cid in deleted:
            click.echo(cid)
        click.echo("")
    click.echo(f"Total reclaimed space: {render.human_size(reclaimed)}")


def register(group: click.Group) -> None:
    """Attach ``inspect`` (replacing the image-only one), ``diff``, ``commit``, ``cp`` and
    ``top`` at top level, and them with ``prune`` under ``container`` (made if missing)."""
    for cmd in (inspect_cmd, diff_cmd, commit_cmd, cp_cmd, top_cmd):
        group.add_command(cmd)
    container = group.commands.get("container")
    if not isinstance(container, click.Group):
        container = click.Group("container", help="Manage containers.")
        group.add_command(container)
    container.add_command(container_inspect_cmd)
    for cmd in (diff_cmd, commit_cmd, cp_cmd, top_cmd, container_prune_cmd):
        container.add_command(cmd)
