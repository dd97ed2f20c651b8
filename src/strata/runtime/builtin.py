"""strata's built-in OCI runtime: runs a bundle (``config.json`` + a prepared rootfs) in Python.

:func:`run_bundle` forks a child that unshares the spec's namespaces (mnt, uts, ipc, net,
pid) and forks again, so the grandchild is PID 1 of the new PID namespace.  PID 1 makes every
mount private, bind-mounts the rootfs onto itself, performs the spec's mounts (targets
resolved *inside* the rootfs, as runc's securejoin does, so symlinks in the image cannot
redirect a mount to the host), creates the standard device nodes, ``pivot_root``\\ s into the
rootfs (not ``chroot``) and detaches the old root, masks and write-protects the spec's paths,
sets the hostname and rlimits, drops the capability bounding set, sets ``no_new_privs``,
switches uid/gid keeping only the spec's capabilities, loads the seccomp filter and finally
``execve``\\ s the process.

Resources: before forking, the container's cgroup (``linux.cgroupsPath``) is created with the
spec's ``linux.resources`` (:func:`strata.runtime.cgroups.apply`, as runc does) and PID 1
joins it first thing, so the runtime child itself is never counted (nor OOM-killed).  With a
user namespace (``--userns auto``) the runtime child first mounts the rootfs on idmapped
layers in a private mount namespace, unshares, waits for this process to write its uid/gid
maps, puts PID 1 in the cgroup (PID 1 no longer may) and lets it go on as the namespace's
root; device nodes are then bound from the host instead of made.

Failures before ``execve`` travel back on a close-on-exec pipe as JSON and become
:class:`~strata.errors.CommandNotFound` (127) / :class:`~strata.errors.CannotExecute` (126) /
:class:`~strata.errors.StrataError` (125 at the CLI); after a successful ``execve`` the pipe
closes empty and the process's exit status is the result.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from strata.errors import CannotExecute, CommandNotFound, FailedPrecondition, StrataError
from strata.runtime import cgroups, seccomp, userns
from strata.runtime import pty as _pty
from strata.runtime.spec import ALL_CAPABILITIES
from strata.snapshots import Mount, mount_all

__all__ = ["CAPABILITIES", "run_bundle", "secure_join"]

_libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded (find_library runs ldconfig)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_NS_FLAGS = {"mount": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC,
             "pid": CLONE_NEWPID, "network": CLONE_NEWNET, "user": 0x10000000}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
_FLAG_OPTIONS = {
    "ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "strictatime": MS_STRICTATIME,
    "bind": MS_BIND, "rbind": MS_BIND | MS_REC,
}
_CLEAR_OPTIONS = {"rw", "suid", "dev", "exec", "private", "rprivate", "slave", "rslave",
                  "shared", "rshared"}

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
_SYS_CAPSET = 126  # x86_64
_SYS_PIVOT_ROOT = 155
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: Capability names → numbers (linux/capability.h).
CAPABILITIES: dict[str, int] = {name: i for i, name in enumerate(ALL_CAPABILITIES)}

#: The standard devices every container gets (runtime-spec "Default Devices").
_DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
    ("tty", 5, 0),
)
_DEV_LINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"),
)
_MAX_SYMLINKS = 255

#: In the forked runtime child only: the console socket of :func:`run_bundle` (or None).
_console_fd: int | None = None

#: In the forked runtime child only: the cgroup directories the container's init joins.
_cgroup_dirs: list[Path] = []  # filled in place by run_bundle before it forks

#: With a user namespace (run_bundle's sync pipes, set before it forks): the runtime child
#: says "unshared" on ``_userns_sync[0]`` and waits for "maps written" on ``_userns_sync[1]``.
_userns_sync: list[int] = []

CLONE_NEWUSER = 0x10000000
_ST_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
             (os.ST_RDONLY, MS_RDONLY))


class _SetupError(Exception):
    """A failure inside the container before exec: ``kind`` is notfound/noexec/error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise _SetupError("error", f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    rc = _libc.mount(source.encode() if source else None, target.encode(),
                     fstype.encode() if fstype else None, flags,
                     ctypes.c_char_p(data.encode()) if data else None)
    _check(rc, f"mount {source} on {target}")


def secure_join(root: str, path: str) -> str:
    """``root``/``path`` with every symlink on the way resolved *inside* ``root``.

    An absolute link target restarts at ``root`` and ``..`` never climbs above it (runc's
    ``securejoin``), so the result always names a path under ``root``.  Components that do
    not exist are kept as they are.

    Raises:
        FailedPrecondition: too many levels of symlinks.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise FailedPrecondition(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _ensure(root: str, dest: str, *, directory: bool) -> str:
    """Create the mount target ``dest`` inside ``root`` (never following links outside)."""
    target = secure_join(root, dest)
    parent = os.path.dirname(target)
    if parent != root:
        rel = os.path.relpath(parent, root)
        cur = root
        for part in rel.split("/"):
            cur = secure_join(root, os.path.relpath(os.path.join(cur, part), root))
            if not os.path.lexists(cur):
                os.mkdir(cur, 0o755)
            elif not os.path.isdir(cur) or os.path.islink(cur):
                raise _SetupError("error", f"mount target parent {dest} is not a directory")
    if not os.path.lexists(target):
        if directory:
            os.mkdir(target, 0o755)
        else:
            fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            os.close(fd)
    return target


def _parse_options(options: Sequence[str]) -> tuple[int, list[str]]:
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            flags |= _FLAG_OPTIONS[opt]
        elif opt in _CLEAR_OPTIONS:
            continue
        else:
            data.append(opt)
    return flags, data


def _do_mount(root: str, m: Mapping[str, Any]) -> None:
    dest = str(m["destination"])
    type_ = str(m.get("type") or "")
    source = str(m.get("source") or type_)
    flags, data = _parse_options(list(m.get("options") or ()))
    is_bind = type_ == "bind" or flags & MS_BIND
    directory = not (is_bind and not os.path.isdir(source))
    target = _ensure(root, dest, directory=directory)
    if is_bind:
        _mount(source, target, None, MS_BIND | (flags & MS_REC))
        extra = flags & ~(MS_BIND | MS_REC)
        if extra:
            _mount(None, target, None, MS_REMOUNT | MS_BIND | extra | _kept_flags(target))
        return
    readonly = flags & MS_RDONLY
    if type_ == "sysfs":
        try:
            _mount(source, target, type_, flags)
        except _SetupError:
            if not _userns_sync:
                raise
            # In a user namespace that does not own the network namespace (a joined one),
            # sysfs cannot be mounted: the host's is bound read-only instead (as runc does).
            _mount("/sys", target, None, MS_BIND | MS_REC)
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(target))
        return
    if readonly and not data:
        _mount(source, target, type_, flags)
        return
    _mount(source, target, type_, flags, ",".join(data) or None)


def _make_devices(root: str) -> None:
    dev = secure_join(root, "/dev")
    for name, major, minor in _DEVICES:
        path = os.path.join(dev, name)
        if _userns_sync:  # no mknod in a user namespace: bind the host's node (runc's way)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o666))
            _mount(f"/dev/{name}", path, None, MS_BIND)
            continue
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)
    for name, target in _DEV_LINKS:
        if name == "core":
            continue  # runc no longer creates /dev/core
        path = os.path.join(dev, name)
        if not os.path.lexists(path):
            os.symlink(target, path)


def _make_device(root: str, device: Mapping[str, Any]) -> None:
    """Create one of the spec's ``linux.devices`` inside the rootfs (``--privileged``)."""
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(
        str(device.get("type")))
    if kind is None:
        raise _SetupError("error", f"unknown device type {device.get('type')!r}")
    path = _ensure_parent(root, str(device["path"]))
    if os.path.lexists(path):  # (the last component is never followed)
        if os.path.isdir(path) and not os.path.islink(path):
            return
        os.unlink(path)
    mode = int(device.get("fileMode", 0o666)) & 0o7777
    os.mknod(path, mode | kind, os.makedev(int(device.get("major", 0)),
                                           int(device.get("minor", 0))))
    os.chmod(path, mode)
    os.chown(path, int(device.get("uid", 0)), int(device.get("gid", 0)))


def _ensure_parent(root: str, dest: str) -> str:
    """``dest`` inside ``root`` with its parent directories made (links resolved inside)."""
    parent = os.path.dirname(dest.rstrip("/")) or "/"
    if parent != "/":
        _ensure(root, parent, directory=True)
    return os.path.join(secure_join(root, parent), os.path.basename(dest.rstrip("/")))


def _pivot_root(root: str) -> None:
    os.chdir(root)
    rc = _libc.syscall(_SYS_PIVOT_ROOT, b".", b".")
    _check(int(rc), "pivot_root")
    # The old root is stacked under the new one at "/": make it private and detach it.
    _mount(None, ".", None, MS_SLAVE | MS_REC)
    rc = _libc.umount2(b".", MNT_DETACH)
    _check(rc, "unmount the old root")
    os.chdir("/")


def _mask(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY)
        else:
            _mount("/dev/null", path, None, MS_BIND)


def _kept_flags(path: str) -> int:
    """The flags of the mount at ``path`` that a bind remount must repeat (in a user
    namespace the kernel refuses to clear nosuid/nodev/noexec... of a mount it locked)."""
    try:
        current = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(ms for st, ms in _ST_FLAGS if current & st)


def _readonly(paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            continue
        _mount(path, path, None, MS_BIND | MS_REC)
        _mount(None, path, None,
               MS_REMOUNT | MS_BIND | MS_RDONLY | MS_REC | _kept_flags(path))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _mask_of(names: Sequence[str]) -> int:
    bits = 0
    for name in names:
        if name not in CAPABILITIES:
            raise _SetupError("error", f"unknown capability {name!r}")
        bits |= 1 << CAPABILITIES[name]
    return bits


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    rc = _libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data))
    _check(int(rc), "capset")


def _lookpath(name: str, env: Sequence[str]) -> str:
    """exec.LookPath as runc does it, with its messages (Go's)."""
    def executable(path: str) -> None:
        st = os.stat(path)  # FileNotFoundError, PermissionError
        if stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111:
            raise PermissionError(errno.EACCES, "permission denied")

    if "/" in name:
        try:
            executable(name)
        except FileNotFoundError:
            raise _SetupError("notfound", f'exec: "{name}": stat {name}: no such file or '
                                          "directory") from None
        except PermissionError:
            raise _SetupError("noexec", f'exec: "{name}": permission denied') from None
        return name
    path = next((e[5:] for e in env if e.startswith("PATH=")), "")
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        try:
            executable(candidate)
        except OSError:
            continue
        return candidate
    raise _SetupError("notfound", f'exec: "{name}": executable file not found in $PATH')


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _loopback_up() -> None:
    """Bring ``lo`` up in the new network namespace (runc does the same for a new one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _container_init(spec: Mapping[str, Any], bundle: str, rootfs_mounts: Sequence[Mount]
                    ) -> None:
    """PID 1 of the container: set everything up and exec (never returns)."""
    linux: Mapping[str, Any] = spec.get("linux") or {}
    process: Mapping[str, Any] = spec["process"]
    root_path = str(spec["root"]["path"])
    root = os.path.realpath(os.path.join(bundle, root_path))

    if _userns_sync:
        # The runtime child put us in the cgroups (we could not: the files are the host
        # root's); wait for it, then become the namespace's root (host uid: the mapped one).
        if os.read(_userns_sync[1], 1) != b"1":
            raise _SetupError("error", "the runtime did not set the container up")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        os.setgroups([])
    # Into the container's cgroups first: every process it makes is counted from here on
    # (the runtime child stays outside, so it is never the OOM killer's choice).
    elif _cgroup_dirs:
        try:
            cgroups.join(_cgroup_dirs)
        except StrataError as exc:
            raise _SetupError("error", str(exc)) from None
    # Mounts: nothing propagates back to the host; the rootfs becomes a mount point.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if rootfs_mounts:
        try:
            mount_all(rootfs_mounts, Path(root))
        except StrataError as exc:
            raise _SetupError("error", f"mount the rootfs: {exc}") from None
    _mount(root, root, None, MS_BIND | MS_REC)
    for m in spec.get("mounts") or ():
        _do_mount(root, m)
        if m["destination"] == "/dev" and m.get("type") == "tmpfs":
            _make_devices(root)
    for device in linux.get("devices") or ():
        _make_device(root, device)
    if any(ns.get("type") == "network" and not ns.get("path")
           for ns in linux.get("namespaces") or ()):
        _loopback_up()  # (a joined namespace was set up by its creator)
    if spec.get("hostname"):
        name = str(spec["hostname"]).encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    _pivot_root(root)
    if process.get("terminal") and _console_fd is not None:
        # After pivot_root: the pty comes from the container's own /dev/pts (tty says
        # /dev/pts/0), as with runc.
        _pty.setup_console(_console_fd, int((process.get("user") or {}).get("uid", 0)))
    _mask(list(linux.get("maskedPaths") or ()))
    _readonly(list(linux.get("readonlyPaths") or ()))
    if spec["root"].get("readonly"):
        _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags("/"))

    for rl in process.get("rlimits") or ():
        kind = getattr(resource, str(rl["type"]), None)
        if kind is None:
            raise _SetupError("error", f"unknown rlimit {rl['type']}")
        soft, hard = (resource.RLIM_INFINITY if int(rl[k]) >= 1 << 63 else int(rl[k])
                      for k in ("soft", "hard"))
        try:
            resource.setrlimit(kind, (soft, hard))
        except (OSError, ValueError) as exc:
            raise _SetupError("error", f"error setting rlimit type {rl['type']}: {exc}"
                              ) from None

    caps: Mapping[str, Sequence[str]] = process.get("capabilities") or {}
    bounding = _mask_of(caps.get("bounding") or ())
    for cap in range(_last_cap() + 1):
        if not bounding >> cap & 1:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    if process.get("noNewPrivileges"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")

    user: Mapping[str, Any] = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities")
    os.setgroups([int(g) for g in user.get("additionalGids") or ()])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _capset(_mask_of(caps.get("effective") or ()), _mask_of(caps.get("permitted") or ()),
            _mask_of(caps.get("inheritable") or ()))

    cwd = str(process.get("cwd") or "/")
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        # docker creates a missing WorkingDir; as the container's user it may not be able to.
        try:
            os.makedirs(cwd, 0o755, exist_ok=True)
            os.chdir(cwd)
        except OSError as exc:
            raise _SetupError("error", f"chdir to cwd (\"{cwd}\") set in config.json failed: "
                                       f"{exc.strerror}") from None
    except OSError as exc:
        raise _SetupError("error", f"chdir to cwd (\"{cwd}\") set in config.json failed: "
                                   f"{exc.strerror}") from None

    args = [str(a) for a in process["args"]]
    env = [str(e) for e in process.get("env") or ()]
    path = _lookpath(args[0], env)
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if linux.get("seccomp"):
        # Last, after no_new_privs: from here on only the allowed system calls work.
        try:
            seccomp.load(linux["seccomp"])
        except StrataError as exc:
            raise _SetupError("error", str(exc)) from None
    try:
        os.execve(path, args, dict(e.partition("=")[::2] for e in env))
    except PermissionError:
        raise _SetupError("noexec", f'exec: "{args[0]}": permission denied') from None
    except FileNotFoundError:
        raise _SetupError("notfound", f'exec: "{args[0]}": no such file or directory') from None
    except OSError as exc:
        raise _SetupError("noexec", f'exec: "{args[0]}": {exc.strerror}') from None


def _report(errfd: int, kind: str, message: str) -> None:
    data = json.dumps({"kind": kind, "message": message}).encode()
    try:
        os.write(errfd, data)
    except OSError:
        pass


def _child(spec: Mapping[str, Any], bundle: str, rootfs_mounts: Sequence[Mount],
           errfd: int) -> int:
    """The first child: unshare, fork PID 1, wait for it and pass its status on."""
    flags = 0
    for ns in (spec.get("linux") or {}).get("namespaces") or ():
        if ns.get("path"):  # join it (e.g. the network namespace strata's bridge made)
            _join_namespace(str(ns["path"]), _NS_FLAGS[str(ns["type"])])
            continue
        flags |= _NS_FLAGS[str(ns["type"])]
    if _userns_sync:
        rootfs_mounts = _idmapped_rootfs(spec, bundle, rootfs_mounts)
        _check(_libc.unshare(flags), "unshare namespaces")
        os.write(_userns_sync[0], b"1")  # the parent writes our uid/gid maps now
        if os.read(_userns_sync[1], 1) != b"1":
            raise _SetupError("error", "the uid/gid maps were not written")
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        _userns_sync[1] = go_r  # PID 1 waits on this one
    else:
        _check(_libc.unshare(flags), "unshare namespaces")
    pid = os.fork()
    if pid == 0:
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _container_init(spec, bundle, rootfs_mounts)
        except _SetupError as exc:
            _report(errfd, exc.kind, exc.message)
        except OSError as exc:
            _report(errfd, "error", f"container init: {exc}")
        except BaseException:
            _report(errfd, "error", traceback.format_exc(limit=3))
        os._exit(127)
    if _userns_sync:
        try:  # PID 1 cannot write the host's cgroup files: we still can (euid 0 owns them)
            cgroups.join(_cgroup_dirs, pid)
        except StrataError as exc:
            os.kill(pid, signal.SIGKILL)
            raise _SetupError("error", str(exc)) from None
        os.write(go_w, b"1")
    os.close(errfd)
    # Pass terminating signals on to the container.
    def forward(signum: int, _frame: object) -> None:
        os.kill(pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 125
        except InterruptedError:
            continue
    return _exit_code(status)


def _idmapped_rootfs(spec: Mapping[str, Any], bundle: str, rootfs_mounts: Sequence[Mount]
                     ) -> Sequence[Mount]:
    """In a private mount namespace (still the host's user namespace), mount the rootfs on
    idmapped layers for the container's user namespace (:mod:`strata.runtime.userns`);
    nothing is left for PID 1 to mount."""
    linux: Mapping[str, Any] = spec.get("linux") or {}
    _check(_libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if rootfs_mounts:
        root = os.path.realpath(os.path.join(bundle, str(spec["root"]["path"])))
        try:
            userns.mount_rootfs(rootfs_mounts, Path(root), Path(bundle) / ".idmap",
                                linux.get("uidMappings") or (), linux.get("gidMappings") or ())
        except StrataError as exc:
            raise _SetupError("error", f"mount the rootfs for the user namespace: {exc}"
                              ) from None
    return ()


def _init_pid(pid: int) -> int:
    """The host PID of the container's PID 1: the only child of the runtime child ``pid``
    (``pid`` itself if it has none any more)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if children else pid


def _join_namespace(path: str, flag: int) -> None:
    """setns into the namespace file ``path`` (runtime-spec ``namespaces[].path``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _SetupError("error", f"open namespace {path}: {exc.strerror}") from None
    try:
        _check(_libc.setns(fd, flag), f"join namespace {path}")
    finally:
        os.close(fd)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)



def read_to_end(fd: int) -> bytes:
    """Everything readable from ``fd`` until end of file; ``fd`` is closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def wait_forwarding(pid: int) -> int:
    """Wait for child ``pid``, passing SIGINT, SIGTERM and SIGHUP on to it meanwhile (the
    handlers are restored after); its wait status."""
    old = {s: signal.signal(s, lambda n, _f: os.kill(pid, n))
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)

def run_bundle(bundle: Path, *, rootfs_mounts: Sequence[Mount] = (),
               on_start: Callable[[int], None] | None = None,
               on_exec: Callable[[int], None] | None = None,
               console_fd: int | None = None) -> int:
    """Run the bundle's process in the foreground with the caller's stdio; its exit code.

    Args:
        bundle: the directory holding ``config.json`` and the rootfs directory.
        rootfs_mounts: mounts that make the rootfs (a snapshotter's), performed inside the
            container's mount namespace so they vanish with it; empty when the rootfs is
            already mounted (or a plain directory).
        on_start: called with the host PID of the runtime child once it exists.
        on_exec: called with the host PID of the container's PID 1 once it has exec'd the
            process (not called when it could not).
        console_fd: with ``process.terminal``, a connected Unix socket on which the
            container's init sends the master of the pty it made its controlling terminal
            (as runc's ``--console-socket``); see :mod:`strata.runtime.pty`.

    Raises:
        CommandNotFound: the process's executable does not exist (docker: 127).
        CannotExecute: it exists but cannot be executed (docker: 126).
        StrataError: any other failure to start the container.
    """
    spec = json.loads((bundle / "config.json").read_text())
    linux = spec.get("linux") or {}
    _cgroup_dirs[:] = (cgroups.apply(str(linux["cgroupsPath"]), linux.get("resources"))
                       if linux.get("cgroupsPath") else [])
    if linux.get("seccomp"):
        # Compiled (or read from the cache) here, on the host: the container's init cannot
        # read files or dlopen libseccomp after pivot_root.
        seccomp.preload(linux["seccomp"])
    with_userns = any(ns.get("type") == "user" and not ns.get("path")
                      for ns in linux.get("namespaces") or ())
    up_r = up_w = down_r = down_w = -1
    if with_userns:
        up_r, up_w = os.pipe2(os.O_CLOEXEC)  # runtime child → us: "unshared"
        down_r, down_w = os.pipe2(os.O_CLOEXEC)  # us → runtime child: "maps written"
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(read_fd)
            if with_userns:
                os.close(up_r)
                os.close(down_w)
                _userns_sync[:] = [up_w, down_r]
            global _console_fd  # noqa: PLW0603 (this forked child only)
            _console_fd = console_fd
            code = _child(spec, str(bundle), rootfs_mounts, write_fd)
        except _SetupError as exc:
            _report(write_fd, exc.kind, exc.message)
        except BaseException:
            _report(write_fd, "error", traceback.format_exc(limit=3))
        os._exit(code)
    os.close(write_fd)
    if with_userns:
        os.close(up_w)
        os.close(down_r)
        try:
            if os.read(up_r, 1) == b"1":
                try:
                    userns.write_maps(pid, linux.get("uidMappings") or (),
                                      linux.get("gidMappings") or ())
                    os.write(down_w, b"1")
                except StrataError as exc:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    os.close(read_fd)
                    raise StrataError(f"unable to start container process: {exc}") from None
        finally:
            os.close(up_r)
            os.close(down_w)
    if on_start is not None:
        on_start(pid)
    reported = read_to_end(read_fd)
    if console_fd is not None:
        os.close(console_fd)
    if not reported and on_exec is not None:
        on_exec(_init_pid(pid))
    status = wait_forwarding(pid)
    if reported:
        report = json.loads(reported)
        message = f"unable to start container process: {report['message']}"
        if report["kind"] == "notfound":
            raise CommandNotFound(message)
        if report["kind"] == "noexec":
            raise CannotExecute(message)
        raise StrataError(message)
    return _exit_code(status)
