"""Layer tars built in code, for tests: ordinary ones and hostile ones.

``build([Entry.file("a", b"x", mode=0o4755), Entry.symlink("l", "../../etc")])`` returns the
bytes of a tar (optionally gzip- or zstd-compressed).  Archives are written with Python's
``tarfile``, an implementation independent of the one under test, and nothing about a
member is sanitised: absolute names, ``..``, escaping links, odd types are written as given.
Compare the trees they produce with :mod:`strata.testing.trees`; :func:`make_jail` sets up
a target directory with a sentinel tree beside it and reports anything that changed outside.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zstandard
from isal import igzip

from strata.oci import Compression
from strata.testing import trees

__all__ = ["DEFAULT_MTIME", "Entry", "Jail", "build", "compress", "make_jail"]

DEFAULT_MTIME = 1_700_000_000
"""The mtime of entries that do not give one (2023-11-14)."""

_FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member as it will be written, unsanitised.

    Attributes:
        name: the member name exactly as stored (a trailing ``/`` is added to directories by
            ``tarfile``).
        type: the ``tarfile`` type flag (``tarfile.REGTYPE``, ``b"S"``, ...).
        data: the member's data (regular files).
        pax: extra PAX records written with the member.
    """

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    pax: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def file(
        cls,
        name: str,
        data: bytes = b"",
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> Entry:
        """A regular file."""
        return cls(name, tarfile.REGTYPE, data, mode, uid, gid, mtime, xattrs=xattrs or {})

    @classmethod
    def dir(
        cls,
        name: str,
        *,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> Entry:
        """A directory."""
        return cls(name, tarfile.DIRTYPE, b"", mode, uid, gid, mtime, xattrs=xattrs or {})

    @classmethod
    def symlink(
        cls, name: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int = DEFAULT_MTIME
    ) -> Entry:
        """A symbolic link to ``target`` (written as given)."""
        return cls(name, tarfile.SYMTYPE, b"", 0o777, uid, gid, mtime, target)

    @classmethod
    def hardlink(cls, name: str, target: str, *, mtime: int = DEFAULT_MTIME) -> Entry:
        """A hardlink to the member ``target`` (written as given)."""
        return cls(name, tarfile.LNKTYPE, b"", 0o644, 0, 0, mtime, target)

    @classmethod
    def char(
        cls, name: str, major: int, minor: int, *, mode: int = 0o666, mtime: int = DEFAULT_MTIME
    ) -> Entry:
        """A character device."""
        return cls(name, tarfile.CHRTYPE, b"", mode, 0, 0, mtime, "", major, minor)

    @classmethod
    def block(
        cls, name: str, major: int, minor: int, *, mode: int = 0o660, mtime: int = DEFAULT_MTIME
    ) -> Entry:
        """A block device."""
        return cls(name, tarfile.BLKTYPE, b"", mode, 0, 0, mtime, "", major, minor)

    @classmethod
    def fifo(cls, name: str, *, mode: int = 0o644, mtime: int = DEFAULT_MTIME) -> Entry:
        """A named pipe."""
        return cls(name, tarfile.FIFOTYPE, b"", mode, 0, 0, mtime)

    @classmethod
    def whiteout(cls, name: str) -> Entry:
        """The OCI whiteout deleting ``name``: an empty file ``DIR/.wh.BASE``."""
        head, sep, base = name.rstrip("/").rpartition("/")
        return cls.file(f"{head}{sep}.wh.{base}", mode=0o600)

    @classmethod
    def opaque(cls, directory: str) -> Entry:
        """The opaque marker of ``directory``: an empty file ``DIR/.wh..wh..opq``."""
        prefix = directory.rstrip("/")
        return cls.file(f"{prefix}/.wh..wh..opq" if prefix else ".wh..wh..opq", mode=0o600)


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.type = entry.type
    info.mode = entry.mode
    info.uid = entry.uid
    info.gid = entry.gid
    info.mtime = entry.mtime
    info.linkname = entry.linkname
    info.devmajor = entry.devmajor
    info.devminor = entry.devminor
    info.uname = ""
    info.gname = ""
    info.size = len(entry.data)
    records = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in entry.xattrs.items()}
    records.update(entry.pax)
    info.pax_headers = records
    return info


def compress(data: bytes, compression: Compression) -> bytes:
    """``data`` gzip- (ISA-L) or zstd-compressed, or as it is for NONE."""
    if compression is Compression.GZIP:
        return bytes(igzip.compress(data))
    if compression is Compression.ZSTD:
        return bytes(zstandard.ZstdCompressor().compress(data))
    return data


def build(
    entries: Iterable[Entry],
    *,
    compression: Compression = Compression.NONE,
    header_format: Literal["pax", "gnu", "ustar"] = "pax",
    trailer: bool = True,
) -> bytes:
    """The bytes of a tar holding ``entries`` in order.

    Args:
        entries: the members.
        compression: compress the result.
        header_format: ``tarfile``'s header format (GNU long names, PAX records, plain ustar).
        trailer: end with the end-of-archive blocks and record padding (False stops right
            after the last member's data and padding, as some writers do).
    """
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer,
        mode="w",
        format=_FORMATS[header_format],
        encoding="utf-8",
        errors="surrogateescape",
    ) as archive:
        for entry in entries:
            archive.addfile(_tarinfo(entry), io.BytesIO(entry.data) if entry.data else None)
        end = archive.offset
    data = buffer.getvalue()
    if not trailer:
        data = data[:end]
    return compress(data, compression)


def _times(top: Path) -> dict[str, int]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, top)] = os.lstat(path).st_mtime_ns
    return found


@dataclass(frozen=True, slots=True)
class Jail:
    """A target ``root`` with a sentinel tree ``outside`` next to it, both under ``base``.

    :meth:`escapes` lists what changed outside ``root`` since :func:`make_jail`: the
    sentinel's content, metadata and times, and the listing of ``base``.
    """

    base: Path
    root: Path
    outside: Path
    before: dict[str, trees.Node]
    times: dict[str, int]
    listing: frozenset[str]

    def escapes(self) -> list[str]:
        """What changed outside the root (empty when nothing did)."""
        problems = trees.diff(self.before, trees.snapshot(self.outside), labels=("before", "after"))
        if _times(self.outside) != self.times:
            problems.append("sentinel times changed")
        listing = frozenset(os.listdir(self.base))
        if listing != self.listing:
            problems.append(f"entries beside the root changed: {sorted(listing ^ self.listing)}")
        return problems


def make_jail(base: Path) -> Jail:
    """Create ``base/root`` (empty) and the sentinel ``base/outside`` (files, a directory)."""
    root = base / "root"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch\n")
    (outside / "sub").mkdir()
    (outside / "sub" / "keep").write_bytes(b"keep\n")
    for path in (outside / "sub" / "keep", outside / "secret", outside / "sub", outside):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return Jail(
        base=base,
        root=root,
        outside=outside,
        before=trees.snapshot(outside),
        times=_times(outside),
        listing=frozenset(os.listdir(base)),
    )
