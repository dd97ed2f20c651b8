"""Registry commands: ``registry serve`` runs strata's registry, ``registry gc`` collects its
garbage.  Both read a distribution-style config file (``--config``) and/or a filesystem
storage root (``--root``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

import click

from strata.cli import render
from strata.cli.context import State
from strata.engine import default_root

__all__ = ["register"]


def _default_root(ctx: click.Context) -> Path:
    """``<strata root>/registry``: the store root given by ``strata --root`` or the default."""
    state = ctx.find_object(State)
    return (state.root if state is not None and state.root is not None else default_root()) / "registry"


@click.group("registry")
def registry_group() -> None:
    """Run strata's OCI registry and maintain its storage."""


@registry_group.command("serve")
@click.option("--listen", metavar="HOST:PORT", help="Address to listen on (default 127.0.0.1:5000).")
@click.option("--root", "storage_root", type=click.Path(path_type=Path),
              help="Filesystem storage directory (default: the config's, else <strata root>/registry).")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Configuration file (YAML or TOML, distribution's config.yml shape).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Serving processes sharing the port (SO_REUSEPORT).")
@click.option("--access-log", type=click.Path(path_type=Path, dir_okay=False),
              help="Append JSON access lines to this file instead of stderr ('-' for stderr).")
@click.option("--loop", "event_loop", type=click.Choice(["asyncio", "uvloop"]), default="asyncio",
              show_default=True,
              help="Event loop: asyncio sends blobs with zero-copy sendfile; uvloop has none.")
@click.pass_context
def serve_cmd(ctx: click.Context, listen: str | None, storage_root: Path | None, config_path: Path | None,
              workers: int, access_log: Path | None, event_loop: str) -> None:
    """Serve the registry until SIGTERM (in-flight requests finish first)."""
    # Imported here: the server (aiohttp) would add a quarter second to every other command.
    from strata.registry.server import ServeOptions, resolve_config, serve

    if storage_root is None and config_path is None:
        storage_root = _default_root(ctx)
    config = resolve_config(config_path, root=storage_root, listen=listen)
    if config.access_log_path is not None and access_log is None:
        access_log = config.access_log_path
    sink: TextIO = sys.stderr
    if access_log is not None and str(access_log) != "-":
        sink = open(access_log, "a", buffering=1)  # noqa: SIM115 - lives as long as the server
    def ready(address: str) -> None:
        click.echo(f"strata registry listening on {address} ({config.storage_driver} storage, "
                   f"pid {os.getpid()})", err=True)

    serve(config, ServeOptions(workers=workers, access_log=sink, event_loop=event_loop, ready=ready))


@registry_group.command("gc")
@click.option("--root", "storage_root", type=click.Path(path_type=Path),
              help="Filesystem storage directory.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Configuration file.")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option("--uploads-older-than", "upload_max_age", type=click.FloatRange(min=0), default=86400.0,
              show_default=True, metavar="SECONDS", help="Purge uploads started longer ago than this.")
@click.option("--blobs-younger-than", "blob_min_age", type=click.FloatRange(min=0), default=3600.0,
              show_default=True, metavar="SECONDS",
              help="Spare unreferenced blobs committed less than this long ago (pushes in flight).")
@click.pass_context
def gc_cmd(ctx: click.Context, storage_root: Path | None, config_path: Path | None, dry_run: bool,
           upload_max_age: float, blob_min_age: float) -> None:
    """Delete blobs no manifest references, and abandoned uploads."""
    from strata.registry.server import resolve_config, run_gc

    if storage_root is None and config_path is None:
        storage_root = _default_root(ctx)
    config = resolve_config(config_path, root=storage_root)
    report = run_gc(config, dry_run=dry_run, upload_max_age=upload_max_age, blob_min_age=blob_min_age)
    verb = "would delete" if dry_run else "deleted"
    for blob in report.swept:
        click.echo(f"{verb} blob {blob.digest} ({render.human_size(blob.size)})")
    for upload in report.uploads:
        click.echo(f"{verb} upload {upload.id} ({render.human_size(upload.size)})")
    if report.recent:
        click.echo(f"kept {report.recent} unreferenced blobs younger than {blob_min_age:g}s")
    for problem in report.errors:
        click.echo(f"warning: {problem}", err=True)
    click.echo(
        f"{report.repositories} repositories, {report.marked} blobs marked, "
        f"{len(report.swept)} blobs and {len(report.uploads)} uploads "
        f"{'to delete' if dry_run else 'deleted'}, "
        f"{render.human_size(report.freed)} {'reclaimable' if dry_run else 'freed'}"
    )


def register(cli: click.Group) -> None:
    """Add the ``registry`` group to the top-level command."""
    cli.add_command(registry_group)
