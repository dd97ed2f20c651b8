"""Snapshots of directory trees, for comparing what two unpackers wrote.

This module owns :func:`snapshot` (a path → :class:`Node` record of everything that an image
layer can express about a file: type, permission bits, owner, content digest, symlink target,
device numbers, extended attributes and hardlink grouping), :func:`diff` and
:func:`assert_same_tree`. It never records timestamps (tools disagree about mtimes of
directories they touch, and layers carry no atime/ctime) and never modifies the trees it reads.

It is pure standard library so that tests and benches can import it without the rest of strata.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path

__all__ = [
    "IGNORED_XATTR_PREFIXES",
    "Node",
    "NodeType",
    "assert_same_tree",
    "diff",
    "snapshot",
]

#: xattrs that belong to the host or to a mount, not to the tree: overlayfs bookkeeping and
#: SELinux labels (which the host policy assigns, not the image).
IGNORED_XATTR_PREFIXES: tuple[str, ...] = ("trusted.overlay.", "security.selinux")

_READ_SIZE = 1 << 20


class NodeType(StrEnum):
    """The kind of a filesystem entry."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCKET = "socket"


@dataclass(frozen=True, slots=True)
class Node:
    """What a tree says about one path, timestamps excluded.

    Attributes:
        type: the kind of entry.
        mode: permission bits including setuid, setgid and sticky (``stat.S_IMODE``).
        uid: owner.
        gid: group.
        size: byte size, for regular files (``None`` otherwise).
        sha256: hex digest of the content, for regular files.
        target: the link text, for symlinks.
        rdev: ``(major, minor)`` for character and block devices.
        xattrs: every extended attribute except :data:`IGNORED_XATTR_PREFIXES`, sorted by name.
        link_group: for a regular file sharing its inode with other paths under the root, the
            sorted-first of those paths (the same for every member); ``None`` otherwise.
    """

    type: NodeType
    mode: int
    uid: int
    gid: int
    size: int | None = None
    sha256: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    link_group: str | None = None

    def describe(self) -> str:
        """A one-line human summary, used in difference reports."""
        parts = [self.type.value, f"mode={self.mode:04o}", f"owner={self.uid}:{self.gid}"]
        if self.size is not None:
            parts.append(f"size={self.size}")
        if self.target is not None:
            parts.append(f"-> {self.target!r}")
        if self.rdev is not None:
            parts.append(f"rdev={self.rdev[0]},{self.rdev[1]}")
        if self.link_group is not None:
            parts.append(f"linked-with={self.link_group!r}")
        if self.xattrs:
            parts.append("xattrs=" + ",".join(name for name, _ in self.xattrs))
        return " ".join(parts)


def _node_type(st_mode: int) -> NodeType:
    if stat.S_ISREG(st_mode):
        return NodeType.FILE
    if stat.S_ISDIR(st_mode):
        return NodeType.DIR
    if stat.S_ISLNK(st_mode):
        return NodeType.SYMLINK
    if stat.S_ISCHR(st_mode):
        return NodeType.CHAR
    if stat.S_ISBLK(st_mode):
        return NodeType.BLOCK
    if stat.S_ISFIFO(st_mode):
        return NodeType.FIFO
    if stat.S_ISSOCK(st_mode):
        return NodeType.SOCKET
    raise OSError(errno.EINVAL, f"unknown file type {st_mode:o}")


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    found: list[tuple[str, bytes]] = []
    for name in names:
        if name.startswith(IGNORED_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed while we looked
                continue
            raise
        found.append((name, value))
    found.sort()
    return tuple(found)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(root: Path, *, include_root: bool = True) -> dict[str, Node]:
    """Record every path under ``root``.

    Args:
        root: the directory to walk; symlinks inside it are recorded, never followed.
        include_root: record ``root`` itself under the key ``"."`` (its mode, owner and
            xattrs are part of an unpacked image: the layer's ``./`` entry sets them).

    Returns:
        A mapping from POSIX-style paths relative to ``root`` (``"a/b"``, no leading ``./``)
        to :class:`Node`, in sorted order.

    Raises:
        OSError: ``root`` is missing or unreadable.
    """
    top = os.fspath(root)
    raw: dict[str, tuple[os.stat_result, str]] = {}
    if include_root:
        raw["."] = (os.lstat(top), top)

    stack: list[tuple[str, str]] = [(top, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                rel = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                raw[rel] = (st, entry.path)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((entry.path, rel + "/"))

    # Hardlink groups: canonical id is the sorted-first member found under root.
    inodes: dict[tuple[int, int], list[str]] = {}
    for rel, (st, _) in raw.items():
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    group_of: dict[str, str] = {}
    for members in inodes.values():
        if len(members) > 1:
            first = min(members)
            for member in members:
                group_of[member] = first

    nodes: dict[str, Node] = {}
    for rel in sorted(raw):
        st, path = raw[rel]
        kind = _node_type(st.st_mode)
        size: int | None = None
        sha: str | None = None
        target: str | None = None
        rdev: tuple[int, int] | None = None
        if kind is NodeType.FILE:
            size = st.st_size
            sha = _sha256(path)
        elif kind is NodeType.SYMLINK:
            target = os.readlink(path)
        elif kind in (NodeType.CHAR, NodeType.BLOCK):
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        nodes[rel] = Node(
            type=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=size,
            sha256=sha,
            target=target,
            rdev=rdev,
            xattrs=_xattrs(path),
            link_group=group_of.get(rel),
        )
    return nodes


def _fmt_field(name: str, value: object) -> str:
    if name == "mode" and isinstance(value, int):
        return f"{value:04o}"
    if name == "xattrs" and isinstance(value, tuple):
        return "{" + ", ".join(f"{k}={v!r}" for k, v in value) + "}"
    return repr(value)


def diff(
    a: Mapping[str, Node], b: Mapping[str, Node], *, labels: tuple[str, str] = ("a", "b")
) -> list[str]:
    """List the differences between two snapshots, in path order.

    Args:
        a: a snapshot from :func:`snapshot`.
        b: another one.
        labels: names for ``a`` and ``b`` in the messages.

    Returns:
        One human-readable line per difference; empty when the trees are identical.
    """
    la, lb = labels
    out: list[str] = []
    for path in sorted(a.keys() | b.keys()):
        na, nb = a.get(path), b.get(path)
        if nb is None and na is not None:
            out.append(f"{path}: only in {la} ({na.describe()})")
            continue
        if na is None and nb is not None:
            out.append(f"{path}: only in {lb} ({nb.describe()})")
            continue
        if na is None or nb is None or na == nb:
            continue
        if na.type is not nb.type:
            out.append(f"{path}: type {na.type} in {la} != {nb.type} in {lb}")
            continue
        for field in fields(Node):
            va, vb = getattr(na, field.name), getattr(nb, field.name)
            if va != vb:
                out.append(
                    f"{path}: {field.name} {_fmt_field(field.name, va)} in {la}"
                    f" != {_fmt_field(field.name, vb)} in {lb}"
                )
    return out


def assert_same_tree(a: Path, b: Path, *, include_root: bool = True, max_report: int = 50) -> None:
    """Fail unless the trees at ``a`` and ``b`` are identical (timestamps aside).

    Args:
        a: the first tree (named by its path in the report).
        b: the second tree.
        include_root: compare the roots' own metadata too.
        max_report: how many differences to list.

    Raises:
        AssertionError: listing the first ``max_report`` differences and how many there are.
    """
    found = diff(
        snapshot(a, include_root=include_root),
        snapshot(b, include_root=include_root),
    )
    if found:
        shown = "\n  ".join(found[:max_report])
        more = f"\n  ... and {len(found) - max_report} more" if len(found) > max_report else ""
        raise AssertionError(
            f"trees differ in {len(found)} place(s):\n  a = {a}\n  b = {b}\n  {shown}{more}"
        )
