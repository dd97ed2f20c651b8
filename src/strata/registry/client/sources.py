"""Where blobs came from: per blob, the repositories of each registry it was pulled from or
pushed to, so a push can ask for a cross-repository mount instead of uploading the bytes
(docker's ``distribution/metadata`` "V2MetadataService").

A small SQLite table beside the content store; losing it only costs uploads.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from strata.oci import Digest

__all__ = ["BlobSources"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blob_sources (
    digest TEXT NOT NULL,
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (digest, registry, repository)
);
"""


class BlobSources:
    """Records and answers "which repositories of REGISTRY hold DIGEST"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            yield db
        finally:
            db.close()

    def add(self, digests: Iterable[Digest], registry: str, repository: str) -> None:
        now = time.time()
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO blob_sources (digest, registry, repository, seen)"
                " VALUES (?, ?, ?, ?)",
                [(str(d), registry, repository, now) for d in digests],
            )

    def repositories(self, digest: Digest, registry: str) -> list[str]:
        """Repositories of ``registry`` known to hold ``digest``, most recent first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT repository FROM blob_sources WHERE digest = ? AND registry = ?"
                " ORDER BY seen DESC",
                (str(digest), registry),
            ).fetchall()
        return [r[0] for r in rows]
