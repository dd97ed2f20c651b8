"""Both snapshotters pass the conformance suite of :mod:`strata.testing.snapshots`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from strata.errors import InvalidArgument
from strata.snapshots import NativeSnapshotter, OverlaySnapshotter, open_snapshotter
from strata.testing.snapshots import CHECKS, SnapshotterFactory
from strata.testing.tools import unmount_under

Check = Callable[[SnapshotterFactory, Path], None]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_overlay_conforms(check: Check, tmp_path: Path) -> None:
    try:
        check(OverlaySnapshotter, tmp_path)
    finally:
        unmount_under(tmp_path)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_native_conforms(check: Check, tmp_path: Path) -> None:
    try:
        check(NativeSnapshotter, tmp_path)
    finally:
        unmount_under(tmp_path)


def test_open_snapshotter_picks_overlay_here(tmp_path: Path) -> None:
    assert open_snapshotter(tmp_path).driver == "overlay"
    assert (tmp_path / "overlay" / "metadata.db").exists()
    assert open_snapshotter(tmp_path, "native").driver == "native"


def test_open_snapshotter_rejects_unknown_driver(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown snapshotter 'zfs'"):
        open_snapshotter(tmp_path, "zfs")
