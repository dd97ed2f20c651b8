"""Image commands: images, inspect, history, tag, rmi, save, load, import, unpack, image prune."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from strata.cli import render
from strata.cli.context import engine_of
from strata.engine import HistoryItem
from strata.images import ImageSummary, SaveFormat
from strata.oci import Platform, format_time

__all__ = ["register"]


def _image_rows(summaries: list[ImageSummary], *, no_trunc: bool) -> list[list[str]]:
    """docker's image table: one row per tag, ``<none>`` for untagged/dangling."""
    rows: list[list[str]] = []
    for s in summaries:
        image_id = str(s.id) if no_trunc else render.truncate_id(str(s.id))
        created = render.since(s.created)
        size = render.human_size(s.size, 3)
        if s.repo_tags:
            for tag in s.repo_tags:
                repo, _, t = tag.rpartition(":")
                rows.append([repo, t, image_id, created, size])
        elif s.repo_digests:
            for d in s.repo_digests:
                rows.append([d.split("@", 1)[0], "<none>", image_id, created, size])
        else:
            rows.append(["<none>", "<none>", image_id, created, size])
    return rows


@click.command("images")
@click.argument("reference", required=False)
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all images (no effect: strata"
              " keeps no intermediate images).")
@click.pass_context
def images_cmd(ctx: click.Context, reference: str | None, quiet: bool, no_trunc: bool,
               all_: bool) -> None:
    """List images."""
    del all_
    summaries = engine_of(ctx).images_list(reference)
    if quiet:
        seen: list[str] = []
        for s in summaries:
            value = str(s.id) if no_trunc else render.truncate_id(str(s.id))
            for _ in range(max(1, len(s.repo_tags))):
                seen.append(value)
        click.echo("".join(f"{v}\n" for v in seen), nl=False)
        return
    header = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    click.echo(render.table(header, _image_rows(summaries, no_trunc=no_trunc)), nl=False)


@click.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-s", "--size", is_flag=True, help="Display total file sizes (images always"
              " carry Size).")
@click.option("-f", "--format", "fmt", default=None, help="Print one top-level field"
              " (e.g. '{{.Id}}').")
@click.option("--remote", is_flag=True, help="Inspect the image in its registry (as skopeo"
              " inspect), without pulling it.")
@click.option("--platform", default=None, help="With --remote: which image of a"
              " multi-platform index (os/arch[/variant]).")
@click.pass_context
def inspect_cmd(ctx: click.Context, names: tuple[str, ...], size: bool, fmt: str | None,
                remote: bool, platform: str | None) -> None:
    """Display detailed information on images."""
    del size
    engine = engine_of(ctx)
    plat = Platform.parse(platform) if platform else None
    out = [engine.inspect_remote(name, platform=plat).to_json() if remote
           else engine.inspect(name).to_json() for name in names]
    from strata.cli.containers import render_inspect

    render_inspect(out, fmt)  # the Go-template subset shared with container inspect


@click.command("history")
@click.argument("name")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-H", "--human", type=bool, default=True, show_default=True,
              help="Print sizes and dates in human readable format.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.pass_context
def history_cmd(ctx: click.Context, name: str, no_trunc: bool, human: bool, quiet: bool) -> None:
    """Show the history of an image."""
    items = engine_of(ctx).history(name)
    trunc = not no_trunc

    def row(h: HistoryItem) -> list[str]:
        image_id = render.truncate_id(h.id) if trunc and h.id != "<missing>" else h.id
        created_by = h.created_by.replace("\t", " ")
        if trunc:
            created_by = render.ellipsis(created_by, 45)
        if human:
            created = render.since(h.created)
            size = render.human_size(h.size, 3)
        else:
            created = (format_time(h.created.replace(microsecond=0)) if h.created
                       else "0001-01-01T00:00:00Z")
            size = str(h.size)
        return [image_id, created, created_by, size, h.comment]

    if quiet:
        for h in items:
            click.echo(render.truncate_id(h.id) if trunc and h.id != "<missing>" else h.id)
        return
    header = ["IMAGE", "CREATED" if human else "CREATED AT", "CREATED BY", "SIZE", "COMMENT"]
    click.echo(render.table(header, [row(h) for h in items]), nl=False)


@click.command("tag")
@click.argument("source")
@click.argument("target")
@click.pass_context
def tag_cmd(ctx: click.Context, source: str, target: str) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    engine_of(ctx).tag(source, target)


@click.command("rmi")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Force removal of the image.")
@click.pass_context
def rmi_cmd(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Remove one or more images."""
    for event in engine_of(ctx).remove(list(names), force=force):
        click.echo(f"{event.action}: {event.what}")


@click.command("save")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write to a file (a directory for --format oci), instead of STDOUT.")
@click.option("--format", "fmt", type=click.Choice(list(SaveFormat.ALL)),
              default=SaveFormat.DOCKER_ARCHIVE, show_default=True, help="Archive format.")
@click.pass_context
def save_cmd(ctx: click.Context, names: tuple[str, ...], output: Path | None, fmt: str) -> None:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    if output is None and fmt != SaveFormat.OCI_DIR and sys.stdout.isatty():
        raise click.UsageError("cowardly refusing to save to a terminal. Use the -o flag or"
                               " redirect")
    engine_of(ctx).save(list(names), output, format=fmt)


@click.command("load")
@click.option("-i", "--input", "input_", type=click.Path(path_type=Path), default=None,
              help="Read from a tar archive or OCI layout directory, instead of STDIN.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output.")
@click.option("--platform", default=None, help="Platform to take from a multi-platform index.")
@click.pass_context
def load_cmd(ctx: click.Context, input_: Path | None, quiet: bool, platform: str | None) -> None:
    """Load images from an OCI layout (directory or tar) or a docker-archive."""
    plat = Platform.parse(platform) if platform else None
    source = input_ if input_ is not None else sys.stdin.buffer
    with render.LayerProgress() as progress:
        loaded = engine_of(ctx).load(source, platform=plat,
                                     progress=progress if not quiet else _quiet)
    for image in loaded:
        if image.name is not None:
            click.echo(f"Loaded image: {image.name.familiar()}")
        else:
            click.echo(f"Loaded image ID: {image.image_id}")


def _quiet(event: object) -> None:
    del event


@click.command("import")
@click.argument("file")
@click.argument("reference", required=False)
@click.option("-c", "--change", "changes", multiple=True,
              help="Apply Dockerfile instruction to the created image.")
@click.option("-m", "--message", default="", help="Set commit message for imported image.")
@click.option("--platform", default=None, help="Set platform if server is multi-platform capable.")
@click.pass_context
def import_cmd(ctx: click.Context, file: str, reference: str | None, changes: tuple[str, ...],
               message: str, platform: str | None) -> None:
    """Import the contents from a tarball to create a filesystem image."""
    plat = Platform.parse(platform) if platform else None
    engine = engine_of(ctx)
    if file == "-":
        result = engine.import_rootfs(sys.stdin.buffer, reference=reference, message=message,
                                      changes=changes, platform=plat)
    else:
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise click.ClickException(f"open {file}: {exc.strerror}") from exc
        with stream:
            result = engine.import_rootfs(stream, reference=reference, message=message,
                                          changes=changes, platform=plat)
    click.echo(str(result.image_id))


@click.command("unpack")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_context
def unpack_cmd(ctx: click.Context, name: str, dest: Path) -> None:
    """Unpack an image's root filesystem into DEST (as umoci unpack writes DEST/rootfs)."""
    engine_of(ctx).unpack(name, dest)


@click.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images, not just"
              " dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.pass_context
def prune_cmd(ctx: click.Context, all_: bool, force: bool) -> None:
    """Remove unused images."""
    if not force:
        warning = ("WARNING! This will remove all images without at least one container"
                   " associated to them." if all_ else
                   "WARNING! This will remove all dangling images.")
        if not click.confirm(f"{warning}\nAre you sure you want to continue?", default=False):
            return
    report = engine_of(ctx).prune(all_images=all_)
    if report.events:
        click.echo("Deleted Images:")
        for event in report.events:
            click.echo(f"{event.action}: {event.what}")
        click.echo("")
    click.echo(f"Total reclaimed space: {render.human_size(report.reclaimed)}")


def register(group: click.Group) -> None:
    """Attach the image commands at top level (docker style) and under ``image``."""
    for cmd in (images_cmd, inspect_cmd, history_cmd, tag_cmd, rmi_cmd, save_cmd, load_cmd,
                import_cmd, unpack_cmd):
        group.add_command(cmd)
    image = click.Group("image", help="Manage images.")
    image.add_command(images_cmd, "ls")
    image.add_command(inspect_cmd)
    image.add_command(history_cmd)
    image.add_command(tag_cmd)
    image.add_command(rmi_cmd, "rm")
    image.add_command(save_cmd)
    image.add_command(load_cmd)
    image.add_command(import_cmd)
    image.add_command(unpack_cmd)
    image.add_command(prune_cmd)
    group.add_command(image)
