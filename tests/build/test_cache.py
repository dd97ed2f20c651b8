"""The build cache: keys from content (not mtimes), exact invalidation, persistence across
engines, ``--no-cache``, and ``builder prune`` with garbage collection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strata.build import BuildCache
from strata.engine import Engine
from strata.oci import Digest
from strata.testing.builds import BuildRun, build, write_context

DOCKERFILE = """\
FROM localhost/busybox:latest
RUN echo base > /base
COPY first.txt /first.txt
RUN cat /first.txt > /first.copy
COPY second.txt /second.txt
RUN date +%s%N > /stamp
"""


@pytest.fixture
def engine(tmp_path: Path, busybox_layout: Path) -> Engine:
    eng = Engine(tmp_path / "root")
    eng.load(busybox_layout)
    return eng


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return write_context(tmp_path / "ctx", {
        "Dockerfile": DOCKERFILE, "first.txt": "1", "second.txt": "2",
        "notes.log": "ignored", ".dockerignore": "*.log\n",
    })


def _steps(run: BuildRun) -> list[str]:
    """cached/done for each RUN or COPY step, in order."""
    out: dict[int, str] = {}
    for e in run.events:
        if ("RUN" in e.name or "COPY" in e.name) and e.kind in ("cached", "done"):
            out[e.step] = e.kind
    return [out[k] for k in sorted(out)]


def _blobs(engine: Engine) -> set[Digest]:
    return {b.digest for b in engine.content.walk()}


def test_unchanged_rebuild_runs_nothing_and_makes_no_layer(engine: Engine, ctx: Path) -> None:
    first = build(engine, ctx, tags=("c:1",))
    assert _steps(first) == ["done"] * 5
    blobs = _blobs(engine)
    again = build(Engine(engine.root), ctx, tags=("c:1",))  # a new engine: the cache persists
    assert _steps(again) == ["cached"] * 5
    assert again.logs() == []
    assert again.result.image.image_id == first.result.image.image_id
    assert _blobs(engine) == blobs


def test_changed_file_invalidates_its_step_and_later_only(engine: Engine, ctx: Path) -> None:
    first = build(engine, ctx)
    (ctx / "second.txt").write_text("changed")
    second = build(engine, ctx)
    assert _steps(second) == ["cached", "cached", "cached", "done", "done"]
    assert second.result.image.image_id != first.result.image.image_id
    (ctx / "first.txt").write_text("changed too")
    third = build(engine, ctx)
    assert _steps(third) == ["cached", "done", "done", "done", "done"]


def test_mtime_and_ignored_files_invalidate_nothing(engine: Engine, ctx: Path) -> None:
    first = build(engine, ctx)
    os.utime(ctx / "first.txt", (1_000_000, 1_000_000))
    (ctx / "notes.log").write_text("different, but ignored")
    (ctx / "new.log").write_text("new, but ignored")
    second = build(engine, ctx)
    assert _steps(second) == ["cached"] * 5
    assert second.result.image.image_id == first.result.image.image_id


def test_build_args_in_use_are_part_of_the_key(engine: Engine, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "args", {"Dockerfile": (
        "FROM localhost/busybox:latest\nRUN echo plain > /p\nARG V\nRUN echo $V > /v\n")})
    build(engine, ctx, build_args={"V": "1"})
    same = build(engine, ctx, build_args={"V": "1"})
    assert _steps(same) == ["cached", "cached"]
    other = build(engine, ctx, build_args={"V": "2"})
    assert _steps(other) == ["cached", "done"]


def test_no_cache_runs_every_step(engine: Engine, ctx: Path) -> None:
    build(engine, ctx)
    again = build(engine, ctx, no_cache=True)
    assert _steps(again) == ["done"] * 5


def test_builder_prune_forgets_the_cache_and_collects_blobs(engine: Engine, ctx: Path) -> None:
    run = build(engine, ctx)  # untagged: only the cache and a dangling record keep it
    layer_blobs = _blobs(engine)
    engine.remove([str(run.result.image.image_id)])
    # image removal alone keeps the cached layers (docker: image prune keeps build cache)
    assert len(list(engine.build_cache.walk())) > 0
    kept = _blobs(engine)
    assert kept and kept < layer_blobs
    report = engine.builder_prune()
    assert report.events and report.reclaimed > 0
    assert list(BuildCache(engine.root / "build" / "cache.db").walk()) == []
    base_only = _blobs(engine)
    assert len(base_only) < len(kept)
    rebuilt = build(engine, ctx)
    assert _steps(rebuilt) == ["done"] * 5


def test_content_change_with_old_mtime_and_size_still_invalidates(engine: Engine,
                                                                  ctx: Path) -> None:
    build(engine, ctx)  # through the CLI's path: the context digest memo is filled
    path = ctx / "first.txt"
    st = path.stat()
    path.write_text("9")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only ctime differs
    again = build(Engine(engine.root), ctx)
    assert _steps(again) == ["cached", "done", "done", "done", "done"]
