"""Applying a layer tar onto a directory: :func:`apply`.

Owns extraction of one uncompressed layer stream onto a root directory with umoci's
``unpack`` semantics (as root): every member resolved inside the root, the root never
retyped, whatever is in the way replaced (a directory over a directory is kept and updated),
owners, modes (setuid after chown), xattrs and times restored, parent directories' times
kept as they were, whiteouts applied against "the paths this layer wrote" — or written as
overlayfs whiteouts for an overlay upper directory.

It must never create, change or remove anything outside the root, and never reads the whole
layer into memory.  Compressed blobs are the caller's business (``open_decompressed``).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from strata.errors import InvalidArgument, NotFound, StrataError, Unavailable, UnsafeArchive
from strata.layers._tarstream import BLOCKDEV, CHARDEV, DIR, HARDLINK, REG, SYMLINK, Member
from strata.layers._tarstream import TarReader as _TarReader
from strata.layers.safepath import RootResolver
from strata.layers.scan import LayerStats, _account, _check, _DiskUsage, _join
from strata.layers.whiteout import OVERLAY_OPAQUE_XATTR, OVERLAY_XATTR_PREFIX, WhiteoutMode

__all__ = ["ApplyOptions", "IdMap", "apply"]

_IGNORED_XATTRS = frozenset({"security.selinux"})  # umoci's ignoreXattrs: host policy
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _map_id(ranges: tuple[tuple[int, int, int], ...], value: int, what: str) -> int:
    if not ranges:
        return value
    for container_id, host_id, size in ranges:
        if container_id <= value < container_id + size:
            return host_id + value - container_id
    raise InvalidArgument(f"{what} {value} is not in the id mapping")


@dataclass(frozen=True, slots=True)
class IdMap:
    """A uid/gid shift, as in a user namespace's ``uid_map``/``gid_map``.

    Each range is ``(container_id, host_id, size)``.  An empty tuple maps ids to themselves.
    """

    uids: tuple[tuple[int, int, int], ...] = ()
    gids: tuple[tuple[int, int, int], ...] = ()

    def map_uid(self, uid: int) -> int:
        """The host uid of container uid ``uid``.

        Raises:
            InvalidArgument: no range covers ``uid``.
        """
        return _map_id(self.uids, uid, "uid")

    def map_gid(self, gid: int) -> int:
        """The host gid of container gid ``gid``.

        Raises:
            InvalidArgument: no range covers ``gid``.
        """
        return _map_id(self.gids, gid, "gid")


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    """How :func:`apply` writes a layer.

    Attributes:
        whiteouts: OCI (delete from a plain directory) or OVERLAY (write overlayfs whiteouts).
        ids: shift owners from the tar through this mapping (None: as they are).
        same_owner: chown entries to the tar's (mapped) uid/gid; False leaves the caller's.
        allow_devices: False refuses character and block device members.
    """

    whiteouts: WhiteoutMode = WhiteoutMode.OCI
    ids: IdMap | None = None
    same_owner: bool = True
    allow_devices: bool = True


def _os_error(member: str, exc: OSError) -> StrataError:
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        return Unavailable(f"cannot apply layer member {member!r}: {reason}", retryable=False)
    return UnsafeArchive(member, f"cannot apply: {reason}")


class _Applier:
    """The state of one :func:`apply`: resolved directories, written paths, directory times."""

    def __init__(self, root: str, options: ApplyOptions) -> None:
        self.root = root
        self.options = options
        self.overlay = options.whiteouts is WhiteoutMode.OVERLAY
        self.ids = options.ids
        self.same_owner = options.same_owner
        owner: tuple[int, int] | None = None
        if options.ids is not None and options.same_owner:
            owner = (options.ids.map_uid(0), options.ids.map_gid(0))
        self.upper: set[str] = set()
        # Directories whose times are put back at the end: umoci restores an entry's parent
        # after writing the entry, so a directory ends with the times its own header gave or
        # those it had before this layer.  Directories changed in passing (a parent created
        # on the way, children purged by a whiteout further up) are not restored: dropped.
        self.dir_times: dict[str, tuple[int, int]] = {}
        self.res = RootResolver(root, mkdir_owner=owner, on_mkdir=self.forget_times)
        self.usage = _DiskUsage(strict=False)
        self.clear_new_xattrs = False

    # -- helpers ----------------------------------------------------------------------------

    def host(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def forget_times(self, rel: str) -> None:
        self.dir_times.pop(rel, None)

    def touch(self, rel: str) -> None:
        """Remember a directory's times before its entries change, to restore them at the end."""
        if rel not in self.dir_times:
            st = os.lstat(self.host(rel))
            self.dir_times[rel] = (st.st_atime_ns, st.st_mtime_ns)

    def clear(self, path: str, rel: str) -> None:
        """Remove whatever is at ``path`` (a directory with everything below it)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            self.res.invalidate()
            prefix = f"{rel}/"
            self.dir_times.pop(rel, None)
            for key in [k for k in self.dir_times if k.startswith(prefix)]:
                del self.dir_times[key]
        else:
            os.unlink(path)
            if stat.S_ISLNK(st.st_mode):
                self.res.invalidate()

    def owner(self, member: Member) -> tuple[int, int]:
        ids = self.ids
        if ids is None:
            return member.uid, member.gid
        try:
            return ids.map_uid(member.uid), ids.map_gid(member.gid)
        except InvalidArgument as exc:
            raise UnsafeArchive(member.name, exc.message) from exc

    @staticmethod
    def times(member: Member) -> tuple[int, int]:
        mtime = member.mtime_ns
        atime = member.atime_ns
        return (mtime if atime is None else atime), mtime

    def set_xattrs(self, target: int | str, member: Member, *, clear: bool) -> None:
        follow = isinstance(target, int)  # an fd: "following" is meaningless but required
        if clear:
            for key in os.listxattr(target, follow_symlinks=follow):
                if key not in _IGNORED_XATTRS and not key.startswith(OVERLAY_XATTR_PREFIX):
                    os.removexattr(target, key, follow_symlinks=follow)
        if not member.xattrs:
            return
        for key, value in member.xattrs.items():
            if key in _IGNORED_XATTRS or key.startswith(OVERLAY_XATTR_PREFIX):
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno == errno.EOPNOTSUPP:
                    continue  # the filesystem has no xattrs: umoci warns and goes on
                raise UnsafeArchive(member.name, f"cannot set xattr {key!r}: {exc.strerror}") from exc
            if key == "system.posix_acl_default":
                self.clear_new_xattrs = True  # children inherit ACLs the tar did not ask for

    def metadata(self, path: str, member: Member, *, clear: bool) -> None:
        """Owner, mode, xattrs of a directory or special file (times are set by the caller)."""
        if self.same_owner:
            os.chown(path, *self.owner(member), follow_symlinks=False)
        os.chmod(path, member.mode)
        self.set_xattrs(path, member, clear=clear or self.clear_new_xattrs)

    # -- members ----------------------------------------------------------------------------

    def member(self, member: Member, reader: _TarReader) -> None:
        name, parent, base, target, link = _check(member, self.options.allow_devices)
        if target is not None:
            if self.overlay:
                self.overlay_whiteout(member, parent, target)
            else:
                self.oci_whiteout(member, parent, target)
            return
        if not name:  # "." — umoci applies the header's metadata to the root
            self.metadata(self.root, member, clear=True)
            self.dir_times[""] = self.times(member)
            return
        pdir = self.res.resolve(parent, member.name, create=True)
        assert pdir is not None
        rel = f"{pdir}/{base}" if pdir else base
        path = f"{self.root}/{rel}"
        if pdir not in self.dir_times:
            self.touch(pdir)
        kind = member.type
        if kind == REG:
            self.regular(member, rel, path, reader)
        elif kind == DIR:
            self.directory(member, name, rel, path)
        elif kind == SYMLINK:
            self.symlink(member, rel, path)
        elif kind == HARDLINK:
            self.hardlink(member, link, rel, path)
        else:
            self.node(member, rel, path)
        upper = self.upper
        while rel and rel not in upper:
            upper.add(rel)
            rel = rel.rpartition("/")[0]
        _account(self.usage, member, name, link)

    def regular(self, member: Member, rel: str, path: str, reader: _TarReader) -> None:
        try:
            fd = os.open(path, _FILE_FLAGS, 0o600)
        except FileExistsError:
            self.clear(path, rel)
            fd = os.open(path, _FILE_FLAGS, 0o600)
        try:
            reader.copy_to_fd(fd)
            if self.same_owner:
                os.fchown(fd, *self.owner(member))
            os.fchmod(fd, member.mode)
            if member.xattrs or self.clear_new_xattrs:
                self.set_xattrs(fd, member, clear=self.clear_new_xattrs)
            os.utime(fd, ns=self.times(member))
        finally:
            os.close(fd)

    def directory(self, member: Member, name: str, rel: str, path: str) -> None:
        existed = False
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                existed = True
            else:
                self.clear(path, rel)
                os.mkdir(path, 0o700)
        self.res.remember(name, rel)
        self.metadata(path, member, clear=existed)
        self.dir_times[rel] = self.times(member)

    def symlink(self, member: Member, rel: str, path: str) -> None:
        try:
            os.symlink(member.linkname, path)
        except FileExistsError:
            self.clear(path, rel)
            os.symlink(member.linkname, path)
        if self.same_owner:
            os.chown(path, *self.owner(member), follow_symlinks=False)
        if member.xattrs:
            self.set_xattrs(path, member, clear=False)
        os.utime(path, ns=self.times(member), follow_symlinks=False)

    def hardlink(self, member: Member, link: str, rel: str, path: str) -> None:
        tparent, _, tbase = link.rpartition("/")
        tdir = self.res.resolve(tparent, member.name, create=False)
        missing = UnsafeArchive(
            member.name, f"hardlink target {member.linkname!r} does not exist in the root"
        )
        if tdir is None:
            raise missing
        trel = _join(tdir, tbase)
        tpath = self.host(trel)
        try:
            tst = os.lstat(tpath)
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        if stat.S_ISDIR(tst.st_mode):
            raise UnsafeArchive(member.name, f"hardlink target {member.linkname!r} is a directory")
        if trel == rel:
            raise UnsafeArchive(member.name, "hardlink to itself")
        try:
            os.link(tpath, path, follow_symlinks=False)
        except FileExistsError:
            st = os.lstat(path)
            if st.st_ino == tst.st_ino and st.st_dev == tst.st_dev:
                return
            self.clear(path, rel)
            os.link(tpath, path, follow_symlinks=False)

    def node(self, member: Member, rel: str, path: str) -> None:
        kind = member.type
        if kind in (CHARDEV, BLOCKDEV):
            fmt = stat.S_IFCHR if kind == CHARDEV else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            what = "device node"
        else:
            fmt, device, what = stat.S_IFIFO, 0, "fifo"
        self.mknod(member, rel, path, mode=fmt | (member.mode & 0o777), device=device, what=what)
        self.metadata(path, member, clear=False)
        os.utime(path, ns=self.times(member), follow_symlinks=False)

    def mknod(self, member: Member, rel: str, path: str, *, mode: int, device: int, what: str) -> None:
        try:
            try:
                os.mknod(path, mode, device)
            except FileExistsError:
                self.clear(path, rel)
                os.mknod(path, mode, device)
        except PermissionError as exc:
            raise UnsafeArchive(member.name, f"cannot create {what}: operation not permitted") from exc

    # -- whiteouts --------------------------------------------------------------------------

    def overlay_whiteout(self, member: Member, parent: str, target: str) -> None:
        pdir = self.res.resolve(parent, member.name, create=True)
        assert pdir is not None
        if not target:
            try:
                os.setxattr(self.host(pdir), OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            except OSError as exc:
                raise UnsafeArchive(member.name, f"cannot mark directory opaque: {exc.strerror}") from exc
            return
        self.touch(pdir)
        rel = _join(pdir, target)
        self.mknod(member, rel, self.host(rel), mode=stat.S_IFCHR, device=0, what="overlay whiteout device")
        self.usage.whiteout(_join(parent, target))

    def oci_whiteout(self, member: Member, parent: str, target: str) -> None:
        if target:
            self.usage.whiteout(_join(parent, target))
        pdir = self.res.resolve(parent, member.name, create=False)
        if pdir is None:
            return
        if target:
            rel = _join(pdir, target)
            try:
                os.lstat(self.host(rel))
            except (FileNotFoundError, NotADirectoryError):
                return
            self.touch(pdir)
            self.purge(rel, keep=False, restored=pdir)
        else:
            self.touch(pdir)
            self.purge(pdir, keep=True, restored=pdir)

    def purge(self, top: str, *, keep: bool, restored: str) -> None:
        """Remove ``top`` and below, except what this layer wrote (and ``top`` if ``keep``).

        Like umoci, only ``restored`` (the directory of the whiteout member) gets its times
        back; directories further down that lose entries keep the time of the change.
        """
        upper = self.upper
        stack = [(top, keep)]
        while stack:
            rel, keep_this = stack.pop()
            path = self.host(rel)
            if not keep_this and rel not in upper:
                self.clear(path, rel)
                parent = rel.rpartition("/")[0]
                if parent != restored:
                    self.forget_times(parent)
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            with os.scandir(path) as entries:
                names = [entry.name for entry in entries]
            stack.extend((_join(rel, child), False) for child in names)

    # -- the end ----------------------------------------------------------------------------

    def restore_dir_times(self) -> None:
        for rel, times in self.dir_times.items():
            try:
                os.utime(self.host(rel), ns=times, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue


def apply(root: Path, tar: BinaryIO, options: ApplyOptions | None = None) -> LayerStats:
    """Apply an uncompressed layer tar onto the directory ``root``.

    Members are written as ``umoci unpack`` writes them as root: names resolved inside the
    root (symlinked parents followed *within* it), whatever is in the way replaced, a
    directory over a directory kept and updated, owners then modes (setuid survives) then
    xattrs then times; directories keep the times they had before their entries changed
    (or the ones their own header gives); whiteouts as ``options.whiteouts`` says.

    ``umoci unpack`` also sets a fresh rootfs's atime/mtime to the epoch before its first
    layer; ``apply`` leaves the root's times alone (it applies onto existing trees too), so an
    image unpacker that wants umoci's tree exactly does that itself.  On error the root is
    left partly applied: discard it.

    Args:
        root: the directory to apply onto; it must exist.
        tar: the uncompressed layer stream, read once to its end.
        options: how to write; the defaults suit a plain directory applied as root.

    Returns:
        The layer's diff_id (over every byte of ``tar``), size, member count, disk size.

    Raises:
        UnsafeArchive: a member would escape the root (absolute or ``..`` names, escaping
            symlinks or hardlinks, bad whiteouts, the root retyped) or cannot be created
            (device nodes without privilege, a parent that is not a directory).
        InvalidContent: the tar is truncated or malformed, or the decompression failed.
        NotFound: ``root`` does not exist.
        InvalidArgument: ``root`` is not a directory.
        Unavailable: the target filesystem is full.
    """
    opts = options if options is not None else ApplyOptions()
    root_path = os.path.abspath(os.fspath(root))
    try:
        root_st = os.stat(root_path)
    except FileNotFoundError:
        raise NotFound(f"apply target {root_path} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(f"apply target {root_path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(root_st.st_mode):
        raise InvalidArgument(f"apply target {root_path} is not a directory")
    applier = _Applier(root_path, opts)
    entries = 0
    with _TarReader(tar, prefetch=True) as reader:
        while True:
            member = reader.next()
            if member is None:
                break
            entries += 1
            try:
                applier.member(member, reader)
            except OSError as exc:
                raise _os_error(member.name, exc) from exc
            except ValueError as exc:  # e.g. an embedded NUL os refuses
                raise UnsafeArchive(member.name, str(exc)) from exc
        diff_id, size = reader.finish()
    try:
        applier.restore_dir_times()
    except OSError as exc:
        raise _os_error(".", exc) from exc
    return LayerStats(diff_id=diff_id, size=size, entries=entries, disk_size=applier.usage.total())
