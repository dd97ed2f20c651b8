"""Leases: protect blobs that work in progress has written but no image references yet.

A pull or a load opens ``with store.lease():``; every blob committed by that thread while the
lease is current is recorded under it, so garbage collection keeps it until the lease ends
(containerd ``leases``).  A lease whose process died (its pid is gone) no longer protects
anything, so a ``kill -9`` never pins garbage forever.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from strata.oci import Digest

__all__ = ["Lease", "LeaseManager"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    label TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_resources (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    resource TEXT NOT NULL,
    PRIMARY KEY (lease_id, resource)
);
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(slots=True)
class Lease:
    """A live lease; use as a context manager so it becomes the thread's current lease."""

    id: str
    manager: LeaseManager

    def add(self, resource: str) -> None:
        """Protect ``resource`` (a digest string, or ``snapshot:<key>``)."""
        self.manager.add(self.id, resource)

    def __enter__(self) -> Self:
        self.manager.push(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.manager.pop(self)
        self.manager.delete(self.id)


class LeaseManager:
    """Leases in a small SQLite database beside the blobs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            yield db
        finally:
            db.close()

    def create(self, *, label: str = "") -> Lease:
        lease_id = uuid.uuid4().hex
        with self._connect() as db:
            db.execute(
                "INSERT INTO leases (id, pid, label, created) VALUES (?, ?, ?, ?)",
                (lease_id, os.getpid(), label, time.time()),
            )
        return Lease(lease_id, self)

    def add(self, lease_id: str, resource: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO lease_resources (lease_id, resource) VALUES (?, ?)",
                (lease_id, resource),
            )

    def delete(self, lease_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def push(self, lease: Lease) -> None:
        stack: list[Lease] = getattr(self._local, "stack", [])
        stack.append(lease)
        self._local.stack = stack

    def pop(self, lease: Lease) -> None:
        stack: list[Lease] = getattr(self._local, "stack", [])
        if stack and stack[-1] is lease:
            stack.pop()

    def current(self) -> Lease | None:
        stack: list[Lease] = getattr(self._local, "stack", [])
        return stack[-1] if stack else None

    def add_current(self, digest: Digest) -> None:
        """Record ``digest`` under this thread's current lease, if any."""
        lease = self.current()
        if lease is not None:
            lease.add(str(digest))

    def protected(self, *, exclude: str | None = None) -> set[str]:
        """Resources held by leases whose process is alive; dead leases are dropped.

        Args:
            exclude: a lease id whose resources are left out (the caller's own).
        """
        out: set[str] = set()
        with self._connect() as db:
            rows = db.execute("SELECT id, pid FROM leases").fetchall()
            for lease_id, pid in rows:
                if lease_id == exclude:
                    continue
                if not _pid_alive(pid):
                    db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
                    continue
                for (resource,) in db.execute(
                    "SELECT resource FROM lease_resources WHERE lease_id = ?", (lease_id,)
                ):
                    out.add(resource)
        return out
