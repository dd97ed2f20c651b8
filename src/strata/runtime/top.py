"""A running container's processes: ``top`` (host ``ps`` filtered to the container's PIDs) and
the PID list that ``commit --pause`` and ``cp`` freeze.

The container's processes are the host processes in its PID namespace (that of the PID the
record holds), found through ``/proc/*/ns/pid``.  ``top`` runs the host's ``ps`` with the
given options (docker's default ``-ef``) and keeps the header and the rows whose ``PID``
column is one of them, as docker's daemon does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from strata.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["Top", "container_pids", "frozen", "live_pid", "top"]


def container_pids(pid: int) -> list[int]:
    """The host PIDs in the PID namespace of ``pid`` (``pid`` first), sorted.

    Raises:
        FailedPrecondition: the process is gone.
    """
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError as exc:
        raise FailedPrecondition(f"the container's process {pid} is gone") from exc
    if ns == os.readlink("/proc/self/ns/pid"):
        return [pid]  # not in a namespace of its own: only the process itself
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                found.append(int(entry))
        except OSError:
            continue
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Top:
    """``docker top``'s answer: the ``ps`` header's titles and one row per process."""

    titles: tuple[str, ...]
    processes: tuple[tuple[str, ...], ...]


def _parse(output: str, pids: Sequence[int]) -> Top:
    """docker's ``parsePSOutput``: the PID column found by title, the last column keeps its
    spaces (the command line)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise InvalidArgument("ps printed nothing")
    titles = tuple(lines[0].split())
    try:
        pid_index = titles.index("PID")
    except ValueError:
        raise InvalidArgument("Couldn't find PID field in ps output") from None
    wanted = {str(p) for p in pids}
    rows: list[tuple[str, ...]] = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > pid_index and fields[pid_index] in wanted:
            rows.append(tuple(fields))
    return Top(titles, tuple(rows))


def top(pid: int, ps_args: Sequence[str] = ()) -> Top:
    """The processes of the container whose process is host ``pid``, as ``ps ARGS`` shows.

    Raises:
        FailedPrecondition: the container is not running.
        InvalidArgument: ``ps`` refused the options or printed no PID column.
        NotFound: ``ps`` is not installed.
    """
    pids = container_pids(pid)
    ps = shutil.which("ps")
    if ps is None:
        raise NotFound("ps is not installed on the host")
    args = list(ps_args) or ["-ef"]
    proc = subprocess.run([ps, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InvalidArgument(f"ps: {proc.stderr.strip() or 'failed'}")
    return _parse(proc.stdout, pids)


def _wait_stopped(pid: int) -> None:
    """Wait (briefly) until ``pid`` is in the stopped state: SIGSTOP is delivered async."""
    for _ in range(2000):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"T", b"t", b"Z", b"X"):
            return
        os.sched_yield()


@contextlib.contextmanager
def frozen(pid: int | None) -> Iterator[None]:
    """Stop every process of the container (SIGSTOP) for the duration, then continue them:
    what docker's ``commit --pause`` and ``cp`` do with the freezer.  ``pid`` None: nothing."""
    if not pid:
        yield
        return
    stopped: list[int] = []
    try:
        for _ in range(3):  # children forked while we were stopping their parents
            fresh = [p for p in container_pids(pid) if p not in stopped]
            if not fresh:
                break
            for p in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGSTOP)
                    stopped.append(p)
        for p in stopped:
            _wait_stopped(p)
        yield
    finally:
        for p in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def live_pid(state: str, pid: int, pid_start: int = 0) -> int | None:
    """The host PID of a container recorded ``running`` as ``pid`` if that process still
    exists (and, when ``pid_start`` is known, is the same process); else None."""
    if state != "running" or pid <= 0:
        return None
    started = _start_time(pid)
    if started < 0 or (pid_start and started != pid_start):
        return None
    return pid
