"""Unpacking images into snapshots (``strata.images.rootfs``): the mounted result equals the
plain-directory unpack and umoci's tree, layers are committed as chainIDs, shared layers are
extracted once, bad layers commit nothing, streams can be fed and aborted, and a killed
unpack is cleaned up by the next one."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidArgument,
    InvalidContent,
    Unavailable,
    UnsafeArchive,
)
from strata.images import Extractor, ImageUnpack, LocalImage, apply_layers, unpack
from strata.oci import Compression, Digest, chain_ids, mediatypes
from strata.snapshots import Kind, NativeSnapshotter, OverlaySnapshotter, Snapshotter
from strata.testing import baseimages, trees
from strata.testing import images as testimages
from strata.testing.snapshots import mounted
from strata.testing.tars import Entry, build
from strata.testing.tools import unmount_under

DRIVERS: dict[str, Callable[[Path], Snapshotter]] = {
    "overlay": OverlaySnapshotter,
    "native": NativeSnapshotter,
}


@pytest.fixture(scope="module")
def extractor() -> Iterator[Extractor]:
    with Extractor(2) as pool:
        yield pool


@pytest.fixture(params=sorted(DRIVERS))
def snapshotter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    try:
        yield DRIVERS[request.param](tmp_path / "snapshots")
    finally:
        unmount_under(tmp_path)


def _layers(engine: Engine, ref: str) -> list[tuple[Digest, Path, Compression | None]]:
    image = engine.resolve(ref).image
    return [(layer.diff_id, engine.content.blob_path(layer.descriptor.digest),
             mediatypes.layer_compression(layer.descriptor.media_type))
            for layer in image.layers()]


def _load(engine: Engine, built: testimages.BuiltImage, tmp: Path) -> None:
    engine.load(testimages.write_layout(tmp / f"layout-{random.randrange(1 << 30)}", [built]))


def _leftovers(sn: Snapshotter) -> list[str]:
    return sorted(i.name for i in sn.walk() if i.kind is not Kind.COMMITTED)


def _layer_tar(entries: list[Entry]) -> bytes:
    return build(entries)


def _three_layers() -> list[bytes]:
    return [
        _layer_tar([Entry.dir("etc"), Entry.file("etc/a", b"a1"), Entry.file("etc/gone", b"g"),
                    Entry.dir("opt"), Entry.file("opt/old", b"o"), Entry.dir("bin"),
                    Entry.file("bin/tool", b"#!x", mode=0o4755),
                    Entry.hardlink("bin/tool2", "bin/tool")]),
        _layer_tar([Entry.whiteout("etc/gone"), Entry.file("etc/a", b"a2"),
                    Entry.opaque("opt"), Entry.file("opt/new", b"n"),
                    Entry.symlink("usr", "opt")]),
        _layer_tar([Entry.dir("var"), Entry.file("var/log", b"l", uid=7, gid=8),
                    Entry.whiteout("bin/tool2")]),
    ]


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_snapshot_unpack_matches_umoci(
    image_name: str,
    driver: str,
    *,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
    extractor: Extractor,
    tmp_path: Path,
) -> None:
    engine = Engine(tmp_path / "root")
    image = test_images[image_name]
    engine.load(image.oci_layout)
    sn = DRIVERS[driver](tmp_path / "snapshots")
    layers = _layers(engine, image.ref)
    seen: list[int] = []
    top = apply_layers(sn, layers, extractor=extractor, on_layer=lambda i, _: seen.append(i))
    chains = chain_ids([d for d, _, _ in layers])
    assert top == chains[-1]
    assert seen == list(range(len(layers)))
    for i, chain in enumerate(chains):
        info = sn.stat(str(chain))
        assert info.kind is Kind.COMMITTED
        assert info.parent == (str(chains[i - 1]) if i else None)
    assert _leftovers(sn) == []
    try:
        with mounted(sn.view("check", str(top)), tmp_path / "mnt") as root:
            trees.assert_same_tree(umoci_rootfs(image_name), root, include_root=False)
    finally:
        unmount_under(tmp_path)
    sn.remove("check")


def test_snapshots_equal_plain_unpack_of_whiteouts_opaques_and_links(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    engine = Engine(tmp_path / "root")
    built = testimages.build_image(_three_layers(), name="localhost/three:latest")
    _load(engine, built, tmp_path)
    plain = tmp_path / "plain"
    unpack(engine.resolve("localhost/three:latest").image, plain)
    top = apply_layers(snapshotter, _layers(engine, "localhost/three:latest"),
                       extractor=extractor)
    with mounted(snapshotter.view("v", str(top)), tmp_path / "mnt") as root:
        trees.assert_same_tree(plain, root, include_root=False)
        assert sorted(os.listdir(root / "opt")) == ["new"]
        assert not (root / "etc" / "gone").exists()


def test_committed_layers_are_not_extracted_again(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    engine = Engine(tmp_path / "root")
    tars = _three_layers()
    base = testimages.build_image(tars[:2], name="localhost/base:latest")
    child = testimages.build_image(tars, name="localhost/child:latest")
    _load(engine, base, tmp_path)
    _load(engine, child, tmp_path)
    first: list[int] = []
    apply_layers(snapshotter, _layers(engine, "localhost/base:latest"), extractor=extractor,
                 on_layer=lambda i, _: first.append(i))
    second: list[int] = []
    apply_layers(snapshotter, _layers(engine, "localhost/child:latest"), extractor=extractor,
                 on_layer=lambda i, _: second.append(i))
    again: list[int] = []
    apply_layers(snapshotter, _layers(engine, "localhost/child:latest"), extractor=extractor,
                 on_layer=lambda i, _: again.append(i))
    assert (first, second, again) == ([0, 1], [2], [])
    assert len([i for i in snapshotter.walk()]) == 3


def test_wrong_diff_id_commits_nothing_for_that_layer(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    engine = Engine(tmp_path / "root")
    tars = _three_layers()
    real = testimages.build_image(tars)
    lie = "sha256:" + "0" * 64
    built = testimages.build_image(tars, name="localhost/lie:latest",
                                   diff_ids=[real.layers[0].diff_id, lie, real.layers[2].diff_id])
    layout = testimages.write_layout(tmp_path / "layout", [built])
    # load refuses the lie, so the blobs go into the store directly
    for digest, data in built.blobs().items():
        engine.content.put(data, "application/octet-stream", Digest.parse(digest))
    del layout
    layers = [(Digest.parse(d), engine.content.blob_path(Digest.parse(layer.digest)),
               Compression.GZIP) for d, layer in zip(
                   [real.layers[0].diff_id, lie, real.layers[2].diff_id], built.layers,
                   strict=True)]
    with pytest.raises(DigestMismatch) as caught:
        apply_layers(snapshotter, layers, extractor=extractor)
    assert caught.value.expected == lie
    assert caught.value.actual == real.layers[1].diff_id
    names = {i.name for i in snapshotter.walk()}
    assert names == {real.layers[0].diff_id}  # layer 0 committed; nothing of layer 1 or 2
    assert snapshotter.cleanup() == 0


def test_hostile_layer_is_refused_and_leaves_nothing(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    evil = _layer_tar([Entry.symlink("esc", "/"), Entry.file("esc/../../etc/owned", b"x")])
    diff_id = Digest.of(evil)
    blob = tmp_path / "evil.tar"
    blob.write_bytes(evil)
    with pytest.raises(UnsafeArchive) as caught:
        apply_layers(snapshotter, [(diff_id, blob, Compression.NONE)], extractor=extractor)
    assert caught.value.member == "esc/../../etc/owned"
    assert list(snapshotter.walk()) == []
    assert not Path("/etc/owned").exists()


def _feed(feed_write: Callable[[bytes], int], data: bytes, rng: random.Random) -> None:
    pos = 0
    while pos < len(data):
        step = rng.randrange(1, 300_000)
        feed_write(data[pos:pos + step])
        pos += step


def _big_layers(count: int, files: int, size: int) -> list[bytes]:
    out = []
    for seed in range(count):
        rng = random.Random(seed)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(files):
                data = rng.randbytes(size)
                info = tarfile.TarInfo(f"l{seed}/d{i % 7}/f{i}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        out.append(buf.getvalue())
    return out


def test_streamed_layers_fed_from_threads_equal_blob_unpack(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    engine = Engine(tmp_path / "root")
    built = testimages.build_image(_three_layers() + _big_layers(2, 50, 40_000),
                                   name="localhost/s:latest")
    _load(engine, built, tmp_path)
    plain = tmp_path / "plain"
    unpack(engine.resolve("localhost/s:latest").image, plain)
    diff_ids = [Digest.parse(layer.diff_id) for layer in built.layers]
    errors: list[BaseException] = []
    with ImageUnpack(snapshotter, diff_ids, extractor=extractor) as job:
        assert job.needed == [0, 1, 2, 3, 4]

        def download(index: int) -> None:
            try:
                feed = job.stream(index, Compression.GZIP)
                _feed(feed.write, built.layers[index].data, random.Random(index))
                feed.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=download, args=(i,)) for i in (4, 2, 0, 3, 1)]
        for t in threads:
            t.start()
        top = job.wait(timeout=60)
        for t in threads:
            t.join()
    assert errors == []
    assert top == chain_ids(diff_ids)[-1]
    assert _leftovers(snapshotter) == []
    with mounted(snapshotter.view("v", str(top)), tmp_path / "mnt") as root:
        trees.assert_same_tree(plain, root, include_root=False)


def test_aborted_stream_commits_nothing_of_that_layer(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    built = testimages.build_image(_big_layers(2, 40, 50_000))
    diff_ids = [Digest.parse(layer.diff_id) for layer in built.layers]
    with ImageUnpack(snapshotter, diff_ids, extractor=extractor) as job:

        def good() -> None:  # feeds block until the worker reads: one thread per download
            ok = job.stream(0, Compression.GZIP)
            ok.write(built.layers[0].data)
            ok.close()

        def broken() -> None:
            bad = job.stream(1)
            bad.write(built.layers[1].data[: len(built.layers[1].data) // 2])
            bad.abort(DigestMismatch("download failed its digest check", expected="a",
                                     actual="b"))

        threads = [threading.Thread(target=good), threading.Thread(target=broken)]
        for t in threads:
            t.start()
        with pytest.raises(DigestMismatch, match="download failed its digest check"):
            job.wait(timeout=60)
        for t in threads:
            t.join()
    assert {i.name for i in snapshotter.walk()} == {str(diff_ids[0])}
    assert snapshotter.cleanup() == 0


def test_corrupt_stream_fails_the_feed_and_the_wait(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    built = testimages.build_image(_big_layers(1, 40, 50_000))
    data = bytearray(built.layers[0].data)
    data[len(data) // 3] ^= 0xFF
    diff_ids = [Digest.parse(built.layers[0].diff_id)]
    failures: list[BaseException] = []
    with ImageUnpack(snapshotter, diff_ids, extractor=extractor) as job:

        def download() -> None:
            feed = job.stream(0, Compression.GZIP)
            try:
                feed.write(bytes(data))
            except InvalidContent as exc:  # the worker failed first: stop feeding
                failures.append(exc)
                feed.abort(exc)
            else:
                feed.close()

        thread = threading.Thread(target=download)
        thread.start()
        with pytest.raises(InvalidContent, match="gzip"):
            job.wait(timeout=60)
        thread.join()
    assert list(snapshotter.walk()) == []


_KILLED = """
import sys
from pathlib import Path
from strata.engine import Engine
from strata.images import apply_layers
from strata.oci import mediatypes
from strata.snapshots import {cls}
engine = Engine(Path(sys.argv[1]))
image = engine.resolve("localhost/kill:latest").image
layers = [(l.diff_id, engine.content.blob_path(l.descriptor.digest),
           mediatypes.layer_compression(l.descriptor.media_type)) for l in image.layers()]
print("go", flush=True)
apply_layers({cls}(Path(sys.argv[2])), layers)
"""


def test_killed_unpack_is_cleaned_up_by_the_next(
    snapshotter: Snapshotter, tmp_path: Path, extractor: Extractor
) -> None:
    engine = Engine(tmp_path / "root")
    built = testimages.build_image(_big_layers(4, 300, 20_000), name="localhost/kill:latest")
    _load(engine, built, tmp_path)
    code = _KILLED.format(cls=type(snapshotter).__name__)
    rng = random.Random(3)
    sn_root = tmp_path / "snapshots"
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", code, str(engine.root), str(sn_root)],
                                stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"go\n"
        time.sleep(rng.uniform(0.3, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its workers
        proc.wait()
        proc.stdout.close()
    layers = _layers(engine, "localhost/kill:latest")
    top = apply_layers(snapshotter, layers, extractor=extractor)
    assert top == chain_ids([d for d, _, _ in layers])[-1]
    assert _leftovers(snapshotter) == []
    assert sorted(os.listdir(sn_root / "tmp")) == []
    assert len(os.listdir(sn_root / "snapshots")) == 4
    with mounted(snapshotter.view("v", str(top)), tmp_path / "mnt") as root:
        assert len(list(root.rglob("f*"))) == 4 * 300


def test_engine_unpack_snapshots_uses_the_store_snapshotter(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "root")
    built = testimages.build_image(_three_layers(), name="localhost/e:latest")
    _load(engine, built, tmp_path)
    top = engine.unpack_snapshots("localhost/e:latest")
    assert engine.snapshotter.driver == "overlay"
    assert engine.snapshotter.stat(str(top)).kind is Kind.COMMITTED
    assert (engine.root / "snapshots" / "overlay" / "metadata.db").exists()
    image = engine.resolve("localhost/e:latest").image
    assert isinstance(image, LocalImage)
    never_given = [Digest.parse("sha256:" + "1" * 64)]
    with pytest.raises(Unavailable, match="never given"), \
            ImageUnpack(engine.snapshotter, never_given) as job:
        job.wait(timeout=0.1)


def test_giving_a_layer_twice_or_one_not_needed_is_refused(
    snapshotter: Snapshotter, extractor: Extractor, tmp_path: Path
) -> None:
    built = testimages.build_image(_three_layers()[:1])
    diff_ids = [Digest.parse(built.layers[0].diff_id)]
    with ImageUnpack(snapshotter, diff_ids, extractor=extractor) as job:
        feed = job.stream(0, Compression.GZIP)
        with pytest.raises(AlreadyExists, match="layer 0 is already being unpacked"):
            job.stream(0, Compression.GZIP)
        with pytest.raises(InvalidArgument, match="the image has no layer 1"):
            job.stream(1)
        feed.write(built.layers[0].data)
        feed.close()
        assert job.wait(timeout=60) == diff_ids[0]
    with ImageUnpack(snapshotter, diff_ids, extractor=extractor) as again:
        assert again.needed == []
        with pytest.raises(InvalidArgument, match="not needed"):
            again.blob(0, tmp_path / "unused")
        assert again.wait() == diff_ids[0]
