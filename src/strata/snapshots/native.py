"""The native snapshotter: each snapshot a full copy of its parent, bind-mounted.

The fallback where overlayfs is unavailable (containerd's ``native``): prepare copies the
parent's whole tree (``cp -a``: owners, modes, times, xattrs, hardlinks, devices; reflinks
where the filesystem has them), so an active snapshot holds the complete tree and layers are
applied onto it with OCI whiteouts (deleting).  It cannot rebase.  Usage counts the whole
copy.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from pathlib import Path

from strata.errors import Unavailable
from strata.snapshots._local import LocalSnapshotter
from strata.snapshots.base import Kind, Mount
from strata.snapshots.metadata import Row

__all__ = ["NativeSnapshotter"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded (find_library runs ldconfig)


def _die_with_parent() -> None:
    """In the ``cp`` child: die with strata, so a killed strata leaves no copy going on
    in a directory that cleanup removes."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class NativeSnapshotter(LocalSnapshotter):
    """Snapshots as full directory copies (see the module docstring)."""

    driver = "native"
    rebase = False

    def _populate(self, new: Path, parents: list[Row], kind: Kind) -> None:
        if not parents:
            return
        source = self._dir(parents[0].id) / "fs"
        proc = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", f"{source}/.", str(new / "fs")],
            capture_output=True, text=True, check=False, preexec_fn=_die_with_parent,
        )
        if proc.returncode != 0:
            raise Unavailable(f"cannot copy snapshot {parents[0].info.name!r}: "
                              f"{proc.stderr.strip()}", retryable=False)

    def _mounts(self, row: Row, parents: list[Row]) -> list[Mount]:
        mode = "ro" if row.info.kind is Kind.VIEW else "rw"
        return [Mount("bind", str(self._dir(row.id) / "fs"), (mode, "rbind"))]
