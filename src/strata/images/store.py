"""Local image metadata in SQLite: image records (name → manifest descriptor) and layer facts.

An image record is only a name and a target descriptor (containerd ``images.Image``); all
else is read from the content store.  Names are normalised references
(``docker.io/library/busybox:latest``); an image loaded without a name gets the dangling
name ``<none>@sha256:<manifest digest>`` so that it is still a GC root.  The ``layers``
table remembers, per diff_id, facts learnt by reading a layer once (docker's layer size), so
``images`` and ``system df`` never re-read layers.  Every change is one transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from strata.errors import InvalidArgument, NotFound
from strata.oci import Descriptor, Digest, Reference

__all__ = ["DANGLING_PREFIX", "ImageRecord", "ImageStore", "LayerFacts"]

DANGLING_PREFIX = "<none>@"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_digest ON images(digest);
CREATE TABLE IF NOT EXISTS layers (
    diff_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    disk_size INTEGER NOT NULL,
    entries INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """``name`` → ``target`` (a manifest descriptor), with times in seconds since the epoch."""

    name: str
    target: Descriptor
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def reference(self) -> Reference | None:
        """The name as a reference; None for a dangling record."""
        if self.name.startswith(DANGLING_PREFIX):
            return None
        return Reference.parse(self.name)

    @property
    def dangling(self) -> bool:
        return self.name.startswith(DANGLING_PREFIX)

    @staticmethod
    def dangling_name(manifest: Digest) -> str:
        return f"{DANGLING_PREFIX}{manifest}"


@dataclass(frozen=True, slots=True)
class LayerFacts:
    """What reading a layer once taught: tar bytes, docker's size, member count."""

    diff_id: Digest
    size: int
    disk_size: int
    entries: int


class ImageStore:
    """Image records and layer facts in ``<root>/images.db``. Safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
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

    @staticmethod
    def _row(row: tuple[str, str, str, int, float, float]) -> ImageRecord:
        name, media_type, digest, size, created, updated = row
        return ImageRecord(name, Descriptor(media_type, Digest.parse(digest), size), created, updated)

    # -- records -------------------------------------------------------------------
    def get(self, name: str) -> ImageRecord:
        """The record named ``name`` (a normalised reference string).

        Raises:
            NotFound: no such record.
        """
        row = self._db().execute(
            "SELECT name, media_type, digest, size, created, updated FROM images WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"No such image: {name}")
        return self._row(row)

    def find(self, name: str) -> ImageRecord | None:
        try:
            return self.get(name)
        except NotFound:
            return None

    def put(self, record: ImageRecord) -> ImageRecord:
        """Create or retarget a record; a dangling record of the same target is dropped."""
        return self.put_many([record])[0]

    def put_many(self, records: Iterable[ImageRecord], *,
                 layers: Iterable[LayerFacts] = ()) -> list[ImageRecord]:
        """Create or retarget several records in one transaction.

        A tagged record supersedes the dangling record of the same manifest, and a tag moved
        away from a manifest no other name keeps leaves that manifest dangling (docker's
        ``<none>:<none>``), so it stays listed and protected from GC until pruned.
        """
        now = time.time()
        out: list[ImageRecord] = []
        with self._tx() as db:
            for facts in layers:
                db.execute(
                    "INSERT OR REPLACE INTO layers (diff_id, size, disk_size, entries)"
                    " VALUES (?, ?, ?, ?)",
                    (str(facts.diff_id), facts.size, facts.disk_size, facts.entries),
                )
            for record in records:
                if not record.name:
                    raise InvalidArgument("an image record needs a name")
                old = db.execute(
                    "SELECT digest, media_type, size, created FROM images WHERE name = ?",
                    (record.name,),
                ).fetchone()
                created = old[3] if old and old[0] == str(record.target.digest) else now
                db.execute(
                    "INSERT OR REPLACE INTO images (name, media_type, digest, size, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (record.name, record.target.media_type, str(record.target.digest),
                     record.target.size, created, now),
                )
                if not record.dangling:
                    db.execute(
                        "DELETE FROM images WHERE name = ?",
                        (ImageRecord.dangling_name(record.target.digest),),
                    )
                if old and old[0] != str(record.target.digest):
                    self._keep_dangling(db, old[0], old[1], old[2], now)
                out.append(ImageRecord(record.name, record.target, created, now))
        return out

    @staticmethod
    def _keep_dangling(db: sqlite3.Connection, digest: str, media_type: str, size: int,
                       now: float) -> None:
        left = db.execute("SELECT COUNT(*) FROM images WHERE digest = ?", (digest,)).fetchone()[0]
        if left == 0:
            db.execute(
                "INSERT INTO images (name, media_type, digest, size, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (f"{DANGLING_PREFIX}{digest}", media_type, digest, size, now, now),
            )

    def delete(self, name: str) -> ImageRecord:
        """Remove a record.

        Raises:
            NotFound: no such record.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT name, media_type, digest, size, created, updated FROM images WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                raise NotFound(f"No such image: {name}")
            db.execute("DELETE FROM images WHERE name = ?", (name,))
        return self._row(row)

    def walk(self) -> Iterator[ImageRecord]:
        """Every record, newest first (docker lists images newest first)."""
        rows = self._db().execute(
            "SELECT name, media_type, digest, size, created, updated FROM images"
            " ORDER BY created DESC, name"
        ).fetchall()
        for row in rows:
            yield self._row(row)

    def by_target(self, digest: Digest) -> list[ImageRecord]:
        rows = self._db().execute(
            "SELECT name, media_type, digest, size, created, updated FROM images WHERE digest = ?"
            " ORDER BY name",
            (str(digest),),
        ).fetchall()
        return [self._row(r) for r in rows]

    # -- layer facts ---------------------------------------------------------------
    def layer(self, diff_id: Digest) -> LayerFacts | None:
        row = self._db().execute(
            "SELECT size, disk_size, entries FROM layers WHERE diff_id = ?", (str(diff_id),)
        ).fetchone()
        if row is None:
            return None
        return LayerFacts(diff_id, row[0], row[1], row[2])

    def put_layer(self, facts: LayerFacts) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO layers (diff_id, size, disk_size, entries) VALUES (?, ?, ?, ?)",
                (str(facts.diff_id), facts.size, facts.disk_size, facts.entries),
            )

    def layers(self) -> dict[Digest, LayerFacts]:
        rows = self._db().execute("SELECT diff_id, size, disk_size, entries FROM layers").fetchall()
        return {Digest.parse(r[0]): LayerFacts(Digest.parse(r[0]), r[1], r[2], r[3]) for r in rows}

    def forget_layers(self, keep: set[Digest]) -> int:
        """Drop facts about layers no image uses any more."""
        with self._tx() as db:
            rows = db.execute("SELECT diff_id FROM layers").fetchall()
            gone = [r[0] for r in rows if Digest.parse(r[0]) not in keep]
            db.executemany("DELETE FROM layers WHERE diff_id = ?", [(g,) for g in gone])
        return len(gone)
