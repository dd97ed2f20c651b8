"""Mounting and unmounting what a snapshotter returns: :func:`mount_all`, :func:`unmount`.

Owns the mount(2)/umount2(2) system calls (through libc), for ``overlay`` and ``bind``
mounts.  A read-only bind mount takes two calls (bind, then remount read-only), as
``mount -o bind,ro`` does.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from strata.errors import InvalidArgument, NotSupported, StrataError, Unavailable
from strata.snapshots.base import Mount

__all__ = ["mount_all", "unmount"]

_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MNT_DETACH = 2
_PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded (find_library runs ldconfig)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _error(what: str, err: int) -> StrataError:
    message = f"{what}: {os.strerror(err)}"
    if err in (1, 19):  # EPERM, ENODEV: no privilege or no such filesystem
        return NotSupported(message)
    if err == 22:
        return InvalidArgument(message)
    return Unavailable(message, retryable=False)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if data is not None and len(data.encode()) >= _PAGE:
        raise InvalidArgument(f"mount options for {target} exceed one page ({len(data)} bytes)")
    rc = _libc.mount(source.encode(), target.encode(),
                     fstype.encode() if fstype else None, flags,
                     data.encode() if data is not None else None)
    if rc != 0:
        raise _error(f"mount {fstype or 'bind'} {source} on {target}", ctypes.get_errno())


def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    """Mount each of ``mounts`` on ``target`` in order.

    Raises:
        NotSupported: no privilege, or the kernel lacks the filesystem.
        InvalidArgument: unknown mount type or options the kernel refuses.
    """
    for m in mounts:
        readonly = "ro" in m.options
        if m.type == "bind":
            flags = _MS_BIND | (_MS_REC if "rbind" in m.options else 0)
            _mount(m.source, str(target), None, flags, None)
            if readonly:
                try:
                    _mount("none", str(target), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)
                except StrataError:
                    unmount(target)
                    raise
        elif m.type == "overlay":
            data = ",".join(o for o in m.options if o not in ("ro", "rw"))
            _mount(m.source, str(target), "overlay", _MS_RDONLY if readonly else 0, data)
        else:
            raise InvalidArgument(f"unknown mount type {m.type!r}")


def unmount(target: Path, *, detach: bool = False) -> None:
    """Unmount ``target`` (lazily with ``detach``).

    Raises:
        Unavailable: the filesystem is busy or not mounted.
    """
    rc = _libc.umount2(str(target).encode(), _MNT_DETACH if detach else 0)
    if rc != 0:
        raise _error(f"unmount {target}", ctypes.get_errno())
