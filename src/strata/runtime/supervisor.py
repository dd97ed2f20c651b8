"""The per-container supervisor of detached containers (``run -d``, ``start``), like conmon.

:func:`spawn` double-forks (``setsid`` in between) and execs a fresh interpreter running
:func:`main`, with stdin/stdout/stderr on ``/dev/null``: the supervisor belongs to no
terminal or session of the caller and outlives it (and its ``kill -9``).  The supervisor
runs the container with the record's runtime (built-in or an OCI runtime), holds the
container's stdout and stderr (or, with ``-t``, its pty master) and copies them into
``ctr.log`` (docker's json-file format, :mod:`strata.runtime.logs`), records the process
and later its exit in the container store, calls the teardown hooks and removes an
``--rm`` container.  It tells the caller through a pipe when the process runs (the host PID)
or why it could not start (the same errors as a foreground run: 127, 126, 125).

If the supervisor is killed, the container keeps running; the next command that looks at it
(``ps``, ``stop``, ``rm -f``...) sees the truth from the process table and cleans up once the
process is gone (:meth:`strata.runtime.Containers.get`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from strata.errors import CannotExecute, CommandNotFound, StrataError, Unavailable
from strata.runtime.logs import LogWriter, pump

if TYPE_CHECKING:
    from strata.runtime.container import Containers

__all__ = ["main", "spawn"]

_MODULE = "strata.runtime.supervisor"


def spawn(containers: Containers, container_id: str) -> int:
    """Start the supervisor of ``container_id`` and wait until its process runs; the
    process's host PID.

    Raises:
        CommandNotFound, CannotExecute: as for a foreground run.
        StrataError: the container could not be started, or the supervisor died.
    """
    argv = [sys.executable, "-m", _MODULE,
            "--containers", str(containers.root), "--db", str(containers.store.path),
            "--snapshots", str(containers.root.parent / "snapshots"),
            "--driver", containers.snapshotter.driver, container_id]
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:  # pragma: no cover (a forked child)
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")  # hold no directory of the caller's busy
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            # The report pipe becomes fd 3; nothing else of the caller's survives the exec.
            os.dup2(write_fd, 3)
            os.closerange(4, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0
                          else 1024)
            os.execv(argv[0], [*argv, "--report-fd", "3"])
        except BaseException:
            pass
        os._exit(125)
    os.close(write_fd)
    os.waitpid(child, 0)
    # One JSON line; the container's runtime child may hold the pipe open after it (a fork).
    chunks: list[bytes] = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    if not chunks:
        raise Unavailable(f"the supervisor of container {container_id[:12]} exited without"
                          " starting it", retryable=False)
    report = json.loads(b"".join(chunks))
    if report.get("pid"):
        return int(report["pid"])
    message = str(report.get("message") or "the container could not be started")
    kind = report.get("kind")
    if kind == "notfound":
        raise CommandNotFound(message)
    if kind == "noexec":
        raise CannotExecute(message)
    raise StrataError(message)


class _Supervisor:
    """One container's supervisor (this process)."""

    def __init__(self, containers: Containers, container_id: str, report_fd: int) -> None:
        self.containers = containers
        self.id = container_id
        self.report_fd: int | None = report_fd
        self.threads: list[threading.Thread] = []

    def report(self, message: dict[str, object]) -> None:
        if self.report_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.report_fd, json.dumps(message).encode() + b"\n")
        os.close(self.report_fd)
        self.report_fd = None

    def _pump(self, fd: int, stream: str, writer: LogWriter) -> None:
        thread = threading.Thread(target=pump, args=(fd, stream, writer), daemon=True)
        thread.start()
        self.threads.append(thread)

    def run(self) -> int:
        record = self.containers.store.get(self.id)
        cdir = self.containers.root / self.id
        writer = LogWriter(Path(record.log_path) if record.log_path else cdir / "ctr.log")
        if not record.tty:
            for stream, target in (("stdout", 1), ("stderr", 2)):
                read_end, write_end = os.pipe()
                os.dup2(write_end, target)
                os.close(write_end)
                os.set_inheritable(read_end, False)
                self._pump(read_end, stream, writer)

        def console(master: int) -> None:
            self._pump(master, "stdout", writer)

        def finish_logs() -> None:
            # The container is gone: stop holding its pipes' write ends, drain, close.
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
            for thread in self.threads:
                thread.join(timeout=5)
            writer.close()

        try:
            return self.containers._execute(
                record, on_running=lambda r: self.report({"pid": r.pid}),
                on_console=console, before_exit=finish_logs)
        except StrataError as exc:
            kind = ("notfound" if isinstance(exc, CommandNotFound) else
                    "noexec" if isinstance(exc, CannotExecute) else "error")
            self.report({"kind": kind, "message": str(exc)})
            return exc.exit_code
        finally:
            self.report({"kind": "error", "message": "the container exited before it ran"})


def main(argv: Sequence[str] | None = None) -> None:
    """The supervisor process: ``python -m strata.runtime.supervisor --containers DIR --db
    FILE --snapshots DIR --driver NAME --report-fd N ID`` (started by :func:`spawn`)."""
    parser = argparse.ArgumentParser(prog=_MODULE)
    parser.add_argument("--containers", type=Path, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--snapshots", type=Path, required=True)
    parser.add_argument("--driver", required=True)
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("id")
    args = parser.parse_args(argv)
    os.set_inheritable(args.report_fd, False)  # the container must not hold the caller's pipe
    code = 125
    try:
        from strata.runtime.container import Containers
        from strata.runtime.store import ContainerStore
        from strata.snapshots import open_snapshotter

        containers = Containers(args.containers, ContainerStore(args.db),
                                open_snapshotter(args.snapshots, args.driver))
        code = _Supervisor(containers, args.id, args.report_fd).run()
    except BaseException:
        with contextlib.suppress(OSError):
            os.write(args.report_fd, json.dumps(
                {"kind": "error", "message": traceback.format_exc(limit=5)}).encode() + b"\n")
        with contextlib.suppress(OSError), open(args.containers / args.id / "supervisor.err",
                                                 "a") as err:
            err.write(traceback.format_exc())
    os._exit(code & 0xFF)


if __name__ == "__main__":
    main()
