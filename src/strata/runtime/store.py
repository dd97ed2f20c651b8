"""Container records in SQLite (``ROOT/containers.db``): what ``ps -a``, ``rm`` and ``run`` share.

One row per container: its ID and name, the image it was made from, its command, the runtime
that runs it, its state (``created``, ``running``, ``exited``) with times and exit code, and
the host PID while it runs.  Every change is one transaction; names are unique.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
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
        pid: host PID while running (0 otherwise).
        auto_remove: ``--rm``.
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


_COLUMNS = ("id", "name", "image", "image_id", "command", "runtime", "created", "state",
            "exit_code", "started", "finished", "pid", "auto_remove")


class ContainerStore:
    """The container table of one store root (safe for several processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS containers ("
                " id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, image TEXT NOT NULL,"
                " image_id TEXT NOT NULL, command TEXT NOT NULL, runtime TEXT NOT NULL,"
                " created REAL NOT NULL, state TEXT NOT NULL, exit_code INTEGER,"
                " started REAL, finished REAL, pid INTEGER NOT NULL DEFAULT 0,"
                " auto_remove INTEGER NOT NULL DEFAULT 0)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

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
            pid=int(values["pid"]), auto_remove=bool(values["auto_remove"]))

    def add(self, record: ContainerRecord) -> None:
        """Insert a new container.

        Raises:
            AlreadyExists: the name (or ID) is taken (docker's "Conflict" message).
        """
        try:
            with closing(self._connect()) as db, db:
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
                int(record.auto_remove))

    def update(self, record: ContainerRecord) -> None:
        """Store ``record``'s state columns.

        Raises:
            NotFound: the container was removed meanwhile.
        """
        with closing(self._connect()) as db, db:
            cur = db.execute("UPDATE containers SET state=?, exit_code=?, started=?, finished=?,"
                             " pid=? WHERE id=?", (record.state, record.exit_code,
                                                   record.started, record.finished, record.pid,
                                                   record.id))
            if cur.rowcount != 1:
                raise NotFound(f"No such container: {record.id}")

    def started(self, record: ContainerRecord, pid: int) -> ContainerRecord:
        """Mark ``record`` running as host ``pid``; returns the new record."""
        new = replace(record, state=State.RUNNING, pid=pid, started=time.time())
        self.update(new)
        return new

    def exited(self, record: ContainerRecord, code: int) -> ContainerRecord:
        """Mark ``record`` exited with ``code``; returns the new record."""
        new = replace(record, state=State.EXITED, pid=0, exit_code=code, finished=time.time())
        self.update(new)
        return new

    def delete(self, container_id: str) -> None:
        """Forget a container (no error if it is already gone)."""
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM containers WHERE id=?", (container_id,))

    def walk(self) -> Iterator[ContainerRecord]:
        """Every container, newest first."""
        with closing(self._connect()) as db:
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
