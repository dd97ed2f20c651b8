"""Resource limits: ``--memory`` (OOM kill recorded), ``--pids-limit``, ``--cpus``,
``--ulimit`` and docker's default open-files limit, with the built-in runtime and runc.

The cgroup files are read back on the host while the container runs (its
``/proc/self/cgroup`` names the group), and every group is gone after the container.
"""

from __future__ import annotations

import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.runtime import cgroups
from strata.runtime.store import ContainerStore
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def loaded_root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    tools.require("runc")
    root = tmp_path_factory.mktemp("limits") / "root"
    tools.StrataCLI(root)("load", "-i", busybox_layout)
    yield root
    tools.assert_no_mounts_under(root)
    layout = cgroups.detect()
    ids = [p.name for p in (root / "containers").iterdir()] if (root / "containers").exists() \
        else []
    leftovers = [d for cid in ids for d in layout.directories(cgroups.group_path(cid))
                 if d.exists()]
    assert leftovers == [], f"cgroups left behind: {leftovers}"


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _run(root: Path, runtime: str, *args: str) -> subprocess.CompletedProcess[str]:
    return tools.StrataCLI(root)("run", "--runtime", runtime, *args, check=False)


def _record(root: Path, name: str) -> tuple[int | None, bool]:
    record = ContainerStore(root / "containers.db").find(name)
    return record.exit_code, record.oom_killed


# An allocation of ~100 MB in the shell (a 100 MB string).
_HOG = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo survived ${#x}'


def test_allocation_past_memory_limit_is_oom_killed(loaded_root: Path, runtime: str) -> None:
    name = f"oom-{runtime}"
    out = _run(loaded_root, runtime, "--name", name, "--memory", "32m", BUSYBOX_REF,
               "sh", "-c", _HOG)
    assert out.returncode == 137, out.stderr
    assert "survived" not in out.stdout
    assert _record(loaded_root, name) == (137, True)
    shown = tools.StrataCLI(loaded_root)(
        "inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}} {{.HostConfig.Memory}}", name)
    assert shown.stdout.split() == ["true", "137", str(32 << 20)]
    tools.StrataCLI(loaded_root)("rm", name)


def test_within_the_limit_is_not_oom_killed(loaded_root: Path, runtime: str) -> None:
    name = f"no-oom-{runtime}"
    out = _run(loaded_root, runtime, "--name", name, "--memory", "256m", BUSYBOX_REF,
               "sh", "-c", _HOG)
    assert (out.returncode, out.stdout) == (0, "survived 100000000\n"), out.stderr
    assert _record(loaded_root, name) == (0, False)
    shown = tools.StrataCLI(loaded_root)("inspect", "-f", "{{.State.OOMKilled}}", name)
    assert shown.stdout.strip() == "false"
    # A process SIGKILLed by someone else than the OOM killer is not reported as OOM.
    killed = _run(loaded_root, runtime, "--name", f"{name}-k", "--memory", "64m", BUSYBOX_REF,
                  "sh", "-c", 'sh -c "kill -9 \\$\\$"; exit $?')
    assert killed.returncode == 137
    assert _record(loaded_root, f"{name}-k") == (137, False)
    tools.StrataCLI(loaded_root)("rm", name, f"{name}-k")


def test_pids_limit_stops_a_fork_bomb_with_eagain(loaded_root: Path, runtime: str) -> None:
    script = "for i in $(seq 1 30); do sleep 5 & echo $i; done"
    out = _run(loaded_root, runtime, "--rm", "--pids-limit", "10", BUSYBOX_REF, "sh", "-c",
               script)
    # The shell is one task: nine sleeps fit, the tenth fork fails with EAGAIN.
    assert out.stdout.split()[-1] == "9", (out.stdout, out.stderr)
    assert "Resource temporarily unavailable" in out.stderr
    assert out.returncode != 0


def _group_files(root: Path, runtime: str, *args: str) -> tuple[str, dict[str, str]]:
    """Start a container printing its cgroup path, read its limit files on the host while it
    runs, let it finish; (container ID, file name → content)."""
    cli = tools.StrataCLI(root)
    proc = subprocess.Popen(
        [*cli.command, "--root", str(root), "run", "-i", "--rm", "--runtime", runtime, *args,
         BUSYBOX_REF, "sh", "-c",
         "grep -E ':(memory|pids|cpu,cpuacct|cpu|):' /proc/self/cgroup; echo ready; "
         "read line; echo bye"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    lines = []
    while (line := proc.stdout.readline()) and line != "ready\n":
        lines.append(line.strip())
    cid = next(line.rsplit("/", 1)[-1] for line in lines if "/strata/" in line)
    layout = cgroups.detect()
    files: dict[str, str] = {}
    for controller, names in (
            ("memory", ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                        "memory.max", "memory.swap.max")),
            ("cpu", ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max")),
            ("pids", ("pids.max",))):
        directory = layout.controller_dir(controller, cgroups.group_path(cid))
        assert directory is not None and directory.is_dir(), (controller, lines)
        for name in names:
            if (directory / name).exists():
                files[name] = (directory / name).read_text().strip()
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.stdout.read() == "bye\n"
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert all(not d.exists() for d in layout.directories(cgroups.group_path(cid)))
    return cid, files


def test_limits_are_written_to_the_containers_cgroup(loaded_root: Path, runtime: str) -> None:
    _, files = _group_files(loaded_root, runtime, "--memory", "48m", "--cpus", "0.5",
                            "--pids-limit", "64")
    mb48 = str(48 * 1024 * 1024)
    if cgroups.detect().mode == "v2":
        assert files["memory.max"] == mb48
        assert files.get("memory.swap.max", mb48) == mb48  # docker: as much swap as memory
        assert files["cpu.max"] == "50000 100000"
    else:
        assert files["memory.limit_in_bytes"] == mb48
        if "memory.memsw.limit_in_bytes" in files:
            assert files["memory.memsw.limit_in_bytes"] == str(96 * 1024 * 1024)
        assert (files["cpu.cfs_quota_us"], files["cpu.cfs_period_us"]) == ("50000", "100000")
    assert files["pids.max"] == "64"


def test_memory_swap_option(loaded_root: Path, runtime: str) -> None:
    _, files = _group_files(loaded_root, runtime, "--memory", "32m", "--memory-swap", "40m")
    if cgroups.detect().mode == "v2":
        assert files.get("memory.swap.max", str(8 << 20)) == str(8 << 20)
    elif "memory.memsw.limit_in_bytes" in files:
        assert files["memory.memsw.limit_in_bytes"] == str(40 << 20)


@pytest.mark.parametrize(("args", "message"), [
    (("--memory", "12x"), "invalid size: '12x'"),
    (("--memory", "1m"), "Minimum memory limit allowed is 6MB"),
    (("--memory", "32m", "--memory-swap", "16m"), "Minimum memoryswap limit should be larger"),
    (("--memory-swap", "1g"), "You should always set the Memory limit"),
    (("--cpus", "lots"), "failed to parse lots as a rational number"),
    (("--cpus", "-1"), "the number of CPUs must not be negative"),
    (("--cpus", "4096"), "range of CPUs is from 0.01"),
    (("--ulimit", "nofile=10:5"), "ulimit soft limit must be less than or equal to hard"),
    (("--ulimit", "files=10"), "invalid ulimit type: files"),
])
def test_bad_limits_fail_with_125_and_leave_nothing(loaded_root: Path, args: tuple[str, ...],
                                                    message: str) -> None:
    cli = tools.StrataCLI(loaded_root)
    before = cli("ps", "-aq", "--no-trunc").stdout.split()
    out = _run(loaded_root, "builtin", "--rm", *args, BUSYBOX_REF, "true")
    assert out.returncode == 125
    assert message in out.stderr
    assert cli("ps", "-aq", "--no-trunc").stdout.split() == before


def test_ulimit_and_the_default_open_files_limit(loaded_root: Path, runtime: str) -> None:
    out = _run(loaded_root, runtime, "--rm", BUSYBOX_REF, "sh", "-c", "ulimit -n; ulimit -Hn")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = 1048576 if hard == resource.RLIM_INFINITY else min(1048576, hard)
    assert out.stdout.split() == [str(expected)] * 2, out.stderr
    out = _run(loaded_root, runtime, "--rm", "--ulimit", "nofile=1024:2048", "--ulimit",
               "nproc=500", BUSYBOX_REF, "sh", "-c", "ulimit -n; ulimit -Hn; ulimit -u")
    assert out.stdout.split() == ["1024", "2048", "500"], out.stderr
