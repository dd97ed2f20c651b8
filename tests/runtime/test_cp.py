"""``strata cp`` both ways, with both runtimes: docker's path rules, tar streams on stdin and
stdout, owners (root's by default, the source's with ``-a``), running and stopped containers,
and hostile symlinks in the container that must never lead strata outside its root.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.runtime.changes import writable_layer
from strata.testing import tars, tools
from strata.testing.baseimages import BUSYBOX_REF

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    tools.require("runc")
    path = tmp_path_factory.mktemp("cp") / "root"
    tools.StrataCLI(path)("load", "-i", busybox_layout)
    yield path
    tools.assert_no_mounts_under(path)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory holding a secret, that hostile symlinks in containers point at."""
    path = tmp_path_factory.mktemp("canary")
    (path / "secret").write_text("host secret\n")
    return path


#: What every test container holds: a file owned by 1000, a relative symlink, and hostile
#: symlinks (absolute ones climbing with .., one to the host's canary directory).
def _setup_script(canary: Path) -> str:
    return ("mkdir -p /d/sub && echo inner > /d/f && chown 1000:1000 /d/f && echo deep >"
            " /d/sub/g && ln -s f /d/l && ln -s /../../etc /x && ln -s ../../../../.. /up &&"
            f" ln -s {canary} /c && mkdir /empty")


@pytest.fixture
def stopped(root: Path, runtime: str, canary: Path) -> Iterator[str]:
    """A stopped container (``cp-RUNTIME``) holding the setup's files."""
    name = f"cp-{runtime}"
    cli = tools.StrataCLI(root)
    cli("rm", "-f", name, check=False)
    cli("run", "--runtime", runtime, "--network", "none", "--name", name, BUSYBOX_REF, "sh",
        "-c", _setup_script(canary))
    yield name
    cli("rm", "-f", name)


def _cp_stdin(root: Path, data: bytes, dest: str) -> subprocess.CompletedProcess[bytes]:
    """``strata cp - DEST`` with the tar ``data`` on stdin."""
    command = tools.StrataCLI(root).command
    return subprocess.run([*command, "--root", str(root), "cp", "-", dest], input=data,
                          capture_output=True, check=False, timeout=120)


def _upper(root: Path, name: str) -> Path:
    engine = Engine(root)
    return writable_layer(engine.snapshotter, engine.containers.store.find(name).id).upper


def test_copy_out_follows_dockers_rules(root: Path, stopped: str, tmp_path: Path) -> None:
    cli = tools.StrataCLI(root)
    cli("cp", f"{stopped}:/d/f", tmp_path / "file")  # a file to a new name
    assert (tmp_path / "file").read_text() == "inner\n"
    assert os.stat(tmp_path / "file").st_uid == 0  # the caller's, without -a
    cli("cp", "-a", f"{stopped}:/d/f", tmp_path / "file")  # over a file; -a keeps owners
    assert os.stat(tmp_path / "file").st_uid == 1000
    cli("cp", f"{stopped}:/d", tmp_path / "newdir")  # a dir to a missing name: its contents
    assert sorted(os.listdir(tmp_path / "newdir")) == ["f", "l", "sub"]
    assert os.readlink(tmp_path / "newdir" / "l") == "f"  # a symlink stays a symlink
    cli("cp", f"{stopped}:/d", tmp_path / "newdir")  # a dir into an existing dir
    assert (tmp_path / "newdir" / "d" / "sub" / "g").read_text() == "deep\n"
    (tmp_path / "contents").mkdir()
    cli("cp", f"{stopped}:/d/.", tmp_path / "contents")  # SRC/. : the contents
    assert sorted(os.listdir(tmp_path / "contents")) == ["f", "l", "sub"]
    cli("cp", f"{stopped}:/d/f", tmp_path / "contents")  # a file into a directory
    out = cli("cp", f"{stopped}:/d/l", tmp_path / "link")  # the link itself, not followed
    assert out.returncode == 0 and os.readlink(tmp_path / "link") == "f"
    cli("cp", "-L", f"{stopped}:/d/l", tmp_path / "followed")
    assert (tmp_path / "followed").read_text() == "inner\n"
    # A tar on stdout, named like the source.
    data = subprocess.run([*cli.command, "--root", str(root), "cp", f"{stopped}:/d", "-"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["d", "d/f", "d/l", "d/sub", "d/sub/g"]
        assert tar.getmember("d/f").uid == 1000


@pytest.mark.parametrize(("src", "dest", "message"), [
    ("{c}:/nope", "{t}/x", "No such container:path"),
    ("{c}:/d/f", "{t}/missing/x", "does not exist"),
    ("{c}:/d/f", "{t}/missing/", "does not exist"),
    ("{c}:/d", "{t}/afile", "cannot copy a directory to a file"),
    ("{t}/afile", "{t}/other", "must specify at least one container"),
    ("{c}:/d/f", "{c}:/d/g", "copying between containers is not supported"),
], ids=["missing-source", "missing-parent", "missing-dir", "dir-onto-file", "no-container",
        "two-containers"])
def test_copy_errors_change_nothing(root: Path, stopped: str, tmp_path: Path, src: str,
                                    dest: str, message: str) -> None:
    (tmp_path / "afile").write_text("keep\n")
    before = sorted(os.listdir(tmp_path))
    out = tools.StrataCLI(root)("cp", src.format(c=stopped, t=tmp_path),
                                dest.format(c=stopped, t=tmp_path), check=False)
    assert out.returncode == 1 and message in out.stderr
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "afile").read_text() == "keep\n"


def test_copy_in_follows_dockers_rules_and_owners(root: Path, stopped: str,
                                                   tmp_path: Path) -> None:
    cli = tools.StrataCLI(root)
    host = tmp_path / "host.txt"
    host.write_text("from the host\n")
    os.chown(host, 1234, 1234)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a").write_text("a\n")
    os.chown(tree / "sub" / "a", 1234, 1234)
    cli("cp", host, f"{stopped}:/d/new.txt")  # new file
    cli("cp", host, f"{stopped}:/d/f")  # over a file
    cli("cp", "-a", host, f"{stopped}:/empty")  # into a directory, owners kept
    cli("cp", tree, f"{stopped}:/newtree")  # a dir to a missing name
    cli("cp", f"{tree}/.", f"{stopped}:/empty")  # contents into a directory
    upper = _upper(root, stopped)
    assert (upper / "d" / "new.txt").read_text() == "from the host\n"
    assert (upper / "d" / "f").read_text() == "from the host\n"
    assert os.stat(upper / "d" / "new.txt").st_uid == 0  # root's in the container
    assert os.stat(upper / "empty" / "host.txt").st_uid == 1234  # -a
    assert (upper / "newtree" / "sub" / "a").read_text() == "a\n"
    assert os.stat(upper / "newtree" / "sub" / "a").st_uid == 0
    assert (upper / "empty" / "sub" / "a").read_text() == "a\n"
    lines = cli("diff", stopped).stdout.splitlines()
    assert {"A /d/new.txt", "A /d/f", "A /newtree", "A /newtree/sub/a",
            "A /empty/host.txt", "A /empty/sub"} <= set(lines)
    # A tar on stdin, into a directory.
    data = tars.build([tars.Entry.file("fromtar/x", b"tar data\n", uid=7, gid=7)])
    assert _cp_stdin(root, data, f"{stopped}:/empty").returncode == 0
    assert (upper / "empty" / "fromtar" / "x").read_text() == "tar data\n"
    out = _cp_stdin(root, data, f"{stopped}:/d/f")
    assert out.returncode == 1 and b"must be a directory" in out.stderr


def test_hostile_symlinks_stay_inside_the_container(root: Path, stopped: str, canary: Path,
                                                    tmp_path: Path) -> None:
    cli = tools.StrataCLI(root)
    host_before = {p: p.read_bytes() for p in canary.iterdir()}
    evil = tmp_path / "evil"
    evil.write_text("evil\n")
    # /x -> /../../etc resolves to the container's /etc, never the host's.
    cli("cp", evil, f"{stopped}:/x/strata-cp-evil")
    assert not Path("/etc/strata-cp-evil").exists()
    assert (_upper(root, stopped) / "etc" / "strata-cp-evil").read_text() == "evil\n"
    cli("cp", f"{stopped}:/x/passwd", tmp_path / "passwd")
    assert (tmp_path / "passwd").read_text() != Path("/etc/passwd").read_text()
    assert "root:x:0:0" in (tmp_path / "passwd").read_text()
    # A relative link climbing out ends at the container's root.
    cli("cp", evil, f"{stopped}:/up/at-root")
    assert (_upper(root, stopped) / "at-root").read_text() == "evil\n"
    # A link to a host directory names a path inside the container, which does not exist.
    out = cli("cp", f"{stopped}:/c/secret", tmp_path / "stolen", check=False)
    assert out.returncode == 1 and "No such container:path" in out.stderr
    assert not (tmp_path / "stolen").exists()
    out = cli("cp", evil, f"{stopped}:/c/planted", check=False)
    assert out.returncode == 1
    # A hostile tar on stdin: members climbing out, and a file written through a symlink the
    # same tar made, all stay under the destination.
    data = tars.build([tars.Entry.symlink("link", str(canary)),
                       tars.Entry.file("link/planted", b"through the link\n"),
                       tars.Entry.file("../../planted2", b"climbing\n")])
    _cp_stdin(root, data, f"{stopped}:/empty")
    assert {p: p.read_bytes() for p in canary.iterdir()} == host_before
    assert not Path("/planted2").exists()
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if line.split()[4].startswith(str(root))]
    assert mounted == []


def _wait_running(cli: tools.StrataCLI, name: str) -> int:
    for _ in range(200):
        out = cli("inspect", "-f", "{{.State.Pid}}", name, check=False).stdout.strip()
        if out.isdigit() and int(out) > 0:
            return int(out)
        time.sleep(0.1)
    raise AssertionError(f"{name} did not start")


@pytest.fixture
def running(root: Path, runtime: str) -> Iterator[tuple[str, int]]:
    """A running container (foreground ``run`` in a subprocess): its name and host PID."""
    name = f"cp-run-{runtime}"
    cli = tools.StrataCLI(root)
    proc = subprocess.Popen(
        [*cli.command, "--root", str(root), "run", "--runtime", runtime, "--network", "none",
         "--name", name, BUSYBOX_REF, "sh", "-c", "echo up > /tmp/state; exec sleep 300"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield name, _wait_running(cli, name)
    finally:
        cli("rm", "-f", name, check=False)
        proc.wait(timeout=60)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_copy_with_a_running_container(root: Path, running: tuple[str, int],
                                       tmp_path: Path) -> None:
    name, pid = running
    cli = tools.StrataCLI(root)
    for _ in range(100):  # the shell writes /tmp/state right after starting
        if cli("cp", f"{name}:/tmp/state", tmp_path / "state", check=False).returncode == 0:
            break
        time.sleep(0.1)
    assert (tmp_path / "state").read_text() == "up\n"
    (tmp_path / "in.txt").write_text("copied in\n")
    cli("cp", tmp_path / "in.txt", f"{name}:/tmp/")
    cli("cp", f"{name}:/tmp/in.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "copied in\n"
    # The kernel filesystems mounted in a running container are not destinations.
    out = cli("cp", tmp_path / "in.txt", f"{name}:/proc/in.txt", check=False)
    assert out.returncode == 1 and "/proc" in out.stderr
    out = cli("cp", f"{name}:/proc/1/status", tmp_path / "status", check=False)
    assert out.returncode == 1 and "/proc" in out.stderr
    # Its whole root: the kernel filesystems' mount points come without their contents.
    cli("cp", f"{name}:/", tmp_path / "rootcopy")
    assert {"bin", "etc", "tmp", "proc", "sys"} <= set(os.listdir(tmp_path / "rootcopy"))
    assert (tmp_path / "rootcopy" / "tmp" / "in.txt").read_text() == "copied in\n"
    assert os.listdir(tmp_path / "rootcopy" / "proc") == []
    assert os.listdir(tmp_path / "rootcopy" / "sys") == []
    # The container was stopped only for the copy: it runs on.
    state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    assert state == "S"
    assert cli("inspect", "-f", "{{.State.Running}}", name).stdout == "true\n"
