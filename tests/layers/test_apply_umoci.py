"""apply() writes what ``umoci unpack`` writes, byte for byte, on the same layers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest

from strata.layers import apply, open_decompressed
from strata.oci import Compression
from strata.testing import tools, trees
from strata.testing.tars import Entry, build, compress

CAPABILITY = bytes.fromhex("0000000200040000000000000000000000000000")

LAYER1 = [
    Entry.dir("./", mode=0o751, mtime=1_600_000_000),
    Entry.dir("etc", mode=0o2755, uid=1, gid=2, mtime=1_600_000_001),
    Entry.file("etc/suid", b"#!/bin/sh\n", mode=0o4755, uid=1, gid=2),
    Entry.file("etc/sgid", b"g", mode=0o2711, gid=5),
    Entry.file("etc/caps", b"\x7fELF", mode=0o755, xattrs={"security.capability": CAPABILITY}),
    Entry.file("etc/xattr", b"x", xattrs={"user.a": b"1", "user.b": b"\xff\x00"}),
    Entry.dir("tmp", mode=0o1777),
    Entry.symlink("etc/rel", "../tmp", uid=3, gid=4),
    Entry.symlink("abs", "/etc/suid"),
    Entry.hardlink("etc/hard", "etc/suid"),
    Entry.char("dev/null", 1, 3, mode=0o666),
    Entry.block("dev/loop9", 7, 9),
    Entry.fifo("run/pipe", mode=0o600),
    Entry.file("implicit/parents/file", b"p"),
    Entry.dir("keep", mode=0o700),
    Entry.file("keep/a", b"a"),
    Entry.file("keep/b", b"b"),
    Entry.dir("opq"),
    Entry.file("opq/old", b"old"),
    Entry.dir("opq/sub"),
    Entry.file("opq/sub/deep", b"deep"),
    Entry.file("to-dir", b"file"),
    Entry.dir("to-file"),
    Entry.file("to-file/child", b"c"),
    Entry.file("big", os.urandom(3 << 20)),
    Entry.file("d" * 90 + "/" + "f" * 150, b"long name"),
    Entry.symlink("via", "/etc"),
]

LAYER2 = [
    Entry.whiteout("keep/a"),
    Entry.file("keep/c", b"c", mtime=1_650_000_000),
    Entry.dir("opq", mode=0o750),
    Entry.opaque("opq"),
    Entry.file("opq/new", b"new"),
    Entry.dir("to-dir"),
    Entry.file("to-dir/inside", b"i"),
    Entry.file("to-file", b"now a file"),
    Entry.file("via/through-symlink", b"lands in etc"),
    Entry.file("etc/suid", b"replaced", mode=0o4750, uid=9),
    Entry.whiteout("run"),
    Entry.dir("etc", mode=0o755, xattrs={"user.dir": b"d"}),
]


def write_layout(layout: Path, layers: list[bytes]) -> None:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    gz_layers = [compress(layer, Compression.GZIP) for layer in layers]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(blob),
                    "size": len(blob),
                }
                for blob in gz_layers
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "test"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def mtimes(root: Path, now: int) -> dict[str, int | str]:
    """Every path's mtime; times from the run itself (directories created or changed in
    passing, which no two runs can agree on to the nanosecond) read as "now"."""
    found: dict[str, int | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            mtime = os.lstat(path).st_mtime_ns
            found[os.path.relpath(path, root)] = "now" if mtime >= now else mtime
    return found


def unpack_both(tmp_path: Path, layers: list[list[Entry]]) -> tuple[Path, Path]:
    """umoci's rootfs and ours, from the same layers (ours starts as umoci's does: a fresh
    directory whose times are the epoch)."""
    tools.require("umoci")
    plain = [build(layer) for layer in layers]
    layout = tmp_path / "layout"
    write_layout(layout, plain)
    theirs = tools.umoci_unpack(layout, "test", tmp_path / "bundle")
    ours = tmp_path / "ours"
    ours.mkdir()
    os.utime(ours, ns=(0, 0))
    for blob in plain:
        with open_decompressed(io.BytesIO(compress(blob, Compression.GZIP))) as stream:
            apply(ours, stream)
    return theirs, ours


def test_apply_matches_umoci_unpack(tmp_path: Path) -> None:
    now = time.time_ns()
    theirs, ours = unpack_both(tmp_path, [LAYER1, LAYER2])
    trees.assert_same_tree(theirs, ours)
    assert mtimes(ours, now) == mtimes(theirs, now)


@pytest.mark.parametrize("name", ["etc/suid", "etc/caps", "opq/new", "to-file", "etc"])
def test_apply_matches_umoci_on_single_paths(tmp_path: Path, name: str) -> None:
    """A named check, so that a regression points at a path."""
    theirs, ours = unpack_both(tmp_path, [LAYER1, LAYER2])
    assert trees.snapshot(ours)[name] == trees.snapshot(theirs)[name]


TIMES = {
    "root-entry-only": [[Entry.dir("./", mode=0o751, mtime=1_600_000_000)]],
    "root-entry-then-file": [[Entry.dir("./", mode=0o700, mtime=1_600_000_000), Entry.file("a", b"1")]],
    "file-then-root-entry": [[Entry.file("a", b"1"), Entry.dir(".", mtime=1_600_000_000)]],
    "no-root-entry": [[Entry.file("a", b"1")], [Entry.dir("d", mtime=5)]],
    "dir-then-children": [[Entry.dir("d", mtime=1_600_000_000), Entry.file("d/a", b"1")]],
    "implicit-parents": [
        [Entry.dir(".", mtime=1_600_000_000), Entry.dir("d", mtime=9), Entry.file("d/p/q", b"")]
    ],
    "whiteout-keeps-parent-time": [
        [Entry.dir("d", mtime=1_600_000_000), Entry.file("d/a", b"1")],
        [Entry.whiteout("d/a"), Entry.whiteout("d/missing")],
    ],
    "opaque-keeps-dir-time": [
        [Entry.dir("d", mtime=1_600_000_000), Entry.file("d/a", b"1"), Entry.file("d/s/b", b"")],
        [Entry.opaque("d")],
    ],
    "whiteout-after-write": [
        [Entry.dir("a", mtime=100), Entry.file("a/x", b"1"), Entry.file("a/y", b"2")],
        [Entry.dir("a", mtime=200), Entry.file("a/x", b"new"), Entry.whiteout("a")],
    ],
    "whiteout-after-write-nested": [
        [Entry.dir("a/b", mtime=100), Entry.file("a/b/x", b"1"), Entry.file("a/b/y", b"2")],
        [Entry.dir("a/b", mtime=200), Entry.file("a/b/x", b"new"), Entry.whiteout("a")],
    ],
    "dir-header-after-children": [[Entry.file("d/a", b"1"), Entry.dir("d", mtime=77)]],
    "write-through-symlink": [
        [Entry.dir("etc", mtime=7), Entry.symlink("via", "/etc")],
        [Entry.file("via/x", b"1")],
    ],
}


@pytest.mark.parametrize("layers", list(TIMES.values()), ids=list(TIMES))
def test_apply_directory_times_match_umoci(tmp_path: Path, layers: list[list[Entry]]) -> None:
    now = time.time_ns()
    theirs, ours = unpack_both(tmp_path, layers)
    trees.assert_same_tree(theirs, ours)
    assert mtimes(ours, now) == mtimes(theirs, now)
