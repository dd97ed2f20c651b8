"""Computing a layer from filesystem changes: :func:`diff`.

Owns turning "what changed" into a deterministic, uncompressed layer tar — either from an
overlay upper directory (every entry in it is a change; overlayfs whiteouts and opaque
directories become OCI whiteouts) or by comparing a full tree against a lower tree the way
docker's ``pkg/archive/changes.go`` does.

Output is a pure function of the trees: entries sorted by path bytes, PAX format as Go
writes it (``Format = PAX``), empty uname/gname, mtimes truncated to whole seconds (and
clamped to ``source_date_epoch`` when given), no atime/ctime, hardlinks within the change
set written once as a file and then as links.  It never changes the trees it reads.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

from strata.errors import FailedPrecondition, InvalidArgument, NotFound, StrataError, Unavailable
from strata.layers._tarstream import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    HARDLINK,
    REG,
    SYMLINK,
)
from strata.layers._tarstream import TarWriter as _TarWriter
from strata.layers.scan import LayerStats, _DiskUsage
from strata.layers.whiteout import (
    OPAQUE_MARKER,
    OVERLAY_OPAQUE_XATTR,
    OVERLAY_XATTR_PREFIX,
    is_overlay_whiteout,
    whiteout_name,
)

__all__ = ["diff"]

_CHUNK: Final = 1 << 20
_SKIPPED_XATTRS: Final = frozenset({"security.selinux"})
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# what a change is
_ENTRY: Final = 0  # write the upper entry as it is
_OPAQUE: Final = 1  # DIR/.wh..wh..opq for an opaque overlay directory
_WHITEOUT: Final = 2  # .wh.NAME for an entry deleted from the lower tree
_OVERLAY_WHITEOUT: Final = 3  # .wh.NAME for an overlay whiteout device

_Change = tuple[bytes, int, str, os.stat_result | None]  # sort key, kind, path, upper stat


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _host(root: str, rel: str) -> str:
    return f"{root}/{rel}" if rel else root


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (95, 61):  # EOPNOTSUPP, ENODATA: nothing to read
            return {}
        raise
    values: dict[str, bytes] = {}
    for key in names:
        if key in _SKIPPED_XATTRS or key.startswith(OVERLAY_XATTR_PREFIX):
            continue
        try:
            values[key] = os.getxattr(path, key, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != 61:  # ENODATA: removed meanwhile
                raise
    return values


def _scandir(path: str) -> dict[str, os.stat_result]:
    with os.scandir(path) as entries:
        return {entry.name: entry.stat(follow_symlinks=False) for entry in entries}


def _overlay_changes(upper: str) -> list[_Change]:
    changes: list[_Change] = []
    if _is_opaque(upper):
        changes.append((os.fsencode(OPAQUE_MARKER), _OPAQUE, "", os.lstat(upper)))
    stack = [""]
    while stack:
        rel = stack.pop()
        for name, st in _scandir(_host(upper, rel)).items():
            child = _join(rel, name)
            if is_overlay_whiteout(st):
                wh = whiteout_name(child)
                changes.append((os.fsencode(wh), _OVERLAY_WHITEOUT, child, st))
                continue
            changes.append((os.fsencode(child), _ENTRY, child, st))
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)
                if _is_opaque(_host(upper, child)):
                    marker = _join(child, OPAQUE_MARKER)
                    changes.append((os.fsencode(marker), _OPAQUE, child, st))
    return changes


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _differs(lower: str, upper: str, old: os.stat_result, new: os.stat_result) -> bool:
    """docker's statDifferent, plus link targets and all xattrs (containerd's rule)."""
    if (
        old.st_mode != new.st_mode
        or old.st_uid != new.st_uid
        or old.st_gid != new.st_gid
        or old.st_rdev != new.st_rdev
    ):
        return True
    if not stat.S_ISDIR(new.st_mode) and (old.st_size != new.st_size or old.st_mtime_ns != new.st_mtime_ns):
        return True
    if stat.S_ISLNK(new.st_mode) and os.readlink(lower) != os.readlink(upper):
        return True
    return _xattrs(lower) != _xattrs(upper)


def _tree_changes(lower: str, upper: str) -> list[_Change]:
    changes: list[_Change] = []
    stack: list[tuple[str, bool]] = [("", True)]
    while stack:
        rel, compare = stack.pop()
        new_entries = _scandir(_host(upper, rel))
        old_entries = _scandir(_host(lower, rel)) if compare else {}
        for name, st in new_entries.items():
            child = _join(rel, name)
            old = old_entries.pop(name, None)
            if old is None or _differs(_host(lower, child), _host(upper, child), old, st):
                changes.append((os.fsencode(child), _ENTRY, child, st))
            if stat.S_ISDIR(st.st_mode):
                stack.append((child, old is not None and stat.S_ISDIR(old.st_mode)))
        for name in old_entries:
            child = _join(rel, name)
            changes.append((os.fsencode(whiteout_name(child)), _WHITEOUT, child, None))
    # parents of every change are part of the layer, as docker and containers/storage do
    present = {change[2] for change in changes if change[1] == _ENTRY}
    for change in list(changes):
        parent = change[2].rpartition("/")[0]
        while parent and parent not in present:
            present.add(parent)
            changes.append((os.fsencode(parent), _ENTRY, parent, os.lstat(_host(upper, parent))))
            parent = parent.rpartition("/")[0]
    return changes


class _Emitter:
    def __init__(self, upper: str, writer: _TarWriter, source_date_epoch: int | None) -> None:
        self.upper = upper
        self.writer = writer
        self.epoch = source_date_epoch
        self.usage = _DiskUsage()
        self.links: dict[tuple[int, int], str] = {}

    def mtime(self, st: os.stat_result) -> int:
        seconds = st.st_mtime_ns // 1_000_000_000
        if self.epoch is not None and seconds > self.epoch:
            return self.epoch
        return seconds

    def emit(self, kind: int, rel: str, st: os.stat_result | None) -> None:
        writer = self.writer
        if kind == _WHITEOUT:
            writer.add(whiteout_name(rel), REG, mtime=self.epoch or 0)
            self.usage.whiteout(rel)
            return
        assert st is not None
        uid, gid, mtime = st.st_uid, st.st_gid, self.mtime(st)
        if kind == _OVERLAY_WHITEOUT:
            writer.add(whiteout_name(rel), REG, mode=0o600, uid=uid, gid=gid, mtime=mtime)
            self.usage.whiteout(rel)
            return
        if kind == _OPAQUE:
            writer.add(
                _join(rel, OPAQUE_MARKER),
                REG,
                mode=st.st_mode & 0o777,
                uid=uid,
                gid=gid,
                mtime=mtime,
            )
            return
        path = _host(self.upper, rel)
        mode = st.st_mode
        perm = mode & 0o7777
        if stat.S_ISDIR(mode):
            writer.add(f"{rel}/", DIR, mode=perm, xattrs=_xattrs(path), uid=uid, gid=gid, mtime=mtime)
            self.usage.directory(rel)
        elif stat.S_ISREG(mode):
            if st.st_nlink > 1:
                first = self.links.setdefault((st.st_dev, st.st_ino), rel)
                if first != rel:
                    writer.add(rel, HARDLINK, mode=perm, linkname=first, uid=uid, gid=gid, mtime=mtime)
                    self.usage.link(rel, first)
                    return
            writer.add(
                rel,
                REG,
                mode=perm,
                size=st.st_size,
                xattrs=_xattrs(path),
                uid=uid,
                gid=gid,
                mtime=mtime,
            )
            self.copy(path, rel, st.st_size)
            self.usage.file(rel, st.st_size)
        elif stat.S_ISLNK(mode):
            target = os.readlink(path)
            writer.add(
                rel,
                SYMLINK,
                mode=perm,
                linkname=target,
                xattrs=_xattrs(path),
                uid=uid,
                gid=gid,
                mtime=mtime,
            )
            self.usage.file(rel, len(os.fsencode(target)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            writer.add(
                rel,
                CHARDEV if stat.S_ISCHR(mode) else BLOCKDEV,
                mode=perm,
                devmajor=os.major(st.st_rdev),
                devminor=os.minor(st.st_rdev),
                xattrs=_xattrs(path),
                uid=uid,
                gid=gid,
                mtime=mtime,
            )
            self.usage.file(rel, 0)
        elif stat.S_ISFIFO(mode):
            writer.add(rel, FIFO, mode=perm, xattrs=_xattrs(path), uid=uid, gid=gid, mtime=mtime)
            self.usage.file(rel, 0)
        # sockets are not archived (docker and Go's tar skip them)

    def copy(self, path: str, rel: str, size: int) -> None:
        fd = os.open(path, _READ_FLAGS)
        try:
            remaining = size
            while remaining:
                data = os.read(fd, min(remaining, _CHUNK))
                if not data:
                    raise FailedPrecondition(f"{rel} shrank while the layer was being written")
                self.writer.write_data(data)
                remaining -= len(data)
        finally:
            os.close(fd)
        self.writer.end_data(size)


def diff(
    lower: Sequence[Path],
    upper: Path,
    out: BinaryIO,
    *,
    upper_is_overlay: bool = True,
    source_date_epoch: int | None = None,
) -> LayerStats:
    """Write the layer tar that turns ``lower`` into ``upper`` to ``out``.

    Args:
        lower: with ``upper_is_overlay``, the overlay's lower directories, top first (not
            needed to decide anything); otherwise exactly one full lower tree to compare with.
        upper: an overlay upper directory, or the full new tree.
        out: where the uncompressed tar goes (compress it with ``CompressedWriter``).
        upper_is_overlay: ``upper`` is an overlay upper directory: every entry in it is an
            addition or modification, a character device 0/0 is a whiteout, a directory
            with ``trusted.overlay.opaque=y`` is opaque.  False compares the two trees
            (type, mode, owner, device, size and mtime of non-directories, link target,
            xattrs); deletions become ``.wh.`` entries (a deleted directory is one whiteout)
            and the parent directories of every change are included.
        source_date_epoch: clamp every mtime to this (reproducible builds).

    Returns:
        The written layer's diff_id, size, member count and disk size.

    Raises:
        NotFound: ``upper`` (or the lower tree) does not exist.
        InvalidArgument: not exactly one lower tree to compare with.
        FailedPrecondition: the trees changed while being read.
        Unavailable: writing ``out`` failed.
    """
    upper_path = os.fspath(upper)
    if not os.path.isdir(upper_path):
        raise NotFound(f"diff: upper directory {upper_path} does not exist")
    lower_path = ""
    if not upper_is_overlay:
        if len(lower) != 1:
            raise InvalidArgument(f"diff: comparing trees needs exactly one lower tree, got {len(lower)}")
        lower_path = os.fspath(lower[0])
        if not os.path.isdir(lower_path):
            raise NotFound(f"diff: lower directory {lower_path} does not exist")
    writer = _TarWriter(out)
    emitter = _Emitter(upper_path, writer, source_date_epoch)
    try:
        changes = _overlay_changes(upper_path) if upper_is_overlay else _tree_changes(lower_path, upper_path)
        changes.sort(key=lambda change: change[0])
        for _, kind, rel, st in changes:
            emitter.emit(kind, rel, st)
        diff_id, size = writer.close()
    except StrataError:
        raise
    except OSError as exc:
        if exc.filename is not None:
            raise FailedPrecondition(f"diff: cannot read {exc.filename}: {exc.strerror}") from exc
        raise Unavailable(f"diff: writing the layer failed: {exc}", retryable=False) from exc
    return LayerStats(diff_id=diff_id, size=size, entries=writer.entries, disk_size=emitter.usage.total())
