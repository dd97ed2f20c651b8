"""The storage driver interface of the registry server, and how a driver is chosen by name.

A driver holds everything the registry knows; the HTTP layer above it is stateless, so that
several ``strata registry serve`` processes (``--workers``, or several machines on one S3
bucket) can share one driver's backing store.  Owns: the :class:`StorageDriver` protocol,
the values it returns, the name -> factory table.  Must not: parse HTTP, check permissions,
or validate manifests (the server does those before calling the driver).

The data model (the same as distribution's, which makes it easy to reason about GC):

- **blobs** are global and content-addressed (``sha256:<hex>`` -> bytes).  A blob becomes
  visible only complete and verified: a reader never sees a partial blob.  Manifests are
  blobs too.
- **uploads** are staging areas named by a random id, owned by one repository.  Bytes are
  appended strictly in order; ``commit`` verifies the digest of everything appended and only
  then makes the blob visible (atomically), then removes the upload.
- **repository metadata**: per repository, a set of *blob links* (which blobs the repository
  may serve: a blob pushed to ``a`` is not readable through ``b`` until mounted there), a set
  of *manifest revisions* (digest -> media type), *tags* (name -> manifest digest) and a
  *referrers* index (subject digest -> descriptors of the manifests whose ``subject`` is it).
  A repository exists while it has any of these.

Invariants every driver keeps:

1. No operation leaves a partial blob visible, even if the process is killed at any instant
   (stage, fsync/verify, then an atomic rename or an atomic object PUT).
2. Committing an upload whose bytes do not hash to the announced digest raises
   :class:`strata.errors.DigestMismatch`, keeps nothing visible and keeps the upload (the
   client may cancel it; GC purges it later).
3. Putting a blob that exists already is success (content-addressed: idempotent).
4. Names passed in are already validated by the server (repository names match the spec's
   grammar, tags match ``[\\w][\\w.-]{0,127}``, digests are :class:`Digest` values), so a
   driver may use them as path components; it must still never follow them outside its root.
5. Deleting a blob that repositories still link is allowed (that is GC's and the operator's
   decision); serving a linked but absent blob answers "unknown blob".

Errors: ``NotFound`` for an absent blob / upload / manifest / tag; ``InvalidArgument`` (as
:class:`UploadOffsetError`) for an append at the wrong offset; ``DigestMismatch`` /
``SizeMismatch`` on commit; ``Unavailable`` when the backing store fails.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from strata.errors import InvalidArgument, NotSupported
from strata.oci import Digest

__all__ = [
    "BlobStat",
    "DriverFactory",
    "StorageDriver",
    "UploadOffsetError",
    "UploadStatus",
    "available_drivers",
    "open_driver",
    "register_driver",
]


@dataclass(frozen=True, slots=True)
class BlobStat:
    """A committed blob: its digest and size in bytes.

    ``modified`` is when it was committed (seconds since the epoch) when the driver knows
    (``walk_blobs`` should fill it: GC spares blobs younger than a grace period, which a
    client may still be about to reference from a manifest).  It takes no part in equality.
    """

    digest: Digest
    size: int
    modified: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class UploadStatus:
    """An upload in progress.

    Attributes:
        id: the upload's id (a UUID4 string; the server puts it in ``Location``).
        repository: the repository that started it.
        size: bytes received so far (the next append must start here).
        started: when it was created, seconds since the epoch (GC purges old ones).
    """

    id: str
    repository: str
    size: int
    started: float


class UploadOffsetError(InvalidArgument):
    """An append did not start where the upload ends (the spec answers 416).

    Attributes:
        expected: the upload's current size.
        actual: the offset the client sent.
    """

    def __init__(self, upload_id: str, *, expected: int, actual: int) -> None:
        super().__init__(
            f"upload {upload_id}: chunk starts at {actual} but the upload holds {expected} bytes"
        )
        self.expected = expected
        self.actual = actual


@runtime_checkable
class StorageDriver(Protocol):
    """Where a registry keeps blobs, uploads and repository metadata.

    Lifecycle: built by a factory from the configuration (:func:`open_driver`), then
    :meth:`open` once on the serving event loop before the first call, and :meth:`close`
    once at shutdown.  Every method may be called concurrently from many requests (and
    from several processes sharing the backing store): the invariants in the module
    docstring hold under concurrency, e.g. two uploads committing the same digest both
    succeed and leave one intact blob.
    """

    name: str
    """The driver's name in the configuration (``"filesystem"``, ``"s3"``)."""

    async def open(self) -> None:
        """Prepare the backing store (create directories, check the bucket)."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...

    # ---------------------------------------------------------------- blobs

    async def stat_blob(self, digest: Digest) -> BlobStat:
        """The committed blob's size.  Raises ``NotFound``."""
        ...

    def read_blob(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of a committed blob (``end=None``: to its end).

        Never loads the whole blob in memory.  Raises ``NotFound`` (on first iteration at
        the latest).
        """
        ...

    def local_path(self, digest: Digest) -> Path | None:
        """A local file holding the committed blob, for zero-copy ``sendfile``; ``None`` when
        the driver has none (S3).  The file may vanish if the blob is deleted."""
        ...

    async def put_blob(self, data: bytes) -> BlobStat:
        """Store small content (a manifest) verified and atomically; idempotent."""
        ...

    async def delete_blob(self, digest: Digest) -> None:
        """Remove a committed blob.  Raises ``NotFound``."""
        ...

    def walk_blobs(self) -> AsyncIterator[BlobStat]:
        """Every committed blob, in no particular order."""
        ...

    # ---------------------------------------------------------------- uploads

    async def create_upload(self, repository: str) -> UploadStatus:
        """Start an empty upload for ``repository``."""
        ...

    async def upload_status(self, upload_id: str) -> UploadStatus:
        """Where an upload stands.  Raises ``NotFound`` (unknown, committed or cancelled)."""
        ...

    async def append_upload(
        self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]
    ) -> UploadStatus:
        """Append a stream of bytes to an upload, hashing as they arrive.

        ``offset`` must equal the upload's current size (chunks are strictly in order, no
        overlap, no gap), otherwise :class:`UploadOffsetError` and nothing is written.  The
        driver keeps a running hash so that :meth:`commit_upload` need not re-read what it
        has seen (a driver that lost the state, e.g. another process received the earlier
        chunks, re-hashes what is stored).  If the stream fails mid-way, the bytes already
        appended stay and the status tells the client where to resume.

        Raises:
            NotFound: no such upload.
            UploadOffsetError: ``offset`` is not the current size.
        """
        ...

    async def commit_upload(self, upload_id: str, digest: Digest) -> BlobStat:
        """Verify the upload hashes to ``digest`` and make it a committed blob.

        On success the upload is gone and the blob is visible; if the blob existed already
        it is kept as is.

        Raises:
            NotFound: no such upload.
            DigestMismatch: the bytes hash to something else; nothing becomes visible.
        """
        ...

    async def cancel_upload(self, upload_id: str) -> None:
        """Drop an upload and its bytes.  Raises ``NotFound``."""
        ...

    def list_uploads(self) -> AsyncIterator[UploadStatus]:
        """Every upload in progress (GC purges those started long ago), including ones a
        crash left half-created (their ``repository`` may be ``""``)."""
        ...

    async def purge_upload(self, upload_id: str) -> None:
        """Remove an upload listed by :meth:`list_uploads`, whatever state it is in (GC);
        no error if it is already gone."""
        ...

    # ---------------------------------------------------------------- repositories

    async def link_blob(self, repository: str, digest: Digest) -> None:
        """Make a committed blob servable through ``repository`` (idempotent)."""
        ...

    async def has_blob_link(self, repository: str, digest: Digest) -> bool:
        """True if ``repository`` links ``digest``."""
        ...

    async def unlink_blob(self, repository: str, digest: Digest) -> None:
        """Remove a blob link.  Raises ``NotFound``."""
        ...

    def list_blob_links(self, repository: str) -> AsyncIterator[Digest]:
        """The blobs ``repository`` links."""
        ...

    async def put_manifest(self, repository: str, digest: Digest, media_type: str) -> None:
        """Record a manifest revision; its bytes must already be a committed blob."""
        ...

    async def get_manifest(self, repository: str, digest: Digest) -> str:
        """The media type of a manifest revision.  Raises ``NotFound``."""
        ...

    async def delete_manifest(self, repository: str, digest: Digest) -> None:
        """Remove a manifest revision (not its blob).  Raises ``NotFound``."""
        ...

    def list_manifests(self, repository: str) -> AsyncIterator[Digest]:
        """The manifest revisions of ``repository``."""
        ...

    async def put_tag(self, repository: str, tag: str, digest: Digest) -> None:
        """Point ``tag`` at a manifest digest (replacing what it pointed at)."""
        ...

    async def get_tag(self, repository: str, tag: str) -> Digest:
        """The manifest digest ``tag`` points at.  Raises ``NotFound``."""
        ...

    async def delete_tag(self, repository: str, tag: str) -> None:
        """Remove a tag.  Raises ``NotFound``."""
        ...

    async def list_tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` (any order).  Raises ``NotFound`` for an unknown
        repository."""
        ...

    async def add_referrer(
        self, repository: str, subject: Digest, digest: Digest, descriptor: bytes
    ) -> None:
        """Record that manifest ``digest`` refers to ``subject``; ``descriptor`` is the JSON
        of its descriptor (mediaType, digest, size, artifactType, annotations), stored as is
        and returned by :meth:`list_referrers` (idempotent)."""
        ...

    async def remove_referrer(self, repository: str, subject: Digest, digest: Digest) -> None:
        """Forget the referrer ``digest`` of ``subject`` (no error if absent)."""
        ...

    async def list_referrers(self, repository: str, subject: Digest) -> list[bytes]:
        """The descriptors recorded for ``subject`` (empty if none)."""
        ...

    def list_repositories(self) -> AsyncIterator[str]:
        """Every repository name, in no particular order."""
        ...


DriverFactory = Callable[[Mapping[str, object]], StorageDriver]
"""Builds a driver from its configuration section (``storage.<name>`` of config.yml)."""

_FACTORIES: dict[str, DriverFactory] = {}


def register_driver(name: str, factory: DriverFactory) -> None:
    """Make ``storage.<name>`` in the configuration build a driver with ``factory``."""
    _FACTORIES[name] = factory


def _builtin() -> None:
    # Imported lazily so that a driver's dependencies load only when it is chosen.
    if "filesystem" not in _FACTORIES:

        def filesystem(options: Mapping[str, object]) -> StorageDriver:
            from strata.registry.server.storage.fs import FilesystemDriver

            return FilesystemDriver.from_options(options)

        register_driver("filesystem", filesystem)
    if "s3" not in _FACTORIES:

        def s3(options: Mapping[str, object]) -> StorageDriver:
            # Contract with the S3 module: ``S3Driver.from_options(options) -> S3Driver``.
            module = importlib.import_module("strata.registry.server.storage.s3")
            factory: DriverFactory = module.S3Driver.from_options
            return factory(options)

        register_driver("s3", s3)


def available_drivers() -> list[str]:
    """The names a configuration may use under ``storage``."""
    _builtin()
    return sorted(_FACTORIES)


def open_driver(name: str, options: Mapping[str, object]) -> StorageDriver:
    """Build the driver called ``name`` from its options.

    Raises:
        NotSupported: no driver has that name.
        InvalidArgument: the options are wrong for that driver.
    """
    _builtin()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise NotSupported(
            f"unknown registry storage driver {name!r} (known: {', '.join(available_drivers())})"
        )
    return factory(options)
