"""Control groups for containers: memory, CPU and pids limits, device rules, the OOM flag.

Hosts come in three layouts and all three are handled:

* **v1**: one hierarchy per controller (``/sys/fs/cgroup/memory``, ``.../cpu,cpuacct``...);
* **hybrid**: v1 controllers plus an empty v2 hierarchy beside them
  (``/sys/fs/cgroup/unified``; systemd's default for years, and this project's CI host):
  treated as v1, the controllers live there;
* **v2 (unified)**: one hierarchy at ``/sys/fs/cgroup`` with ``memory.max``, ``cpu.max``...

:func:`detect` tells them apart from ``/proc/self/mountinfo``.  A container's group is
``/strata/<ID>`` under each hierarchy's root (as docker's ``/docker/<ID>``); the same path is
written into the runtime-spec as ``linux.cgroupsPath`` so that runc (cgroupfs driver) and the
built-in runtime use the same group.  The built-in runtime calls :func:`apply` with the
spec's ``linux.resources`` (runc does the same work itself) and the container's init writes
itself into the group with :func:`join` before ``execve``; after the container exits
:func:`oom_killed` reads the kernel's OOM-kill counter and :func:`remove` deletes the group.

:func:`resources` builds the spec's ``linux.resources`` from :class:`Limits`;
:func:`parse_bytes` and :func:`parse_cpus` read docker's ``--memory 512m`` / ``--cpus 0.5``.
Device rules are enforced through the v1 ``devices`` controller, or on a v2 host by an eBPF
``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached to the group (:func:`device_program`, the
same kind runc loads).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from strata.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "CPU_PERIOD",
    "DEFAULT_DEVICE_RULES",
    "Layout",
    "Limits",
    "apply",
    "attach_device_filter",
    "detect",
    "device_program",
    "group_path",
    "join",
    "oom_killed",
    "parse_bytes",
    "parse_cpus",
    "remove",
    "resources",
]

#: The CFS period docker uses with ``--cpus`` (microseconds).
CPU_PERIOD = 100_000

#: The parent of every container group, under each hierarchy's root.
PARENT = "strata"

#: Controllers strata creates a v1 group in (when the host mounts them).
V1_CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "cpuacct", "pids", "devices", "freezer")

#: docker's default device rules after "deny all" (moby ``oci/devices`` and runc's defaults):
#: creating any device node is allowed (``m``), reading or writing only these.
DEFAULT_DEVICE_RULES: tuple[tuple[str, int | None, int | None, str], ...] = (
    ("c", None, None, "m"),
    ("b", None, None, "m"),
    ("c", 1, 3, "rwm"),     # null
    ("c", 1, 5, "rwm"),     # zero
    ("c", 1, 7, "rwm"),     # full
    ("c", 1, 8, "rwm"),     # random
    ("c", 1, 9, "rwm"),     # urandom
    ("c", 5, 0, "rwm"),     # tty
    ("c", 5, 1, "rwm"),     # console
    ("c", 5, 2, "rwm"),     # ptmx
    ("c", 136, None, "rwm"),  # pts
    ("c", 10, 200, "rwm"),  # net/tun
)

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """docker's RAM size syntax: ``512m``, ``1g``, ``1.5G``, ``64k``, ``1048576``, ``2gb``
    (binary units, as ``units.RAMInBytes``).

    Raises:
        InvalidArgument: not a size.
    """
    match = _BYTES.match(text)
    if not match:
        raise InvalidArgument(f"invalid size: '{text}'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_cpus(text: str) -> float:
    """``--cpus`` (a decimal number of CPUs, docker's ``NanoCPUs``; 0: no limit).

    Raises:
        InvalidArgument: not a number, negative, or more CPUs than the host has.
    """
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f'invalid argument "{text}" for "--cpus" flag: failed to parse '
                              f"{text} as a rational number") from None
    if not value >= 0:  # also NaN; 0 means no limit, as with docker
        raise InvalidArgument(f'invalid argument "{text}" for "--cpus" flag: the number of '
                              "CPUs must not be negative")
    ncpu = os.cpu_count() or 1
    if value > ncpu:
        raise InvalidArgument(f"range of CPUs is from 0.01 to {ncpu}.00, as there are only "
                              f"{ncpu} CPUs available")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """What ``--memory``, ``--memory-swap``, ``--cpus``, ``--pids-limit`` asked for.

    Attributes:
        memory: bytes (None: no limit).
        memory_swap: memory + swap in bytes, ``-1`` for unlimited swap; None with ``memory``
            set means docker's default, twice ``memory`` (as much swap as memory).
        cpus: CPUs (None: no quota); quota = cpus * :data:`CPU_PERIOD`.
        pids_limit: the most tasks at once (None or ≤ 0: unlimited, docker's ``-1``).
    """

    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < 6 * 1024 * 1024:
            raise InvalidArgument("Minimum memory limit allowed is 6MB")
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory is None:
                raise InvalidArgument("You should always set the Memory limit when using "
                                      "Memoryswap limit")
            if self.memory_swap < self.memory:
                raise InvalidArgument("Minimum memoryswap limit should be larger than memory "
                                      "limit, see usage")

    @property
    def swap_total(self) -> int | None:
        """memory + swap in bytes (-1: unlimited; None: no memory limit at all)."""
        if self.memory is None:
            return None
        if self.memory_swap is None:
            return 2 * self.memory
        return self.memory_swap


def _device_rule(kind: str, major: int | None, minor: int | None, access: str,
                 allow: bool = True) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": allow, "type": kind, "access": access}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


def resources(limits: Limits, *, privileged: bool = False) -> dict[str, Any]:
    """The runtime-spec ``linux.resources`` for ``limits`` (what runc applies, and what
    :func:`apply` applies for the built-in runtime): deny every device but docker's default
    set, or allow all for a privileged container."""
    out: dict[str, Any] = {}
    if privileged:
        out["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        out["devices"] = [{"allow": False, "access": "rwm"}] + [
            _device_rule(*rule) for rule in DEFAULT_DEVICE_RULES]
    if limits.memory is not None:
        out["memory"] = {"limit": limits.memory, "swap": limits.swap_total}
    if limits.cpus is not None:
        out["cpu"] = {"quota": round(limits.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    if limits.pids_limit is not None and limits.pids_limit > 0:
        out["pids"] = {"limit": limits.pids_limit}
    return out


def group_path(container_id: str) -> str:
    """The container's cgroup path under every hierarchy's root (``linux.cgroupsPath``)."""
    return f"/{PARENT}/{container_id}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the host mounts its cgroup hierarchies.

    Attributes:
        mode: ``v1``, ``hybrid`` (v1 controllers and an empty v2 tree) or ``v2``.
        unified: the cgroup2 mount point (None on a pure v1 host).
        v1: controller name → mount point of its hierarchy (empty on a v2 host).
    """

    mode: Literal["v1", "hybrid", "v2"]
    unified: Path | None = None
    v1: Mapping[str, Path] = field(default_factory=dict)

    def directories(self, cgroups_path: str) -> list[Path]:
        """A group's directories (``cgroups_path`` as in ``linux.cgroupsPath``), one per
        hierarchy strata manages."""
        rel = cgroups_path.strip("/")
        if self.mode == "v2":
            assert self.unified is not None
            return [self.unified / rel]
        seen: list[Path] = []
        for name in V1_CONTROLLERS:
            mount = self.v1.get(name)
            if mount is not None and mount / rel not in seen:
                seen.append(mount / rel)
        return seen

    def controller_dir(self, controller: str, cgroups_path: str) -> Path | None:
        """The group directory holding ``controller``'s files (None: not mounted)."""
        rel = cgroups_path.strip("/")
        if self.mode == "v2":
            assert self.unified is not None
            return self.unified / rel
        mount = self.v1.get(controller)
        return mount / rel if mount is not None else None


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


_detected: list[Layout] = []


def detect(mountinfo: str | None = None) -> Layout:
    """The host's cgroup layout, from ``/proc/self/mountinfo`` (or the text given); the
    host's is read once per process.

    Raises:
        FailedPrecondition: no cgroup filesystem is mounted.
    """
    if mountinfo is None:
        if not _detected:
            _detected.append(detect(Path("/proc/self/mountinfo").read_text()))
        return _detected[0]
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        fstype, _source, *rest = right.split()
        if len(fields) < 5:
            continue
        mount = Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            if unified is None or mount == Path("/sys/fs/cgroup"):
                unified = mount
        elif fstype == "cgroup":
            options = rest[0].split(",") if rest else []
            for option in options:
                if option in V1_CONTROLLERS and option not in v1:
                    v1[option] = mount
    if v1:
        return Layout(mode="hybrid" if unified is not None else "v1", unified=unified, v1=v1)
    if unified is not None:
        return Layout(mode="v2", unified=unified)
    raise FailedPrecondition("no cgroup filesystem is mounted (/sys/fs/cgroup)")


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise FailedPrecondition(f"cgroup: write {value!r} to {path}: "
                                 f"{exc.strerror or exc}") from None


def _enable_v2_controllers(root: Path, parent: Path) -> None:
    """Let ``parent`` (``/strata``) hand memory, cpu and pids to its children (v2).

    Best effort: a controller that cannot be enabled only matters when a limit needs it,
    and writing that limit then fails with the kernel's reason.
    """
    available = set((root / "cgroup.controllers").read_text().split())
    wanted = [c for c in ("memory", "cpu", "pids") if c in available]
    for directory in (root, parent):
        enabled = set((directory / "cgroup.subtree_control").read_text().split())
        for controller in (c for c in wanted if c not in enabled):
            with contextlib.suppress(FailedPrecondition):
                _write(directory / "cgroup.subtree_control", f"+{controller}")


def _v1_device_rules(directory: Path, rules: Sequence[Mapping[str, Any]]) -> None:
    for rule in rules:
        kind = str(rule.get("type") or "a")
        major = rule.get("major")
        minor = rule.get("minor")
        access = str(rule.get("access") or "rwm")
        if kind == "a":
            entry = "a"
        else:
            entry = (f"{kind} {'*' if major is None else major}:"
                     f"{'*' if minor is None else minor} {access}")
        target = "devices.allow" if rule.get("allow") else "devices.deny"
        _write(directory / target, entry)


# -- v2 device rules: a BPF_PROG_TYPE_CGROUP_DEVICE program (what runc loads on v2) ---------

_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
_SYS_BPF = 321  # x86_64
_DEV_TYPES = {"b": 1, "c": 2}
_DEV_ACCESS = {"m": 1, "r": 2, "w": 4}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def device_program(rules: Sequence[Mapping[str, Any]]) -> bytes:
    """The BPF instructions enforcing runtime-spec device ``rules`` (the last matching rule
    decides, as with v1's lists; nothing matching: denied).

    The program reads ``struct bpf_cgroup_dev_ctx`` {access_type = access << 16 | type,
    major, minor} and returns 1 (allow) or 0.
    """
    out = [
        _insn(0x61, dst=2, src=1, off=0),     # r2 = ctx->access_type
        _insn(0x57, dst=2, imm=0xFFFF),       # r2 &= 0xffff: the type
        _insn(0x61, dst=3, src=1, off=0),     # r3 = ctx->access_type
        _insn(0x77, dst=3, imm=16),           # r3 >>= 16: the access
        _insn(0x61, dst=4, src=1, off=4),     # r4 = ctx->major
        _insn(0x61, dst=5, src=1, off=8),     # r5 = ctx->minor
    ]
    for rule in reversed(rules):
        kind = str(rule.get("type") or "a")
        access = 0
        for letter in str(rule.get("access") or "rwm"):
            access |= _DEV_ACCESS.get(letter, 0)
        checks: list[tuple[int, ...]] = []
        if kind != "a":
            checks.append((0x55, 2, _DEV_TYPES[kind]))  # if r2 != type goto next
        if access != 7:
            checks.append((0xBF, 1, 3))                  # r1 = r3
            checks.append((0x57, 1, access))             # r1 &= access
            checks.append((0x5D, 1, 3))                  # if r1 != r3 goto next
        if rule.get("major") is not None and kind != "a":
            checks.append((0x55, 4, int(rule["major"])))
        if rule.get("minor") is not None and kind != "a":
            checks.append((0x55, 5, int(rule["minor"])))
        block_len = len(checks) + 2
        for i, check in enumerate(checks):
            code = check[0]
            skip = block_len - i - 1  # to the instruction after this block
            if code == 0x55:
                out.append(_insn(code, dst=check[1], off=skip, imm=check[2]))
            elif code == 0x5D:
                out.append(_insn(code, dst=check[1], src=check[2], off=skip))
            elif code == 0xBF:
                out.append(_insn(code, dst=check[1], src=check[2]))
            else:
                out.append(_insn(code, dst=check[1], imm=check[2]))
        out.append(_insn(0xB7, dst=0, imm=1 if rule.get("allow") else 0))  # r0 = verdict
        out.append(_insn(0x95))                                            # exit
        if not checks:
            return b"".join(out)  # it matches everything: what follows is unreachable
    out.append(_insn(0xB7, dst=0, imm=0))
    out.append(_insn(0x95))
    return b"".join(out)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = int(libc.syscall(_SYS_BPF, cmd, attr, len(attr)))
    if rc < 0:
        raise FailedPrecondition(f"cgroup: bpf({cmd}): {os.strerror(ctypes.get_errno())}")
    return rc


def attach_device_filter(directory: Path, rules: Sequence[Mapping[str, Any]]) -> None:
    """Enforce device ``rules`` on the v2 group ``directory`` with an eBPF program.

    Raises:
        FailedPrecondition: the kernel refused the program or its attachment.
    """
    code = device_program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_))
    try:
        prog = _bpf(_BPF_PROG_LOAD, attr)
    except FailedPrecondition as exc:  # again, with the verifier's log for the message
        log = ctypes.create_string_buffer(1 << 16)
        struct.pack_into("<IIQ", attr, 24, 1, len(log), ctypes.addressof(log))
        with contextlib.suppress(FailedPrecondition):
            os.close(_bpf(_BPF_PROG_LOAD, attr))
        raise FailedPrecondition(f"{exc}: {log.value.decode(errors='replace')[-300:]}"
                                 ) from None
    try:
        group = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attach = ctypes.create_string_buffer(128)
            struct.pack_into("<IIII", attach, 0, group, prog, _BPF_CGROUP_DEVICE,
                             _BPF_F_ALLOW_MULTI)
            _bpf(_BPF_PROG_ATTACH, attach)
        finally:
            os.close(group)
    finally:
        os.close(prog)  # the attachment holds the program until the group is removed


def apply(cgroups_path: str, spec_resources: Mapping[str, Any] | None,
          layout: Layout | None = None) -> list[Path]:
    """Create the group ``cgroups_path`` (the spec's ``linux.cgroupsPath``, absolute: under
    each hierarchy's root) and apply the spec's ``linux.resources`` to it.

    Returns the group directories (the container joins them with :func:`join`).

    Raises:
        FailedPrecondition: the kernel refused a group or a limit.
    """
    layout = layout or detect()
    res = spec_resources or {}
    dirs = layout.directories(cgroups_path)
    try:
        if layout.mode == "v2":
            assert layout.unified is not None
            parent = layout.unified
            for part in cgroups_path.strip("/").split("/")[:-1]:
                parent = parent / part
                parent.mkdir(exist_ok=True)
                _enable_v2_controllers(layout.unified, parent)
        for directory in dirs:
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FailedPrecondition(f"cgroup: create {cgroups_path}: {exc.strerror or exc}"
                                 ) from None
    memory = res.get("memory") or {}
    cpu = res.get("cpu") or {}
    pids = res.get("pids") or {}
    if layout.mode == "v2":
        group = dirs[0]
        if memory.get("limit") is not None:
            limit = int(memory["limit"])
            _write(group / "memory.max", str(limit))
            swap = memory.get("swap")
            if swap is not None and (group / "memory.swap.max").exists():
                _write(group / "memory.swap.max",
                       "max" if int(swap) < 0 else str(max(int(swap) - limit, 0)))
        if cpu.get("quota") is not None:
            _write(group / "cpu.max", f"{int(cpu['quota'])} {int(cpu.get('period') or CPU_PERIOD)}")
        if pids.get("limit") is not None:
            _write(group / "pids.max", str(int(pids["limit"])))
        if res.get("devices"):
            attach_device_filter(group, res["devices"])
        return dirs
    mem_dir = layout.controller_dir("memory", cgroups_path)
    if memory.get("limit") is not None and mem_dir is not None:
        _write(mem_dir / "memory.limit_in_bytes", str(int(memory["limit"])))
        swap = memory.get("swap")
        if swap is not None and (mem_dir / "memory.memsw.limit_in_bytes").exists():
            _write(mem_dir / "memory.memsw.limit_in_bytes", str(int(swap)))
    cpu_dir = layout.controller_dir("cpu", cgroups_path)
    if cpu.get("quota") is not None and cpu_dir is not None:
        _write(cpu_dir / "cpu.cfs_period_us", str(int(cpu.get("period") or CPU_PERIOD)))
        _write(cpu_dir / "cpu.cfs_quota_us", str(int(cpu["quota"])))
    pids_dir = layout.controller_dir("pids", cgroups_path)
    if pids.get("limit") is not None and pids_dir is not None:
        _write(pids_dir / "pids.max", str(int(pids["limit"])))
    dev_dir = layout.controller_dir("devices", cgroups_path)
    if res.get("devices") and dev_dir is not None:
        _v1_device_rules(dev_dir, res["devices"])
    return dirs


def join(directories: Sequence[Path], pid: int = 0) -> None:
    """Move ``pid`` (0: the calling process) into each group.

    Raises:
        FailedPrecondition: the kernel refused (e.g. the pids limit is already reached).
    """
    for directory in directories:
        _write(directory / "cgroup.procs", str(pid))


def _counter(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == key and words[1].isdigit():
            return int(words[1])
    return 0


def oom_killed(container_id: str, layout: Layout | None = None) -> bool:
    """Whether the kernel's OOM killer killed a process of the container's group (v1
    ``memory.oom_control`` / v2 ``memory.events``: the ``oom_kill`` counter).  Read it
    after the container exited and before :func:`remove`; False when the group is gone."""
    try:
        layout = layout or detect()
    except FailedPrecondition:
        return False
    directory = layout.controller_dir("memory", group_path(container_id))
    if directory is None:
        return False
    if layout.mode == "v2":
        return _counter(directory / "memory.events", "oom_kill") > 0
    return _counter(directory / "memory.oom_control", "oom_kill") > 0


def _pids_in(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove(container_id: str, layout: Layout | None = None) -> None:
    """Delete the container's groups (idempotent); processes still in them are killed."""
    try:
        layout = layout or detect()
    except FailedPrecondition:
        return
    for directory in layout.directories(group_path(container_id)):
        for attempt in range(100):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    break
                for pid in _pids_in(directory):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(min(0.005 * (attempt + 1), 0.05))
