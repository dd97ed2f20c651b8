"""User namespaces: ``--userns auto`` maps the container's uids and gids 0-65535 to an
unprivileged host range, and the rootfs is made usable by that root with idmapped mounts.

The range is the first ``root:START:COUNT`` line of ``/etc/subuid`` (``/etc/subgid``) with
COUNT ≥ 65536, else 100000-165535 (podman's and docker's usual first range).  Container root
is then host uid 100000: a process escaping the container has no privilege on the host.

**The rootfs.**  The image's files belong to uid 0 on disk; without help the container's
root would see them as ``nobody`` and could not write its own rootfs.  ``chown``\\ ing a copy
of every layer is slow and breaks the sharing of layers between containers, so strata uses
*idmapped mounts* instead (Linux ≥ 5.12, ext4/xfs/btrfs/tmpfs): each overlay layer directory
(every ``lowerdir``, and the directory holding ``upperdir`` and ``workdir``) is cloned with
``open_tree(2)`` and given the container's mapping with ``mount_setattr(2)``
(``MOUNT_ATTR_IDMAP``), then the overlay is mounted on those idmapped layers.  The kernel
refuses to idmap an overlay mount itself (EINVAL) but accepts idmapped *layers*; the overlay
is mounted with the mapped root's fsuid/fsgid (overlayfs performs upper-layer operations
with its mounter's credentials, which must map into the layers' idmapping), so files the
container's root writes land on disk as uid 0 — the upper dir looks exactly as without a
user namespace (``diff``/``commit`` are unchanged).

:func:`mount_rootfs` does this for a mount namespace of the caller's choosing (the built-in
runtime: its private one; for runc: the host's, with :func:`unmount_rootfs` afterwards);
:func:`write_maps` writes a process's ``uid_map``/``gid_map`` (as root, no ``newuidmap``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from strata.errors import FailedPrecondition, NotSupported, StrataError

__all__ = [
    "SIZE",
    "auto_mappings",
    "bundle_mappings",
    "check_reachable",
    "mount_rootfs",
    "release",
    "unmount_rootfs",
    "write_maps",
]

#: How many ids a container gets (0-65535).
SIZE = 65536
#: The host range's start when ``/etc/subuid`` names none for root.
DEFAULT_START = 100_000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

_SYS_OPEN_TREE = 428  # x86_64 and the other architectures of the "generic" table
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_SYS_CAPGET = 125  # x86_64
_SYS_CAPSET = 126
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_MOUNT_ATTR_IDMAP = 0x00100000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_CLONE_NEWUSER = 0x10000000
_MNT_DETACH = 2
_MS_RDONLY = 1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _subid_start(path: str) -> int:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return DEFAULT_START
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in ("root", "0") and parts[1].isdigit() \
                and parts[2].isdigit() and int(parts[2]) >= SIZE:
            return int(parts[1])
    return DEFAULT_START


def auto_mappings() -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """``--userns auto``: the spec's ``uidMappings`` and ``gidMappings``."""
    return ([{"containerID": 0, "hostID": _subid_start("/etc/subuid"), "size": SIZE}],
            [{"containerID": 0, "hostID": _subid_start("/etc/subgid"), "size": SIZE}])


def bundle_mappings(bundle: Path) -> tuple[list[dict[str, int]], list[dict[str, int]]] | None:
    """The uid and gid mappings of a bundle's ``config.json`` (None: no user namespace)."""
    try:
        linux = json.loads((bundle / "config.json").read_text()).get("linux") or {}
    except (OSError, ValueError):
        return None
    if not any(ns.get("type") == "user" for ns in linux.get("namespaces") or ()):
        return None
    return list(linux.get("uidMappings") or ()), list(linux.get("gidMappings") or ())


def _map_text(mappings: Sequence[Mapping[str, Any]]) -> str:
    return "".join(f"{int(m['containerID'])} {int(m['hostID'])} {int(m['size'])}\n"
                   for m in mappings)


def write_maps(pid: int, uid_mappings: Sequence[Mapping[str, Any]],
               gid_mappings: Sequence[Mapping[str, Any]]) -> None:
    """Write ``pid``'s uid and gid maps (the caller is root in the parent namespace).

    Raises:
        StrataError: the kernel refused a map.
    """
    for name, mappings in (("uid_map", uid_mappings), ("gid_map", gid_mappings)):
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(_map_text(mappings))
        except OSError as exc:
            raise StrataError(f"write {name} of {pid}: {exc.strerror}") from None


def _host_root(mappings: Sequence[Mapping[str, Any]]) -> int:
    for m in mappings:
        if int(m["containerID"]) == 0:
            return int(m["hostID"])
    raise StrataError("the user namespace maps no root")


def _userns_fd(uid_mappings: Sequence[Mapping[str, Any]],
               gid_mappings: Sequence[Mapping[str, Any]]) -> int:
    """An fd of a (process-less) user namespace holding the mappings."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(hold_w)
            ok = _libc.unshare(_CLONE_NEWUSER) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise NotSupported("user namespaces are not available on this kernel")
        write_maps(pid, uid_mappings, gid_mappings)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def check_reachable(path: Path, uid: int, gid: int) -> None:
    """Check that the container's root (host ``uid``/``gid``) can reach ``path``: every
    directory on the way must be searchable by it (docker makes its data-root 0711 under
    ``--userns-remap`` for the same reason).

    Raises:
        FailedPrecondition: a directory is not (docker-like advice in the message).
    """
    current = Path("/")
    for part in Path(os.path.abspath(path)).parts[1:]:
        current = current / part
        try:
            st = os.stat(current)
        except OSError:
            return
        if not os.path.isdir(current):
            return
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise FailedPrecondition(
                f"--userns auto: {current} is not searchable by the container's root (host "
                f"uid {uid}); make it so (chmod o+x {current}) or use a store root under a "
                "searchable path")


#: The container's own files bound over the image's (``ROOT/containers/ID/NAME``).
_ETC_FILES = ("hosts", "hostname", "resolv.conf")


def _own_etc_files(container_dir: Path, uid: int, gid: int) -> None:
    """Give the container's ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf`` (bound
    from its directory) to its root, who may edit them as without a user namespace (docker
    does the same under ``--userns-remap``).  Links are never followed."""
    for name in _ETC_FILES:
        path = container_dir / name
        with contextlib.suppress(OSError):
            if os.path.isfile(path) and not os.path.islink(path):
                os.chown(path, uid, gid, follow_symlinks=False)


def _idmapped(source: str, userns_fd: int, target: Path) -> None:
    fd = int(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, source.encode(),
                           _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC))
    if fd < 0:
        raise NotSupported(f"open_tree {source}: {os.strerror(ctypes.get_errno())}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        rc = _libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                           ctypes.sizeof(attr))
        if rc < 0:
            raise NotSupported(f"idmapped mount of {source} (the filesystem or kernel does "
                               f"not support it): {os.strerror(ctypes.get_errno())}")
        target.mkdir(parents=True, exist_ok=True)
        rc = _libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, str(target).encode(),
                           _MOVE_MOUNT_F_EMPTY_PATH)
        if rc < 0:
            raise StrataError(f"move_mount to {target}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _mount_as(uid: int, gid: int, source: str, target: Path, fstype: str, flags: int,
              data: str) -> None:
    """mount(2) from a child whose fsuid/fsgid are ``uid``/``gid`` (capabilities kept)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _libc.setfsgid(gid)
            _libc.setfsuid(uid)
            header = _CapHeader(0x20080522, 0)
            data_caps = (_CapData * 2)()
            _libc.syscall(_SYS_CAPGET, ctypes.byref(header), ctypes.byref(data_caps))
            for i in range(2):  # effective = permitted (setfsuid dropped the fs ones)
                data_caps[i].effective = data_caps[i].permitted
            _libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data_caps))
            rc = _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags,
                             ctypes.c_char_p(data.encode()))
            code = 0 if rc == 0 else min(ctypes.get_errno(), 255) or 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        err = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
        raise StrataError(f"mount the idmapped rootfs on {target}: "
                          f"{os.strerror(err) if err else 'failed'}")


def mount_rootfs(mounts: Sequence[Any], target: Path, scratch: Path,
                 uid_mappings: Sequence[Mapping[str, Any]],
                 gid_mappings: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Mount a snapshotter's ``mounts`` (:class:`strata.snapshots.Mount`) on ``target``
    (``ROOT/containers/ID/bundle/rootfs``) so that the container's root owns what uid 0
    owns on disk; idmapped layer mounts are attached under ``scratch``.  The container's
    ``hosts``, ``hostname`` and ``resolv.conf`` are given to its root too.  Returns the
    layer mount points (for :func:`unmount_rootfs`).

    Raises:
        NotSupported: no user namespaces or idmapped mounts here.
        StrataError: a mount failed.
    """
    check_reachable(target, _host_root(uid_mappings), _host_root(gid_mappings))
    _own_etc_files(target.parent.parent, _host_root(uid_mappings), _host_root(gid_mappings))
    nsfd = _userns_fd(uid_mappings, gid_mappings)
    layers: list[Path] = []
    try:
        for m in mounts:
            if m.type == "bind":
                point = scratch / str(len(layers))
                _idmapped(m.source, nsfd, point)
                layers.append(point)
                _mount_bind(point, target, readonly="ro" in m.options)
                continue
            if m.type != "overlay":
                raise NotSupported(f"unknown mount type {m.type!r}")
            options: list[str] = []
            upper_parent: str | None = None
            upper_point = scratch
            for opt in m.options:
                key, _, value = opt.partition("=")
                if key == "lowerdir":
                    mapped = []
                    for lower in value.split(":"):
                        point = scratch / str(len(layers))
                        _idmapped(lower, nsfd, point)
                        layers.append(point)
                        mapped.append(str(point))
                    options.append("lowerdir=" + ":".join(mapped))
                elif key in ("upperdir", "workdir"):
                    parent = os.path.dirname(value.rstrip("/"))
                    if upper_parent is None:
                        upper_parent = parent
                        upper_point = scratch / str(len(layers))
                        _idmapped(parent, nsfd, upper_point)
                        layers.append(upper_point)
                    elif parent != upper_parent:
                        raise NotSupported("upperdir and workdir in different directories")
                    options.append(f"{key}={upper_point / os.path.basename(value.rstrip('/'))}")
                elif opt not in ("ro", "rw"):
                    options.append(opt)
            _mount_as(_host_root(uid_mappings), _host_root(gid_mappings), m.source, target,
                      "overlay", _MS_RDONLY if "ro" in m.options else 0, ",".join(options))
    except BaseException:
        unmount_rootfs(layers)
        raise
    finally:
        os.close(nsfd)
    return layers


def _mount_bind(source: Path, target: Path, *, readonly: bool) -> None:
    ms_bind, ms_remount = 4096, 32
    if _libc.mount(str(source).encode(), str(target).encode(), None, ms_bind, None) != 0:
        raise StrataError(f"bind {source} on {target}: {os.strerror(ctypes.get_errno())}")
    if readonly:
        _libc.mount(None, str(target).encode(), None, ms_remount | ms_bind | _MS_RDONLY, None)


def release(bundle: Path) -> None:
    """Detach every idmapped layer mount left under ``bundle/.idmap`` (a supervisor killed
    while its container ran); call it before deleting anything under the bundle, whose
    ``.idmap`` entries are views of the image's shared layers."""
    scratch = os.path.realpath(bundle / ".idmap") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = sorted({_unescape(line.split()[4]) for line in lines
                     if len(line.split()) > 4 and _unescape(line.split()[4]).startswith(scratch)},
                    key=len, reverse=True)
    for point in points:
        _libc.umount2(point.encode(), _MNT_DETACH)


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def unmount_rootfs(layers: Sequence[Path]) -> None:
    """Detach the idmapped layer mounts :func:`mount_rootfs` attached (idempotent)."""
    for point in reversed(layers):
        _libc.umount2(str(point).encode(), _MNT_DETACH)
        with contextlib.suppress(OSError):
            point.rmdir()
