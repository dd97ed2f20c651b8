"""The content-addressable blob store: Provider (read) + Ingester (write) + Manager (walk, delete).

Layout under the store root::

    blobs/sha256/<hex>        committed blobs, read-only, named by their digest
    ingest/<sha256(ref)>/     one in-progress write: data, ref, expected (json), lock

A blob becomes visible only by ``rename`` after its size and digest were verified and its data
fsynced (containerd ``content.Writer.Commit``), so a reader never sees a partial blob and a
crash leaves at most an ingest directory behind, which a writer with the same ref resumes.
The store knows nothing of manifests or images; garbage collection takes the roots and the
reference walk from the caller (:mod:`strata.content.gc`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self

from strata.content.lease import Lease, LeaseManager
from strata.errors import (
    DigestMismatch,
    InvalidArgument,
    NotFound,
    SizeMismatch,
    StrataError,
    Unavailable,
)
from strata.oci import SHA256, Descriptor, Digest

__all__ = ["BlobInfo", "BlobWriter", "ContentStore", "IngestInfo", "LocalStore"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A committed blob: its digest, size and commit time (seconds since the epoch)."""

    digest: Digest
    size: int
    created_at: float


@dataclass(frozen=True, slots=True)
class IngestInfo:
    """An in-progress write: its ref, bytes so far, and what it expects to become."""

    ref: str
    offset: int
    expected: Digest | None
    updated_at: float


class BlobWriter(Protocol):
    """A resumable write into the store, by ref.

    Lifecycle: obtained from :meth:`ContentStore.writer`; ``offset`` says how many bytes the
    ingest already holds (resume by sending the rest); :meth:`commit` verifies and publishes;
    :meth:`abort` drops the ingest.  Leaving a ``with`` block without committing closes the
    writer and keeps the ingest for a later resume.
    """

    offset: int

    def write(self, data: bytes | memoryview) -> int: ...

    def commit(self, size: int | None = None, digest: Digest | None = None) -> Descriptor: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ContentStore(Protocol):
    """Provider + Ingester + Manager of blobs (containerd ``content.Store``)."""

    def info(self, digest: Digest) -> BlobInfo: ...

    def exists(self, digest: Digest) -> bool: ...

    def open(self, digest: Digest) -> BinaryIO: ...

    def read(self, digest: Digest) -> bytes: ...

    def writer(self, ref: str, expected: Descriptor | None = None) -> BlobWriter: ...

    def walk(self) -> Iterator[BlobInfo]: ...

    def delete(self, digest: Digest) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Writer:
    """The local store's :class:`BlobWriter`: appends to ``ingest/<key>/data`` under a lock."""

    def __init__(self, store: LocalStore, ref: str, expected: Descriptor | None) -> None:
        self._store = store
        self.ref = ref
        self.expected = expected
        self._dir = store.ingest_dir(ref)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise Unavailable(f"ingest {ref!r} is being written by another process") from exc
        meta = {"ref": ref, "expected": str(expected.digest) if expected else None}
        meta_path = self._dir / "meta.json"
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
            except ValueError:
                old = {}
            if expected is not None and old.get("expected") not in (None, str(expected.digest)):
                # The ref now names different content: start over.
                (self._dir / "data").unlink(missing_ok=True)
        meta_path.write_text(json.dumps(meta))
        self._file = open(self._dir / "data", "ab+")  # noqa: SIM115 - closed by close()
        self._hash = hashlib.sha256()
        self._file.seek(0)
        # Resume: re-hash what the ingest already holds (hash state cannot be persisted).
        while chunk := self._file.read(_CHUNK):
            self._hash.update(chunk)
        self.offset = self._file.tell()
        self._closed = False

    def write(self, data: bytes | memoryview) -> int:
        if self._closed:
            raise StrataError(f"ingest {self.ref!r} is closed")
        try:
            written = self._file.write(data)
        except OSError as exc:
            raise Unavailable(f"writing ingest {self.ref!r}: {exc.strerror}") from exc
        self._hash.update(data)
        self.offset += written
        return written

    def flush(self) -> None:
        """Push buffered bytes to the ingest file (not a durability point; commit is)."""
        if not self._closed:
            self._file.flush()

    def writable(self) -> bool:
        return True

    def commit(self, size: int | None = None, digest: Digest | None = None) -> Descriptor:
        """Verify and publish the blob.

        Raises:
            SizeMismatch: fewer or more bytes than ``size`` / the expected descriptor's size.
            DigestMismatch: the bytes hash to another digest; the ingest is dropped.
        """
        expected_size = size if size is not None else (self.expected.size if self.expected else None)
        expected_digest = digest or (self.expected.digest if self.expected else None)
        actual = Digest(SHA256, self._hash.hexdigest())
        what = f"blob {expected_digest or actual} (ingest {self.ref!r})"
        if expected_size is not None and self.offset != expected_size:
            if self.offset > expected_size:
                self.abort()
            raise SizeMismatch(
                f"{what}: got {self.offset} bytes, expected {expected_size}",
                expected=expected_size,
                actual=self.offset,
            )
        if expected_digest is not None and actual != expected_digest:
            self.abort()
            raise DigestMismatch(
                f"{what}: content has digest {actual}",
                expected=str(expected_digest),
                actual=str(actual),
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._store.blob_path(actual)
        if target.exists():
            shutil.rmtree(self._dir, ignore_errors=True)
        else:
            os.chmod(self._dir / "data", 0o444)
            os.rename(self._dir / "data", target)
            _fsync_dir(target.parent)
            shutil.rmtree(self._dir, ignore_errors=True)
        self._release()
        self._store.leases.add_current(actual)
        media_type = self.expected.media_type if self.expected else "application/octet-stream"
        return Descriptor(media_type, actual, self.offset)

    def abort(self) -> None:
        if not self._closed:
            self._file.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._release()

    def close(self) -> None:
        if not self._closed:
            self._file.close()
        self._release()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._file.close()
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalStore:
    """A :class:`ContentStore` on a local directory. Thread-safe; many processes may share it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / SHA256
        self._ingest = self.root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)
        self.leases = LeaseManager(self.root / "leases.db")
        self._lock = threading.Lock()

    # -- paths -------------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        """Where a committed blob lives (it may not exist)."""
        if digest.algorithm != SHA256:
            raise InvalidArgument(f"unsupported digest algorithm in {digest}")
        return self._blobs / digest.hex

    def ingest_dir(self, ref: str) -> Path:
        return self._ingest / hashlib.sha256(ref.encode()).hexdigest()

    # -- provider ----------------------------------------------------------------------
    def info(self, digest: Digest) -> BlobInfo:
        """Size and commit time of a blob.

        Raises:
            NotFound: no such blob.
        """
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} not found in the content store") from exc
        return BlobInfo(digest, st.st_size, st.st_mtime)

    def exists(self, digest: Digest) -> bool:
        return self.blob_path(digest).exists()

    def open(self, digest: Digest) -> BinaryIO:
        """A seekable read-only stream of the blob; the caller closes it.

        Raises:
            NotFound: no such blob.
        """
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} not found in the content store") from exc

    def read(self, digest: Digest) -> bytes:
        """A whole (small) blob, e.g. a manifest or config, verified against its digest."""
        with self.open(digest) as f:
            data = f.read()
        actual = Digest.of(data)
        if actual != digest:
            raise DigestMismatch(
                f"blob {digest} in the store is corrupt (content has digest {actual});"
                " run 'strata system fsck'",
                expected=str(digest),
                actual=str(actual),
            )
        return data

    # -- ingester ----------------------------------------------------------------------
    def writer(self, ref: str, expected: Descriptor | None = None) -> _Writer:
        """Open (or resume) the ingest named ``ref``.

        Raises:
            Unavailable: another process holds that ingest.
        """
        return _Writer(self, ref, expected)

    def put(self, data: bytes, media_type: str = "application/octet-stream",
            expected: Digest | None = None) -> Descriptor:
        """Store small bytes; idempotent when the blob exists."""
        digest = Digest.of(data)
        if expected is not None and digest != expected:
            raise DigestMismatch(
                f"content does not match {expected} (it has digest {digest})",
                expected=str(expected), actual=str(digest),
            )
        desc = Descriptor(media_type, digest, len(data))
        if self.exists(digest):
            self.leases.add_current(digest)
            return desc
        with self.writer(f"put-{digest}", desc) as w:
            w.write(data)
            return w.commit()

    def ingests(self) -> Iterator[IngestInfo]:
        """The in-progress writes."""
        for entry in sorted(self._ingest.iterdir()):
            try:
                meta = json.loads((entry / "meta.json").read_text())
                st = os.stat(entry / "data")
            except (OSError, ValueError):
                continue
            expected = meta.get("expected")
            yield IngestInfo(
                meta.get("ref", ""), st.st_size, Digest.parse(expected) if expected else None,
                st.st_mtime,
            )

    def clean_ingests(self) -> int:
        """Remove ingests no process is writing; returns how many were removed."""
        removed = 0
        for entry in self._ingest.iterdir():
            lock = entry / "lock"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            os.close(fd)
            removed += 1
        return removed

    # -- manager -----------------------------------------------------------------------
    def walk(self) -> Iterator[BlobInfo]:
        """Every committed blob, in digest order."""
        for entry in sorted(os.scandir(self._blobs), key=lambda e: e.name):
            try:
                digest = Digest.from_hex(entry.name)
            except InvalidArgument:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            yield BlobInfo(digest, st.st_size, st.st_mtime)

    def delete(self, digest: Digest) -> None:
        """Remove a blob.

        Raises:
            NotFound: no such blob.
        """
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} not found in the content store") from exc
        except OSError as exc:
            if exc.errno == errno.EACCES:
                raise Unavailable(f"cannot delete blob {digest}: {exc.strerror}") from exc
            raise

    def verify(self, digest: Digest) -> Digest:
        """Re-hash a committed blob; returns the digest its bytes have."""
        with self.open(digest) as f:
            actual, _ = Digest.of_stream(f)
        return actual

    def lease(self, *, label: str = "") -> Lease:
        """A lease protecting every blob this thread commits until it ends (``with``)."""
        return self.leases.create(label=label)
