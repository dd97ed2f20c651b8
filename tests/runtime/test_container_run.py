"""``strata run`` end to end on a busybox image made here, with the built-in runtime and runc.

Every test runs twice: ``--runtime builtin`` and ``--runtime runc`` (the same bundle handed to
the installed runc); both must behave the same.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.errors import NotFound
from strata.runtime.container import upper_key
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def loaded_root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    """A strata root holding the busybox image (shared by this module's tests)."""
    tools.require("runc")
    root = tmp_path_factory.mktemp("runtime") / "root"
    tools.StrataCLI(root)("load", "-i", busybox_layout)
    yield root
    tools.assert_no_mounts_under(root)


def _in_other_pid_namespaces(cmdline: bytes) -> list[int]:
    """Host PIDs running ``cmdline`` (NUL-separated) in a PID namespace other than ours."""
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


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Run:
    """``strata run --runtime R ...`` on the shared root; returns the completed process."""

    def __init__(self, root: Path, runtime: str) -> None:
        self.cli = tools.StrataCLI(root)
        self.runtime = runtime

    def __call__(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.cli("run", "--runtime", self.runtime, *args, check=check)


@pytest.fixture
def run(loaded_root: Path, runtime: str) -> Run:
    return Run(loaded_root, runtime)


def test_echo_with_rm_leaves_no_container(run: Run, loaded_root: Path) -> None:
    before = run.cli("ps", "-aq", "--no-trunc").stdout.split()
    out = run("--rm", BUSYBOX_REF, "echo", "hi")
    assert (out.returncode, out.stdout, out.stderr) == (0, "hi\n", "")
    assert run.cli("ps", "-aq", "--no-trunc").stdout.split() == before
    assert os.listdir(loaded_root / "containers") == [
        c for c in os.listdir(loaded_root / "containers") if c in before]


def test_pid_1_is_the_entrypoint(run: Run) -> None:
    out = run("--rm", BUSYBOX_REF, "sh", "-c", 'echo $$; cat /proc/1/cmdline | tr "\\0" " "')
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1", "sh -c echo $$; cat /proc/1/cmdline | tr \"\\0\" \" \" "]


def test_host_processes_mounts_and_hostname_are_invisible(run: Run) -> None:
    script = ("ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; hostname;"
              " cut -d' ' -f2 /proc/mounts | sort | tr '\\n' ' '")
    out = run("--rm", "--name", f"iso-{run.runtime}", BUSYBOX_REF, "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    pids, hostname, mounts = out.stdout.splitlines()
    # Only the shell (PID 1) and the commands of its pipeline exist; no host process.
    assert pids.split()[0] == "1" and str(os.getpid()) not in pids.split()
    assert all(int(p) < 20 for p in pids.split())
    assert hostname != socket.gethostname() and len(hostname) == 12
    assert all(c in "0123456789abcdef" for c in hostname)
    allowed = {"/", "/proc", "/dev", "/dev/pts", "/sys", "/dev/mqueue", "/dev/shm",
               "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/sys/fs/cgroup"}
    masked_or_ro = {p for p in mounts.split() if p.startswith(("/proc/", "/sys/"))}
    assert set(mounts.split()) - masked_or_ro <= allowed
    assert "/work" not in mounts.split() and "/tmp" not in mounts.split()


def test_hostname_option(run: Run) -> None:
    out = run("--rm", "--hostname", "box1", BUSYBOX_REF, "sh", "-c", "hostname; cat /etc/hostname")
    assert (out.returncode, out.stdout) == (0, "box1\nbox1\n"), out.stderr


def test_masked_and_readonly_paths(run: Run) -> None:
    script = ("for f in /proc/kcore /proc/timer_list /proc/keys; do"
              " if [ -e $f ]; then echo $f $(cat $f | wc -c); else echo $f absent; fi; done;"
              " echo 1 > /proc/sys/kernel/domainname && echo wrote || echo refused")
    out = run("--rm", BUSYBOX_REF, "sh", "-c", script)
    lines = out.stdout.splitlines()
    kcore_host = Path("/proc/kcore").exists()
    assert lines[0] == ("/proc/kcore 0" if kcore_host else "/proc/kcore absent")
    assert lines[1] == "/proc/timer_list 0"  # readable (and non-empty) on the host
    assert lines[2] == "/proc/keys 0"
    assert lines[3] == "refused"


def test_masked_files_have_content_on_the_host() -> None:
    # What the masking test relies on: this file is not empty outside a container.
    assert len(Path("/proc/timer_list").read_bytes()) > 0


def test_mount_fails_without_privileges(run: Run) -> None:
    out = run("--rm", BUSYBOX_REF, "sh", "-c",
              "mount -t tmpfs none /tmp; echo rc=$?; grep -E '^Cap(Eff|Bnd)' /proc/self/status")
    lines = out.stdout.splitlines()
    assert lines[0] != "rc=0"
    assert "permission denied" in out.stderr.lower()
    # docker's 14 default capabilities, no CAP_SYS_ADMIN (21).
    eff = int(lines[1].split()[1], 16)
    assert eff == int(lines[2].split()[1], 16) == 0xA80425FB
    assert not eff & (1 << 21)


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_the_containers(run: Run, code: int) -> None:
    out = run("--rm", BUSYBOX_REF, "sh", "-c", f"exit {code}")
    assert out.returncode == code, out.stderr


def test_missing_command_exits_127_with_dockers_message(run: Run) -> None:
    out = run("--rm", BUSYBOX_REF, "no-such-command")
    assert out.returncode == 127
    assert 'exec: "no-such-command": executable file not found in $PATH' in out.stderr
    out = run("--rm", BUSYBOX_REF, "/no/such")
    assert out.returncode == 127
    assert "no such file or directory" in out.stderr


def test_non_executable_command_exits_126(run: Run) -> None:
    out = run("--rm", BUSYBOX_REF, "/etc/passwd")
    assert out.returncode == 126
    assert 'exec: "/etc/passwd": permission denied' in out.stderr
    out = run("--rm", BUSYBOX_REF, "/etc")
    assert out.returncode == 126


def _container_snapshots(root: Path) -> list[str]:
    """Snapshots of containers (init and writable layers), not the image's layers."""
    return sorted(i.name for i in Engine(root).snapshotter.walk() if i.name.startswith("ctr-"))


def test_strata_failures_exit_125_and_change_nothing(run: Run, loaded_root: Path) -> None:
    before = run.cli("ps", "-aq", "--no-trunc").stdout
    dirs = sorted(os.listdir(loaded_root / "containers"))
    snapshots = _container_snapshots(loaded_root)
    out = run("--rm", "localhost/no-such-image:1", "true")
    assert out.returncode == 125 and "No such image" in out.stderr
    out = run("--rm", "-w", "relative", BUSYBOX_REF, "true")
    assert out.returncode == 125 and "absolute path" in out.stderr
    out = run("--rm", "-u", "nobody-here", BUSYBOX_REF, "true")
    assert out.returncode == 125 and "unable to find user nobody-here" in out.stderr
    out = run.cli("run", "--runtime", "no-such-runtime", BUSYBOX_REF, "true", check=False)
    assert out.returncode == 125 and "unknown or invalid runtime name" in out.stderr
    out = run("--name", "bad/name", BUSYBOX_REF, "true")
    assert out.returncode == 125 and "Invalid container name" in out.stderr
    assert run.cli("ps", "-aq", "--no-trunc").stdout == before
    assert sorted(os.listdir(loaded_root / "containers")) == dirs
    assert _container_snapshots(loaded_root) == snapshots


def test_env_workdir_user(run: Run) -> None:
    out = run("--rm", "-e", "FOO=bar baz", "-w", "/tmp/newdir", "-u", "1000:1001", BUSYBOX_REF,
              "sh", "-c", 'echo "$FOO"; pwd; id -u; id -g; grep CapEff /proc/self/status')
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:4] == ["bar baz", "/tmp/newdir", "1000", "1001"]
    assert lines[4].split()[1] == "0000000000000000"  # a non-root user keeps no capability


def test_entrypoint_option(run: Run) -> None:
    out = run("--rm", "--entrypoint", "echo", BUSYBOX_REF, "a", "b")
    assert (out.returncode, out.stdout) == (0, "a b\n"), out.stderr


def test_copy_on_write_and_rm(run: Run, loaded_root: Path) -> None:
    name = f"cow-{run.runtime}"
    out = run("--name", name, BUSYBOX_REF, "sh", "-c",
              "echo new > /created; echo changed >> /etc/passwd; rm /bin/true")
    assert out.returncode == 0, out.stderr
    engine = Engine(loaded_root)
    record = engine.containers.store.find(name)
    (mount,) = engine.snapshotter.mounts(upper_key(record.id))
    upper = Path(mount.option("upperdir") or "")
    assert (upper / "created").read_text() == "new\n"
    assert (upper / "etc" / "passwd").read_text().endswith("changed\n")  # copied up
    assert os.stat(upper / "bin" / "true", follow_symlinks=False).st_rdev == 0  # whiteout
    lowers = (mount.option("lowerdir") or "").split(":")
    for lower in lowers:
        assert not (Path(lower) / "created").exists()
        passwd = Path(lower) / "etc" / "passwd"
        assert not passwd.exists() or "changed" not in passwd.read_text()
    # A second container of the same image sees the original.
    out = run("--rm", BUSYBOX_REF, "sh", "-c",
              "cat /created 2>&1; grep -c changed /etc/passwd; ls /bin/true")
    assert out.stdout.splitlines() == ["cat: can't open '/created': No such file or directory",
                                       "0", "/bin/true"]
    ps = run.cli("ps", "-a", "--format", "json").stdout
    assert f'"Names": "{name}"' in ps and '"Status": "Exited (0)' in ps
    # A name in use is refused (125) and changes nothing.
    out = run("--name", name, BUSYBOX_REF, "true")
    assert out.returncode == 125 and "is already in use" in out.stderr
    run.cli("rm", name)
    with pytest.raises(NotFound):
        engine.containers.store.find(name)
    with pytest.raises(NotFound):
        engine.snapshotter.stat(upper_key(record.id))
    # No snapshot of the container's is left (init layers are the image's, shared).
    assert [i.name for i in engine.snapshotter.walk() if record.id in i.name] == []
    assert not (loaded_root / "containers" / record.id).exists()
    assert run.cli("rm", name, check=False).returncode == 1


def test_init_layer_holds_the_etc_files(run: Run, loaded_root: Path) -> None:
    out = run("--rm", BUSYBOX_REF, "sh", "-c", "cat /etc/hosts; echo; cat /etc/resolv.conf")
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1\tlocalhost" in out.stdout
    assert "nameserver 127." not in out.stdout


@pytest.fixture(scope="module")
def hostile_image(loaded_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """An image whose /etc/hosts, /etc/hostname and /etc/resolv.conf are symlinks to host
    files and whose /dev, /proc and /sys are symlinks to host directories."""
    base = tmp_path_factory.mktemp("hostile")
    canary = base / "canary"
    canary.mkdir()
    for name in ("hosts", "hostname", "resolv.conf"):
        (canary / name).write_text(f"host {name}\n")
    for name in ("dev", "proc", "sys"):
        (canary / name).mkdir()
    tree = base / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    busybox = Path(tools.require("busybox"))
    (tree / "bin" / "busybox").write_bytes(busybox.read_bytes())
    (tree / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "cat", "ls", "hostname"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "etc" / "hosts").symlink_to(canary / "hosts")
    (tree / "etc" / "hostname").symlink_to(canary / "hostname")
    (tree / "etc" / "resolv.conf").symlink_to(canary / "resolv.conf")
    for name in ("dev", "proc", "sys"):
        (tree / name).symlink_to(canary / name)
    tarball = base / "rootfs.tar"
    tools.run(["tar", "-C", tree, "-cf", tarball, "."])
    ref = "localhost/hostile:1"
    tools.StrataCLI(loaded_root)("import", tarball, ref, "-c", 'CMD ["sh"]')
    return ref, canary


def test_symlinked_mount_targets_cannot_write_outside(run: Run,
                                                      hostile_image: tuple[str, Path]) -> None:
    ref, canary = hostile_image
    out = run("--rm", "--hostname", "inside", ref, "sh", "-c",
              "cat /etc/hostname /etc/hosts; ls /proc/self/ >/dev/null && echo proc-ok;"
              " ls /dev/null")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "inside" and "127.0.0.1\tlocalhost" in lines[1]
    assert "proc-ok" in lines and "/dev/null" in lines
    for name in ("hosts", "hostname", "resolv.conf"):
        assert (canary / name).read_text() == f"host {name}\n"
    for name in ("dev", "proc", "sys"):
        assert os.listdir(canary / name) == []


def test_loopback_is_up_in_the_new_network_namespace(run: Run) -> None:
    # --network none: only lo (the default bridge network adds eth0, see test_network.py)
    out = run("--rm", "--network", "none", BUSYBOX_REF, "sh", "-c",
              "cat /sys/class/net/lo/flags; ls /sys/class/net")
    assert out.returncode == 0, out.stderr
    flags, interfaces = out.stdout.split("\n", 1)
    assert int(flags, 16) & 0x1  # IFF_UP
    assert interfaces.split() == ["lo"]  # none of the host's interfaces


def test_running_container_is_listed_and_rm_needs_force(run: Run, loaded_root: Path) -> None:
    name = f"long-{run.runtime}"
    cmd = [*run.cli.command, "--root", str(loaded_root), "run", "--runtime", run.runtime,
           "--name", name, BUSYBOX_REF, "sh", "-c", "echo started; exec sleep 60"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        for _ in range(100):  # "started" is printed just before the exec
            if _in_other_pid_namespaces(b"sleep\x0060\x00"):
                break
            time.sleep(0.1)
        assert len(_in_other_pid_namespaces(b"sleep\x0060\x00")) == 1
        ps = run.cli("ps", "--format", "json").stdout
        assert f'"Names": "{name}"' in ps and '"State": "running"' in ps
        out = run.cli("rm", name, check=False)
        assert out.returncode == 1 and "You cannot remove a running container" in out.stderr
        run.cli("rm", "-f", name)
        assert proc.wait(timeout=60) == 137
        for _ in range(100):  # the kernel kills the rest of the PID namespace asynchronously
            if not _in_other_pid_namespaces(b"sleep\x0060\x00"):
                break
            time.sleep(0.1)
        assert _in_other_pid_namespaces(b"sleep\x0060\x00") == []
        assert name not in run.cli("ps", "-a").stdout
    finally:
        if proc.poll() is None:  # the test failed half-way: clean up as a user would
            run.cli("rm", "-f", name, check=False)
            proc.wait(timeout=60)


def test_create_then_start_keeps_the_writable_layer(run: Run) -> None:
    name = f"twice-{run.runtime}"
    cid = run.cli("create", "--runtime", run.runtime, "--name", name, BUSYBOX_REF, "sh", "-c",
                  "cat /count 2>/dev/null; echo x >> /count; exit 5").stdout.strip()
    assert len(cid) == 64
    ps = run.cli("ps", "-a", "--format", "json").stdout
    assert f'"Names": "{name}"' in ps and '"Status": "Created"' in ps
    first = run.cli("start", "-a", name, check=False)
    assert (first.returncode, first.stdout) == (5, ""), first.stderr
    second = run.cli("start", "-a", cid[:12], check=False)
    assert (second.returncode, second.stdout) == (5, "x\n"), second.stderr
    run.cli("rm", name)


def test_stdin_only_with_interactive(run: Run) -> None:
    out = run.cli("run", "--runtime", run.runtime, "--rm", "-i", BUSYBOX_REF, "cat",
                  input="hello\n")
    assert out.stdout == "hello\n"
    out = run.cli("run", "--runtime", run.runtime, "--rm", BUSYBOX_REF, "cat",
                  input="hello\n")
    assert out.stdout == ""


def test_failed_start_with_rm_leaves_nothing(run: Run, loaded_root: Path) -> None:
    before = sorted(os.listdir(loaded_root / "containers"))
    snapshots = _container_snapshots(loaded_root)
    out = run("--rm", BUSYBOX_REF, "no-such-command")
    assert out.returncode == 127
    assert sorted(os.listdir(loaded_root / "containers")) == before
    assert _container_snapshots(loaded_root) == snapshots


def test_native_snapshotter_runs_and_leaves_no_mount(runtime: str, busybox_layout: Path,
                                                     tmp_path: Path) -> None:
    root = tmp_path / "native-root"
    cli = tools.StrataCLI(root, env={"STRATA_SNAPSHOTTER": "native"})
    cli("load", "-i", busybox_layout)
    out = cli("run", "--runtime", runtime, "--name", "n1", BUSYBOX_REF, "sh", "-c",
              "echo data > /etc/new; cat /etc/new")
    assert out.stdout == "data\n"
    out = cli("run", "--runtime", runtime, "--rm", BUSYBOX_REF, "ls", "/etc/new", check=False)
    assert out.returncode == 1
    assert (root / "snapshots" / "native").is_dir()
    assert not (root / "snapshots" / "overlay").exists()
    cli("rm", "n1")
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert str(root) not in mountinfo
    assert os.listdir(root / "containers") == []


def test_read_only_rootfs_and_tmpfs(run: Run) -> None:
    script = ("touch /x 2>&1; echo rc=$?; touch /dev/shm/ok /scratch/ok && echo writable;"
              " grep ' /scratch ' /proc/mounts | cut -d' ' -f3,4")
    out = run("--rm", "--read-only", "--tmpfs", "/scratch:size=1m", BUSYBOX_REF, "sh", "-c",
              script)
    lines = out.stdout.splitlines()
    assert "Read-only file system" in lines[0] and lines[1] == "rc=1"
    assert lines[2] == "writable"
    fstype, options = lines[3].split()
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec", "size=1024k"} <= set(options.split(","))


def test_cap_drop_and_cap_add(run: Run) -> None:
    out = run("--rm", "--cap-drop", "chown", BUSYBOX_REF, "chown", "1", "/tmp")
    assert out.returncode == 1 and "Operation not permitted" in out.stderr
    out = run("--rm", "--cap-add", "SYS_ADMIN", BUSYBOX_REF, "sh", "-c",
              "mount -t tmpfs none /tmp && grep ' /tmp ' /proc/mounts | cut -d' ' -f3")
    assert (out.returncode, out.stdout) == (0, "tmpfs\n"), out.stderr
    out = run("--rm", "--cap-add", "FLY", BUSYBOX_REF, "true")
    assert out.returncode == 125 and "unknown capability" in out.stderr


def test_env_file_then_e(run: Run, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nA=from-file\n  B=two words\nC=file\n")
    out = run("--rm", "--env-file", str(env_file), "-e", "C=flag", BUSYBOX_REF, "sh", "-c",
              'echo "$A|$B|$C"')
    assert (out.returncode, out.stdout) == (0, "from-file|two words|flag\n"), out.stderr
    out = run("--rm", "--env-file", str(tmp_path / "missing"), BUSYBOX_REF, "true")
    assert out.returncode == 125 and "no such file or directory" in out.stderr
