"""``-t``: the container's process on a real pty, from a terminal made here with ``pty.fork``
(foreground ``run -it`` and ``exec -it``) and detached (``run -dt``: the supervisor logs the
pty), with the built-in runtime and runc.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    tools.require("runc")
    path = tmp_path_factory.mktemp("tty") / "root"
    cli = tools.StrataCLI(path)
    cli("load", "-i", busybox_layout)
    yield path
    left = cli("ps", "-q").stdout.split()
    if left:
        cli("rm", "-f", *left, check=False)
    assert left == []
    assert [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(path) in line] == []


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _on_terminal(argv: Sequence[str], script: bytes, *, rows: int, cols: int
                 ) -> tuple[bytes, int]:
    """Run ``argv`` with a new pty as its terminal (window ``rows`` x ``cols``), type
    ``script`` once it printed something, and return everything it wrote and its exit code."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.execvp(argv[0], list(argv))
        finally:
            os._exit(127)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    out = b""
    typed = False
    deadline = time.monotonic() + 120  # against hanging forever only
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child and everything on the terminal are gone
                break
            if not data:
                break
            out += data
        if not typed and b"# " in out:  # the shell's prompt
            os.write(master, script)
            typed = True
    os.close(master)
    _, status = os.waitpid(pid, 0)
    return out, os.waitstatus_to_exitcode(status)


def _cli(root: Path) -> list[str]:
    return [*tools.StrataCLI(root).command, "--root", str(root)]


SCRIPT = b"tty; stty size; echo TERM=$TERM; exit 7\n"


def test_run_it_gives_the_process_a_terminal(root: Path, runtime: str) -> None:
    out, code = _on_terminal([*_cli(root), "run", "--rm", "-it", "--runtime", runtime,
                              "--network", "none", BUSYBOX_REF, "sh"], SCRIPT, rows=33, cols=101)
    assert code == 7, out
    lines = out.replace(b"\r\n", b"\n").decode(errors="replace").splitlines()
    # The typed line is echoed by the container's terminal, then the answers follow.
    answers = lines[lines.index(next(x for x in lines if x.endswith(SCRIPT.decode().strip())))
                    + 1:]
    assert answers[:3] == ["/dev/pts/0", "33 101", "TERM=xterm"]


def test_run_it_follows_the_window_size(root: Path, runtime: str) -> None:
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.execvp(_cli(root)[0], [*_cli(root), "run", "--rm", "-it", "--runtime", runtime,
                                      "--network", "none", BUSYBOX_REF, "sh"])
        finally:
            os._exit(127)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    out = b""
    resized = resized_seen = False
    deadline = time.monotonic() + 120  # against hanging forever only
    last_typed = 0.0
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    break
                if not data:
                    break
                out += data
            if b"# " not in out:
                continue
            if not resized:
                # The caller's terminal changes size while the container runs: SIGWINCH.
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
                resized = True
            if b"\n40 120\r\n" in out:
                os.write(master, b"exit 0\n")
                deadline = min(deadline, time.monotonic() + 60)
                resized_seen = True
                break
            if time.monotonic() - last_typed > 0.5:  # ask again until the new size shows
                os.write(master, b"stty size\n")
                last_typed = time.monotonic()
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    assert resized_seen, out
    assert os.waitstatus_to_exitcode(status) == 0, out


def test_exec_it_gives_the_command_a_terminal(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    name = f"execit-{runtime}"
    cli("run", "-d", "--runtime", runtime, "--network", "none", "--name", name, BUSYBOX_REF,
        "sleep", "1000")
    try:
        out, code = _on_terminal([*_cli(root), "exec", "-it", name, "sh"], SCRIPT, rows=21,
                                 cols=77)
        assert code == 7, out
        text = out.replace(b"\r\n", b"\n").decode(errors="replace")
        assert "\n/dev/pts/" in text and "\n21 77\n" in text and "\nTERM=xterm\n" in text
    finally:
        cli("rm", "-f", name)


def test_detached_tty_output_is_logged(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    name = f"dt-{runtime}"
    cli("run", "-dt", "--runtime", runtime, "--network", "none", "--name", name, BUSYBOX_REF,
        "sh", "-c", "tty; echo to-stderr >&2; echo done")
    assert cli("wait", name).stdout == "0\n"
    logs = cli("logs", name)  # (text mode: CRLF read as LF)
    assert logs.stdout == "/dev/pts/0\nto-stderr\ndone\n" and logs.stderr == ""
    # One stream on a terminal: everything is stdout, with the terminal's CRLF.
    record = Engine(root).containers.store.find(name)
    records = [json.loads(line) for line in Path(record.log_path).read_text().splitlines()]
    assert [(r["stream"], r["log"]) for r in records] == [
        ("stdout", "/dev/pts/0\r\n"), ("stdout", "to-stderr\r\n"), ("stdout", "done\r\n")]
    cli("rm", name)
