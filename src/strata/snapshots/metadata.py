"""Snapshot metadata in SQLite: one row per snapshot (key, kind, parent, labels, usage).

Owns the table and its transactions; it does no filesystem work of its own beyond the
database file.  Writers take SQLite's write lock up front (``BEGIN IMMEDIATE``) so that a
check and the change it guards are one step, across threads and processes.  Ids are
never reused (``AUTOINCREMENT``) because they name the snapshot directories.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from strata.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from strata.snapshots.base import Kind, SnapshotInfo, Usage

__all__ = ["MetaStore", "Row"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    parent TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


@dataclass(frozen=True, slots=True)
class Row:
    """A snapshot record: its directory id and its info."""

    id: int
    info: SnapshotInfo
    usage: Usage


def _row(raw: tuple[int, str, str, str | None, str, float, float, int, int]) -> Row:
    id_, key, kind, parent, labels, created, updated, size, inodes = raw
    info = SnapshotInfo(key, Kind(kind), parent, json.loads(labels), created, updated)
    return Row(id_, info, Usage(size, inodes))


_COLUMNS = "id, key, kind, parent, labels, created, updated, size, inodes"


class MetaStore:
    """The snapshot table of one snapshotter root."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self._path, timeout=60, isolation_level=None)
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot open snapshot metadata {self._path}: {exc}") from exc
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock; rolled back on error."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise Unavailable(f"snapshot metadata {self._path} is locked: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def get(self, key: str, conn: sqlite3.Connection | None = None) -> Row:
        """The record of ``key``.

        Raises:
            NotFound: no such snapshot.
        """
        cur = (conn or self._conn()).execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?", (key,)
        )
        raw = cur.fetchone()
        if raw is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return _row(raw)

    def chain(self, key: str | None, conn: sqlite3.Connection | None = None) -> list[Row]:
        """``key``'s record and its ancestors', nearest first (empty for None)."""
        out: list[Row] = []
        while key is not None:
            row = self.get(key, conn)
            out.append(row)
            key = row.info.parent
        return out

    def create(self, conn: sqlite3.Connection, key: str, kind: Kind, parent: str | None,
               labels: Mapping[str, str] | None) -> int:
        """Insert a record (inside :meth:`write`); returns its id.

        Raises:
            AlreadyExists: ``key`` exists.
            NotFound: ``parent`` does not exist.
            FailedPrecondition: ``parent`` is not committed.
        """
        if conn.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
            raise AlreadyExists(f"snapshot {key!r} already exists")
        if parent is not None:
            prow = self.get(parent, conn)
            if prow.info.kind is not Kind.COMMITTED:
                raise FailedPrecondition(f"parent snapshot {parent!r} is not committed")
        now = time.time()
        cur = conn.execute(
            "INSERT INTO snapshots (key, kind, parent, labels, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, str(kind), parent, json.dumps(dict(labels or {}), sort_keys=True), now, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def commit(self, conn: sqlite3.Connection, key: str, name: str, parent: str | None,
               labels: Mapping[str, str] | None, usage: Usage) -> None:
        """Rename an active record to committed ``name`` with ``parent`` (inside :meth:`write`)."""
        sets = "key = ?, kind = ?, parent = ?, updated = ?, size = ?, inodes = ?"
        args: list[object] = [name, str(Kind.COMMITTED), parent, time.time(), usage.size,
                              usage.inodes]
        if labels is not None:
            sets += ", labels = ?"
            args.append(json.dumps(dict(labels), sort_keys=True))
        conn.execute(f"UPDATE snapshots SET {sets} WHERE key = ?", (*args, key))

    def has_children(self, conn: sqlite3.Connection, key: str) -> bool:
        """True when some snapshot has ``key`` as its parent."""
        return conn.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1",
                            (key,)).fetchone() is not None

    def delete(self, conn: sqlite3.Connection, key: str) -> None:
        """Delete the record of ``key`` (inside :meth:`write`)."""
        conn.execute("DELETE FROM snapshots WHERE key = ?", (key,))

    def ids(self, conn: sqlite3.Connection | None = None) -> set[int]:
        """The ids of every record."""
        return {r[0] for r in (conn or self._conn()).execute("SELECT id FROM snapshots")}

    def rows(self) -> list[Row]:
        """Every record."""
        return [_row(r) for r in self._conn().execute(f"SELECT {_COLUMNS} FROM snapshots")]
