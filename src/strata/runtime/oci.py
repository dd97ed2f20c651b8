"""Hand a bundle to an installed OCI runtime (``runc``, ``crun``) instead of the built-in one.

The container is created with ``RUNTIME create`` (stdio passed through, its state under
``STATE_ROOT``), started with ``RUNTIME start`` and waited for here: this process is made a
child subreaper first, so the container's init — orphaned when ``create`` exits — becomes
our child, as under containerd's shim.  ``create``'s failure messages are read from the
runtime's JSON log and mapped to the same errors as the built-in runtime's (127 / 126).
The container's stderr is relayed through a pipe so the runtime's own messages stay out of
the user's terminal.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from strata.errors import CannotExecute, CommandNotFound, NotFound, StrataError
from strata.runtime.pty import ConsoleSocket

__all__ = ["run_with"]

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded (find_library runs ldconfig)


def log_error(log: Path) -> str:
    """The last error an OCI runtime wrote to its JSON ``--log`` file ("" if none)."""
    message = ""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return message
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal") and entry.get("msg"):
            message = str(entry["msg"])
    return message


def _relay(source: int, dest: int) -> None:
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            break
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            try:
                n = os.write(dest, view)
            except OSError:
                return
            view = view[n:]
    os.close(source)


def run_with(runtime: str, bundle: Path, container_id: str, state_root: Path, *,
             on_start: Callable[[int], None] | None = None,
             on_exec: Callable[[int], None] | None = None,
             console_socket: Path | None = None,
             on_console: Callable[[int], None] | None = None,
             on_exit: Callable[[], None] | None = None) -> int:
    """Run ``bundle`` with the OCI runtime ``runtime`` in the foreground; its exit code.

    Args:
        runtime: the runtime's name (``runc``, ``crun``).
        bundle: the bundle directory (rootfs already mounted).
        container_id: the ID the runtime knows the container by.
        state_root: the runtime's ``--root``.
        on_start: called with the container's host PID once it is created.
        on_exec: called with the same PID once the process has been started.
        console_socket: with ``process.terminal``: where to listen for the pty master
            (``--console-socket``); ``on_console`` gets the master fd (and owns it).
        on_console: see ``console_socket``.
        on_exit: called after the container's process ended and before ``RUNTIME delete``
            removes its cgroup (to read :func:`strata.runtime.cgroups.oom_killed`).

    Raises:
        NotFound: the runtime is not installed.
        CommandNotFound, CannotExecute: as :func:`strata.runtime.builtin.run_bundle`.
        StrataError: the runtime failed otherwise.
    """
    binary = shutil.which(runtime)
    if binary is None:
        raise NotFound(f"unknown or invalid runtime name: {runtime}")
    state_root.mkdir(parents=True, exist_ok=True)
    log = bundle / f"{runtime}.log"
    pid_file = bundle / "init.pid"
    base = [binary, "--root", str(state_root), "--log", str(log), "--log-format", "json"]
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise StrataError("cannot become a child subreaper")
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    relay = threading.Thread(target=_relay, args=(err_read, sys.stderr.fileno()), daemon=True)
    sys.stdout.flush()
    sys.stderr.flush()
    console = None
    extra: list[str] = []
    if console_socket is not None:
        console = ConsoleSocket(console_socket)
        extra = ["--console-socket", str(console.path)]
    try:
        created = subprocess.run(
            [*base, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), *extra,
             container_id], stdin=sys.stdin.fileno(), stdout=sys.stdout.fileno(),
            stderr=err_write, check=False)
        if created.returncode == 0 and console is not None:
            master = console.receive()
            if on_console is not None:
                on_console(master)
            else:
                os.close(master)
    finally:
        os.close(err_write)
        if console is not None:
            console.close()
    if created.returncode != 0:
        os.close(err_read)
        subprocess.run([*base, "delete", "--force", container_id], capture_output=True,
                       check=False)
        message = log_error(log) or f"{runtime} create failed"
        for prefix in ("runc create failed: ", "crun create failed: "):
            message = message.removeprefix(prefix)
        if "executable file not found" in message or "no such file or directory" in message:
            raise CommandNotFound(message)
        if "permission denied" in message:
            raise CannotExecute(message)
        raise StrataError(f"{runtime}: {message}")
    relay.start()
    pid = int(pid_file.read_text().strip())
    if on_start is not None:
        on_start(pid)
    old = {s: signal.signal(s, lambda n, _f: os.kill(pid, n))
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        started = subprocess.run([*base, "start", container_id], capture_output=True,
                                 check=False)
        if started.returncode != 0:
            os.kill(pid, signal.SIGKILL)
        elif on_exec is not None:
            on_exec(pid)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        if started.returncode != 0:
            raise StrataError(f"{runtime} start failed: "
                              f"{log_error(log) or started.stderr.decode(errors='replace')}")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if on_exit is not None:
            on_exit()
        subprocess.run([*base, "delete", "--force", container_id], capture_output=True,
                       check=False)
        relay.join(timeout=5)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
