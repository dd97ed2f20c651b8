"""diff(): the tar of an overlay upper dir or of two trees' differences, deterministic."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.errors import InvalidArgument, NotFound
from strata.layers import ApplyOptions, WhiteoutMode, apply, diff, scan
from strata.testing import trees
from strata.testing.tars import Entry, build

# security.capability v2 for cap_net_bind_service=ep
CAPABILITY = bytes.fromhex("0000000200040000000000000000000000000000")

BASE = [
    Entry.dir("etc", mode=0o755),
    Entry.file("etc/passwd", b"root:x:0:0\n", mode=0o644),
    Entry.file("etc/shadow", b"secret\n", mode=0o600, gid=42),
    Entry.dir("usr/lib", mode=0o755),
    Entry.file("usr/lib/libc.so", b"\x7fELF" + b"c" * 5000, mode=0o755),
    Entry.hardlink("usr/lib/libc.so.6", "usr/lib/libc.so"),
    Entry.dir("var/cache/apt", mode=0o755),
    Entry.file("var/cache/apt/pkg1", b"1" * 100),
    Entry.file("var/cache/apt/pkg2", b"2" * 100),
    Entry.symlink("lib", "usr/lib"),
    Entry.dir("opt/tool", mode=0o755),
    Entry.file("opt/tool/bin", b"tool"),
    Entry.file("replace-me", b"file that becomes a dir"),
    Entry.dir("dir-to-file"),
    Entry.file("dir-to-file/child", b"c"),
    Entry.fifo("run/fifo"),
]


def tar_entries(data: bytes) -> list[tuple[str, str]]:
    """(name, kind) of every member, in order, as Python's tarfile reads them."""
    kinds = {
        tarfile.REGTYPE: "file",
        tarfile.DIRTYPE: "dir",
        tarfile.SYMTYPE: "symlink",
        tarfile.LNKTYPE: "link",
        tarfile.CHRTYPE: "char",
        tarfile.FIFOTYPE: "fifo",
    }
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        return [(m.name, kinds.get(m.type, repr(m.type))) for m in archive.getmembers()]


def make_tree(path: Path, entries: list[Entry]) -> Path:
    path.mkdir()
    apply(path, io.BytesIO(build(entries)))
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)
    return dst


def mtimes(root: Path) -> dict[str, int]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = os.lstat(path).st_mtime_ns // 1_000_000_000
    return found


def modify(root: Path) -> None:
    """Every kind of change a RUN step makes."""
    (root / "etc/passwd").write_bytes(b"root:x:0:0\nuser:x:1000:1000\n")
    os.chmod(root / "etc/shadow", 0o640)
    os.chown(root / "opt/tool/bin", 7, 8)
    (root / "var/cache/apt/pkg1").unlink()
    shutil.rmtree(root / "opt")
    (root / "replace-me").unlink()
    (root / "replace-me").mkdir()
    (root / "replace-me/inside").write_bytes(b"new")
    shutil.rmtree(root / "dir-to-file")
    (root / "dir-to-file").write_bytes(b"now a file")
    (root / "new").mkdir()
    (root / "new/a").write_bytes(b"aaa")
    os.link(root / "new/a", root / "new/b")
    os.symlink("../etc/passwd", root / "new/link")
    os.mknod(root / "new/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(root / "etc", "user.tag", b"changed")
    os.setxattr(root / "new/a", "security.capability", CAPABILITY)
    for path in (root / "etc/passwd", root / "new/a"):
        os.utime(path, ns=(1_700_000_123_000_000_000, 1_700_000_123_000_000_000))


def test_diff_of_two_trees_reapplies_to_the_new_tree(tmp_path: Path) -> None:
    lower = make_tree(tmp_path / "lower", BASE)
    upper = copy_tree(lower, tmp_path / "upper")
    modify(upper)
    out = io.BytesIO()
    stats = diff([lower], upper, out, upper_is_overlay=False)
    data = out.getvalue()

    target = copy_tree(lower, tmp_path / "target")
    applied = apply(target, io.BytesIO(data))
    trees.assert_same_tree(target, upper)
    assert mtimes(target) == mtimes(upper)
    assert applied == stats == scan(io.BytesIO(data))

    names = [name for name, _ in tar_entries(data)]
    assert names == sorted(names, key=os.fsencode)
    assert ".wh.opt" in names and not any(n.startswith("opt/") for n in names)  # one whiteout
    assert "var/cache/apt/.wh.pkg1" in names and "var/cache/apt" in names  # parents included
    assert "usr/lib/libc.so" not in names and "lib" not in names  # unchanged
    assert ("new/b", "link") in tar_entries(data)


def test_diff_of_identical_trees_is_empty(tmp_path: Path) -> None:
    lower = make_tree(tmp_path / "lower", BASE)
    upper = copy_tree(lower, tmp_path / "upper")
    out = io.BytesIO()
    stats = diff([lower], upper, out, upper_is_overlay=False)
    assert tar_entries(out.getvalue()) == [] and stats.entries == 0
    assert out.getvalue() == bytes(1024)


def test_diff_is_deterministic_and_clamps_to_source_date_epoch(tmp_path: Path) -> None:
    lower = make_tree(tmp_path / "lower", BASE)
    upper = copy_tree(lower, tmp_path / "upper")
    modify(upper)
    first, second = io.BytesIO(), io.BytesIO()
    diff([lower], upper, first, upper_is_overlay=False, source_date_epoch=1_600_000_000)
    os.utime(upper / "new/a")  # atime/ctime churn must not matter: only the mtime is kept
    os.utime(upper / "new/a", ns=(1_700_000_123_000_000_000, 1_700_000_123_000_000_000))
    diff([lower], upper, second, upper_is_overlay=False, source_date_epoch=1_600_000_000)
    assert first.getvalue() == second.getvalue()
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as archive:
        members = archive.getmembers()
    assert max(m.mtime for m in members) <= 1_600_000_000
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert all("atime" not in m.pax_headers and "ctime" not in m.pax_headers for m in members)


def test_diff_refuses_several_lower_trees_without_overlay(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        diff([tmp_path, tmp_path], tmp_path, io.BytesIO(), upper_is_overlay=False)
    with pytest.raises(NotFound):
        diff([], tmp_path / "missing", io.BytesIO())


def test_diff_writes_long_names_and_xattrs_as_pax(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    deep = upper / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    os.setxattr(deep / "f", "user.k", b"\x00\xff")
    os.symlink("t" * 200, upper / "long-link")
    out = io.BytesIO()
    diff([], upper, out)
    target = tmp_path / "target"
    target.mkdir()
    apply(target, io.BytesIO(out.getvalue()))
    trees.assert_same_tree(target, upper)


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[Callable[[], tuple[Path, Path, Path]]]:
    """Mount a real overlay over a lower tree; yields a function that mounts and returns
    (lower, upper, merged); unmounts at the end."""
    mounted: list[Path] = []

    def mount() -> tuple[Path, Path, Path]:
        lower = make_tree(tmp_path / "lower", BASE)
        upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
        for path in (upper, work, merged):
            path.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
            capture_output=True,
            text=True,
            check=False,
        )
        # Kernel overlay is part of what strata needs: a failure here is a failure.
        assert result.returncode == 0, f"cannot mount overlay: {result.stderr.strip()}"
        mounted.append(merged)
        return lower, upper, merged

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_diff_of_a_real_overlay_upper_dir(
    tmp_path: Path, overlay: Callable[[], tuple[Path, Path, Path]]
) -> None:
    lower, upper, merged = overlay()
    (merged / "added").write_bytes(b"new file")
    (merged / "etc/passwd").write_bytes(b"root:x:0:0\nnew:x:1:1\n")  # copy-up
    (merged / "etc/shadow").unlink()  # whiteout
    shutil.rmtree(merged / "opt")  # whiteout of a directory
    shutil.rmtree(merged / "var/cache/apt")
    (merged / "var/cache/apt").mkdir()  # opaque
    (merged / "var/cache/apt/fresh").write_bytes(b"f")
    want = trees.snapshot(merged)

    out = io.BytesIO()
    stats = diff([lower], upper, out)
    data = out.getvalue()
    order = [name for name, _ in tar_entries(data)]
    assert order == sorted(order, key=os.fsencode)
    names = {name for name, _ in tar_entries(data)}
    assert names == {
        "added",
        "etc",
        "etc/.wh.shadow",
        "etc/passwd",
        ".wh.opt",
        "var",
        "var/cache",
        "var/cache/apt",
        "var/cache/apt/.wh..wh..opq",
        "var/cache/apt/fresh",
    }
    assert scan(io.BytesIO(data)) == stats

    # the layer on a copy of lower (OCI whiteouts) gives what the overlay showed
    target = copy_tree(lower, tmp_path / "target")
    apply(target, io.BytesIO(data))
    assert trees.diff(trees.snapshot(target), want, labels=("applied", "merged")) == []

    # and into an empty overlay upper dir it gives back the upper dir
    snapshot_dir = tmp_path / "snapshot"
    snapshot_dir.mkdir()
    apply(snapshot_dir, io.BytesIO(data), ApplyOptions(whiteouts=WhiteoutMode.OVERLAY))
    assert (
        trees.diff(
            trees.snapshot(snapshot_dir, include_root=False),
            trees.snapshot(upper, include_root=False),
            labels=("applied", "upper"),
        )
        == []
    )
    assert os.getxattr(snapshot_dir / "var/cache/apt", "trusted.overlay.opaque") == b"y"
    assert stats.disk_size == len(b"new file") + len(b"root:x:0:0\nnew:x:1:1\n") + 1


def test_diff_overlay_hardlinks_and_order(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "b").mkdir(parents=True)
    (upper / "b/z").write_bytes(b"data")
    os.link(upper / "b/z", upper / "a-first")
    os.link(upper / "b/z", upper / "b/y")
    (upper / "a-b").write_bytes(b"")
    out = io.BytesIO()
    diff([], upper, out)
    assert tar_entries(out.getvalue()) == [
        ("a-b", "file"),
        ("a-first", "file"),
        ("b", "dir"),
        ("b/y", "link"),
        ("b/z", "link"),
    ]
