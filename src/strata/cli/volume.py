"""Mount options of ``run`` / ``create`` (``-v``, ``--mount``) and ``volume`` commands.

:data:`OPTIONS` are added to the container commands by :mod:`strata.cli.run`; :func:`fields`
turns what was parsed into :class:`~strata.runtime.RunOptions` fields.  ``strata volume
create|ls|inspect|rm|prune`` print what docker prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from strata.cli import render
from strata.cli.context import engine_of
from strata.errors import InvalidArgument, StrataError

__all__ = ["OPTIONS", "fields", "register"]

OPTIONS: tuple[Callable[[Any], Any], ...] = (
    click.option("-v", "--volume", "volumes", multiple=True,
                 metavar="[HOST-DIR|NAME:]CONTAINER-DIR[:OPTIONS]",
                 help="Bind mount a host directory or mount a volume."),
    click.option("--mount", "mounts", multiple=True,
                 metavar="type=bind|volume|tmpfs,source=...,target=...[,readonly]",
                 help="Attach a filesystem mount to the container."),
)


def fields(opts: dict[str, Any]) -> dict[str, Any]:
    """RunOptions fields from the parsed options."""
    return {"volumes": tuple(opts["volumes"]), "mounts": tuple(opts["mounts"])}


@click.group("volume")
def volume_group() -> None:
    """Manage volumes."""


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid label: {item!r}")
        out[key] = value
    return out


@volume_group.command("create")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Set metadata.")
@click.option("-d", "--driver", default="local", help="Volume driver name (local only).")
@click.argument("name", required=False)
@click.pass_context
def create_cmd(ctx: click.Context, labels: tuple[str, ...], driver: str, name: str | None
               ) -> None:
    """Create a volume (print its name)."""
    if driver != "local":
        raise InvalidArgument(f"plugin \"{driver}\" not found")
    info = engine_of(ctx).volume_create(name, labels=_labels(labels))
    click.echo(info.name)


@volume_group.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display volume names.")
@click.pass_context
def ls_cmd(ctx: click.Context, quiet: bool) -> None:
    """List volumes."""
    infos = engine_of(ctx).volumes_list()
    if quiet:
        for info in infos:
            click.echo(info.name)
        return
    click.echo(render.table(["DRIVER", "VOLUME NAME"], [["local", i.name] for i in infos]),
               nl=False)


@volume_group.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def inspect_cmd(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Display detailed information on one or more volumes."""
    engine = engine_of(ctx)
    out, failed = [], False
    for name in names:
        try:
            out.append(engine.volume_inspect(name).to_docker_json())
        except StrataError as exc:
            click.echo(f"Error: {exc}", err=True)
            failed = True
    click.echo(json.dumps(out, indent=4))
    if failed:
        sys.exit(1)


@volume_group.command("rm")
@click.option("-f", "--force", is_flag=True, help="Do not fail on a missing volume.")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def rm_cmd(ctx: click.Context, force: bool, names: tuple[str, ...]) -> None:
    """Remove one or more volumes."""
    engine = engine_of(ctx)
    failed = False
    for name in names:
        try:
            engine.volume_remove(name, force=force)
        except StrataError as exc:
            click.echo(f"Error response from daemon: {exc}", err=True)
            failed = True
            continue
        click.echo(name)
    if failed:
        sys.exit(1)


@volume_group.command("prune")
@click.option("-a", "--all", "all_volumes", is_flag=True,
              help="Remove all unused volumes, not just anonymous ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.pass_context
def prune_cmd(ctx: click.Context, all_volumes: bool, force: bool) -> None:
    """Remove unused volumes."""
    if not force and sys.stdin.isatty() and not click.confirm(
            "WARNING! This will remove anonymous local volumes not used by at least one "
            "container.\nAre you sure you want to continue?"):
        return
    removed, size = engine_of(ctx).volume_prune(all_volumes=all_volumes)
    if removed:
        click.echo("Deleted Volumes:")
        for name in removed:
            click.echo(name)
        click.echo("")
    click.echo(f"Total reclaimed space: {render.human_size(size)}")


def register(group: click.Group) -> None:
    """Attach the ``volume`` group."""
    group.add_command(volume_group)
