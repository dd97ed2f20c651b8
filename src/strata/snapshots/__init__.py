"""Snapshots: stacks of filesystem trees keyed by name, as containerd's snapshotters.

``Snapshotter`` is the interface (prepare / view / mounts / commit / remove / usage / walk);
``OverlaySnapshotter`` (kernel overlayfs, the default) and ``NativeSnapshotter`` (full
copies, the fallback) implement it over directories and SQLite metadata under
``STRATA_ROOT/snapshots/<driver>/``; :func:`open_snapshotter` picks one.  ``mount_all`` /
``unmount`` perform the mounts a snapshotter returns.  This package knows nothing of images,
layers or tar, and imports only ``strata.errors``.
"""

from __future__ import annotations

from pathlib import Path

from strata.errors import InvalidArgument, NotSupported
from strata.snapshots.base import Kind as Kind
from strata.snapshots.base import Mount as Mount
from strata.snapshots.base import SnapshotInfo as SnapshotInfo
from strata.snapshots.base import Snapshotter as Snapshotter
from strata.snapshots.base import Usage as Usage
from strata.snapshots.mount import mount_all as mount_all
from strata.snapshots.mount import unmount as unmount
from strata.snapshots.native import NativeSnapshotter as NativeSnapshotter
from strata.snapshots.overlay import OverlaySnapshotter as OverlaySnapshotter
from strata.snapshots.overlay import overlay_supported as overlay_supported

__all__ = [
    "Kind",
    "Mount",
    "NativeSnapshotter",
    "OverlaySnapshotter",
    "SnapshotInfo",
    "Snapshotter",
    "Usage",
    "mount_all",
    "open_snapshotter",
    "overlay_supported",
    "unmount",
]

DRIVERS = ("overlay", "native")


def open_snapshotter(root: Path, driver: str = "auto") -> Snapshotter:
    """Open the snapshotter ``driver`` under ``root`` (``STRATA_ROOT/snapshots``).

    Args:
        root: the directory holding one subdirectory per driver.
        driver: ``overlay``, ``native``, or ``auto`` (overlay when the kernel allows it).

    Raises:
        InvalidArgument: an unknown driver name.
        NotSupported: ``overlay`` asked for where it cannot be mounted.
    """
    if driver == "auto":
        try:
            return OverlaySnapshotter(root / "overlay")
        except NotSupported:
            return NativeSnapshotter(root / "native")
    if driver == "overlay":
        return OverlaySnapshotter(root / "overlay")
    if driver == "native":
        return NativeSnapshotter(root / "native")
    raise InvalidArgument(f"unknown snapshotter {driver!r} (known: {', '.join(DRIVERS)})")
