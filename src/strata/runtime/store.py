"""Container records in SQLite (``ROOT/containers.db``): what ``ps -a``, ``rm`` and ``run`` share.

One row per container: its ID and name, the image it was made from, its command, the runtime
that runs it, its state (``created``, ``running``, ``exited``) with times and exit code, the
host PID of its process while it runs (with the process's start time, so a recycled PID is
never mistaken for it), the PID of its supervisor, whether it was OOM-killed, its log file and
its terminal and stop-signal settings.  Every change is one transaction; names are unique.

The schema is versioned with ``PRAGMA user_version``; opening an older database adds the
missing columns in one transaction.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from strata.errors import AlreadyExists, InvalidArgument, NotFound

__all__ = ["ContainerRecord", "ContainerStore", "State", "valid_name"]

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class State:
    """A container's states (docker's ``State.Status`` words)."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


def valid_name(name: str) -> str:
    """``name`` if docker would accept it as a container name.

    Raises:
        InvalidArgument: docker's message for an invalid name.
    """
    if not _NAME.match(name):
        raise InvalidArgument(f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-]'
                              " are allowed")
    return name


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """One container.

    Attributes:
        id: 64 hex digits.
        name: unique name.
        image: the image as the user named it.
        image_id: the image's ID (``sha256:...``).
        command: the process args.
        runtime: ``builtin`` or an OCI runtime's name.
        created: creation time (seconds since the epoch).
        state: ``created``, ``running`` or ``exited``.
        exit_code: the last exit code (None before the first exit).
        started: last start time, or None.
        finished: last exit time, or None.
        pid: host PID of the container's process while running (0 otherwise).
        auto_remove: ``--rm``.
        pid_start: the start time of ``pid`` (``/proc/PID/stat`` field 22), 0 if unknown.
        supervisor_pid: the PID of the process that started the container and waits for it
            (a detached container's supervisor, or a foreground ``run``), 0 when none.
        supervisor_start: the start time of ``supervisor_pid``.
        oom_killed: the last run ended by the kernel's OOM killer.
        log_path: the container's json-file log (empty: not logged).
        tty: ``-t``: the process runs on a terminal.
        interactive: ``-i``: the process's stdin is kept open.
        stop_signal: the image's StopSignal (empty: SIGTERM).
    """

    id: str
    name: str
    image: str
    image_id: str
    command: tuple[str, ...]
    runtime: str
    created: float
    state: str = State.CREATED
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    pid: int = 0
    auto_remove: bool = False
    pid_start: int = 0
    supervisor_pid: int = 0
    supervisor_start: int = 0
    oom_killed: bool = False
    log_path: str = ""
    tty: bool = False
    interactive: bool = False
    stop_signal: str = ""


_COLUMNS = ("id", "name", "image", "image_id", "command", "runtime", "created", "state",
            "exit_code", "started", "finished", "pid", "auto_remove", "pid_start",
            "supervisor_pid", "supervisor_start", "oom_killed", "log_path", "tty", "interactive",
            "stop_signal")

#: The columns each schema version added, with their definitions (version 1: the first table).
_MIGRATIONS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("pid_start", "INTEGER NOT NULL DEFAULT 0"),
     ("supervisor_pid", "INTEGER NOT NULL DEFAULT 0"),
     ("supervisor_start", "INTEGER NOT NULL DEFAULT 0"),
     ("oom_killed", "INTEGER NOT NULL DEFAULT 0"),
     ("log_path", "TEXT NOT NULL DEFAULT ''"),
     ("tty", "INTEGER NOT NULL DEFAULT 0"),
     ("interactive", "INTEGER NOT NULL DEFAULT 0"),
     ("stop_signal", "TEXT NOT NULL DEFAULT ''")),
    (),  # version 3: the ``exits`` table (see :meth:`ContainerStore.last_exit`)
)

#: How long the exit code of a removed container is kept (``wait`` on an ``--rm`` one).
EXIT_MEMORY = 600.0
_VERSION = 1 + len(_MIGRATIONS)

#: The columns :meth:`ContainerStore.update` writes (what changes over a container's life).
_STATE_COLUMNS = ("state", "exit_code", "started", "finished", "pid", "pid_start",
                  "supervisor_pid", "supervisor_start", "oom_killed", "log_path")


class ContainerStore:
    """The container table of one store root (safe for several processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dbs: dict[tuple[int, int], sqlite3.Connection] = {}
        with self._session() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] < _VERSION:
                self._migrate(db)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Create the table or add the columns later versions added, in one transaction."""
        level, db.isolation_level = db.isolation_level, None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS containers ("
                " id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, image TEXT NOT NULL,"
                " image_id TEXT NOT NULL, command TEXT NOT NULL, runtime TEXT NOT NULL,"
                " created REAL NOT NULL, state TEXT NOT NULL, exit_code INTEGER,"
                " started REAL, finished REAL, pid INTEGER NOT NULL DEFAULT 0,"
                " auto_remove INTEGER NOT NULL DEFAULT 0)")
            db.execute("CREATE TABLE IF NOT EXISTS exits (id TEXT PRIMARY KEY, name TEXT,"
                       " exit_code INTEGER NOT NULL, finished REAL NOT NULL)")
            have = {str(row[1]) for row in db.execute("PRAGMA table_info(containers)")}
            for columns in _MIGRATIONS:
                for name, definition in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE containers ADD COLUMN {name} {definition}")
            db.execute(f"PRAGMA user_version={_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.isolation_level = level

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        # Container records are state, not data: after a power loss the last transactions may
        # be rolled back but the file stays consistent (WAL); no fsync per commit (``run``
        # commits several times).
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """This process's (and thread's) connection, kept open between calls: opening and
        closing one per call (a WAL checkpoint on every close) cost ``run`` milliseconds.

        A forked child never reuses its parent's connection, but it must exec before it
        uses the store at all (SQLite's locks do not survive fork: a connection opened in a
        forked child of a process holding one fails with "locking protocol"); the
        supervisor runs in a new interpreter for that reason."""
        key = (os.getpid(), threading.get_ident())
        db = self._dbs.get(key)
        if db is None:
            db = self._dbs[key] = self._connect()
        yield db

    @staticmethod
    def _row(row: tuple[Any, ...]) -> ContainerRecord:
        values: dict[str, Any] = dict(zip(_COLUMNS, row, strict=True))
        return ContainerRecord(
            id=str(values["id"]), name=str(values["name"]), image=str(values["image"]),
            image_id=str(values["image_id"]),
            command=tuple(json.loads(str(values["command"]))),
            runtime=str(values["runtime"]), created=float(values["created"]),
            state=str(values["state"]),
            exit_code=None if values["exit_code"] is None else int(values["exit_code"]),
            started=None if values["started"] is None else float(values["started"]),
            finished=None if values["finished"] is None else float(values["finished"]),
            pid=int(values["pid"]), auto_remove=bool(values["auto_remove"]),
            pid_start=int(values["pid_start"]), supervisor_pid=int(values["supervisor_pid"]),
            supervisor_start=int(values["supervisor_start"]),
            oom_killed=bool(values["oom_killed"]), log_path=str(values["log_path"]),
            tty=bool(values["tty"]), interactive=bool(values["interactive"]),
            stop_signal=str(values["stop_signal"]))

    def add(self, record: ContainerRecord) -> None:
        """Insert a new container.

        Raises:
            AlreadyExists: the name (or ID) is taken (docker's "Conflict" message).
        """
        try:
            with self._session() as db, db:
                db.execute(f"INSERT INTO containers ({','.join(_COLUMNS)}) VALUES"
                           f" ({','.join('?' * len(_COLUMNS))})", self._values(record))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f'Conflict. The container name "/{record.name}" is already in'
                                " use.") from None

    @staticmethod
    def _values(record: ContainerRecord) -> tuple[object, ...]:
        return (record.id, record.name, record.image, record.image_id,
                json.dumps(list(record.command)), record.runtime, record.created, record.state,
                record.exit_code, record.started, record.finished, record.pid,
                int(record.auto_remove), record.pid_start, record.supervisor_pid,
                record.supervisor_start,
                int(record.oom_killed), record.log_path, int(record.tty),
                int(record.interactive), record.stop_signal)

    def update(self, record: ContainerRecord) -> None:
        """Store ``record``'s state columns (state, exit code, times, PIDs, OOM flag, log).

        Raises:
            NotFound: the container was removed meanwhile.
        """
        values = self._values(record)
        row = dict(zip(_COLUMNS, values, strict=True))
        with self._session() as db, db:
            cur = db.execute(
                f"UPDATE containers SET {', '.join(f'{c}=?' for c in _STATE_COLUMNS)}"
                " WHERE id=?", (*(row[c] for c in _STATE_COLUMNS), record.id))
            if cur.rowcount != 1:
                raise NotFound(f"No such container: {record.id}")

    def get(self, container_id: str) -> ContainerRecord:
        """The container with the full ID ``container_id``.

        Raises:
            NotFound: no such container.
        """
        with self._session() as db:
            row = db.execute(f"SELECT {','.join(_COLUMNS)} FROM containers WHERE id=?",
                             (container_id,)).fetchone()
        if row is None:
            raise NotFound(f"No such container: {container_id}")
        return self._row(row)

    def started(self, record: ContainerRecord, pid: int, *, pid_start: int = 0,
                supervisor_pid: int = 0, supervisor_start: int = 0) -> ContainerRecord:
        """Mark ``record`` running as host ``pid``; returns the new record."""
        new = replace(record, state=State.RUNNING, pid=pid, pid_start=pid_start,
                      supervisor_pid=supervisor_pid, supervisor_start=supervisor_start,
                      started=time.time(), oom_killed=False)
        self.update(new)
        return new

    def exited(self, record: ContainerRecord, code: int, *, oom_killed: bool = False
               ) -> ContainerRecord:
        """Mark ``record`` exited with ``code``; returns the new record."""
        new = replace(record, state=State.EXITED, pid=0, pid_start=0, supervisor_pid=0,
                      supervisor_start=0, exit_code=code, finished=time.time(), oom_killed=oom_killed)
        self.update(new)
        return new

    def delete(self, container_id: str) -> None:
        """Forget a container (no error if it is already gone); the exit code of an exited
        one is kept a while for :meth:`last_exit`."""
        now = time.time()
        with self._session() as db, db:
            db.execute("DELETE FROM exits WHERE finished < ?", (now - EXIT_MEMORY,))
            db.execute("INSERT OR REPLACE INTO exits (id, name, exit_code, finished)"
                       " SELECT id, name, exit_code, ? FROM containers"
                       " WHERE id=? AND state=? AND exit_code IS NOT NULL",
                       (now, container_id, State.EXITED))
            db.execute("DELETE FROM containers WHERE id=?", (container_id,))

    def last_exit(self, ref: str) -> int | None:
        """The exit code of the container ``ref`` (full ID, name or unique ID prefix) removed
        in the last :data:`EXIT_MEMORY` seconds (``--rm``), or None."""
        ref = ref.removeprefix("/")
        with self._session() as db:
            rows = db.execute(
                "SELECT id, name, exit_code FROM exits WHERE finished >= ? ORDER BY finished"
                " DESC", (time.time() - EXIT_MEMORY,)).fetchall()
        for match in (lambda r: r[0] == ref, lambda r: r[1] == ref,
                      lambda r: bool(ref) and str(r[0]).startswith(ref)):
            found = [r for r in rows if match(r)]
            if found:  # the newest
                return int(found[0][2])
        return None

    def walk(self) -> Iterator[ContainerRecord]:
        """Every container, newest first."""
        with self._session() as db:
            rows = db.execute(f"SELECT {','.join(_COLUMNS)} FROM containers"
                              " ORDER BY created DESC").fetchall()
        for row in rows:
            yield self._row(row)

    def find(self, ref: str) -> ContainerRecord:
        """A container by full ID, name, or unique ID prefix (docker's lookup order).

        Raises:
            NotFound: ``No such container: REF``.
            InvalidArgument: an ambiguous ID prefix.
        """
        ref = ref.removeprefix("/")
        records = list(self.walk())
        for r in records:
            if r.id == ref:
                return r
        for r in records:
            if r.name == ref:
                return r
        if ref and all(c in "0123456789abcdef" for c in ref):
            found = [r for r in records if r.id.startswith(ref)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")
