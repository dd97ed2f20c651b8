"""strata's built-in OCI runtime: runs a bundle (``config.json`` + a prepared rootfs) in Python.

:func:`run_bundle` forks a child that unshares the spec's namespaces (mnt, uts, ipc, net,
pid) and forks again, so the grandchild is PID 1 of the new PID namespace.  PID 1 makes every
mount private, bind-mounts the rootfs onto itself, performs the spec's mounts (targets
resolved *inside* the rootfs, as runc's securejoin does, so symlinks in the image cannot
redirect a mount to the host), creates the standard device nodes, ``pivot_root``\\ s into the
rootfs (not ``chroot``) and detaches the old root, masks and write-protects the spec's paths,
sets the hostname and rlimits, drops the capability bounding set, sets ``no_new_privs``,
switches uid/gid keeping only the spec's capabilities, and finally ``execve``\\ s the process.

Failures before ``execve`` travel back on a close-on-exec pipe as JSON and become
:class:`~strata.errors.CommandNotFound` (127) / :class:`~strata.errors.CannotExecute` (126) /
:class:`~strata.errors.StrataError` (125 at the CLI); after a successful ``execve`` the pipe
closes empty and the process's exit status is the result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
from strata.runtime.spec import ALL_CAPABILITIES
from strata.snapshots import Mount, mount_all

__all__ = ["CAPABILITIES", "run_bundle", "secure_join"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
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
             "pid": CLONE_NEWPID, "network": CLONE_NEWNET}

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
            _mount(None, target, None, MS_REMOUNT | MS_BIND | extra)
        return
    readonly = flags & MS_RDONLY
    if type_ == "sysfs" and readonly:
        _mount(source, target, type_, flags)
        return
    _mount(source, target, type_, flags, ",".join(data) or None)


def _make_devices(root: str) -> None:
    dev = secure_join(root, "/dev")
    for name, major, minor in _DEVICES:
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)
    for name, target in _DEV_LINKS:
        if name == "core":
            continue  # runc no longer creates /dev/core
        path = os.path.join(dev, name)
        if not os.path.lexists(path):
            os.symlink(target, path)


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


def _readonly(paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            continue
        _mount(path, path, None, MS_BIND | MS_REC)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_REC)


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
    if any(ns.get("type") == "network" for ns in linux.get("namespaces") or ()):
        _loopback_up()
    if spec.get("hostname"):
        name = str(spec["hostname"]).encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    _pivot_root(root)
    _mask(list(linux.get("maskedPaths") or ()))
    _readonly(list(linux.get("readonlyPaths") or ()))
    if spec["root"].get("readonly"):
        _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)

    for rl in process.get("rlimits") or ():
        kind = getattr(resource, str(rl["type"]), None)
        if kind is None:
            raise _SetupError("error", f"unknown rlimit {rl['type']}")
        resource.setrlimit(kind, (int(rl["soft"]), int(rl["hard"])))

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
        if ns.get("path"):
            raise _SetupError("error", "joining existing namespaces is not supported yet")
        flags |= _NS_FLAGS[str(ns["type"])]
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


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run_bundle(bundle: Path, *, rootfs_mounts: Sequence[Mount] = (),
               on_start: Callable[[int], None] | None = None) -> int:
    """Run the bundle's process in the foreground with the caller's stdio; its exit code.

    Args:
        bundle: the directory holding ``config.json`` and the rootfs directory.
        rootfs_mounts: mounts that make the rootfs (a snapshotter's), performed inside the
            container's mount namespace so they vanish with it; empty when the rootfs is
            already mounted (or a plain directory).
        on_start: called with the host PID of the runtime child once it exists.

    Raises:
        CommandNotFound: the process's executable does not exist (docker: 127).
        CannotExecute: it exists but cannot be executed (docker: 126).
        StrataError: any other failure to start the container.
    """
    spec = json.loads((bundle / "config.json").read_text())
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(read_fd)
            code = _child(spec, str(bundle), rootfs_mounts, write_fd)
        except _SetupError as exc:
            _report(write_fd, exc.kind, exc.message)
        except BaseException:
            _report(write_fd, "error", traceback.format_exc(limit=3))
        os._exit(code)
    os.close(write_fd)
    if on_start is not None:
        on_start(pid)
    chunks = []
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    old = {s: signal.signal(s, lambda n, _f: os.kill(pid, n))
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if chunks:
        report = json.loads(b"".join(chunks))
        message = f"unable to start container process: {report['message']}"
        if report["kind"] == "notfound":
            raise CommandNotFound(message)
        if report["kind"] == "noexec":
            raise CannotExecute(message)
        raise StrataError(message)
    return _exit_code(status)
