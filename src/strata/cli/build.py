"""``strata build`` and ``strata builder prune``: parse options, call the engine, draw
BuildKit-style plain progress (``#N [stage k/n] RUN ...``, ``CACHED``, ``DONE 0.3s``) on
stderr; ``-q`` prints only the image ID on stdout."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from strata.cli import render
from strata.cli.context import engine_of
from strata.errors import InvalidArgument

if TYPE_CHECKING:
    from strata.build import BuildEvent

__all__ = ["PlainProgress", "register"]


class PlainProgress:
    """Renders build events as BuildKit's ``--progress=plain`` does."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.lock = threading.Lock()
        self.started: set[int] = set()
        self.last: int | None = None

    def _echo(self, text: str) -> None:
        click.echo(text, err=True)

    def __call__(self, event: BuildEvent) -> None:
        if self.quiet:
            return
        with self.lock:
            n = event.step
            if event.kind == "start":
                if self.last is not None:
                    self._echo("")
                self._echo(f"#{n} {event.name}")
            elif event.kind == "log":
                self._echo(f"#{n} {event.elapsed:.3f} {event.text}")
            elif event.kind == "cached":
                self._echo(f"#{n} CACHED")
            elif event.kind == "done":
                self._echo(f"#{n} DONE {event.elapsed:.1f}s")
            elif event.kind == "error":
                self._echo(f"#{n} ERROR: {event.text.splitlines()[0] if event.text else ''}")
            self.last = n


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"--build-arg {item!r}: expected KEY=VALUE")
        if sep:
            out[key] = value
        elif key in os.environ:  # docker: KEY alone takes the value from the environment
            out[key] = os.environ[key]
    return out


@click.command("build")
@click.argument("context", required=True)
@click.option("-t", "--tag", "tags", multiple=True, help="Name and optionally a tag (name:tag).")
@click.option("-f", "--file", "dockerfile", type=click.Path(path_type=Path),
              help="Name of the Dockerfile (default: CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, help="Set build-time variables.")
@click.option("--target", help="Set the target build stage to build.")
@click.option("--no-cache", is_flag=True, help="Do not use cache when building the image.")
@click.option("--pull", is_flag=True, help="Always attempt to pull a newer version of the image.")
@click.option("-o", "--output", "outputs", multiple=True,
              help="Output destination (type=oci|docker|registry,dest=PATH).")
@click.option("--platform", help="Set platform (only the host's can RUN).")
@click.option("--iidfile", type=click.Path(path_type=Path), help="Write the image ID to the file.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the build output and print image ID"
              " on success.")
@click.option("--secret", "secrets", multiple=True, help="Secret to expose (id=ID,src=PATH).")
@click.option("--network", default="default", help="Networking mode for RUN (default, host,"
              " none).")
@click.option("--progress", "progress_mode", default="auto",
              type=click.Choice(["auto", "plain", "tty", "quiet"]), help="Progress output type.")
@click.pass_context
def build_cmd(ctx: click.Context, context: str, tags: tuple[str, ...], dockerfile: Path | None,
              build_args: tuple[str, ...], target: str | None, no_cache: bool, pull: bool,
              outputs: tuple[str, ...], platform: str | None, iidfile: Path | None,
              quiet: bool, secrets: tuple[str, ...], network: str, progress_mode: str) -> None:
    """Build an image from a Dockerfile."""
    from strata.build import BuildOptions  # imported when used: CLI start-up time

    epoch_text = os.environ.get("SOURCE_DATE_EPOCH")
    args = _build_args(build_args)
    epoch_text = args.get("SOURCE_DATE_EPOCH", epoch_text)
    epoch: int | None = None
    if epoch_text:
        if not epoch_text.isdigit():
            raise InvalidArgument(f"SOURCE_DATE_EPOCH {epoch_text!r} is not a number of seconds")
        epoch = int(epoch_text)
    options = BuildOptions(
        context=None if context == "-" else Path(context),
        context_stream=sys.stdin.buffer if context == "-" else None,
        dockerfile=dockerfile, tags=tags, build_args=args, target=target, no_cache=no_cache,
        pull=pull, outputs=outputs, platform=platform, secrets=secrets, network=network,
        source_date_epoch=epoch, iidfile=iidfile)
    progress = PlainProgress(quiet=quiet or progress_mode == "quiet")
    result = engine_of(ctx).build(options, progress=progress)
    if quiet:
        click.echo(str(result.image.image_id))
    elif result.unused_args:
        click.echo(f"[Warning] One or more build-args {list(result.unused_args)} were not"
                   " consumed", err=True)


@click.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused build cache.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.pass_context
def builder_prune_cmd(ctx: click.Context, all_: bool, force: bool) -> None:
    """Remove build cache."""
    del all_, force
    report = engine_of(ctx).builder_prune()
    if report.events:
        click.echo("Deleted build cache objects:")
        for event in report.events:
            click.echo(event.what.removeprefix("sha256:")[:25])
    click.echo(f"Total reclaimed space: {render.human_size(report.reclaimed, 3)}")


def register(group: click.Group) -> None:
    """Attach ``build`` (and ``image build``, ``builder build``) and ``builder prune``."""
    group.add_command(build_cmd)
    builder = click.Group("builder", help="Manage builds.")
    builder.add_command(build_cmd)
    builder.add_command(builder_prune_cmd)
    group.add_command(builder)
