"""What a layer tar contains, read without writing anything: :func:`scan` and :class:`LayerStats`.

Owns the numbers every consumer of a layer needs — diff_id, uncompressed size, member count
and docker's on-disk ``Size`` — and the per-member lexical checks that :func:`apply` runs
too, so that a layer ``scan`` accepts is one ``apply`` accepts (up to what only the target
filesystem can tell: existing symlinks, missing hardlink targets, device permissions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from strata.errors import UnsafeArchive
from strata.layers._tarstream import BLOCKDEV, CHARDEV, DIR, HARDLINK, REG, SYMLINK, Member
from strata.layers._tarstream import TarReader as _TarReader
from strata.layers.safepath import check_symlink_target, clean_hardlink_target, clean_name
from strata.layers.whiteout import whiteout_target
from strata.oci import Digest

__all__ = ["LayerStats", "scan"]


@dataclass(frozen=True, slots=True)
class LayerStats:
    """What streaming a layer tar found out.

    Attributes:
        diff_id: sha256 of the uncompressed tar stream — every byte read, including the
            end-of-archive blocks and any padding up to the end of the stream.
        size: the number of uncompressed bytes.
        entries: the number of tar members (whiteouts included; PAX and GNU long-name
            headers are part of the member they describe).
        disk_size: docker's layer ``Size``: what ``pkg/directory.Size`` returns on the
            layer applied to an empty directory with overlay whiteouts — the st_size of
            every non-directory (a symlink counts the length of its target; devices, fifos
            and whiteouts count 0), each hardlinked inode once, in the final state of every
            path after the whole tar.
    """

    diff_id: Digest
    size: int
    entries: int
    disk_size: int


_DIR = -1  # a directory in _DiskUsage


class _DiskUsage:
    """Tracks the final state of each path of a layer to compute :attr:`LayerStats.disk_size`.

    Paths are cleaned member names; each non-directory refers to an inode id (hardlinks share
    one) whose size is counted once if any path still refers to it at the end.
    """

    __slots__ = ("_paths", "_sizes", "_strict", "_symlinks")

    def __init__(self, *, strict: bool = True) -> None:
        """Args:
        strict: refuse what a tar of a real tree never holds (docker's rules, used by
            :func:`scan` at load time): hardlinks to paths outside this layer and entries
            below a symlink the layer made.  :func:`apply` is lenient, like umoci: it links to
            lower layers' files and follows symlinks inside the root.
        """
        self._strict = strict
        self._paths: dict[str, int] = {}
        self._sizes: list[int] = []
        self._symlinks: set[str] = set()

    def _drop(self, path: str) -> None:
        self._symlinks.discard(path)
        if self._paths.pop(path, None) == _DIR:
            prefix = f"{path}/"
            for key in [k for k in self._paths if k.startswith(prefix)]:
                del self._paths[key]

    def _place(self, path: str, member: str = "") -> None:
        """Make room for a new entry at ``path``: implicit parents, no old directory.

        Raises:
            UnsafeArchive: a parent of ``path`` is a symlink this same layer made: a tar of a
                real tree never holds an entry below a symlink, so this is a write through it.
        """
        if self._strict and self._symlinks:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in self._symlinks:
                    raise UnsafeArchive(
                        member or path, f"write through symlink {parent!r} made by this layer"
                    )
                parent = parent.rpartition("/")[0]
        self._symlinks.discard(path)
        paths = self._paths
        if paths.get(path) == _DIR:
            self._drop(path)
        parent = path.rpartition("/")[0]
        while parent and parent not in paths:
            paths[parent] = _DIR
            parent = parent.rpartition("/")[0]

    def file(self, path: str, size: int, member: str = "") -> None:
        """A non-directory of ``size`` bytes (0 for devices, fifos, whiteouts) at ``path``."""
        self._place(path, member)
        self._paths[path] = len(self._sizes)
        self._sizes.append(size)

    def directory(self, path: str, member: str = "") -> None:
        """A directory at ``path`` (its existing children stay if it was one already)."""
        if path and self._paths.get(path) != _DIR:
            self._place(path, member)
            self._paths[path] = _DIR

    def symlink(self, path: str, size: int, member: str = "") -> None:
        """A symlink at ``path`` whose target is ``size`` bytes long."""
        self.file(path, size, member)
        self._symlinks.add(path)

    def link(self, path: str, target: str, member: str = "") -> None:
        """A hardlink at ``path`` to ``target``.

        Raises:
            UnsafeArchive: ``target`` is not a non-directory written earlier in this layer
                (docker's ``pkg/archive`` links only inside the layer being applied).
        """
        inode = self._paths.get(target)
        if inode is None and not self._strict:
            self.file(path, 0, member)
            return
        if inode is None:
            raise UnsafeArchive(member or path, f"hardlink target {target!r} is not in this layer")
        if inode == _DIR:
            raise UnsafeArchive(member or path, f"hardlink target {target!r} is a directory")
        self._place(path, member)
        self._paths[path] = inode

    def whiteout(self, path: str) -> None:
        """``path`` deleted: with overlay whiteouts it becomes a 0-byte character device."""
        self._drop(path)
        self.file(path, 0)

    def total(self) -> int:
        """The disk size of the final state."""
        sizes = self._sizes
        return sum(sizes[inode] for inode in {i for i in self._paths.values() if i != _DIR})


def _join(parent: str, base: str) -> str:
    return f"{parent}/{base}" if parent else base


def _check(member: Member, allow_devices: bool) -> tuple[str, str, str, str | None, str]:
    """Run the lexical checks on one member.

    Returns:
        (cleaned name, parent, base name, whiteout target or None, cleaned hardlink target);
        the whiteout target is ``""`` for an opaque marker.

    Raises:
        UnsafeArchive: the member may not be applied.
    """
    name = clean_name(member.name)
    if not name:
        if member.type != DIR:
            raise UnsafeArchive(member.name, "refusing to change the type of the root directory")
        return name, "", "", None, ""
    parent, _, base = name.rpartition("/")
    target = whiteout_target(base, member.name)
    if target is not None:
        return name, parent, base, target, ""
    kind = member.type
    link = ""
    if kind == SYMLINK:
        check_symlink_target(name, member.linkname, member.name)
    elif kind == HARDLINK:
        link = clean_hardlink_target(member.linkname, member.name)
        if not link:
            raise UnsafeArchive(member.name, "hardlink target is the root directory")
        if link == name:
            raise UnsafeArchive(member.name, "hardlink to itself")
    elif kind in (CHARDEV, BLOCKDEV) and not allow_devices:
        raise UnsafeArchive(member.name, "device nodes are not allowed")
    return name, parent, base, None, link


def _account(usage: _DiskUsage, member: Member, name: str, link: str) -> None:
    kind = member.type
    if kind == REG:
        usage.file(name, member.size, member.name)
    elif kind == DIR:
        usage.directory(name, member.name)
    elif kind == SYMLINK:
        usage.symlink(name, len(os.fsencode(member.linkname)), member.name)
    elif kind == HARDLINK:
        usage.link(name, link, member.name)
    else:
        usage.file(name, 0, member.name)


def scan(tar: BinaryIO) -> LayerStats:
    """Read a layer tar to its end, checking every member as :func:`apply` would.

    Nothing is written.  The checks are the lexical ones: names that are absolute or climb
    out with ``..``, symlinks whose relative target escapes, hardlinks out of the root, bad
    whiteout names, a root entry that is not a directory.

    Args:
        tar: the uncompressed tar stream (wrap compressed blobs with ``open_decompressed``).

    Returns:
        The layer's diff_id, size, member count and disk size.

    Raises:
        UnsafeArchive: a member :func:`apply` would refuse.
        InvalidContent: the tar is truncated or malformed (or the decompression failed).
    """
    usage = _DiskUsage()
    entries = 0
    with _TarReader(tar, prefetch=True) as reader:
        while (member := reader.next()) is not None:
            entries += 1
            name, parent, _, target, link = _check(member, True)
            if target is not None:
                if target:
                    usage.whiteout(_join(parent, target))
                continue
            _account(usage, member, name, link)
        diff_id, size = reader.finish()
    return LayerStats(diff_id=diff_id, size=size, entries=entries, disk_size=usage.total())
