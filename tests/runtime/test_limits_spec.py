"""The pure parts of limits and security: docker's unit syntax, cgroup layout detection on
v1, hybrid and v2 hosts, ``linux.resources``, the seccomp policy's facts, docker-format
profiles, ``--ulimit``, and what ``--privileged`` / ``--security-opt`` put in the spec."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import pytest

from strata.errors import InvalidArgument
from strata.runtime import cgroups, seccomp
from strata.runtime.spec import (
    DEFAULT_CAPABILITIES,
    MASKED_PATHS,
    RunOptions,
    User,
    generate,
    parse_ulimit,
    privileged_capabilities,
)

V1 = """\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid shared:10 - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:15 - cgroup cgroup rw,pids
"""
HYBRID = V1 + ("27 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:11 - cgroup2 cgroup2 "
               "rw,nsdelegate\n")
V2 = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


@pytest.mark.parametrize(("text", "value"), [
    ("512m", 512 << 20), ("1g", 1 << 30), ("1G", 1 << 30), ("64k", 64 << 10),
    ("1048576", 1 << 20), ("2gb", 2 << 30), ("1.5g", 3 << 29), ("100b", 100),
])
def test_docker_sizes(text: str, value: int) -> None:
    assert cgroups.parse_bytes(text) == value


def test_bad_sizes_and_cpus() -> None:
    for bad in ("", "12x", "m", "-1g", "1.2.3m"):
        with pytest.raises(InvalidArgument, match="invalid size"):
            cgroups.parse_bytes(bad)
    assert cgroups.parse_cpus("0.5") == 0.5
    assert cgroups.parse_cpus("0") == 0  # docker: no limit
    for bad in ("x", "-1", "nan"):
        with pytest.raises(InvalidArgument, match="--cpus"):
            cgroups.parse_cpus(bad)


def test_layout_detection_v1_hybrid_v2() -> None:
    v1 = cgroups.detect(V1)
    assert v1.mode == "v1" and v1.unified is None
    assert v1.v1["memory"] == Path("/sys/fs/cgroup/memory")
    assert v1.v1["cpu"] == v1.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    # cpu and cpuacct share one directory; systemd's named hierarchy is not managed.
    assert v1.directories("/strata/abc") == [
        Path("/sys/fs/cgroup/memory/strata/abc"), Path("/sys/fs/cgroup/cpu,cpuacct/strata/abc"),
        Path("/sys/fs/cgroup/pids/strata/abc")]
    hybrid = cgroups.detect(HYBRID)
    assert hybrid.mode == "hybrid" and hybrid.unified == Path("/sys/fs/cgroup/unified")
    assert hybrid.controller_dir("pids", "/strata/x") == Path("/sys/fs/cgroup/pids/strata/x")
    v2 = cgroups.detect(V2)
    assert v2.mode == "v2" and v2.v1 == {}
    assert v2.directories("/strata/x") == [Path("/sys/fs/cgroup/strata/x")]
    assert v2.controller_dir("memory", "/strata/x") == Path("/sys/fs/cgroup/strata/x")
    assert cgroups.group_path("abc") == "/strata/abc"


def test_this_host_is_detected() -> None:
    layout = cgroups.detect()
    assert layout.mode in ("v1", "hybrid", "v2")
    if layout.mode != "v2":
        assert "memory" in layout.v1 and "pids" in layout.v1


def test_resources_follow_docker() -> None:
    res = cgroups.resources(cgroups.Limits(memory=64 << 20, cpus=1.5, pids_limit=100))
    assert res["memory"] == {"limit": 64 << 20, "swap": 128 << 20}  # docker: swap = memory
    assert res["cpu"] == {"quota": 150000, "period": 100000}
    assert res["pids"] == {"limit": 100}
    assert res["devices"][0] == {"allow": False, "access": "rwm"}
    allowed = {(d.get("type"), d.get("major"), d.get("minor")) for d in res["devices"][1:]}
    assert ("c", 1, 3) in allowed and ("c", 136, None) in allowed  # null, pts
    assert ("b", 8, 0) not in allowed
    assert cgroups.resources(cgroups.Limits(memory=64 << 20, memory_swap=-1))["memory"] == {
        "limit": 64 << 20, "swap": -1}
    unlimited = cgroups.resources(cgroups.Limits(pids_limit=-1))
    assert "pids" not in unlimited and "memory" not in unlimited and "cpu" not in unlimited
    assert cgroups.resources(cgroups.Limits(), privileged=True)["devices"] == [
        {"allow": True, "access": "rwm"}]
    with pytest.raises(InvalidArgument, match="Minimum memory limit"):
        cgroups.Limits(memory=1 << 20)
    with pytest.raises(InvalidArgument, match="Memory limit"):
        cgroups.Limits(memory_swap=1 << 30)


def test_default_seccomp_policy_facts() -> None:
    profile = seccomp.default_profile(DEFAULT_CAPABILITIES, arch="amd64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = set(profile["syscalls"][0]["names"])
    for name in ("read", "execve", "fork", "arch_prctl", "chroot"):
        assert name in allowed
    for name in ("mount", "unshare", "setns", "keyctl", "add_key", "init_module",
                 "finit_module", "clock_settime", "settimeofday", "reboot", "kexec_load",
                 "bpf", "userfaultfd", "clone", "clone3"):
        assert name not in allowed, name
    rules = {tuple(r["names"]): r for r in profile["syscalls"][1:]}
    assert rules[("socket",)]["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    assert rules[("clone",)]["args"][0]["value"] == 0x7E020000
    assert rules[("clone3",)] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                                  "errnoRet": 38}
    admin = seccomp.default_profile([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_TIME"],
                                    arch="amd64")
    allowed = set(admin["syscalls"][0]["names"])
    assert {"mount", "unshare", "setns", "clone", "clone3", "clock_settime"} <= allowed
    assert not any(r["names"] == ["clone3"] for r in admin["syscalls"][1:])


def test_docker_format_profile_is_resolved(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
             "excludes": {"arches": ["amd64"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["amd64"]}},
        ]}))
    profile = seccomp.profile_from_json(path, DEFAULT_CAPABILITIES, arch="amd64")
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [r["names"] for r in profile["syscalls"]] == [["read", "write"], ["arch_prctl"]]
    with_admin = seccomp.profile_from_json(path, ["CAP_SYS_ADMIN"], arch="amd64")
    assert ["mount"] in [r["names"] for r in with_admin["syscalls"]]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="opening seccomp profile"):
        seccomp.profile_from_json(tmp_path / "bad.json", ())
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InvalidArgument, match="not a seccomp profile"):
        seccomp.profile_from_json(tmp_path / "list.json", ())


def test_ulimit_syntax() -> None:
    assert parse_ulimit("nofile=1024:2048") == ("RLIMIT_NOFILE", 1024, 2048)
    assert parse_ulimit("nproc=100") == ("RLIMIT_NPROC", 100, 100)
    assert parse_ulimit("core=-1") == ("RLIMIT_CORE", (1 << 64) - 1, (1 << 64) - 1)
    for bad, message in (("nofile", "invalid ulimit argument"), ("x=1", "invalid ulimit type"),
                         ("nofile=a", "invalid ulimit argument"),
                         ("nofile=5:1", "soft limit must be less than or equal")):
        with pytest.raises(InvalidArgument, match=message):
            parse_ulimit(bad)


def _doc(**options: object) -> dict[str, object]:
    return generate(None, RunOptions(command=("true",), **options),  # type: ignore[arg-type]
                    user=User(), hostname="h", etc_files={}, cgroups_path="/strata/c1")


def test_spec_security_defaults() -> None:
    doc = _doc(memory=32 << 20, pids_limit=5)
    linux = doc["linux"]
    assert isinstance(linux, dict)
    assert linux["cgroupsPath"] == "/strata/c1"
    assert linux["resources"]["memory"]["limit"] == 32 << 20
    assert linux["resources"]["pids"] == {"limit": 5}
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "devices" not in linux
    assert linux["maskedPaths"] == list(MASKED_PATHS)


def test_spec_privileged_and_security_opt(tmp_path: Path) -> None:
    doc = _doc(privileged=True)
    linux, process, mounts = doc["linux"], doc["process"], doc["mounts"]
    assert isinstance(linux, dict) and isinstance(process, dict) and isinstance(mounts, list)
    assert "seccomp" not in linux
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert process["capabilities"]["bounding"] == privileged_capabilities()
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert {d["path"] for d in linux["devices"]} >= {"/dev/null", "/dev/zero"}
    sysfs = next(m for m in mounts if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"]
    unconfined = _doc(security_opt=("seccomp=unconfined",))["linux"]
    assert isinstance(unconfined, dict) and "seccomp" not in unconfined
    assert _doc(security_opt=("no-new-privileges=false",))["process"][  # type: ignore[index]
        "noNewPrivileges"] is False
    with pytest.raises(InvalidArgument, match="incompatible with user namespaces"):
        _doc(privileged=True, userns="auto")
    with pytest.raises(InvalidArgument, match="Invalid --security-opt"):
        _doc(security_opt=("bogus",))
    with pytest.raises(InvalidArgument, match="opening seccomp profile"):
        _doc(security_opt=(f"seccomp={tmp_path / 'missing.json'}",))


def _opens_in_group(directories: list[Path], paths: tuple[str, ...]) -> list[str]:
    """Open each path from a child process placed in ``directories``; what happened."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            cgroups.join(directories)
            out = []
            for path in paths:
                try:
                    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                    out.append("ok")
                except OSError as exc:
                    out.append(exc.strerror or "error")
            os.write(write_fd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return list(json.loads(data))


def test_v2_device_program_enforces_the_rules() -> None:
    # The kernel runs device programs of a process's v2 group on hybrid hosts too, so the
    # eBPF path that pure v2 hosts use is exercised here on the real unified hierarchy.
    unified = cgroups.detect().unified
    assert unified is not None, "this host has no cgroup v2 hierarchy"
    layout = cgroups.Layout(mode="v2", unified=unified)
    path = f"/strata-test-{os.getpid()}/devices"
    paths = ("/dev/null", "/dev/zero", "/dev/kmsg")
    try:
        for privileged, expected in ((False, ["ok", "ok", "Operation not permitted"]),
                                     (True, ["ok", "ok", "ok"])):
            dirs = cgroups.apply(path, cgroups.resources(cgroups.Limits(),
                                                         privileged=privileged), layout)
            try:
                assert _opens_in_group(dirs, paths) == expected
            finally:
                for d in dirs:
                    d.rmdir()
    finally:
        (unified / path.strip("/")).parent.rmdir()


def test_device_program_shape() -> None:
    program = cgroups.device_program([{"allow": False, "access": "rwm"},
                                      {"allow": True, "type": "c", "major": 1, "minor": 3,
                                       "access": "rwm"}])
    assert len(program) % 8 == 0
    # Six loads, the allow rule (type, major, minor checks + verdict + exit), then the
    # deny-everything rule's verdict and exit, with nothing unreachable after it.
    assert len(program) // 8 == 6 + 5 + 2
    assert program[-8:] == bytes([0x95]) + bytes(7)


def test_compiled_default_policy_is_cached_and_enforced(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    profile = seccomp.default_profile(DEFAULT_CAPABILITIES)
    program = seccomp.compile_program(profile)
    assert program and len(program) % 8 == 0
    seccomp._compiled.clear()
    seccomp.preload(profile)
    cached = list((tmp_path / "strata" / "seccomp").glob("*.bpf"))
    assert len(cached) == 1 and cached[0].read_bytes() == program
    # A child installs the prepared program: unshare(CLONE_NEWUSER), which needs no
    # capability, is refused with EPERM; getpid still works.
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)  # no_new_privs
            seccomp.load(profile)
            rc = libc.unshare(0x10000000)
            os.write(write_fd, json.dumps([rc, ctypes.get_errno(), os.getpid() > 0]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        result = json.loads(f.read())
    os.waitpid(pid, 0)
    assert result == [-1, 1, True]
