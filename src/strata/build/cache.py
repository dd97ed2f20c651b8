"""The build cache: what each build step produced, keyed like BuildKit, in SQLite.

A step's key is a sha256 over its parent step's key, the instruction with its arguments
expanded, the build args it can see, and — for COPY / ADD / RUN mounts — the content
checksums of the files it reads (never their mtimes).  The value is what the step left
behind: the chainID of the snapshot it committed, the layer blob and diff_id (None for a
step whose changeset was empty) and the history entry it recorded.

Records live in ``ROOT/build/cache.db`` and survive invocations.  The blobs and snapshots
they name are kept alive by the engine's garbage collection (:meth:`BuildCache.roots`) until
``builder prune`` forgets the records.  This module does no building and no I/O beyond its
database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from strata.errors import InvalidContent, Unavailable
from strata.oci import Descriptor, Digest, History

__all__ = ["BuildCache", "CacheRecord", "step_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    key TEXT PRIMARY KEY,
    chain TEXT,
    diff_id TEXT,
    layer TEXT,
    history TEXT NOT NULL,
    created REAL NOT NULL,
    used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS context_digests (
    identity TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
"""


def step_key(parent: str, *parts: str) -> str:
    """The cache key of a step: sha256 over the parent's key and the step's parts.

    Parts are length-prefixed so that no two different part lists hash alike.
    """
    h = hashlib.sha256()
    h.update(parent.encode())
    for part in parts:
        data = part.encode("utf-8", "surrogateescape")
        h.update(f"\0{len(data)}\0".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True, slots=True)
class CacheRecord:
    """What one cached step produced.

    Attributes:
        key: the step's cache key.
        chain: the chainID of the stage's top snapshot after the step (None: empty rootfs).
        diff_id: the layer's diff_id; None when the step made no layer.
        layer: the layer blob's descriptor; None when the step made no layer.
        history: the history entry the step recorded.
    """

    key: str
    chain: Digest | None
    diff_id: Digest | None
    layer: Descriptor | None
    history: History


class BuildCache:
    """The cache records of one store root (thread-safe; one connection per thread)."""

    def __init__(self, path: Path) -> None:
        """Open (creating) the cache database at ``path``.

        Raises:
            Unavailable: the database cannot be created or opened.
        """
        self.path = path
        self._local = threading.local()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db().executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(f"cannot open the build cache {path}: {exc}",
                              retryable=False) from exc

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def get(self, key: str) -> CacheRecord | None:
        """The record of ``key`` (marking it used), or None."""
        try:
            row = self._db().execute(
                "SELECT key, chain, diff_id, layer, history FROM steps WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            self._db().execute("UPDATE steps SET used = ? WHERE key = ?", (time.time(), key))
        except sqlite3.Error as exc:
            raise Unavailable(f"build cache: {exc}", retryable=True) from exc
        return _record(row)

    def put(self, record: CacheRecord) -> None:
        """Store (or replace) a record."""
        now = time.time()
        layer = json.dumps(record.layer.to_json(), sort_keys=True) if record.layer else None
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT OR REPLACE INTO steps (key, chain, diff_id, layer, history, created,"
                    " used) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.key, str(record.chain) if record.chain else None,
                     str(record.diff_id) if record.diff_id else None, layer,
                     json.dumps(record.history.to_json(), sort_keys=True), now, now),
                )
        except sqlite3.Error as exc:
            raise Unavailable(f"build cache: {exc}", retryable=True) from exc

    def delete(self, keys: Iterable[str]) -> None:
        """Forget records."""
        with self._tx() as db:
            db.executemany("DELETE FROM steps WHERE key = ?", [(k,) for k in keys])

    def walk(self) -> Iterator[CacheRecord]:
        """Every record."""
        rows = self._db().execute(
            "SELECT key, chain, diff_id, layer, history FROM steps ORDER BY created").fetchall()
        for row in rows:
            with contextlib.suppress(InvalidContent):
                yield _record(row)

    def prune(self, *, older_than: float | None = None) -> list[CacheRecord]:
        """Forget every record (or those unused for ``older_than`` seconds); returns them."""
        cutoff = time.time() - older_than if older_than is not None else None
        gone = [r for r in self.walk()]
        if cutoff is not None:
            used = dict(self._db().execute("SELECT key, used FROM steps").fetchall())
            gone = [r for r in gone if used.get(r.key, 0.0) < cutoff]
        self.delete(r.key for r in gone)
        if cutoff is None:
            with self._tx() as db:
                db.execute("DELETE FROM context_digests")
        return gone

    def file_digests(self) -> dict[str, str]:
        """The content digests of context files hashed by earlier builds (BuildKit keeps
        such a memo too), keyed by the file's identity (device, inode, size, mtime and ctime:
        any write changes the ctime): unchanged files are not read again."""
        rows = self._db().execute("SELECT identity, digest FROM context_digests").fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def remember_file_digests(self, digests: Mapping[str, str]) -> None:
        """Add to the memo."""
        try:
            with self._tx() as db:
                db.executemany(
                    "INSERT OR REPLACE INTO context_digests (identity, digest) VALUES (?, ?)",
                    list(digests.items()))
        except sqlite3.Error as exc:
            raise Unavailable(f"build cache: {exc}", retryable=True) from exc

    def roots(self) -> tuple[set[Digest], set[str]]:
        """The layer blobs and snapshot names the records keep alive."""
        blobs: set[Digest] = set()
        chains: set[str] = set()
        for record in self.walk():
            if record.layer is not None:
                blobs.add(record.layer.digest)
            if record.chain is not None:
                chains.add(str(record.chain))
        return blobs, chains


def _record(row: Sequence[str | None]) -> CacheRecord:
    key, chain, diff_id, layer, history = row
    try:
        hist = History.from_json(json.loads(history or "{}"), "cached history")
        desc = Descriptor.from_json(json.loads(layer), "cached layer") if layer else None
    except ValueError as exc:
        raise InvalidContent(f"build cache record {key}: {exc}") from exc
    return CacheRecord(
        key=str(key),
        chain=Digest.parse(chain) if chain else None,
        diff_id=Digest.parse(diff_id) if diff_id else None,
        layer=desc,
        history=hist,
    )
