"""Reproducible builds: with SOURCE_DATE_EPOCH, two builds of the same inputs in different
store roots, at different times and from files with different mtimes, give the same
manifest digest."""

from __future__ import annotations

import os
import time
from pathlib import Path

from strata.engine import Engine
from strata.testing.builds import BuildRun, build, image_of, layer_members, write_context

DOCKERFILE = """\
FROM localhost/busybox:latest AS gen
RUN mkdir -p /out && echo generated > /out/g && touch /out/t

FROM localhost/busybox:latest
WORKDIR /app
COPY src/ ./src/
COPY --from=gen /out /gen
RUN echo done > /app/done && rm -f /etc/motd
ENV MODE=repro
CMD ["cat", "/app/done"]
"""

EPOCH = 1_700_000_000


def _build(tmp: Path, layout: Path, mtime: int) -> tuple[Engine, BuildRun]:
    engine = Engine(tmp / "root")
    engine.load(layout)
    ctx = write_context(tmp / "ctx", {"Dockerfile": DOCKERFILE, "src/a.c": "int main;",
                                      "src/sub/b.h": "#pragma once\n"})
    for path in (ctx / "src").rglob("*"):
        os.utime(path, (mtime, mtime))
    run = build(engine, ctx, tags=("repro:1",), source_date_epoch=EPOCH)
    return engine, run



def test_same_inputs_give_the_same_manifest_digest(tmp_path: Path, busybox_layout: Path) -> None:
    e1, r1 = _build(tmp_path / "one", busybox_layout, mtime=EPOCH + 1000)
    time.sleep(1.1)  # a later second; context mtimes differ but both lie after the epoch (clamped)
    e2, r2 = _build(tmp_path / "two", busybox_layout, mtime=int(time.time()))
    assert r1.result.image.manifest.digest == r2.result.image.manifest.digest
    _, config = image_of(e1, r1)
    assert config.created == "2023-11-14T22:13:20Z"
    new = [h for h in config.history if h.created_by and "busybox" not in h.created_by
           and h.created_by != '/bin/sh -c #(nop)  CMD ["sh"]']
    assert new and all(h.created == "2023-11-14T22:13:20Z" for h in new)
    for member in layer_members(e2, r2, -1).values():
        assert member.mtime <= EPOCH
    # without the epoch the times are the build's own: the digests differ
    run3 = build(e2, e2.root.parent / "ctx", no_cache=True)
    assert run3.result.image.manifest.digest != r2.result.image.manifest.digest
