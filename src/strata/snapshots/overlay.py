"""The overlay snapshotter: kernel overlayfs, one directory of changes per snapshot.

Each snapshot's ``fs`` directory holds only its own changes, with overlayfs whiteouts
(character devices 0/0) and opaque directories (``trusted.overlay.opaque=y``); a snapshot is
presented by stacking its ancestors' directories as ``lowerdir`` (nearest first) under its
own ``upperdir``.  Because an active snapshot holds only its changes, it can be committed on
another parent (:attr:`rebase`), which lets image layers be extracted side by side.

Mounts follow containerd's overlay snapshotter: an active snapshot without a parent, or a
view of a single snapshot, is a bind mount of one directory; anything else is an overlay.
The kernel's mount options fit in one page, which bounds stacks to ~60 layers at the usual
root paths.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from strata.errors import NotSupported, StrataError
from strata.snapshots._local import LocalSnapshotter
from strata.snapshots.base import Kind, Mount
from strata.snapshots.metadata import Row
from strata.snapshots.mount import mount_all, unmount

__all__ = ["OverlaySnapshotter", "overlay_supported"]

_SUPPORTED: dict[str, bool] = {}


def overlay_supported(directory: Path) -> bool:
    """True if an overlay with two lower directories can be mounted from ``directory``.

    Probes once per directory (containerd's ``supportsMultipleLowerDir``).
    """
    cached = _SUPPORTED.get(str(directory))
    if cached is not None:
        return cached
    # The answer is kept beside the probe directory, per kernel: a mount and unmount would
    # cost every process that asks about a quarter second.
    record = directory.parent / f".overlay-probe-{directory.name}"
    kernel = os.uname().release
    try:
        seen_kernel, _, answer = record.read_text().partition(" ")
    except OSError:
        pass
    else:
        if seen_kernel == kernel and answer in ("yes", "no"):
            _SUPPORTED[str(directory)] = answer == "yes"
            return answer == "yes"
    probe = directory / f"probe-{os.getpid()}-{secrets.token_hex(4)}"
    ok = False
    try:
        for sub in ("l1", "l2", "u", "w", "m"):
            (probe / sub).mkdir(parents=True)
        mount = Mount("overlay", "overlay", (
            f"lowerdir={probe / 'l1'}:{probe / 'l2'}",
            f"upperdir={probe / 'u'}", f"workdir={probe / 'w'}",
        ))
        try:
            mount_all([mount], probe / "m")
        except StrataError:
            ok = False
        else:
            ok = True
            unmount(probe / "m")
    except OSError:
        ok = False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    _SUPPORTED[str(directory)] = ok
    with contextlib.suppress(OSError):
        temp = record.with_name(f"{record.name}.{os.getpid()}")
        temp.write_text(f"{kernel} {'yes' if ok else 'no'}")
        os.replace(temp, record)
    return ok


class OverlaySnapshotter(LocalSnapshotter):
    """Snapshots as overlayfs layers (see the module docstring)."""

    driver = "overlay"
    rebase = True

    def __init__(self, root: Path) -> None:
        """Open (creating) the snapshotter rooted at ``root``.

        Raises:
            NotSupported: this kernel or this process cannot mount overlayfs here.
            Unavailable: the root cannot be created.
        """
        super().__init__(root)
        if not overlay_supported(self.root / "tmp"):
            raise NotSupported(
                f"overlayfs cannot be mounted under {self.root} (kernel module, privilege or"
                " backing filesystem): use the native snapshotter"
            )

    def _populate(self, new: Path, parents: list[Row], kind: Kind) -> None:
        if kind is Kind.ACTIVE:
            (new / "work").mkdir()

    def _mounts(self, row: Row, parents: list[Row]) -> list[Mount]:
        own = self._dir(row.id)
        lowers = [str(self._dir(p.id) / "fs") for p in parents]
        if row.info.kind is Kind.VIEW:
            if not lowers:
                return [Mount("bind", str(own / "fs"), ("ro", "rbind"))]
            if len(lowers) == 1:
                return [Mount("bind", lowers[0], ("ro", "rbind"))]
            return [Mount("overlay", "overlay", ("ro", f"lowerdir={':'.join(lowers)}"))]
        if not lowers:
            return [Mount("bind", str(own / "fs"), ("rw", "rbind"))]
        return [Mount("overlay", "overlay", (
            f"workdir={own / 'work'}", f"upperdir={own / 'fs'}", f"lowerdir={':'.join(lowers)}",
        ))]
