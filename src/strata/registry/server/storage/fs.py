"""The filesystem storage driver: the default, crash-safe, served with ``sendfile``.

Layout under ``rootdirectory``::

    blobs/sha256/<hh>/<hex>                       committed blobs (manifests too)
    uploads/<id>/data                             bytes received so far
    uploads/<id>/startedat                        "<repository>\\n<epoch seconds>"
    repositories/<name>/_layers/sha256/<hex>      blob links (empty files)
    repositories/<name>/_manifests/revisions/sha256/<hex>   contains the media type
    repositories/<name>/_manifests/tags/<tag>     contains the manifest digest
    repositories/<name>/_referrers/<subject-hex>/<hex>      contains the descriptor JSON

Crash safety: a blob appears under ``blobs/`` only by ``rename`` of a file that was
written completely, hashed to its name and fsynced (and its directory fsynced after); small
metadata files (links, revisions, tags) are written to a temporary name and renamed.  A
SIGKILL at any instant leaves either the old state or the new one, plus possibly an upload
directory that GC purges.  After a power loss blobs are as durable as their fsync; the
metadata written in the last moments may be lost (never torn), as with distribution's
filesystem driver, which fsyncs nothing.  Owns only this layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path
from typing import Self

from strata.errors import DigestMismatch, InvalidArgument, NotFound, Unavailable
from strata.oci import Digest
from strata.registry.server.storage.base import BlobStat, UploadOffsetError, UploadStatus

__all__ = ["FilesystemDriver"]

_READ_CHUNK = 1 << 20
_UUID_CHARS = frozenset("0123456789abcdef-")
_MAX_CACHED = 4096


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class _HashState:
    """The running sha256 of an upload's first ``size`` bytes."""

    __slots__ = ("hasher", "size")

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0


class FilesystemDriver:
    """Registry storage on a local filesystem (see the module docstring for the layout).

    Several processes may share one root (``--workers``): every visible change is a
    rename, and a process that did not see an upload's earlier chunks re-hashes them.
    """

    name = "filesystem"

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._blobs = root / "blobs" / "sha256"
        self._uploads = root / "uploads"
        self._repos = root / "repositories"
        self._hashes: dict[str, _HashState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Self:
        """Build from ``storage.filesystem`` (``rootdirectory``, default /var/lib/registry).

        Raises:
            InvalidArgument: ``rootdirectory`` is not a string.
        """
        root = options.get("rootdirectory", "/var/lib/registry")
        if not isinstance(root, str) or not root:
            raise InvalidArgument("registry config: storage.filesystem.rootdirectory must be a path")
        fsync = options.get("fsync", True)
        return cls(Path(root), fsync=bool(fsync))

    async def open(self) -> None:
        try:
            for d in (self._blobs, self._uploads, self._repos):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot use registry storage {self.root}: {exc.strerror}") from exc

    async def close(self) -> None:
        self._hashes.clear()

    # ---------------------------------------------------------------- blobs

    def _blob(self, digest: Digest) -> Path:
        return self._blobs / digest.hex[:2] / digest.hex

    async def stat_blob(self, digest: Digest) -> BlobStat:
        try:
            st = os.stat(self._blob(digest))
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        return BlobStat(digest, st.st_size)

    async def read_blob(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            f = open(self._blob(digest), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        with f:
            f.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                n = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
                chunk = f.read(n)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def local_path(self, digest: Digest) -> Path | None:
        return self._blob(digest)

    async def put_blob(self, data: bytes) -> BlobStat:
        digest = Digest.of(data)
        path = self._blob(digest)
        if not path.exists():
            await asyncio.to_thread(self._put_small, path, data)
        return BlobStat(digest, len(data))

    def _put_small(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._uploads / f".put-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(path.parent)

    async def delete_blob(self, digest: Digest) -> None:
        try:
            os.unlink(self._blob(digest))
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    async def walk_blobs(self) -> AsyncIterator[BlobStat]:
        for prefix in sorted(self._blobs.iterdir()) if self._blobs.is_dir() else []:
            for entry in sorted(prefix.iterdir()):
                try:
                    digest = Digest.from_hex(entry.name)
                    st = entry.stat()
                except (InvalidArgument, FileNotFoundError):
                    continue
                yield BlobStat(digest, st.st_size, st.st_mtime)

    # ---------------------------------------------------------------- uploads

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id or len(upload_id) > 64 or not set(upload_id) <= _UUID_CHARS:
            raise NotFound(f"upload {upload_id!r} not found")
        return self._uploads / upload_id

    def _lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            if len(self._locks) >= _MAX_CACHED:
                for key in [k for k, v in self._locks.items() if not v.locked()][: _MAX_CACHED // 2]:
                    del self._locks[key]
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    def _remember(self, upload_id: str, state: _HashState) -> None:
        """Cache a running hash; abandoned uploads' states are evicted (oldest first) and
        simply re-hashed from disk if their upload comes back."""
        if len(self._hashes) >= _MAX_CACHED:
            for key in list(self._hashes)[: _MAX_CACHED // 2]:
                del self._hashes[key]
        self._hashes[upload_id] = state

    async def create_upload(self, repository: str) -> UploadStatus:
        upload_id = str(uuid.uuid4())
        d = self._uploads / upload_id
        started = time.time()
        d.mkdir(parents=True)
        (d / "data").touch()
        _write_atomic(d / "startedat", f"{repository}\n{started}\n".encode())
        self._remember(upload_id, _HashState())
        return UploadStatus(upload_id, repository, 0, started)

    @staticmethod
    def _flock(fd: int, upload_id: str, size: int, offset: int) -> None:
        """Hold the upload against other processes (``--workers``) for this append; a
        concurrent append elsewhere means this one's offset is stale (416)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UploadOffsetError(upload_id, expected=size, actual=offset) from None

    def _status(self, upload_id: str) -> UploadStatus:
        d = self._upload_dir(upload_id)
        try:
            repository, started = (d / "startedat").read_text().split("\n")[:2]
            size = os.stat(d / "data").st_size
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFound(f"upload {upload_id} not found") from None
        return UploadStatus(upload_id, repository, size, float(started))

    async def upload_status(self, upload_id: str) -> UploadStatus:
        return self._status(upload_id)

    def _state(self, upload_id: str, data: Path, size: int) -> _HashState:
        """The running hash of the first ``size`` bytes, re-hashing the file if the cached
        one does not cover exactly them (another process appended, or we restarted)."""
        state = self._hashes.get(upload_id)
        if state is None or state.size != size:
            state = _HashState()
            with open(data, "rb") as f:
                while state.size < size and (chunk := f.read(min(_READ_CHUNK, size - state.size))):
                    state.hasher.update(chunk)
                    state.size += len(chunk)
            self._remember(upload_id, state)
        return state

    async def append_upload(
        self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]
    ) -> UploadStatus:
        async with self._lock(upload_id):
            status = self._status(upload_id)
            if offset != status.size:
                raise UploadOffsetError(upload_id, expected=status.size, actual=offset)
            data = self._upload_dir(upload_id) / "data"
            try:
                with open(data, "r+b") as f:
                    self._flock(f.fileno(), upload_id, status.size, offset)
                    if os.fstat(f.fileno()).st_size != offset:  # another process appended
                        raise UploadOffsetError(
                            upload_id, expected=os.fstat(f.fileno()).st_size, actual=offset
                        )
                    state = self._state(upload_id, data, status.size)
                    f.seek(status.size)
                    async for chunk in chunks:
                        f.write(chunk)
                        state.hasher.update(chunk)
                        state.size += len(chunk)
            except UploadOffsetError:
                raise
            except FileNotFoundError:
                raise NotFound(f"upload {upload_id} not found") from None
            except BaseException:
                self._hashes.pop(upload_id, None)  # the file may hold a partial write
                raise
            return UploadStatus(upload_id, status.repository, state.size, status.started)

    async def commit_upload(self, upload_id: str, digest: Digest) -> BlobStat:
        async with self._lock(upload_id):
            status = self._status(upload_id)
            d = self._upload_dir(upload_id)
            data = d / "data"
            if digest.algorithm == "sha256":
                actual = Digest("sha256", self._state(upload_id, data, status.size).hasher.hexdigest())
            else:
                actual = await asyncio.to_thread(self._rehash, data, digest.algorithm)
            if actual != digest:
                raise DigestMismatch(
                    f"upload {upload_id}: content is {actual}, not {digest}",
                    expected=str(digest),
                    actual=str(actual),
                )
            await asyncio.to_thread(self._publish, d, digest)
            self._hashes.pop(upload_id, None)
            self._locks.pop(upload_id, None)
            return BlobStat(digest, status.size)

    @staticmethod
    def _rehash(data: Path, algorithm: str) -> Digest:
        h = hashlib.new(algorithm)
        with open(data, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
        return Digest(algorithm, h.hexdigest())

    def _publish(self, d: Path, digest: Digest) -> None:
        data = d / "data"
        target = self._blob(digest)
        if not target.exists():
            if self.fsync:
                fd = os.open(data, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(data, target)
            if self.fsync:
                _fsync_dir(target.parent)
        self._remove_upload_dir(d)

    @staticmethod
    def _remove_upload_dir(d: Path) -> None:
        # Drop "startedat" first: a half-removed upload is then invisible (NotFound).
        for name in ("startedat", "data"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / name)
        for leftover in d.iterdir() if d.is_dir() else []:
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(d)

    async def cancel_upload(self, upload_id: str) -> None:
        async with self._lock(upload_id):
            self._status(upload_id)
            self._remove_upload_dir(self._upload_dir(upload_id))
            self._hashes.pop(upload_id, None)
        self._locks.pop(upload_id, None)

    async def list_uploads(self) -> AsyncIterator[UploadStatus]:
        for entry in sorted(self._uploads.iterdir()) if self._uploads.is_dir() else []:
            if entry.name.startswith("."):
                # a temporary file of put_blob: report it as an upload so GC purges it
                try:
                    started = entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                yield UploadStatus(entry.name, "", entry.stat().st_size, started)
                continue
            try:
                yield self._status(entry.name)
            except NotFound:
                # killed between mkdir and writing startedat, or half-removed
                with contextlib.suppress(FileNotFoundError):
                    yield UploadStatus(entry.name, "", 0, entry.stat().st_mtime)

    async def purge_upload(self, upload_id: str) -> None:
        """Remove an upload directory or stray temporary file whatever its state (GC)."""
        path = self._uploads / upload_id
        if "/" in upload_id or upload_id in ("", ".", ".."):
            raise NotFound(f"upload {upload_id!r} not found")
        if path.is_dir():
            self._remove_upload_dir(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._hashes.pop(upload_id, None)

    # ---------------------------------------------------------------- repositories

    def _repo(self, repository: str) -> Path:
        return self._repos / repository

    def _layer_link(self, repository: str, digest: Digest) -> Path:
        return self._repo(repository) / "_layers" / digest.algorithm / digest.hex

    def _revision(self, repository: str, digest: Digest) -> Path:
        return self._repo(repository) / "_manifests" / "revisions" / digest.algorithm / digest.hex

    def _tag(self, repository: str, tag: str) -> Path:
        return self._repo(repository) / "_manifests" / "tags" / tag

    def _referrers(self, repository: str, subject: Digest) -> Path:
        return self._repo(repository) / "_referrers" / f"{subject.algorithm}-{subject.hex}"

    async def link_blob(self, repository: str, digest: Digest) -> None:
        path = self._layer_link(repository, digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    async def has_blob_link(self, repository: str, digest: Digest) -> bool:
        return self._layer_link(repository, digest).exists()

    async def unlink_blob(self, repository: str, digest: Digest) -> None:
        try:
            os.unlink(self._layer_link(repository, digest))
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in {repository}") from None

    async def list_blob_links(self, repository: str) -> AsyncIterator[Digest]:
        for digest in self._digests_in(self._repo(repository) / "_layers"):
            yield digest

    @staticmethod
    def _digests_in(base: Path) -> list[Digest]:
        out = []
        for algo in base.iterdir() if base.is_dir() else []:
            for entry in algo.iterdir():
                with contextlib.suppress(InvalidArgument):
                    out.append(Digest.parse(f"{algo.name}:{entry.name}"))
        return out

    async def put_manifest(self, repository: str, digest: Digest, media_type: str) -> None:
        _write_atomic(self._revision(repository, digest), media_type.encode())

    async def get_manifest(self, repository: str, digest: Digest) -> str:
        try:
            return self._revision(repository, digest).read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"manifest {digest} not found in {repository}") from None

    async def delete_manifest(self, repository: str, digest: Digest) -> None:
        try:
            os.unlink(self._revision(repository, digest))
        except FileNotFoundError:
            raise NotFound(f"manifest {digest} not found in {repository}") from None

    async def list_manifests(self, repository: str) -> AsyncIterator[Digest]:
        for digest in self._digests_in(self._repo(repository) / "_manifests" / "revisions"):
            yield digest

    async def put_tag(self, repository: str, tag: str, digest: Digest) -> None:
        _write_atomic(self._tag(repository, tag), str(digest).encode())

    async def get_tag(self, repository: str, tag: str) -> Digest:
        try:
            return Digest.parse(self._tag(repository, tag).read_text())
        except (FileNotFoundError, NotADirectoryError, InvalidArgument):
            raise NotFound(f"tag {tag} not found in {repository}") from None

    async def delete_tag(self, repository: str, tag: str) -> None:
        try:
            os.unlink(self._tag(repository, tag))
        except FileNotFoundError:
            raise NotFound(f"tag {tag} not found in {repository}") from None

    async def list_tags(self, repository: str) -> list[str]:
        repo = self._repo(repository)
        if not repo.is_dir() or not any(
            (repo / marker).exists() for marker in ("_layers", "_manifests", "_referrers")
        ):
            raise NotFound(f"repository {repository} not found")
        tags = repo / "_manifests" / "tags"
        return [p.name for p in tags.iterdir() if not p.name.startswith(".")] if tags.is_dir() else []

    async def add_referrer(
        self, repository: str, subject: Digest, digest: Digest, descriptor: bytes
    ) -> None:
        name = f"{digest.algorithm}-{digest.hex}"
        _write_atomic(self._referrers(repository, subject) / name, descriptor)

    async def remove_referrer(self, repository: str, subject: Digest, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._referrers(repository, subject) / f"{digest.algorithm}-{digest.hex}")

    async def list_referrers(self, repository: str, subject: Digest) -> list[bytes]:
        d = self._referrers(repository, subject)
        out = []
        for entry in sorted(d.iterdir()) if d.is_dir() else []:
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                out.append(entry.read_bytes())
        return out

    async def list_repositories(self) -> AsyncIterator[str]:
        for dirpath, dirnames, _files in os.walk(self._repos):
            markers = {"_layers", "_manifests", "_referrers"} & set(dirnames)
            if markers:
                yield os.path.relpath(dirpath, self._repos)
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
