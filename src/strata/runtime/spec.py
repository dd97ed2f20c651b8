"""OCI runtime-spec ``config.json`` for a container: pure data from the image config and options.

:func:`generate` turns an image's ``config`` (Entrypoint, Cmd, Env, WorkingDir, User) and a
:class:`RunOptions` into the runtime-spec (v1.0.2) document a runtime runs: the process, the
mounts docker gives every container (``/proc``, a ``/dev`` tmpfs holding only the standard
devices, ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``, ``/sys`` read-only, and the bind-mounted
``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``), new mnt/pid/uts/ipc/net
namespaces, docker's default capability set, masked and read-only paths, ``noNewPrivileges``
and rlimits; and the security and resource parts: ``linux.cgroupsPath`` and
``linux.resources`` (:mod:`strata.runtime.cgroups`), docker's seccomp policy
(:mod:`strata.runtime.seccomp`), ``--privileged`` (every capability strata holds, the host's
devices, no masked paths, no filter), ``--userns auto`` (:mod:`strata.runtime.userns`) and
docker's default open-files limit.  :func:`resolve_user` reads a rootfs's ``/etc/passwd`` and
``/etc/group`` to turn ``-u NAME[:GROUP]`` into numbers; besides it, only ``--privileged``
(the host's ``/dev``), ``--security-opt seccomp=FILE`` and the rlimit and capability
ceilings of this process are read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strata.errors import InvalidArgument, NotFound
from strata.oci import ContainerConfig
from strata.runtime import cgroups, seccomp, userns

__all__ = [
    "ALL_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "RunOptions",
    "User",
    "capabilities",
    "command_of",
    "environment",
    "generate",
    "resolve_user",
]

OCI_VERSION = "1.0.2"

#: PATH given when neither the image nor ``-e`` sets one (docker's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: docker's default capability set (moby ``oci/caps/defaults.go``).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

#: Paths hidden from the container (moby ``oci/defaults.go``).
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)

#: Paths the container sees read-only (moby ``oci/defaults.go``).
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

NAMESPACES: tuple[str, ...] = ("pid", "network", "ipc", "uts", "mount")


@dataclass(frozen=True, slots=True)
class User:
    """The numeric identity the container process runs as."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``strata run`` was asked for, beyond the image.

    Attributes:
        command: CMD words after the image name (replace the image's Cmd).
        entrypoint: ``--entrypoint`` (None: the image's; ``""``: none).
        env: ``-e`` values, ``KEY=VALUE`` or ``KEY`` (taken from ``host_env``).
        workdir: ``-w`` (None: the image's WorkingDir, else ``/``).
        user: ``-u`` (None: the image's User, else root).
        hostname: ``--hostname`` (None: the first 12 hex digits of the container ID).
        name: ``--name``.
        remove: ``--rm``.
        runtime: ``builtin`` or the name of an installed OCI runtime (``runc``).
        tty: ``-t``: the process gets a terminal (recorded in the spec).
        rlimits: (type, soft, hard) triples, e.g. ``("RLIMIT_NOFILE", 1024, 1024)``; none
            by default: the container inherits strata's limits.
        read_only: ``--read-only``: the rootfs is mounted read-only.
        tmpfs: ``--tmpfs PATH[:OPTIONS]``: a tmpfs mounted at PATH (docker's default
            options ``noexec,nosuid,nodev``, OPTIONS added).
        cap_add: ``--cap-add`` names (``SYS_ADMIN`` or ``CAP_SYS_ADMIN``, any case, or
            ``ALL``).
        cap_drop: ``--cap-drop`` names (or ``ALL``).
        host_env: the caller's environment, for ``-e NAME`` without a value.
        network: ``--network``: ``bridge`` (default), ``host`` or ``none``.
        publish: ``-p`` words (``[IP:][HOST:]CONTAINER[/PROTO]``).
        volumes: ``-v`` words (``HOST:CONTAINER[:OPTS]``, ``NAME:CONTAINER``, ``CONTAINER``).
        mounts: ``--mount`` words (``type=bind|volume|tmpfs,source=...,target=...``).
        publish_all: ``-P``: every port the image EXPOSEs published on a free host port.
        memory: ``--memory`` in bytes (None: no limit).
        memory_swap: ``--memory-swap`` in bytes (memory + swap; -1: unlimited swap; None:
            docker's default, twice ``memory``).
        cpus: ``--cpus`` (None: no CPU quota).
        pids_limit: ``--pids-limit`` (None or ≤ 0: unlimited).
        privileged: ``--privileged``: every capability, every host device, no masked or
            read-only paths, no seccomp filter, ``/sys`` writable.
        security_opt: ``--security-opt`` words: ``seccomp=unconfined``,
            ``seccomp=PROFILE.json``, ``no-new-privileges[=true|false]``.
        userns: ``--userns``: None / ``host`` (no user namespace) or ``auto`` (a user
            namespace mapping the container's 0-65535 to a host range of strata's).
        interactive: ``-i``: the process's stdin stays open (recorded with the container).
    """

    command: tuple[str, ...] = ()
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    name: str | None = None
    remove: bool = False
    runtime: str = "builtin"
    tty: bool = False
    rlimits: tuple[tuple[str, int, int], ...] = ()
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    host_env: Mapping[str, str] = field(default_factory=dict)
    network: str = "bridge"
    publish: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    publish_all: bool = False
    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    privileged: bool = False
    security_opt: tuple[str, ...] = ()
    userns: str | None = None
    interactive: bool = False


def command_of(config: ContainerConfig | None, options: RunOptions) -> list[str]:
    """The process args as docker computes them: entrypoint + (CMD words or the image's Cmd).

    ``--entrypoint`` replaces the image's Entrypoint and drops the image's Cmd (docker).

    Raises:
        InvalidArgument: nothing to run (``No command specified``).
    """
    image_entry = list(config.entrypoint or ()) if config else []
    image_cmd = list(config.cmd or ()) if config else []
    if options.entrypoint is not None:
        entry = [options.entrypoint] if options.entrypoint else []
        cmd = list(options.command)
    else:
        entry = image_entry
        cmd = list(options.command) if options.command else image_cmd
    args = entry + cmd
    if not args:
        raise InvalidArgument("No command specified")
    return args


def environment(config: ContainerConfig | None, options: RunOptions, hostname: str,
                tty: bool = False) -> list[str]:
    """The process environment: PATH default, HOSTNAME, image Env, then ``-e`` (docker's order
    of precedence: later wins, order of first appearance kept)."""
    merged: dict[str, str] = {}
    merged["PATH"] = DEFAULT_PATH
    merged["HOSTNAME"] = hostname
    if tty:
        merged["TERM"] = "xterm"
    for item in (config.env or ()) if config else ():
        key, sep, value = item.partition("=")
        if key:
            merged[key] = value if sep else ""
    for item in options.env:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable: {item!r}")
        if sep:
            merged[key] = value
        elif key in options.host_env:
            merged[key] = options.host_env[key]
        else:
            merged.pop(key, None)  # docker: -e NAME unset on the host leaves it unset
    return [f"{k}={v}" for k, v in merged.items()]


#: Every capability docker knows by name (linux/capability.h order).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


def _cap_name(name: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"unknown capability: \"{name}\"")
    return full


def capabilities(add: Sequence[str] = (), drop: Sequence[str] = ()) -> list[str]:
    """docker's default set with ``--cap-add`` / ``--cap-drop`` applied (moby
    ``caps.TweakCapabilities``: dropping ALL first, then adding; adding ALL wins).

    Raises:
        InvalidArgument: an unknown capability name.
    """
    adds = [_cap_name(n) for n in add]
    drops = [_cap_name(n) for n in drop]
    if "ALL" in adds:
        return [c for c in ALL_CAPABILITIES if c not in drops]
    base = [] if "ALL" in drops else [c for c in DEFAULT_CAPABILITIES if c not in drops]
    for cap in adds:
        if cap not in base:
            base.append(cap)
    return base


def _read_db(path: Path) -> list[list[str]]:
    try:
        st = os.lstat(path)
    except OSError:
        return []
    if not stat.S_ISREG(st.st_mode):  # a symlink may point anywhere on the host: ignore it
        return []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(rootfs: Path, spec: str | None) -> User:
    """``USER[:GROUP]`` (names or numbers) to numbers, from the rootfs's passwd and group files.

    The files are read only when they are regular files directly in ``rootfs/etc`` (never
    through a symlink, which could point at the host's).

    Raises:
        NotFound: a name that the container's files do not list (docker's message).
        InvalidArgument: an empty user.
    """
    if not spec:
        return User()
    user, _, group = spec.partition(":")
    if not user:
        raise InvalidArgument(f"invalid user {spec!r}")
    etc = rootfs / "etc"
    etc_ok = os.path.isdir(etc) and not os.path.islink(etc)
    passwd = _read_db(etc / "passwd") if etc_ok else []
    groups = _read_db(etc / "group") if etc_ok else []
    uid: int | None = None
    gid: int | None = None
    name: str | None = None
    if user.isdigit():
        uid = int(user)
        for row in passwd:
            if len(row) >= 4 and row[2] == user:
                name, gid = row[0], int(row[3]) if row[3].isdigit() else 0
                break
    else:
        for row in passwd:
            if len(row) >= 4 and row[0] == user and row[2].isdigit():
                name, uid = user, int(row[2])
                gid = int(row[3]) if row[3].isdigit() else 0
                break
        if uid is None:
            raise NotFound(f"unable to find user {user}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for row in groups:
                if len(row) >= 3 and row[0] == group and row[2].isdigit():
                    gid = int(row[2])
                    break
            else:
                raise NotFound(f"unable to find group {group}: no matching entries in group file")
    extra: list[int] = []
    if name is not None and not group:
        for row in groups:
            if len(row) >= 4 and name in row[3].split(",") and row[2].isdigit():
                g = int(row[2])
                if g != gid and g not in extra:
                    extra.append(g)
    return User(uid=uid, gid=gid or 0, additional_gids=tuple(extra))


def _mount(destination: str, type_: str, source: str, options: Sequence[str]) -> dict[str, Any]:
    return {"destination": destination, "type": type_, "source": source,
            "options": list(options)}


def default_mounts() -> list[dict[str, Any]]:
    """docker's default mounts (moby ``oci/defaults.go``), without the per-container binds."""
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount("/dev/pts", "devpts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777",
                                            "size=65536k"]),
    ]


def generate(config: ContainerConfig | None, options: RunOptions, *, user: User, hostname: str,
             etc_files: Mapping[str, Path], rootfs: str = "rootfs",
             host_network: bool = False, netns_path: str | None = None,
             extra_mounts: Sequence[Mapping[str, Any]] = (),
             cgroups_path: str | None = None) -> dict[str, Any]:
    """The runtime-spec document for one container.

    Args:
        config: the image's ``config`` (None: an image without one).
        options: the run options.
        user: the resolved identity (:func:`resolve_user`).
        hostname: the container's hostname.
        etc_files: container path (``/etc/hosts``...) → host file bind-mounted there.
        rootfs: ``root.path``, relative to the bundle.
        host_network: share the host's network namespace (``--network host``).
        netns_path: join this network namespace file instead of creating one (the one
            :func:`strata.runtime.network.setup` makes for ``--network bridge``).
        extra_mounts: ``-v``/``--mount`` mounts (runtime-spec mount objects), mounted after
            the default ones, parents before children.
        cgroups_path: ``linux.cgroupsPath`` (:func:`strata.runtime.cgroups.group_path`);
            None: no cgroup is made (the limits are then not applied).

    Raises:
        InvalidArgument: nothing to run, a relative working directory or a bad ``-e``.
    """
    args = command_of(config, options)
    cwd = options.workdir if options.workdir is not None else (
        (config.working_dir if config else None) or "/")
    if not cwd.startswith("/"):
        raise InvalidArgument(f"the working directory '{cwd}' is invalid, it needs to be an "
                              "absolute path")
    caps = (privileged_capabilities() if options.privileged
            else capabilities(options.cap_add, options.cap_drop))
    security = _security(options, caps)
    mounts = default_mounts()
    if options.privileged:  # docker: /sys is writable in a privileged container
        mounts[3]["options"] = [o for o in mounts[3]["options"] if o != "ro"]
    if options.userns == "auto" and (netns_path or host_network):
        # sysfs can only be mounted by the owner of the network namespace, which is not the
        # container's user namespace here: the host's /sys is bound read-only (as runc does).
        mounts[3] = _mount("/sys", "bind", "/sys", ["rbind", "nosuid", "noexec", "nodev", "ro"])
    # The container's own mounts, as docker orders them: /etc/hosts & co., --tmpfs, -v and
    # --mount together, parents before children (so -v X:/etc does not hide /etc/hosts); a
    # user mount on one of the /etc files replaces strata's.
    user_mounts: list[dict[str, Any]] = []
    for item in options.tmpfs:
        dest, _, extra = item.partition(":")
        if not dest.startswith("/") or dest == "/":
            raise InvalidArgument(f"invalid mount path for --tmpfs: '{dest}' (it must be an "
                                  "absolute path other than /)")
        opts = ["noexec", "nosuid", "nodev"] + [o for o in extra.split(",") if o]
        user_mounts.append(_mount(dest, "tmpfs", "tmpfs", opts))
    user_mounts.extend(dict(m) for m in extra_mounts)
    taken = {os.path.normpath(str(m["destination"])) for m in user_mounts}
    own = [_mount(dest, "bind", str(etc_files[dest]), ["rbind", "rprivate"])
           for dest in sorted(etc_files) if dest not in taken]
    mounts.extend(sorted(own + user_mounts, key=lambda m: len(
        os.path.normpath(str(m["destination"])).split("/"))))
    namespaces: list[dict[str, str]] = []
    for ns in NAMESPACES:
        if ns != "network":
            namespaces.append({"type": ns})
        elif netns_path:
            namespaces.append({"type": ns, "path": netns_path})
        elif not host_network:
            namespaces.append({"type": ns})
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": options.tty,
            "user": {"uid": user.uid, "gid": user.gid,
                     **({"additionalGids": list(user.additional_gids)}
                        if user.additional_gids else {})},
            "args": args,
            "env": environment(config, options, hostname, options.tty),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": t, "soft": s, "hard": h}
                        for t, s, h in with_default_rlimits(options.rlimits)],
            "noNewPrivileges": security.no_new_privileges,
        },
        "root": {"path": rootfs, "readonly": options.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces + _user_namespace(options),
            "maskedPaths": [] if options.privileged else list(MASKED_PATHS),
            "readonlyPaths": [] if options.privileged else list(READONLY_PATHS),
            "rootfsPropagation": "private",
            **_linux_security(options, security, cgroups_path),
        },
    }


# -- security and resources (--privileged, --security-opt, --ulimit, limits) --------------

#: ``--ulimit`` names → runtime-spec rlimit types.
ULIMITS: Mapping[str, str] = {
    name: f"RLIMIT_{name.upper()}" for name in (
        "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
        "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")}

#: The open-files limit docker's containers get when ``--ulimit nofile`` is not given
#: (dockerd's unit raises it to the kernel's ``nr_open``, 1048576, and containers inherit
#: it); capped at what strata itself may grant.
DEFAULT_NOFILE = 1 << 20

#: runtime-spec's "unlimited" rlimit value.
RLIM_INFINITY = (1 << 64) - 1


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """``--ulimit NAME=SOFT[:HARD]`` (docker's syntax; ``-1`` is unlimited) as a
    (type, soft, hard) triple.

    Raises:
        InvalidArgument: an unknown name or a bad value.
    """
    name, sep, values = text.partition("=")
    if not sep or name not in ULIMITS:
        raise InvalidArgument(f"invalid ulimit type: {name}" if sep
                              else f"invalid ulimit argument: {text}")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise InvalidArgument(f"invalid ulimit argument: {text}") from None
    soft = RLIM_INFINITY if soft == -1 else soft
    hard = RLIM_INFINITY if hard == -1 else hard
    if soft < 0 or hard < 0:
        raise InvalidArgument(f"invalid ulimit argument: {text}")
    if soft > hard:
        raise InvalidArgument(f"ulimit soft limit must be less than or equal to hard limit: "
                              f"{soft} > {hard}")
    return ULIMITS[name], soft, hard


def with_default_rlimits(rlimits: Sequence[tuple[str, int, int]]
                         ) -> list[tuple[str, int, int]]:
    """``--ulimit`` values plus docker's default open-files limit when not given."""
    out = list(rlimits)
    if not any(kind == "RLIMIT_NOFILE" for kind, _, _ in out):
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        cap = DEFAULT_NOFILE if hard == resource.RLIM_INFINITY else min(DEFAULT_NOFILE, hard)
        out.append(("RLIMIT_NOFILE", cap, cap))
    return out


@dataclass(frozen=True, slots=True)
class Security:
    """``--security-opt`` and ``--privileged`` resolved: the seccomp filter (None:
    unconfined) and ``no_new_privs``."""

    seccomp: dict[str, Any] | None
    no_new_privileges: bool = True


def _security(options: RunOptions, caps: Sequence[str]) -> Security:
    profile: str | None = None
    no_new_privileges = True
    for opt in options.security_opt:
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")
        if key == "seccomp" and value:
            profile = value
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            no_new_privileges = value != "false"
        elif key in ("apparmor", "label") and value:
            continue  # no AppArmor / SELinux here: accepted and ignored, as docker does
        else:
            raise InvalidArgument(f'Invalid --security-opt: "{opt}"')
    if options.privileged or profile == "unconfined":
        return Security(None, no_new_privileges)
    if profile is not None:
        return Security(seccomp.profile_from_json(Path(profile), caps), no_new_privileges)
    return Security(seccomp.default_profile(caps), no_new_privileges)


#: Directories and files of the host's ``/dev`` a privileged container does not get (its
#: own ``/dev/pts``, ``ptmx`` and ``console`` come from its devpts instance).
_SKIP_DEV = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev", "console", "ptmx"}


def privileged_capabilities() -> list[str]:
    """Every capability strata itself holds in its bounding set (``--privileged``: docker
    gives all; a capability strata lacks cannot be given)."""
    bounding = (1 << len(ALL_CAPABILITIES)) - 1
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                bounding = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return [cap for i, cap in enumerate(ALL_CAPABILITIES) if bounding >> i & 1]


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """The host's device nodes as runtime-spec ``linux.devices`` (``--privileged``)."""
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DEV)
        for name in sorted(filenames):
            if name in _SKIP_DEV:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            out.append({"path": path, "type": kind, "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev), "fileMode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid, "gid": st.st_gid})
    return out


def _linux_security(options: RunOptions, security: Security, cgroups_path: str | None
                    ) -> dict[str, Any]:
    """The ``linux`` members for cgroups, seccomp and devices."""
    out: dict[str, Any] = {}
    limits = cgroups.Limits(memory=options.memory, memory_swap=options.memory_swap,
                            cpus=options.cpus, pids_limit=options.pids_limit)
    if cgroups_path is not None:
        out["cgroupsPath"] = cgroups_path
        out["resources"] = cgroups.resources(limits, privileged=options.privileged)
    if security.seccomp is not None:
        out["seccomp"] = security.seccomp
    if options.privileged:
        out["devices"] = host_devices()
    if options.userns == "auto":
        out["uidMappings"], out["gidMappings"] = userns.auto_mappings()
    return out


def _user_namespace(options: RunOptions) -> list[dict[str, str]]:
    """``--userns auto``: a new user namespace (None / ``host``: none, docker's default)."""
    if options.userns in (None, "", "host"):
        return []
    if options.userns != "auto":
        raise InvalidArgument(f"invalid --userns mode {options.userns!r} (host or auto)")
    if options.privileged:
        raise InvalidArgument("privileged mode is incompatible with user namespaces.  You must"
                              " run the container in the host namespace when running "
                              "privileged mode")
    return [{"type": "user"}]
