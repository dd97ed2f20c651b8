"""Detached containers end to end: ``run -d``, ``ps``, ``logs``, ``stop``, ``kill``, ``wait``,
``exec``, ``start``/``restart``, ``rm -f`` and a killed supervisor, each from a *new*
strata process, with the built-in runtime and runc.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.errors import NotFound
from strata.runtime.container import upper_key
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF

RUNTIMES = ("builtin", "runc")
LOOP = ('i=0; while true; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); sleep 0.2; done')


def _mounts_under(root: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(root))]


def _processes_of(root: Path) -> list[int]:
    """PIDs of supervisors working on ``root`` (none may be left behind)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"strata.runtime.supervisor" in cmdline and str(root).encode() in cmdline:
                found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    """A strata root holding the busybox image; afterwards no container may still run and
    no mount may be left under it."""
    tools.require("runc")
    path = tmp_path_factory.mktemp("lifecycle") / "root"
    cli = tools.StrataCLI(path)
    cli("load", "-i", busybox_layout)
    yield path
    leftovers = cli("ps", "-q", "--no-trunc").stdout.split()
    if leftovers:
        cli("rm", "-f", *leftovers, check=False)
    assert leftovers == [], "containers left running"
    assert _mounts_under(path) == []
    assert _processes_of(path) == []


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Strata:
    """The CLI on the shared root; ``run`` adds ``--runtime R --network none``."""

    def __init__(self, root: Path, runtime: str) -> None:
        self.root = root
        self.cli = tools.StrataCLI(root)
        self.runtime = runtime

    def __call__(self, *args: str, check: bool = False,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, check=check, input=input)

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.cli("run", "--runtime", self.runtime, "--network", "none", *args,
                        check=check)

    def detach(self, name: str, *args: str) -> str:
        """``run -d --name NAME ARGS``: the printed ID."""
        out = self.run("-d", "--name", f"{name}-{self.runtime}", *args)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.cli.command, "--root", str(self.root), *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def ps(self, all_containers: bool = True) -> dict[str, dict[str, object]]:
        out = self("ps", *(["-a"] if all_containers else []), "--format", "json", check=True)
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        return {str(r["Names"]): r for r in rows}


@pytest.fixture
def strata(root: Path, runtime: str) -> Strata:
    return Strata(root, runtime)


def _until(what: str, predicate: Callable[[], bool], limit: float = 60) -> None:
    """Poll ``predicate`` until it holds (a deadline only against hanging forever)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _in_other_pid_namespaces(cmdline: bytes) -> list[int]:
    ours = os.readlink("/proc/self/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if (os.readlink(f"/proc/{entry}/ns/pid") != ours
                        and Path(f"/proc/{entry}/cmdline").read_bytes() == cmdline):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_detached_loop_ps_logs_and_stop_after_grace(strata: Strata, root: Path) -> None:
    cid = strata.detach("loop", BUSYBOX_REF, "sh", "-c", LOOP)
    name = f"loop-{strata.runtime}"
    assert re.fullmatch(r"[0-9a-f]{64}", cid), cid  # the full ID, as docker prints it
    row = strata.ps(all_containers=False)[name]
    assert row["State"] == "running" and str(row["Status"]).startswith("Up ")
    table = strata("ps").stdout
    assert re.search(rf"{cid[:12]} .* Up (Less than a second|\d+ seconds?) .* {name}\n", table)

    _until("three lines of each stream", lambda: "out 2\n" in strata("logs", name).stdout)
    logs = strata("logs", name)  # a new strata process reads what the supervisor wrote
    assert logs.returncode == 0, logs.stderr
    out_lines, err_lines = logs.stdout.splitlines(), logs.stderr.splitlines()
    assert out_lines[:3] == ["out 0", "out 1", "out 2"]
    assert err_lines[:3] == ["err 0", "err 1", "err 2"]  # stderr to stderr

    tail = strata("logs", "--tail", "2", name)
    assert len(tail.stdout.splitlines()) + len(tail.stderr.splitlines()) == 2
    stamped = strata("logs", "-t", "--tail", "1", name)
    line = (stamped.stdout or stamped.stderr).splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z (out|err) \d+", line), line

    # The file itself: docker's json-file lines.
    record = Engine(root).containers.store.find(name)
    # The supervisor is detached from the caller: its own session, no terminal, stdin null.
    stat = Path(f"/proc/{record.supervisor_pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    assert int(fields[3]) != os.getsid(0) and int(fields[4]) == 0  # session, tty_nr
    assert os.readlink(f"/proc/{record.supervisor_pid}/fd/0") == "/dev/null"
    first = json.loads(Path(record.log_path).read_text().splitlines()[0])
    assert set(first) == {"log", "stream", "time"} and first["log"].endswith("\n")
    assert first["stream"] in ("stdout", "stderr")

    # -f follows until the container stops; a sleep loop ignores SIGTERM as PID 1, so stop
    # -t 1 ends it with SIGKILL: 137.
    follower = strata.popen("logs", "-f", "--tail", "0", name)
    try:
        assert follower.stdout is not None
        first_followed = follower.stdout.readline()
        assert re.fullmatch(r"out \d+\n", first_followed), first_followed
        stop = strata("stop", "-t", "1", name)
        assert (stop.returncode, stop.stdout) == (0, f"{name}\n"), stop.stderr
        assert follower.wait(timeout=60) == 0  # -f ends by itself when the container does
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert strata("wait", name).stdout == "137\n"
    row = strata.ps()[name]
    assert row["State"] == "exited" and str(row["Status"]).startswith("Exited (137) ")
    assert strata("stop", name).returncode == 0  # stopping a stopped container is no error
    assert strata("rm", name).returncode == 0


def test_stop_lets_a_trapping_shell_exit_by_itself(strata: Strata) -> None:
    name = f"trap-{strata.runtime}"
    strata.detach("trap", BUSYBOX_REF, "sh", "-c",
                  "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done")
    _until("the trap to be set", lambda: "ready" in strata("logs", name).stdout)
    # A long grace period: exit code 0 (not 137) shows that SIGTERM ended it, not SIGKILL.
    out = strata("stop", "-t", "60", name)
    assert (out.returncode, out.stdout) == (0, f"{name}\n"), out.stderr
    assert strata("wait", name).stdout == "0\n"
    assert strata("logs", name).stdout == "ready\nbye\n"
    assert str(strata.ps()[name]["Status"]).startswith("Exited (0) ")
    strata("rm", name, check=True)


def test_image_stop_signal_is_used(strata: Strata, root: Path, tmp_path: Path) -> None:
    # An image whose StopSignal is SIGUSR1: stop sends it instead of SIGTERM.
    ref = "localhost/stopsignal:1"
    if strata("image", "inspect", ref).returncode != 0:
        tree = tmp_path / "tree"
        (tree / "bin").mkdir(parents=True)
        busybox = Path(tools.require("busybox"))
        (tree / "bin" / "busybox").write_bytes(busybox.read_bytes())
        (tree / "bin" / "busybox").chmod(0o755)
        for applet in ("sh", "sleep", "echo"):
            (tree / "bin" / applet).symlink_to("busybox")
        tools.run(["tar", "-C", tree, "-cf", tmp_path / "rootfs.tar", "."])
        strata("import", str(tmp_path / "rootfs.tar"), ref, "-c", "STOPSIGNAL SIGUSR1",
               check=True)
    name = f"usr1-{strata.runtime}"
    strata.detach("usr1", ref, "sh", "-c",
                  "trap 'exit 10' USR1; trap 'exit 20' TERM; echo ready;"
                  " while true; do sleep 0.1; done")
    _until("the traps to be set", lambda: "ready" in strata("logs", name).stdout)
    assert strata("stop", "-t", "60", name).returncode == 0
    assert strata("wait", name).stdout == "10\n"
    strata("rm", name, check=True)


def test_kill_with_a_signal_and_wait(strata: Strata) -> None:
    name = f"kill-{strata.runtime}"
    strata.detach("kill", BUSYBOX_REF, "sh", "-c",
                  "trap 'echo got USR1; exit 9' USR1; echo ready; while true; do sleep 0.1; done")
    _until("the trap to be set", lambda: "ready" in strata("logs", name).stdout)
    waiter = strata.popen("wait", name)  # blocks until the container exits
    out = strata("kill", "-s", "SIGUSR1", name)
    assert (out.returncode, out.stdout) == (0, f"{name}\n"), out.stderr
    stdout, _ = waiter.communicate(timeout=60)
    assert (waiter.returncode, stdout) == (0, "9\n")
    assert strata("logs", name).stdout == "ready\ngot USR1\n"
    out = strata("kill", name)
    assert out.returncode == 1 and "is not running" in out.stderr
    out = strata("kill", "-s", "NOSUCHSIG", name)
    assert out.returncode == 1 and "Invalid signal: NOSUCHSIG" in out.stderr
    strata("rm", name, check=True)


def test_exec_joins_the_container(strata: Strata) -> None:
    name = f"exec-{strata.runtime}"
    strata.detach("exec", "-e", "FROM_RUN=yes", "-w", "/etc", BUSYBOX_REF, "sleep", "1000")
    try:
        out = strata("exec", name, "ps", "-o", "pid,args")
        assert out.returncode == 0, out.stderr
        rows = [line.split(None, 1) for line in out.stdout.splitlines()[1:]]
        assert rows[0] == ["1", "sleep 1000"]  # the entrypoint is PID 1 of the same namespace
        assert all(int(pid) < 50 for pid, _ in rows)  # no host process is visible
        out = strata("exec", name, "sh", "-c", 'echo "$FROM_RUN $HOSTNAME"; pwd; hostname')
        assert out.returncode == 0, out.stderr
        hostname = out.stdout.splitlines()[2]
        assert out.stdout.splitlines()[:2] == [f"yes {hostname}", "/etc"]
        out = strata("exec", "-e", "FROM_EXEC=1", "-w", "/tmp", "-u", "1000:1000", name, "sh",
                     "-c", 'echo "$FROM_EXEC"; pwd; id -u; id -g; grep CapEff /proc/self/status')
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[:4] == ["1", "/tmp", "1000", "1000"]
        assert lines[4].split()[1] == "0000000000000000"
        out = strata("exec", name, "sh", "-c", "grep CapEff /proc/self/status; exit 3")
        assert out.returncode == 3
        assert int(out.stdout.split()[1], 16) == 0xA80425FB  # the container's capabilities
        out = strata("exec", "-i", name, "cat", input="through stdin\n")
        assert out.stdout == "through stdin\n"
        out = strata("exec", name, "no-such-command")
        assert out.returncode == 127
        assert 'exec: "no-such-command": executable file not found in $PATH' in out.stderr
        out = strata("exec", name, "/etc/passwd")
        assert out.returncode == 126 and "permission denied" in out.stderr
    finally:
        strata("rm", "-f", name, check=True)
    out = strata("exec", name, "true")
    assert out.returncode == 1 and "No such container" in out.stderr


def test_exec_in_a_stopped_container_is_refused(strata: Strata) -> None:
    name = f"stopped-{strata.runtime}"
    out = strata.run("--name", name, BUSYBOX_REF, "true")
    assert out.returncode == 0, out.stderr
    out = strata("exec", name, "true")
    assert out.returncode == 1 and "is not running" in out.stderr
    strata("rm", name, check=True)


def test_killed_supervisor_leaves_the_truth_and_rm_f_cleans_up(strata: Strata,
                                                               root: Path) -> None:
    name = f"orphan-{strata.runtime}"
    cid = strata.detach("orphan", BUSYBOX_REF, "sleep", "1001")
    record = Engine(root).containers.store.find(name)
    assert record.supervisor_pid and record.pid
    os.kill(record.supervisor_pid, signal.SIGKILL)
    _until("the supervisor to die", lambda: record.supervisor_pid not in _processes_of(root))
    # The container itself still runs: ps says so.
    assert strata.ps(all_containers=False)[name]["State"] == "running"
    assert len(_in_other_pid_namespaces(b"sleep\x001001\x00")) == 1
    out = strata("rm", "-f", name)
    assert (out.returncode, out.stdout) == (0, f"{name}\n"), out.stderr
    _until("the container's process to end",
           lambda: not _in_other_pid_namespaces(b"sleep\x001001\x00"))
    assert name not in strata.ps()
    assert not (root / "containers" / cid).exists()
    assert [m for m in _mounts_under(root) if cid in m] == []
    with pytest.raises(NotFound):
        Engine(root).snapshotter.stat(upper_key(cid))


def test_killed_supervisor_and_process_are_reported_exited(strata: Strata,
                                                           root: Path) -> None:
    name = f"dead-{strata.runtime}"
    cid = strata.detach("dead", BUSYBOX_REF, "sleep", "1002")
    record = Engine(root).containers.store.find(name)
    os.kill(record.supervisor_pid, signal.SIGKILL)
    os.kill(record.pid, signal.SIGKILL)
    _until("the container's process to end",
           lambda: not _in_other_pid_namespaces(b"sleep\x001002\x00"))
    _until("the supervisor to die", lambda: record.supervisor_pid not in _processes_of(root))
    row = strata.ps()[name]
    assert row["State"] == "exited" and str(row["Status"]).startswith("Exited (255) ")
    assert [m for m in _mounts_under(root) if cid in m] == []  # ps cleaned up
    assert strata("rm", name).returncode == 0


def test_rm_f_of_a_running_detached_container(strata: Strata, root: Path) -> None:
    name = f"rmf-{strata.runtime}"
    cid = strata.detach("rmf", BUSYBOX_REF, "sleep", "1003")
    out = strata("rm", name)
    assert out.returncode == 1 and "You cannot remove a running container" in out.stderr
    out = strata("rm", "-f", name)
    assert (out.returncode, out.stdout) == (0, f"{name}\n"), out.stderr
    _until("the process to end", lambda: not _in_other_pid_namespaces(b"sleep\x001003\x00"))
    assert name not in strata.ps()
    assert not (root / "containers" / cid).exists()
    with pytest.raises(NotFound):
        Engine(root).snapshotter.stat(upper_key(cid))
    assert [i.name for i in Engine(root).snapshotter.walk() if cid in i.name] == []


def test_rm_option_with_detach_removes_the_container_on_exit(strata: Strata,
                                                             root: Path) -> None:
    name = f"autorm-{strata.runtime}"
    cid = strata.detach("autorm", "--rm", BUSYBOX_REF, "sh", "-c", "sleep 0.5; exit 4")
    out = strata("wait", cid)  # removed on exit: its code is still known
    assert (out.returncode, out.stdout) == (0, "4\n"), out.stderr
    _until("the container to be removed", lambda: name not in strata.ps())
    assert not (root / "containers" / cid).exists()
    with pytest.raises(NotFound):
        Engine(root).snapshotter.stat(upper_key(cid))


def test_run_detached_missing_command_exits_127(strata: Strata) -> None:
    name = f"missing-{strata.runtime}"
    out = strata.run("-d", "--name", name, BUSYBOX_REF, "no-such-command")
    assert out.returncode == 127
    assert 'exec: "no-such-command": executable file not found in $PATH' in out.stderr
    row = strata.ps()[name]
    assert (row["ExitCode"], row["Status"]) == (127, "Created")  # as docker leaves it
    assert strata("wait", name).stdout == "127\n"
    strata("rm", name, check=True)
    out = strata.run("-d", "--rm", BUSYBOX_REF, "/etc/passwd")
    assert out.returncode == 126


def test_create_start_restart(strata: Strata, root: Path) -> None:
    name = f"cycle-{strata.runtime}"
    out = strata("create", "--runtime", strata.runtime, "--network", "none", "--name", name,
                 BUSYBOX_REF, "sh", "-c", "echo run; exec sleep 1004")
    assert out.returncode == 0, out.stderr
    assert strata.ps()[name]["Status"] == "Created"
    out = strata("start", name)  # detached by default, as docker
    assert (out.returncode, out.stdout) == (0, f"{name}\n"), out.stderr
    assert strata.ps(all_containers=False)[name]["State"] == "running"
    assert strata("start", name).returncode == 0  # already running: nothing to do
    first = Engine(root).containers.store.find(name)
    out = strata("restart", "-t", "1", name)
    assert (out.returncode, out.stdout) == (0, f"{name}\n"), out.stderr
    second = Engine(root).containers.store.find(name)
    assert second.state == "running" and second.pid != first.pid
    assert second.started is not None and first.started is not None
    assert second.started > first.started
    assert strata("logs", name).stdout == "run\nrun\n"  # one log across both runs
    assert strata("stop", "-t", "1", name).returncode == 0
    assert strata("wait", name).stdout == "137\n"
    # start -a: the foreground, with the container's exit code.
    out = strata("create", "--runtime", strata.runtime, "--network", "none", "--name",
                 f"{name}-a", BUSYBOX_REF, "sh", "-c", "echo attached; exit 6")
    assert out.returncode == 0, out.stderr
    out = strata("start", "-a", f"{name}-a")
    assert (out.returncode, out.stdout) == (6, "attached\n")
    assert strata("logs", f"{name}-a").stdout == "attached\n"  # logged in the foreground too
    strata("rm", name, f"{name}-a", check=True)


def test_foreground_run_records_its_process(strata: Strata, root: Path) -> None:
    name = f"fg-{strata.runtime}"
    proc = strata.popen("run", "--runtime", strata.runtime, "--network", "none", "--name", name,
                        BUSYBOX_REF, "sh", "-c", "echo up; exec sleep 1005")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "up\n"
        _until("the record", lambda: strata.ps(all_containers=False).get(name) is not None)
        record = Engine(root).containers.store.find(name)
        assert record.supervisor_pid == proc.pid  # the foreground run waits for it itself
        assert Path(f"/proc/{record.pid}/cmdline").read_bytes() == b"sleep\x001005\x00"
        out = strata("stop", "-t", "1", name)
        assert out.returncode == 0, out.stderr
        assert proc.wait(timeout=60) == 137
    finally:
        if proc.poll() is None:
            strata("rm", "-f", name)
            proc.wait(timeout=60)
    row = strata.ps()[name]
    assert row["ExitCode"] == 137 and str(row["Status"]).startswith("Exited (137) ")
    logs = strata("logs", name)
    assert (logs.stdout, logs.stderr) == ("up\n", "")
    strata("rm", name, check=True)


def test_foreground_run_logs_both_streams_and_passes_them_through(strata: Strata) -> None:
    name = f"fglog-{strata.runtime}"
    out = strata.run("--name", name, BUSYBOX_REF, "sh", "-c", "echo one; echo two >&2; exit 2")
    assert (out.returncode, out.stdout, out.stderr) == (2, "one\n", "two\n")
    logs = strata("logs", name)
    assert (logs.stdout, logs.stderr) == ("one\n", "two\n")
    strata("rm", name, check=True)
