"""apply(): ordinary layers land exactly as umoci would write them (see test_apply_umoci.py)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from strata.layers import ApplyOptions, IdMap, LayerStats, WhiteoutMode, apply, open_decompressed
from strata.layers import scan as scan_layer
from strata.oci import Compression
from strata.testing.tars import DEFAULT_MTIME, Entry, build

NS = 1_000_000_000
# security.capability v2 for cap_net_bind_service=ep
CAPABILITY = bytes.fromhex("0000000200040000000000000000000000000000")


def apply_bytes(root: Path, data: bytes, options: ApplyOptions | None = None) -> LayerStats:
    with open_decompressed(io.BytesIO(data)) as stream:
        return apply(root, stream, options)


def apply_layers(root: Path, layers: Sequence[Sequence[Entry]], **options: object) -> None:
    opts = ApplyOptions(**options)  # type: ignore[arg-type]
    for layer in layers:
        apply_bytes(root, build(layer), opts)


def listing(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def docker_size(root: Path) -> int:
    """docker's pkg/directory.Size: st_size of non-directories, each inode once."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISDIR(st.st_mode) or st.st_size == 0 or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_size
    return total


def test_apply_writes_every_member_type_with_its_metadata(tmp_path: Path) -> None:
    layer = [
        Entry.dir("etc", mode=0o2755, uid=1, gid=2, mtime=DEFAULT_MTIME - 50),
        Entry.file("etc/suid", b"#!/bin/sh\n", mode=0o4755, uid=1, gid=2, mtime=DEFAULT_MTIME - 1),
        Entry.file("etc/sgid", b"g", mode=0o2711, uid=0, gid=5),
        Entry.dir("tmp", mode=0o1777),
        Entry.file(
            "bin/ping",
            b"\x7fELF",
            mode=0o755,
            xattrs={"security.capability": CAPABILITY, "user.note": b"\xff\x00binary"},
        ),
        Entry.symlink("etc/link", "../bin/ping", uid=3, gid=4, mtime=DEFAULT_MTIME - 7),
        Entry.symlink("abs", "/etc/suid"),
        Entry.hardlink("etc/hard", "etc/suid"),
        Entry.char("dev/null", 1, 3, mode=0o666),
        Entry.block("dev/loop0", 7, 0, mode=0o660),
        Entry.fifo("run/pipe", mode=0o620),
    ]
    stats = apply_bytes(tmp_path, build(layer))

    def st(rel: str) -> os.stat_result:
        return os.lstat(tmp_path / rel)

    assert stat.S_IMODE(st("etc").st_mode) == 0o2755 and stat.S_ISDIR(st("etc").st_mode)
    assert (st("etc").st_uid, st("etc").st_gid) == (1, 2)
    assert st("etc").st_mtime_ns == (DEFAULT_MTIME - 50) * NS  # kept after its children
    suid = st("etc/suid")
    assert stat.S_IMODE(suid.st_mode) == 0o4755 and (suid.st_uid, suid.st_gid) == (1, 2)
    assert suid.st_mtime_ns == suid.st_atime_ns == (DEFAULT_MTIME - 1) * NS
    assert (tmp_path / "etc/suid").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(st("etc/sgid").st_mode) == 0o2711 and st("etc/sgid").st_gid == 5
    assert stat.S_IMODE(st("tmp").st_mode) == 0o1777
    ping = str(tmp_path / "bin/ping")
    assert os.getxattr(ping, "security.capability") == CAPABILITY
    assert os.getxattr(ping, "user.note") == b"\xff\x00binary"
    link = st("etc/link")
    assert stat.S_ISLNK(link.st_mode) and os.readlink(tmp_path / "etc/link") == "../bin/ping"
    assert (link.st_uid, link.st_gid) == (3, 4)
    assert link.st_mtime_ns == (DEFAULT_MTIME - 7) * NS
    assert os.readlink(tmp_path / "abs") == "/etc/suid"
    assert st("etc/hard").st_ino == suid.st_ino and suid.st_nlink == 2
    null = st("dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(st("dev/loop0").st_mode) and st("dev/loop0").st_rdev == os.makedev(7, 0)
    assert stat.S_ISFIFO(st("run/pipe").st_mode) and stat.S_IMODE(st("run/pipe").st_mode) == 0o620
    # parents missing from the tar: 0755 root:root
    assert stat.S_IMODE(st("bin").st_mode) == 0o755 and st("bin").st_uid == 0
    assert stats.entries == len(layer)


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.GZIP, Compression.ZSTD], ids=str)
@pytest.mark.parametrize("sniff", [True, False], ids=["sniffed", "declared"])
def test_apply_reads_every_compression(tmp_path: Path, compression: Compression, sniff: bool) -> None:
    entries = [Entry.file("a", b"x" * 3_000_000), Entry.file("b/c", b"hello")]
    plain = build(entries)
    blob = build(entries, compression=compression)
    with open_decompressed(io.BytesIO(blob), None if sniff else compression) as stream:
        stats = apply(tmp_path, stream)
    assert stats.diff_id.hex == hashlib.sha256(plain).hexdigest()
    assert stats.size == len(plain)
    assert stats.entries == 2
    assert (tmp_path / "a").read_bytes() == b"x" * 3_000_000
    assert (tmp_path / "b/c").read_bytes() == b"hello"


def test_apply_diff_id_covers_the_whole_stream(tmp_path: Path) -> None:
    data = build([Entry.file("a", b"1")]) + bytes(4096) + b"trailing junk"
    stats = apply_bytes(tmp_path, data)
    assert stats.diff_id.hex == hashlib.sha256(data).hexdigest() and stats.size == len(data)


def test_apply_accepts_a_stream_without_end_of_archive(tmp_path: Path) -> None:
    # umoci 0.4.7's own `insert`/`repack` write layers like this; Go's reader accepts them
    data = build([Entry.file("a", b"12345"), Entry.file("b", b"6")], trailer=False)
    data = data[: len(data) - 511]  # also drop the last member's padding
    stats = apply_bytes(tmp_path, data)
    assert (tmp_path / "b").read_bytes() == b"6" and stats.entries == 2


@pytest.mark.parametrize("header_format", ["pax", "gnu"])
def test_apply_long_and_non_utf8_names(tmp_path: Path, header_format: str) -> None:
    deep = "/".join(["d" * 60] * 5) + "/" + "f" * 200
    odd = os.fsdecode(b"caf\xe9-\xff")  # not UTF-8: bytes survive via surrogateescape
    layer = [
        Entry.file(deep, b"deep"),
        Entry.symlink("l" * 150, "t" * 300),
        Entry.file(odd, b"latin-1"),
        Entry.hardlink("h" * 120, deep),
    ]
    apply_bytes(tmp_path, build(layer, header_format=header_format))  # type: ignore[arg-type]
    assert (tmp_path / deep).read_bytes() == b"deep"
    assert os.readlink(tmp_path / ("l" * 150)) == "t" * 300
    assert os.fsencode(odd) in os.listdir(os.fsencode(tmp_path))
    assert os.lstat(tmp_path / ("h" * 120)).st_ino == os.lstat(tmp_path / deep).st_ino


def test_apply_root_entry_updates_the_root_like_umoci(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    apply_bytes(root, build([Entry.dir("./", mode=0o700, uid=5, gid=6), Entry.file("./a", b"")]))
    st = os.lstat(root)
    assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (5, 6)
    assert st.st_mtime_ns == DEFAULT_MTIME * NS


def test_apply_keeps_times_of_existing_parent_directories(tmp_path: Path) -> None:
    apply_layers(tmp_path, [[Entry.dir("d", mtime=1000), Entry.file("d/x", b"1")]])
    apply_layers(tmp_path, [[Entry.file("d/y", b"2"), Entry.whiteout("d/x")]])
    assert os.lstat(tmp_path / "d").st_mtime_ns == 1000 * NS
    assert listing(tmp_path) == ["d", "d/y"]


def test_apply_directory_over_directory_keeps_children_and_updates_metadata(
    tmp_path: Path,
) -> None:
    apply_layers(
        tmp_path,
        [
            [Entry.dir("d", mode=0o700, xattrs={"user.old": b"1"}), Entry.file("d/x", b"1")],
            [Entry.dir("d", mode=0o751, uid=7, xattrs={"user.new": b"2"})],
        ],
    )
    st = os.lstat(tmp_path / "d")
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_uid == 7
    assert os.listxattr(tmp_path / "d") == ["user.new"]  # umoci clears, then sets the tar's
    assert listing(tmp_path) == ["d", "d/x"]


REPLACEMENTS = [
    pytest.param(
        [[Entry.file("p", b"file")], [Entry.dir("p"), Entry.file("p/c", b"child")]],
        {"p": "dir", "p/c": "file"},
        id="file-to-dir",
    ),
    pytest.param(
        [[Entry.dir("p"), Entry.file("p/c", b"x"), Entry.dir("p/d")], [Entry.file("p", b"now")]],
        {"p": "file"},
        id="dir-with-children-to-file",
    ),
    pytest.param(
        [[Entry.symlink("p", "/elsewhere")], [Entry.dir("p"), Entry.file("p/c", b"x")]],
        {"p": "dir", "p/c": "file"},
        id="symlink-to-dir",
    ),
    pytest.param(
        [[Entry.dir("p"), Entry.file("p/c", b"x")], [Entry.symlink("p", "/x")]],
        {"p": "symlink"},
        id="dir-to-symlink",
    ),
    pytest.param(
        [[Entry.file("p", b"a"), Entry.dir("p"), Entry.file("p/c", b"b"), Entry.file("p", b"c")]],
        {"p": "file"},
        id="same-layer-file-dir-file",
    ),
    pytest.param(
        [[Entry.file("p", b"old"), Entry.hardlink("h", "p")], [Entry.file("p", b"new")]],
        {"p": "file", "h": "file"},
        id="file-replacing-hardlinked-file",
    ),
    pytest.param(
        [[Entry.fifo("p")], [Entry.char("p", 1, 5)]],
        {"p": "char"},
        id="fifo-to-device",
    ),
]


def _kind(path: Path) -> str:
    mode = os.lstat(path).st_mode
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return "other"


@pytest.mark.parametrize(("layers", "expected"), REPLACEMENTS)
def test_apply_replaces_whatever_is_in_the_way(
    tmp_path: Path, layers: list[list[Entry]], expected: dict[str, str]
) -> None:
    apply_layers(tmp_path, layers)
    assert {rel: _kind(tmp_path / rel) for rel in listing(tmp_path)} == expected


def test_apply_file_replacing_a_hardlinked_file_leaves_the_other_link(tmp_path: Path) -> None:
    apply_layers(tmp_path, [[Entry.file("p", b"old"), Entry.hardlink("h", "p")], [Entry.file("p", b"new")]])
    assert (tmp_path / "p").read_bytes() == b"new" and (tmp_path / "h").read_bytes() == b"old"


def test_apply_hardlink_groups(tmp_path: Path) -> None:
    apply_layers(
        tmp_path,
        [
            [
                Entry.file("a", b"data", mode=0o640, uid=3),
                Entry.hardlink("b", "a"),
                Entry.hardlink("c", "/a"),  # absolute link targets are relative to the root
                Entry.symlink("s", "a"),
                Entry.hardlink("hs", "s"),  # a hardlink to the symlink itself
            ]
        ],
    )
    inode = os.lstat(tmp_path / "a").st_ino
    assert {os.lstat(tmp_path / n).st_ino for n in ("a", "b", "c")} == {inode}
    assert os.lstat(tmp_path / "a").st_nlink == 3
    assert os.lstat(tmp_path / "hs").st_ino == os.lstat(tmp_path / "s").st_ino


def test_apply_absolute_hardlink_target_is_inside_the_root(tmp_path: Path) -> None:
    apply_layers(tmp_path, [[Entry.file("a", b"data"), Entry.hardlink("b", "/a")]])
    assert os.lstat(tmp_path / "b").st_ino == os.lstat(tmp_path / "a").st_ino


WHITEOUTS = [
    pytest.param(
        [[Entry.file("a/x", b"1"), Entry.file("a/y", b"2")], [Entry.whiteout("a/x")]],
        ["a", "a/y"],
        id="whiteout-file",
    ),
    pytest.param(
        [[Entry.file("a/b/c", b"1"), Entry.file("k", b"")], [Entry.whiteout("a")]],
        ["k"],
        id="whiteout-directory-tree",
    ),
    pytest.param(
        [[Entry.file("a", b"1")], [Entry.whiteout("missing"), Entry.whiteout("no/such/dir")]],
        ["a"],
        id="whiteout-of-missing-paths",
    ),
    pytest.param(
        [
            [Entry.file("d/x", b"1"), Entry.file("d/sub/y", b"2"), Entry.file("e", b"")],
            [Entry.dir("d"), Entry.opaque("d"), Entry.file("d/z", b"3")],
        ],
        ["d", "d/z", "e"],
        id="opaque-then-new-entries",
    ),
    pytest.param(
        [
            [Entry.file("d/x", b"1"), Entry.file("d/y", b"2")],
            [Entry.dir("d"), Entry.file("d/z", b"3"), Entry.opaque("d")],
        ],
        ["d", "d/z"],
        id="opaque-after-new-entries-keeps-them",
    ),
    pytest.param(
        [
            [Entry.file("d/x", b"1"), Entry.file("d/sub/old", b"2")],
            [Entry.file("d/sub/new", b"3"), Entry.opaque("d")],
        ],
        ["d", "d/sub", "d/sub/new"],
        id="opaque-keeps-ancestors-of-new-entries",
    ),
    pytest.param(
        [
            [Entry.file("a/x", b"1"), Entry.file("a/y", b"2")],
            [Entry.file("a/x", b"new"), Entry.whiteout("a")],
        ],
        ["a", "a/x"],
        id="whiteout-after-write-in-same-layer-keeps-the-write",
    ),
    pytest.param(
        [[Entry.file("x", b"1"), Entry.file("d/y", b"2")], [Entry.opaque("")]],
        [],
        id="opaque-root",
    ),
    pytest.param(
        [
            [Entry.dir("real"), Entry.file("real/f", b"1"), Entry.symlink("l", "/real")],
            [Entry.whiteout("l/f")],
        ],
        ["l", "real"],
        id="whiteout-through-symlinked-parent",
    ),
]


@pytest.mark.parametrize(("layers", "expected"), WHITEOUTS)
def test_apply_oci_whiteouts(tmp_path: Path, layers: list[list[Entry]], expected: list[str]) -> None:
    apply_layers(tmp_path, layers)
    assert listing(tmp_path) == expected


def test_apply_overlay_mode_writes_overlay_whiteouts(tmp_path: Path) -> None:
    layer = [
        Entry.dir("d", mode=0o750),
        Entry.opaque("d"),
        Entry.file("d/new", b"n"),
        Entry.whiteout("gone"),
        Entry.whiteout("sub/also-gone"),
        Entry.file("x", b"1"),
        Entry.whiteout("x"),  # written then deleted: the device replaces it
    ]
    stats = apply_bytes(tmp_path, build(layer), ApplyOptions(whiteouts=WhiteoutMode.OVERLAY))
    assert os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.lstat(tmp_path / "d").st_mode) == 0o750
    for rel in ("gone", "sub/also-gone", "x"):
        st = os.lstat(tmp_path / rel)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, rel
    assert listing(tmp_path) == ["d", "d/new", "gone", "sub", "sub/also-gone", "x"]
    assert stats.disk_size == docker_size(tmp_path) == 1


def test_apply_without_same_owner_keeps_the_callers_owner(tmp_path: Path) -> None:
    apply_layers(tmp_path, [[Entry.file("a", b"", uid=42, gid=43)]], same_owner=False)
    st = os.lstat(tmp_path / "a")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_apply_shifts_owners_through_an_id_map(tmp_path: Path) -> None:
    ids = IdMap(uids=((0, 100000, 65536),), gids=((0, 200000, 65536),))
    apply_layers(tmp_path, [[Entry.file("d/a", b"", uid=42, gid=43)]], ids=ids)
    st = os.lstat(tmp_path / "d/a")
    assert (st.st_uid, st.st_gid) == (100042, 200043)
    parent = os.lstat(tmp_path / "d")
    assert (parent.st_uid, parent.st_gid) == (100000, 200000)


LAYERS_FOR_SIZE = [
    pytest.param([Entry.file("a", b"x" * 100)], id="one-file"),
    pytest.param(
        [Entry.file("a", b"x" * 100), Entry.hardlink("b", "a"), Entry.hardlink("c", "b")],
        id="hardlink-group-counted-once",
    ),
    pytest.param([Entry.symlink("l", "target-of-11")], id="symlink-counts-target-length"),
    pytest.param([Entry.file("a", b"x" * 100), Entry.file("a", b"y" * 7)], id="rewritten-counts-last"),
    pytest.param([Entry.file("d/a", b"x" * 100), Entry.whiteout("d")], id="whited-out-in-same-layer"),
    pytest.param(
        [
            Entry.file("a", b"x" * 100),
            Entry.hardlink("b", "a"),
            Entry.file("a", b"zz"),
        ],
        id="overwritten-link-keeps-inode",
    ),
    pytest.param(
        [Entry.dir("d"), Entry.file("d/a", b"12345"), Entry.file("d", b"123")],
        id="dir-replaced-by-file",
    ),
    pytest.param([Entry.char("null", 1, 3), Entry.fifo("p"), Entry.dir("e")], id="no-data"),
]


@pytest.mark.parametrize("layer", LAYERS_FOR_SIZE)
def test_scan_disk_size_matches_dockers_rule_on_the_applied_layer(tmp_path: Path, layer: list[Entry]) -> None:
    data = build(layer)
    scanned = scan_layer(io.BytesIO(data))
    applied = apply_bytes(tmp_path, data, ApplyOptions(whiteouts=WhiteoutMode.OVERLAY))
    assert scanned == applied
    assert scanned.disk_size == docker_size(tmp_path)


def test_apply_links_to_a_lower_layers_file_like_umoci(tmp_path: Path) -> None:
    """scan (load) refuses a hardlink outside its layer, as docker does; apply, like umoci,
    links to the file a lower layer wrote."""
    from strata.errors import UnsafeArchive

    root = tmp_path / "root"
    root.mkdir()
    apply(root, io.BytesIO(build([Entry.file("real", b"data")])))
    upper = build([Entry.hardlink("link", "real")])
    with pytest.raises(UnsafeArchive, match="not in this layer"):
        scan_layer(io.BytesIO(upper))
    apply(root, io.BytesIO(upper))
    assert (root / "link").stat().st_ino == (root / "real").stat().st_ino
