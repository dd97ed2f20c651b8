"""Container logs in docker's ``json-file`` format: writing them (the supervisor) and reading
them back (``logs [-f] [--tail N] [-t]``).

``ROOT/containers/ID/ctr.log`` holds one JSON object a line, as docker's json-file driver
writes it::

    {"log":"hello\\n","stream":"stdout","time":"2026-11-23T17:41:51.123456789Z"}

A record is one line of the container's output, newline included; a line longer than 16 KiB
is cut into several records, and a last line without a newline is written when its stream
closes (docker's copier does the same).  Bytes that are not UTF-8 become U+FFFD, as in docker.
This module owns the file format only: it never decides when a container has ended (the
caller of :func:`read_log` passes ``running``).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from strata.errors import InvalidContent

__all__ = ["LogEntry", "LogWriter", "pump", "read_log", "rfc3339nano"]

#: Longest record docker's copier writes before cutting a line.
MAX_LINE = 16 * 1024

#: How often a follower looks for new lines.
POLL_INTERVAL = 0.05


def rfc3339nano(ns: int | None = None) -> str:
    """``ns`` nanoseconds since the epoch (default: now) as Go's RFC3339Nano in UTC (trailing
    zeros of the fraction dropped)."""
    ns = time.time_ns() if ns is None else ns
    seconds, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{frac:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One record of a container's log.

    Attributes:
        stream: ``stdout`` or ``stderr``.
        time: when the supervisor read it (RFC3339Nano, UTC).
        data: the text, usually one line with its newline.
    """

    stream: str
    time: str
    data: bytes


class LogWriter:
    """Appends records to a json-file log; safe to share between the pumps of two streams.

    Args:
        path: the log file (created, appended to).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "ab", buffering=0)  # noqa: SIM115
        self._lock = threading.Lock()
        self._partial: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        """Log ``data`` read from ``stream``: every complete line (and any 16 KiB run without
        a newline) becomes a record; the rest waits for more data or :meth:`flush`."""
        buffer = self._partial.pop(stream, b"") + data
        records = []
        while buffer:
            cut = buffer.find(b"\n", 0, MAX_LINE)
            if cut >= 0:
                records.append(buffer[:cut + 1])
                buffer = buffer[cut + 1:]
            elif len(buffer) >= MAX_LINE:
                records.append(buffer[:MAX_LINE])
                buffer = buffer[MAX_LINE:]
            else:
                break
        if buffer:
            self._partial[stream] = buffer
        self._emit(stream, records)

    def flush(self, stream: str) -> None:
        """Write ``stream``'s pending partial line (its pipe closed)."""
        rest = self._partial.pop(stream, b"")
        if rest:
            self._emit(stream, [rest])

    def _emit(self, stream: str, records: list[bytes]) -> None:
        if not records:
            return
        now = rfc3339nano()
        text = b"".join(
            json.dumps({"log": r.decode("utf-8", errors="replace"), "stream": stream,
                        "time": now}, ensure_ascii=False, separators=(",", ":")).encode()
            + b"\n" for r in records)
        with self._lock:
            self._file.write(text)

    def close(self) -> None:
        """Flush every stream's partial line and close the file."""
        for stream in list(self._partial):
            self.flush(stream)
        self._file.close()


def pump(fd: int, stream: str, writer: LogWriter,
         tee: Callable[[bytes], None] | None = None) -> None:
    """Copy everything readable from ``fd`` into ``writer`` as ``stream`` until end of file
    (or EIO: a pty whose slave side closed); closes ``fd``.  ``tee`` also gets every chunk."""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            writer.write(stream, chunk)
            if tee is not None:
                tee(chunk)
        writer.flush(stream)
    finally:
        os.close(fd)


def _parse(line: bytes, path: Path) -> LogEntry:
    try:
        obj = json.loads(line)
        return LogEntry(stream=str(obj["stream"]), time=str(obj["time"]),
                        data=str(obj["log"]).encode())
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidContent(f"malformed log record in {path}: {line[:80]!r}",
                             path=str(path)) from exc


def read_log(path: Path, *, tail: int | None = None, follow: bool = False,
             running: Callable[[], bool] | None = None) -> Iterator[LogEntry]:
    """The records of the log ``path``, oldest first.

    Args:
        path: the json-file log (missing: no records).
        tail: only the last ``tail`` records that exist when reading starts (None: all).
        follow: keep waiting for new records while ``running()`` says the writer lives; the
            records written until it stopped are all returned.
        running: whether the container (its supervisor) still writes; required to follow.

    Raises:
        InvalidContent: a line that is not a json-file record.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with f:
        if tail is not None:
            last: collections.deque[bytes] = collections.deque(maxlen=max(tail, 0))
            for line in iter(f.readline, b""):
                if not line.endswith(b"\n"):  # a record being written: read it again below
                    f.seek(-len(line), os.SEEK_CUR)
                    break
                last.append(line)
            for line in last:
                yield _parse(line, path)
        pending = b""
        while True:
            line = f.readline()
            if line:
                pending += line
                if pending.endswith(b"\n"):
                    yield _parse(pending, path)
                    pending = b""
                continue
            if not follow or running is None:
                return
            if not running():
                # The writer is gone: what it wrote before is all there is.
                for line in iter(f.readline, b""):
                    pending += line
                    if pending.endswith(b"\n"):
                        yield _parse(pending, path)
                        pending = b""
                return
            time.sleep(POLL_INTERVAL)
