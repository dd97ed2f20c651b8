"""Helpers for build tests: contexts written from dicts, builds that record their events,
and the layers of a built image read back as tar listings."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from strata.build import BuildEvent, BuildOptions, BuildResult
from strata.engine import Engine
from strata.oci import ImageConfig, Manifest

__all__ = ["BuildRun", "build", "image_of", "layer_members", "write_context"]


def write_context(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``files`` (relative path → content; a path ending in ``/`` is a directory)
    under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


@dataclass(slots=True)
class BuildRun:
    """A finished build and what it reported."""

    result: BuildResult
    events: list[BuildEvent] = field(default_factory=list)

    def kinds(self, prefix: str) -> list[str]:
        """The final kind (``cached``/``done``) of each step whose name contains ``prefix``."""
        out: dict[int, str] = {}
        for event in self.events:
            if prefix in event.name and event.kind in ("cached", "done", "error"):
                out[event.step] = event.kind
        return [out[k] for k in sorted(out)]

    def logs(self) -> list[str]:
        return [e.text for e in self.events if e.kind == "log" and "exporting" not in e.name]


def build(engine: Engine, context: Path, *, events: list[BuildEvent] | None = None,
          **options: object) -> BuildRun:
    """``engine.build`` of ``context`` with :class:`BuildOptions` fields as keywords."""
    seen: list[BuildEvent] = [] if events is None else events
    opts = BuildOptions(context=context, **options)  # type: ignore[arg-type]
    result = engine.build(opts, progress=seen.append)
    return BuildRun(result, seen)


def image_of(engine: Engine, run: BuildRun) -> tuple[Manifest, ImageConfig]:
    """The manifest and config of a build's image."""
    raw = engine.content.read(run.result.image.manifest.digest)
    manifest = Manifest.parse(raw)
    config = ImageConfig.parse(engine.content.read(manifest.config.digest))
    return manifest, config


def layer_members(engine: Engine, run: BuildRun, index: int) -> dict[str, tarfile.TarInfo]:
    """The members of the image's layer ``index`` (negative counts from the top)."""
    manifest, _ = image_of(engine, run)
    raw = engine.content.read(manifest.layers[index].digest)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def mounts_under(root: Path) -> list[str]:
    """Mount points below ``root`` (leaks)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(os.fspath(root)):
            out.append(point)
    return out
