"""One whole build: Dockerfile → stage graph → stages → image → outputs.

:func:`build` parses the Dockerfile, prunes the stage graph to the target, builds the needed
stages (independent ones concurrently) with :class:`~strata.build.executor.StageBuilder`,
assembles the target's image, names it in the store and writes the file outputs.  Work in
progress is held under a content lease; a failed build removes the active snapshots it
made and records no image (blobs it wrote are left to garbage collection).
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from strata.build.cache import BuildCache
from strata.build.dockerfile import Stage, parse
from strata.build.executor import (
    BuildEvent,
    BuildProgress,
    BuildSettings,
    ContextFiles,
    ImageSource,
    StageBuilder,
    StageResult,
    Workspace,
)
from strata.build.output import BuiltImage, OutputSpec, assemble, record, write_output
from strata.build.stages import build_graph, meta_args, needed
from strata.content import LocalStore
from strata.errors import InvalidArgument
from strata.images import ImageStore
from strata.oci import Reference, format_time
from strata.snapshots import Snapshotter

__all__ = ["BuildOptions", "BuildRequest", "BuildResult", "build", "parse_secret"]


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """A build: the Dockerfile text, the context, and the options.

    Attributes:
        dockerfile: the Dockerfile's text.
        dockerfile_path: its name for error messages.
        context: the context's files (None: no context, e.g. a Dockerfile from stdin only).
        tags: ``-t`` names.
        target: ``--target`` stage.
        outputs: ``--output`` specs besides the image store (which always gets the image).
        settings: build args, cache, pull, platform, secrets, network, SOURCE_DATE_EPOCH.
        workers: how many stages may build at once.
    """

    dockerfile: str
    dockerfile_path: str = "Dockerfile"
    context: ContextFiles | None = None
    tags: tuple[Reference, ...] = ()
    target: str | None = None
    outputs: tuple[OutputSpec, ...] = ()
    settings: BuildSettings = field(default_factory=BuildSettings)
    workers: int = 2


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """``strata build``'s options as the CLI gives them (the engine turns them into a
    :class:`BuildRequest`).

    Attributes:
        context: the context directory; None with ``context_stream`` (``-``).
        context_stream: a context tar, or a lone Dockerfile, read from stdin.
        dockerfile: ``-f`` (relative to the current directory; may lie outside the context).
        tags: ``-t`` names.
        build_args: ``--build-arg`` values (``KEY`` alone takes the caller's environment).
        target: ``--target``.
        no_cache: ``--no-cache``.
        pull: ``--pull``.
        outputs: ``--output`` specs (``type=oci,dest=out.tar``).
        platform: ``--platform``.
        secrets: ``--secret id=ID,src=PATH``.
        network: ``--network`` for RUN (default, host, none).
        source_date_epoch: ``SOURCE_DATE_EPOCH``.
        iidfile: ``--iidfile``: where to write the image ID.
    """

    context: Path | None = None
    context_stream: BinaryIO | None = None
    dockerfile: Path | None = None
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    outputs: tuple[str, ...] = ()
    platform: str | None = None
    secrets: tuple[str, ...] = ()
    network: str = "default"
    source_date_epoch: int | None = None
    iidfile: Path | None = None


def parse_secret(text: str) -> tuple[str, Path]:
    """``id=ID,src=PATH`` (or ``type=file``, ``source=``) → (id, path).

    Raises:
        InvalidArgument: no id or no source.
    """
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        fields[key.strip().lower()] = value.strip()
    sid = fields.get("id")
    src = fields.get("src") or fields.get("source")
    if not sid or not src:
        raise InvalidArgument(f"--secret {text!r}: expected id=ID,src=PATH")
    return sid, Path(src)


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What a build made."""

    image: BuiltImage
    tags: tuple[Reference, ...]
    unused_args: tuple[str, ...]


def build(request: BuildRequest, *, content: LocalStore, images: ImageStore,
          snapshotter: Snapshotter, cache: BuildCache, workdir: Path, source: ImageSource,
          progress: BuildProgress) -> BuildResult:
    """Run a build (see the module docstring).

    Raises:
        DockerfileError: the Dockerfile does not parse, or the target does not exist.
        BuildStepFailed: a step failed (its command, exit code and output tail).
        NotFound: a base image, a stage or a source file does not exist.
        InvalidArgument: a bad instruction or option.
    """
    df = parse(request.dockerfile, path=request.dockerfile_path)
    settings = request.settings
    margs = meta_args(df, settings.build_args)
    order = needed(df, request.target, margs)
    run_dir = workdir / f"b-{secrets.token_hex(6)}"
    run_dir.mkdir(parents=True)
    with content.lease(label="build") as lease:
        ws = Workspace(content=content, images=images, snapshotter=snapshotter, cache=cache,
                       workdir=run_dir, lease=lease, source=source, context=request.context,
                       settings=settings, progress=progress)
        try:

            def build_one(stage: Stage, deps: Mapping[str, StageResult]) -> StageResult:
                return StageBuilder(ws, stage, deps=deps, meta_args=margs,
                                    escape=df.escape).build()

            results = build_graph(df, order, margs, build_one, workers=request.workers)
            target = results[order[-1]]
            step = ws.next_step()
            started = time.monotonic()
            progress(BuildEvent(step, "exporting to image", "start"))
            epoch = settings.source_date_epoch
            when = dt.datetime.fromtimestamp(epoch, dt.UTC) if epoch is not None else \
                dt.datetime.now(dt.UTC)
            created = format_time(when) if epoch is not None or target.created is None else \
                target.created
            built = assemble(content, target, created=created)
            progress(BuildEvent(step, "exporting to image", "log",
                                f"writing image {built.image_id} done"))
            record(images, built, request.tags)
            for ref in request.tags:
                progress(BuildEvent(step, "exporting to image", "log",
                                    f"naming to {ref} done"))
            for spec in request.outputs:
                if spec.type in ("oci", "docker"):
                    write_output(content, images, built, spec, request.tags, tmpdir=run_dir)
                    progress(BuildEvent(step, "exporting to image", "log",
                                        f"exporting {spec.type} to {spec.dest} done"))
                elif spec.type not in ("image", "registry"):
                    raise InvalidArgument(f"--output type={spec.type} is not supported")
            progress(BuildEvent(step, "exporting to image", "done",
                                elapsed=time.monotonic() - started))
        except BaseException:
            ws.release_all()
            raise
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    declared = {key for ins in df.meta_args for key, _ in ins.pairs()}
    for stage in df.stages:
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                declared.update(key for key, _ in ins.pairs())
    unused = tuple(sorted(k for k in settings.build_args if k not in declared))
    return BuildResult(built, request.tags, unused)
