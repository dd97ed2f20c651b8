"""System commands: ``system df [-v]``, ``system fsck``, ``system prune``."""

from __future__ import annotations

import click

from strata.cli import render
from strata.cli.context import engine_of

__all__ = ["register"]


@click.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage.")
@click.pass_context
def df_cmd(ctx: click.Context, verbose: bool) -> None:
    """Show strata disk usage (docker's definitions)."""
    usage = engine_of(ctx).disk_usage()
    if not verbose:
        total = usage.layers_size
        reclaim = usage.reclaimable
        reclaimable = (f"{render.human_size(reclaim)} ({reclaim * 100 // total}%)" if total > 0
                       else render.human_size(reclaim))
        rows = [
            ["Images", str(len(usage.images)), str(usage.active), render.human_size(total),
             reclaimable],
            ["Containers", "0", "0", "0B", "0B"],
            ["Local Volumes", "0", "0", "0B", "0B"],
            ["Build Cache", "0", "0", "0B", "0B"],
        ]
        click.echo(render.table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows), nl=False)
        return
    rows = []
    for s in usage.images:
        repo, tag = "<none>", "<none>"
        if s.repo_tags:
            repo, _, tag = s.repo_tags[0].rpartition(":")
        rows.append([repo, tag, render.truncate_id(str(s.id)), render.since(s.created),
                     render.human_size(s.size), render.human_size(s.shared_size),
                     render.human_size(s.unique_size), str(s.containers)])
    out = ["Images space usage:\n\n"]
    out.append(render.table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
                             "UNIQUE SIZE", "CONTAINERS"], rows))
    out.append("\nContainers space usage:\n\n")
    out.append(render.table(["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE",
                             "CREATED", "STATUS", "NAMES"], []))
    out.append("\nLocal Volumes space usage:\n\n")
    out.append(render.table(["VOLUME NAME", "LINKS", "SIZE"], []))
    out.append("\nBuild cache usage: 0B\n\n")
    out.append(render.table(["CACHE ID", "CACHE TYPE", "SIZE", "CREATED", "LAST USED", "USAGE",
                             "SHARED"], []))
    click.echo("".join(out), nl=False)


@click.command("fsck")
@click.pass_context
def fsck_cmd(ctx: click.Context) -> None:
    """Verify every blob's digest and every image's references."""
    report = engine_of(ctx).fsck()
    for problem in report.problems:
        click.echo(f"ERROR: {problem}", err=True)
    click.echo(f"checked {report.blobs} blobs and {report.images} image records:"
               f" {len(report.problems)} problems, {report.unreferenced} unreferenced blobs,"
               f" {report.ingests} unfinished ingests")
    if not report.ok:
        ctx.exit(1)


@click.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.pass_context
def system_prune_cmd(ctx: click.Context, all_: bool, force: bool) -> None:
    """Remove dangling images (all unused with -a) and unreferenced blobs."""
    if not force and not click.confirm("WARNING! This will remove dangling images and"
                                       " unreferenced blobs.\nAre you sure you want to"
                                       " continue?", default=False):
        return
    engine = engine_of(ctx)
    report = engine.prune(all_images=all_)
    for event in report.events:
        click.echo(f"{event.action}: {event.what}")
    click.echo(f"Total reclaimed space: {render.human_size(report.reclaimed)}")


def register(group: click.Group) -> None:
    system = click.Group("system", help="Manage strata.")
    system.add_command(df_cmd)
    system.add_command(fsck_cmd)
    system.add_command(system_prune_cmd)
    group.add_command(system)
