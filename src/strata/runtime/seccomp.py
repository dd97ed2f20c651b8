"""Seccomp for containers: docker's default policy as data, user profiles, and the loader.

The default policy (:func:`default_profile`) restates the facts of docker's published
default profile in strata's own form: system calls are refused with ``EPERM`` unless listed;
:data:`ALLOWED` are allowed for every container, :data:`ALLOWED_WITH_CAPABILITY` only when the
container holds the capability (``mount``/``unshare``/``setns`` need ``CAP_SYS_ADMIN``, module
loading ``CAP_SYS_MODULE``, clock setting ``CAP_SYS_TIME``...), :data:`ALLOWED_ON_ARCH` on
some architectures only, and a few are allowed with argument conditions: ``socket`` except
for ``AF_VSOCK``, ``personality`` with the harmless personas, ``clone`` without namespace
flags unless ``CAP_SYS_ADMIN`` (``clone3`` then fails with ``ENOSYS`` so libc falls back to
``clone``, whose flags can be checked).  ``keyctl``, ``add_key``, ``request_key``,
``userfaultfd``, ``kexec_load``... are in no list: refused.

The result is the runtime-spec's ``linux.seccomp`` object (what runc loads).  The built-in
runtime loads the same object with :func:`load`, through **libseccomp** (``libseccomp.so.2``,
present on every Debian as a dependency of systemd and runc) called with :mod:`ctypes`: the
library compiles the rules to BPF for every listed architecture exactly as it does for runc,
and no Python binding is needed (the PyPI ones are either unmaintained or need a C build).

``--security-opt seccomp=unconfined`` and ``--privileged`` give no filter;
``--security-opt seccomp=PROFILE.json`` reads a profile in docker's JSON format
(:func:`profile_from_json`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from strata.errors import InvalidArgument, StrataError

__all__ = [
    "ALLOWED",
    "ALLOWED_ON_ARCH",
    "ALLOWED_WITH_CAPABILITY",
    "cache_dir",
    "compile_program",
    "default_profile",
    "load",
    "native_arch",
    "preload",
    "profile_from_json",
]

#: Allowed for every container (names of all architectures; unknown names are skipped).
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ALLOWED: frozenset[str] = _words("""
    accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
    fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
    flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
    ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd getdents
    getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
    getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
    getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname
    getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch
    inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents
    io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit io_uring_enter
    io_uring_register io_uring_setup ipc kill landlock_add_rule landlock_create_ruleset
    landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr
    _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier memfd_create
    memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
    mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
    mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall
    munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
    pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
    ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
    recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat
    renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
    rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
    rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
    sched_get_priority_min sched_getscheduler sched_rr_get_interval
    sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
    semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
    setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid
    setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
    sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx
    symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create
    timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
    timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times
    tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat
    utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
    process_vm_readv process_vm_writev ptrace
""")
# (The last three are allowed on kernels since 4.8, where ptrace can no longer bypass the
# filter; strata needs a newer kernel anyway.)

#: Allowed when the container's capabilities include the key.
ALLOWED_WITH_CAPABILITY: Mapping[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount",
                      "fsopen", "fspick", "lookup_dcookie", "mount", "mount_setattr",
                      "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
                      "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2",
                      "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                       "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

#: Allowed on these architectures (Go's names, as docker's profile uses them) only.
ALLOWED_ON_ARCH: Mapping[str, tuple[str, ...]] = {
    "amd64": ("arch_prctl", "modify_ldt"),
    "x32": ("arch_prctl", "modify_ldt"),
    "386": ("modify_ldt",),
    "arm": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
            "cacheflush", "set_tls"),
    "arm64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
              "cacheflush", "set_tls"),
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
}

#: ``personality(2)`` personas a container may switch to: PER_LINUX, UNAME26, PER_LINUX32,
#: PER_LINUX32|UNAME26 and the 0xffffffff query.
PERSONAS: tuple[int, ...] = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

AF_VSOCK = 40

#: The namespace flags ``clone`` may not carry without CAP_SYS_ADMIN: CLONE_NEWNS,
#: NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NAMESPACE_FLAGS = 0x7E020000

ENOSYS = 38
EPERM = 1

#: Go architecture name → the seccomp architectures of its filter (native first).
_ARCHES: Mapping[str, tuple[str, ...]] = {
    "amd64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}
_MACHINES = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x", "ppc64le": "ppc64le",
             "riscv64": "riscv64", "i686": "386", "armv7l": "arm"}
#: seccomp architecture → Go's name (to match ``includes.arches`` of docker profiles).
_GO_OF_SCMP = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_X86": "386", "SCMP_ARCH_X32": "x32",
               "SCMP_ARCH_AARCH64": "arm64", "SCMP_ARCH_ARM": "arm",
               "SCMP_ARCH_S390X": "s390x", "SCMP_ARCH_S390": "s390",
               "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_RISCV64": "riscv64"}


def native_arch() -> str:
    """This machine's architecture in Go's words (``amd64``...)."""
    machine = os.uname().machine
    return _MACHINES.get(machine, machine)


def _allow(names: Collection[str], args: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": sorted(names), "action": "SCMP_ACT_ALLOW"}
    if args:
        rule["args"] = [dict(a) for a in args]
    return rule


def default_profile(capabilities: Collection[str], arch: str | None = None) -> dict[str, Any]:
    """docker's default policy for a container holding ``capabilities``, as the spec's
    ``linux.seccomp`` object."""
    arch = arch or native_arch()
    caps = set(capabilities)
    names = set(ALLOWED)
    for cap, extra in ALLOWED_WITH_CAPABILITY.items():
        if cap in caps:
            names.update(extra)
    names.update(ALLOWED_ON_ARCH.get(arch, ()))
    if arch == "amd64":
        names.update(ALLOWED_ON_ARCH["x32"])
    syscalls = [_allow(names)]
    syscalls.append(_allow(["socket"], [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]))
    for persona in PERSONAS:
        syscalls.append(_allow(["personality"],
                               [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]))
    if "CAP_SYS_ADMIN" not in caps:
        index = 1 if arch in ("s390x", "s390") else 0
        syscalls.append(_allow(["clone"], [{"index": index, "value": CLONE_NAMESPACE_FLAGS,
                                            "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]))
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": EPERM,
            "architectures": list(_ARCHES.get(arch, ())), "syscalls": syscalls}


def _kernel_at_least(version: str) -> bool:
    def numbers(text: str) -> tuple[int, ...]:
        out = []
        for part in text.split("-", maxsplit=1)[0].split(".")[:2]:
            digits = "".join(c for c in part if c.isdigit())
            out.append(int(digits or 0))
        return tuple(out)

    return numbers(os.uname().release) >= numbers(version)


def _applies(filters: Mapping[str, Any] | None, caps: Collection[str], arch: str,
             *, include: bool) -> bool:
    """Whether a docker ``includes`` (all must hold) / ``excludes`` (any excludes) matches."""
    if not filters:
        return include
    checks = []
    if filters.get("caps"):
        checks.append(any(c in caps for c in filters["caps"]) if not include
                      else all(c in caps for c in filters["caps"]))
    if filters.get("arches"):
        checks.append(arch in filters["arches"])
    if filters.get("minKernel"):
        checks.append(_kernel_at_least(str(filters["minKernel"])))
    if not checks:
        return include
    return all(checks) if include else any(checks)


def profile_from_json(path: Path, capabilities: Collection[str],
                      arch: str | None = None) -> dict[str, Any]:
    """A profile file in docker's JSON format as the spec's ``linux.seccomp``: ``includes``
    and ``excludes`` resolved against the container's capabilities and architecture.

    Raises:
        InvalidArgument: the file cannot be read or is not a seccomp profile.
    """
    arch = arch or native_arch()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"opening seccomp profile ({path}) failed: {exc}") from None
    if not isinstance(data, dict) or "defaultAction" not in data:
        raise InvalidArgument(f"opening seccomp profile ({path}) failed: not a seccomp "
                              "profile (no defaultAction)")
    out: dict[str, Any] = {"defaultAction": data["defaultAction"]}
    if data.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = int(data["defaultErrnoRet"])
    arches: list[str] = list(data.get("architectures") or ())
    for entry in data.get("archMap") or ():
        if _GO_OF_SCMP.get(str(entry.get("architecture"))) == arch:
            arches = [entry["architecture"], *(entry.get("subArchitectures") or ())]
    out["architectures"] = arches or list(_ARCHES.get(arch, ()))
    syscalls = []
    for rule in data.get("syscalls") or ():
        if not isinstance(rule, dict):
            raise InvalidArgument(f"opening seccomp profile ({path}) failed: bad rule {rule!r}")
        if not _applies(rule.get("includes"), capabilities, arch, include=True):
            continue
        if rule.get("excludes") and _applies(rule["excludes"], capabilities, arch,
                                             include=False):
            continue
        names = list(rule.get("names") or ()) + ([rule["name"]] if rule.get("name") else [])
        item: dict[str, Any] = {"names": names, "action": rule.get("action", "SCMP_ACT_ALLOW")}
        if rule.get("errnoRet") is not None:
            item["errnoRet"] = int(rule["errnoRet"])
        if rule.get("args"):
            item["args"] = list(rule["args"])
        syscalls.append(item)
    out["syscalls"] = syscalls
    return out


# -- loading with libseccomp (built-in runtime) -------------------------------------------

_ACT_KILL_THREAD = 0x00000000
_ACT_KILL_PROCESS = 0x80000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
_NR_SCMP_ERROR = -1

_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _action(name: str, errno_ret: int | None, default_errno: int) -> int:
    if name == "SCMP_ACT_ALLOW":
        return _ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return _ACT_ERRNO | ((default_errno if errno_ret is None else errno_ret) & 0xFFFF)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return _ACT_KILL_THREAD
    if name == "SCMP_ACT_KILL_PROCESS":
        return _ACT_KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return _ACT_TRAP
    if name == "SCMP_ACT_TRACE":
        return _ACT_TRACE | ((errno_ret or default_errno) & 0xFFFF)
    if name == "SCMP_ACT_LOG":
        return _ACT_LOG
    raise StrataError(f"seccomp: unknown action {name}")


_loaded: dict[str, ctypes.CDLL] = {}


def preload(profile: Mapping[str, Any] | None = None) -> None:
    """Get ready, from the host's filesystem (before a ``pivot_root`` or ``setns``), to
    :func:`load` ``profile`` (or any profile): open libseccomp, and with ``profile`` have its
    BPF program compiled (or read from the cache) in memory.

    Raises:
        StrataError: libseccomp is not installed or refused the profile.
    """
    _library()
    if profile is not None:
        key = _key(profile)
        if key not in _compiled:
            _compiled[key] = _cached_program(profile, key)


def _library() -> ctypes.CDLL:
    if "lib" in _loaded:
        return _loaded["lib"]
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise StrataError(f"seccomp: libseccomp.so.2 is not installed ({exc})") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    _loaded["lib"] = lib
    return lib


#: Compiled programs (profile key → BPF instructions), filled by :func:`preload`.
_compiled: dict[str, bytes] = {}

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def cache_dir() -> Path:
    """Where compiled filters are kept (``$XDG_CACHE_HOME/strata/seccomp``): compiling
    docker's policy with libseccomp takes tens of milliseconds, loading a compiled one
    well under one."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "strata" / "seccomp"


def _key(profile: Mapping[str, Any]) -> str:
    lib = _library()
    version = lib.seccomp_version()
    text = json.dumps(profile, sort_keys=True, separators=(",", ":"))
    tag = (f"{version.contents.major}.{version.contents.minor}.{version.contents.micro}"
           f"|{os.uname().machine}|")
    return hashlib.sha256((tag + text).encode()).hexdigest()


def _cached_program(profile: Mapping[str, Any], key: str) -> bytes:
    path = cache_dir() / f"{key}.bpf"
    try:
        data = path.read_bytes()
        if data and len(data) % 8 == 0:
            return data
    except OSError:
        pass
    data = compile_program(profile)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time
    return data


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install(program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise StrataError(f"seccomp: loading the filter failed: "
                          f"{os.strerror(ctypes.get_errno())}")


def compile_program(profile: Mapping[str, Any]) -> bytes:
    """The profile as the BPF program libseccomp makes of it (an array of ``sock_filter``).

    Raises:
        StrataError: libseccomp is missing or refused the profile.
    """
    lib = _library()
    ctx = _context(lib, profile)
    try:
        fd = os.memfd_create("strata-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc != 0:
                raise StrataError(f"seccomp: compiling the filter failed: {os.strerror(-rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def load(profile: Mapping[str, Any]) -> None:
    """Install the spec's ``linux.seccomp`` filter on the calling process.

    The program :func:`preload` prepared is used when there is one (no file is read: this
    runs inside the container); otherwise libseccomp compiles and loads it here.  Call it
    last before ``execve``, with ``no_new_privs`` set: afterwards only the allowed system
    calls work.

    Raises:
        StrataError: libseccomp is missing or refused the filter.
    """
    program = _compiled.get(_key(profile))
    if program is not None:
        _install(program)
        return
    lib = _library()
    ctx = _context(lib, profile)
    try:
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            raise StrataError(f"seccomp: loading the filter failed: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def _context(lib: ctypes.CDLL, profile: Mapping[str, Any]) -> int:
    """A libseccomp filter context holding the profile's rules (the caller releases it)."""
    default_errno = int(profile.get("defaultErrnoRet") or EPERM)
    default = _action(str(profile["defaultAction"]), profile.get("defaultErrnoRet"),
                      default_errno)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise StrataError("seccomp: seccomp_init failed")
    try:
        for name in profile.get("architectures") or ():
            short = str(name).removeprefix("SCMP_ARCH_").lower().encode()
            token = lib.seccomp_arch_resolve_name(short)
            if token:
                lib.seccomp_arch_add(ctx, token)  # -EEXIST for the native one: fine
        for rule in profile.get("syscalls") or ():
            action = _action(str(rule["action"]), rule.get("errnoRet"), default_errno)
            if action == default:
                continue  # libseccomp refuses rules that repeat the default
            args = list(rule.get("args") or ())
            indexes = [int(a["index"]) for a in args]
            # Conditions on distinct arguments are ANDed in one rule; several on the same
            # argument become one rule each (ORed), as runc does.
            groups = [args] if len(set(indexes)) == len(indexes) else [[a] for a in args]
            for name in rule.get("names") or ():
                number = lib.seccomp_syscall_resolve_name(str(name).encode())
                if number == _NR_SCMP_ERROR:
                    continue  # not a system call on this kernel's architectures
                for group in groups or [[]]:
                    array = (_ArgCmp * max(len(group), 1))()
                    for i, cond in enumerate(group):
                        array[i].arg = int(cond["index"])
                        array[i].op = _OPS[str(cond["op"])]
                        array[i].datum_a = int(cond["value"]) & 0xFFFFFFFFFFFFFFFF
                        array[i].datum_b = int(cond.get("valueTwo") or 0) & 0xFFFFFFFFFFFFFFFF
                    lib.seccomp_rule_add_array(ctx, action, number, len(group), array)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return int(ctx)
