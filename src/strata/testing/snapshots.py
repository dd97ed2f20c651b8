"""The snapshotter conformance suite: every :class:`~strata.snapshots.Snapshotter` runs it.

Modelled on containerd's ``core/snapshots/testsuite``: each check gets a fresh snapshotter
from a factory and a scratch directory, fills snapshots by writing *through their mounts*
(real kernel mounts: overlay or bind), and checks what views of the results show, the
lifecycle rules (kinds, parents, names), errors, usage, and crash recovery (a process killed
with SIGKILL in the middle of prepare/commit/remove).

Use::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_overlay(check, tmp_path):
        check(lambda root: OverlaySnapshotter(root), tmp_path)
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import pytest

from strata.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotSupported,
)
from strata.snapshots import Kind, Mount, Snapshotter, mount_all, unmount

__all__ = ["CHECKS", "SnapshotterFactory", "check_snapshotter", "mounted", "read_tree"]

SnapshotterFactory = Callable[[Path], Snapshotter]


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], target: Path) -> Iterator[Path]:
    """Mount ``mounts`` on ``target`` (created) for the ``with`` block."""
    target.mkdir(parents=True, exist_ok=True)
    mount_all(mounts, target)
    try:
        yield target
    finally:
        unmount(target)


def read_tree(root: Path) -> dict[str, str]:
    """path → ``dir``, ``link:TARGET`` or the file's text, for every entry below ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            key = os.path.normpath(os.path.join(rel, name))
            out[key] = f"link:{os.readlink(path)}" if os.path.islink(path) else "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            key = os.path.normpath(os.path.join(rel, name))
            if os.path.islink(path):
                out[key] = f"link:{os.readlink(path)}"
            else:
                with open(path, encoding="utf-8") as f:
                    out[key] = f.read()
    return out


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _commit_layer(sn: Snapshotter, scratch: Path, name: str, parent: str | None,
                  change: Callable[[Path], None]) -> None:
    key = f"{name}-active"
    with mounted(sn.prepare(key, parent), scratch / f"mnt-{name}") as root:
        change(root)
    sn.commit(name, key)


def _view_tree(sn: Snapshotter, scratch: Path, name: str) -> dict[str, str]:
    key = f"view-{name}-{random.randrange(1 << 30)}"
    try:
        with mounted(sn.view(key, name), scratch / f"mnt-{key}") as root:
            return read_tree(root)
    finally:
        sn.remove(key)


# -- checks --------------------------------------------------------------------------------


def check_prepare_write_commit_view(factory: SnapshotterFactory, scratch: Path) -> None:
    """Files written through an active snapshot's mount are what a view of the commit shows."""
    sn = factory(scratch / "root")
    _commit_layer(sn, scratch, "base", None,
                  lambda r: _write(r, {"a": "1", "d/x": "x", "d/e/y": "y"}))
    info = sn.stat("base")
    assert info.kind is Kind.COMMITTED
    assert info.parent is None
    assert _view_tree(sn, scratch, "base") == {"a": "1", "d": "dir", "d/x": "x", "d/e": "dir",
                                               "d/e/y": "y"}
    with pytest.raises(NotFound):
        sn.stat("base-active")


def check_layers_stack_changes(factory: SnapshotterFactory, scratch: Path) -> None:
    """A child's deletions, replacements and additions show in its view, not in the parent's."""
    sn = factory(scratch / "root")
    _commit_layer(sn, scratch, "l1", None,
                  lambda r: _write(r, {"a": "1", "gone": "g", "d/x": "x", "d/old": "o",
                                       "keep/k": "k"}))

    def change(root: Path) -> None:
        (root / "gone").unlink()
        (root / "a").write_text("2", encoding="utf-8")
        for child in (root / "d").iterdir():
            child.unlink()
        (root / "d").rmdir()
        (root / "d").mkdir()
        _write(root, {"d/new": "n", "b": "b"})
        os.symlink("a", root / "link")

    _commit_layer(sn, scratch, "l2", "l1", change)
    _commit_layer(sn, scratch, "l3", "l2", lambda r: _write(r, {"c": "3"}))
    assert sn.stat("l3").parent == "l2"
    assert sn.stat("l2").parent == "l1"
    assert _view_tree(sn, scratch, "l1") == {"a": "1", "gone": "g", "d": "dir", "d/x": "x",
                                             "d/old": "o", "keep": "dir", "keep/k": "k"}
    assert _view_tree(sn, scratch, "l3") == {"a": "2", "b": "b", "c": "3", "d": "dir",
                                             "d/new": "n", "keep": "dir", "keep/k": "k",
                                             "link": "link:a"}


def check_deep_stack(factory: SnapshotterFactory, scratch: Path) -> None:
    """Twelve stacked snapshots each adding a file: the top view has all twelve."""
    sn = factory(scratch / "root")
    parent: str | None = None
    for i in range(12):
        name = f"layer-{i}"
        _commit_layer(sn, scratch, name, parent, partial(_write, files={f"f{i}": str(i)}))
        parent = name
    assert _view_tree(sn, scratch, "layer-11") == {f"f{i}": str(i) for i in range(12)}


def check_view_is_read_only(factory: SnapshotterFactory, scratch: Path) -> None:
    """Writing into a mounted view fails with EROFS; its kind is VIEW."""
    sn = factory(scratch / "root")
    _commit_layer(sn, scratch, "base", None, lambda r: _write(r, {"a": "1"}))
    _commit_layer(sn, scratch, "top", "base", lambda r: _write(r, {"b": "2"}))
    for parent in ("base", "top"):
        key = f"ro-{parent}"
        with mounted(sn.view(key, parent), scratch / key) as root:
            assert sn.stat(key).kind is Kind.VIEW
            with pytest.raises(OSError) as caught:
                (root / "new").write_text("x", encoding="utf-8")
            assert caught.value.errno == errno.EROFS
        sn.remove(key)


def check_errors(factory: SnapshotterFactory, scratch: Path) -> None:
    """Each misuse raises its typed error and changes nothing."""
    sn = factory(scratch / "root")
    _commit_layer(sn, scratch, "base", None, lambda r: _write(r, {"a": "1"}))
    sn.prepare("active", "base")
    before = sorted((i.name, i.kind, i.parent) for i in sn.walk())
    with pytest.raises(AlreadyExists):
        sn.prepare("active", "base")
    with pytest.raises(AlreadyExists):
        sn.prepare("base")
    with pytest.raises(NotFound):
        sn.prepare("x", "missing")
    with pytest.raises(FailedPrecondition):
        sn.prepare("x", "active")  # an active snapshot is no parent
    with pytest.raises(InvalidArgument):
        sn.prepare("")
    with pytest.raises(AlreadyExists):
        sn.commit("base", "active")
    with pytest.raises(FailedPrecondition):
        sn.commit("again", "base")  # committed is not active
    with pytest.raises(NotFound):
        sn.commit("new", "missing")
    with pytest.raises(FailedPrecondition):
        sn.mounts("base")
    with pytest.raises(NotFound):
        sn.mounts("missing")
    with pytest.raises(NotFound):
        sn.remove("missing")
    with pytest.raises(NotFound):
        sn.usage("missing")
    sn.view("v", "base")
    with pytest.raises(FailedPrecondition):
        sn.commit("from-view", "v")
    with pytest.raises(FailedPrecondition):
        sn.remove("base")  # children: "active" and "v"
    sn.remove("v")
    assert sorted((i.name, i.kind, i.parent) for i in sn.walk()) == before


def check_remove_needs_no_children(factory: SnapshotterFactory, scratch: Path) -> None:
    """A parent is removable only once its children are gone; directories go with records."""
    sn = factory(scratch / "root")
    _commit_layer(sn, scratch, "p", None, lambda r: _write(r, {"a": "1"}))
    _commit_layer(sn, scratch, "c", "p", lambda r: _write(r, {"b": "2"}))
    with pytest.raises(FailedPrecondition):
        sn.remove("p")
    sn.remove("c")
    sn.remove("p")
    assert list(sn.walk()) == []
    assert sn.cleanup() == 0  # nothing left behind


def check_walk_and_labels(factory: SnapshotterFactory, scratch: Path) -> None:
    """walk lists every snapshot with its kind, parent and labels; commit may relabel."""
    sn = factory(scratch / "root")
    sn.prepare("a", labels={"x": "1"})
    sn.commit("A", "a")
    sn.prepare("b", "A", labels={"y": "2"})
    sn.view("v", "A")
    sn.prepare("c", "A")
    sn.commit("C", "c", labels={"z": "3"})
    found = {i.name: (i.kind, i.parent, dict(i.labels)) for i in sn.walk()}
    assert found == {
        "A": (Kind.COMMITTED, None, {"x": "1"}),
        "b": (Kind.ACTIVE, "A", {"y": "2"}),
        "v": (Kind.VIEW, "A", {}),
        "C": (Kind.COMMITTED, "A", {"z": "3"}),
    }
    assert sn.stat("C").updated >= sn.stat("C").created


def check_usage(factory: SnapshotterFactory, scratch: Path) -> None:
    """Usage counts the bytes and inodes written; a committed snapshot's usage is kept."""
    sn = factory(scratch / "root")
    with mounted(sn.prepare("a"), scratch / "m") as root:
        (root / "big").write_bytes(os.urandom(1 << 20))
        (root / "d").mkdir()
        os.link(root / "big", root / "d" / "hard")
        active = sn.usage("a")
    assert active.size >= 1 << 20
    assert active.size < 3 << 20  # the hardlink counted once
    assert active.inodes >= 3  # the root, big (= hard), d
    sn.commit("A", "a")
    assert sn.usage("A") == active


def check_rebase(factory: SnapshotterFactory, scratch: Path) -> None:
    """A snapshotter that can rebase commits an independently filled snapshot on a parent;
    one that cannot says so with NotSupported."""
    sn = factory(scratch / "root")
    _commit_layer(sn, scratch, "base", None, lambda r: _write(r, {"a": "1", "b": "b"}))
    with mounted(sn.prepare("loose"), scratch / "loose") as root:
        _write(root, {"c": "3", "a": "2"})
    if not sn.rebase:
        with pytest.raises(NotSupported):
            sn.commit("top", "loose", parent="base", rebase=True)
        assert sn.stat("loose").kind is Kind.ACTIVE
        return
    with pytest.raises(NotFound):
        sn.commit("top", "loose", parent="missing", rebase=True)
    sn.commit("top", "loose", parent="base", rebase=True)
    assert sn.stat("top").parent == "base"
    assert _view_tree(sn, scratch, "top") == {"a": "2", "b": "b", "c": "3"}
    with pytest.raises(FailedPrecondition):
        sn.remove("base")


def check_concurrent_prepares(factory: SnapshotterFactory, scratch: Path) -> None:
    """Threads preparing and committing distinct keys on one parent all succeed."""
    sn = factory(scratch / "root")
    _commit_layer(sn, scratch, "base", None, lambda r: _write(r, {"a": "1"}))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            sn.prepare(f"k{i}", "base")
            sn.commit(f"n{i}", f"k{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {i.name for i in sn.walk()} == {"base", *(f"n{i}" for i in range(8))}


_CHURN = """
import sys, random
from pathlib import Path
from strata.snapshots import {cls}
sn = {cls}(Path(sys.argv[1]))
print("ready", flush=True)
i = 0
while True:
    i += 1
    sn.prepare(f"k{{i}}", "base")
    if random.random() < 0.5:
        sn.commit(f"n{{i}}", f"k{{i}}")
        sn.remove(f"n{{i}}")
    else:
        sn.remove(f"k{{i}}")
"""


def check_crash_recovery(factory: SnapshotterFactory, scratch: Path) -> None:
    """SIGKILL during prepare/commit/remove leaves nothing a cleanup cannot fix.

    After each kill: every record has its directory, ``cleanup`` removes every directory
    without a record, and the snapshotter keeps working.
    """
    root = scratch / "root"
    sn = factory(root)
    _commit_layer(sn, scratch, "base", None, lambda r: _write(r, {"a": "1"}))
    code = _CHURN.format(cls=type(sn).__name__)
    rng = random.Random(7)
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, "-c", code, str(root)],
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.01, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        sn = factory(root)
        sn.cleanup()
        dirs = set(os.listdir(root / "snapshots"))
        stale = [i.name for i in sn.walk() if i.name != "base"]
        for key in stale:  # an active key the killed process held: removable
            sn.remove(key)
        assert set(os.listdir(root / "snapshots")) <= dirs
        assert sorted(os.listdir(root / "tmp")) == [], (trial, [
            str(p.relative_to(root)) for p in (root / "tmp").rglob("*")][:20])
        assert [i.name for i in sn.walk()] == ["base"]
        assert len(os.listdir(root / "snapshots")) == 1
        _commit_layer(sn, scratch, f"after-{trial}", "base", lambda r: _write(r, {"b": "2"}))
        assert _view_tree(sn, scratch, f"after-{trial}") == {"a": "1", "b": "2"}
        sn.remove(f"after-{trial}")


CHECKS: tuple[Callable[[SnapshotterFactory, Path], None], ...] = (
    check_prepare_write_commit_view,
    check_layers_stack_changes,
    check_deep_stack,
    check_view_is_read_only,
    check_errors,
    check_remove_needs_no_children,
    check_walk_and_labels,
    check_usage,
    check_rebase,
    check_concurrent_prepares,
    check_crash_recovery,
)


def check_snapshotter(factory: SnapshotterFactory, scratch: Path) -> None:
    """Run every check of the suite, each in its own subdirectory of ``scratch``."""
    for check in CHECKS:
        sub = scratch / check.__name__
        sub.mkdir()
        check(factory, sub)
