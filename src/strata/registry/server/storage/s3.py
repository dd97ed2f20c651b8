"""The S3 storage driver: a registry whose only state is objects in an S3-compatible bucket.

Owns the object layout in the bucket, chunked uploads as S3 multipart uploads, digest
verification before a blob becomes visible, and translating S3 failures into strata's error
tree. Must not parse HTTP or validate manifests (the server above does), and must not depend
on anything kept in the process between requests: several ``strata registry serve`` processes, on
one machine or many, may share one bucket and any request may land on any of them.

Layout under ``<rootdirectory>/docker/registry/v2/`` (distribution's, so an operator finds
blobs where they expect them)::

    blobs/sha256/<xx>/<hex>/data                                  the blob, complete and verified
    repositories/<name>/_layers/sha256/<hex>/link                 blob link (body: the digest)
    repositories/<name>/_manifests/revisions/sha256/<hex>/link    manifest revision (body: the
                                                                  digest; metadata: media type)
    repositories/<name>/_manifests/tags/<tag>/current/link        tag (body: the digest)
    repositories/<name>/_referrers/sha256/<subject>/sha256/<hex>  referrer descriptor (JSON)
    uploads/<id>/state                                            upload state (JSON, below)
    uploads/<id>/data                                             the upload's multipart object
    uploads/<id>/seg-<offset>-<nonce>                             bytes not yet a whole part

**Uploads.** An upload is a JSON *state* object plus its bytes: whole parts of an S3
multipart upload (each exactly ``chunksize`` bytes, at least S3's 5 MiB minimum) followed
by *segments*, small objects holding the bytes received since the last whole part. A PATCH
reads the state, checks its offset, streams the body (completing parts as soon as the
segments and new bytes add up to ``chunksize``; a part costs one GET of the earlier segments
and one UploadPart, which runs while the next part is being received), writes what is left
as a new segment, and then replaces the state with
a conditional PUT (``If-Match`` the ETag it read), so that of two requests racing on one
upload only one wins and the other is answered with the upload's real offset. Nothing a
later request needs lives in the process: a PATCH may land on another process than the POST,
and the PUT on a third. (A process does keep the segments it wrote lately, bounded, to save
a GET when the same upload's next request comes back to it; segment keys are never
rewritten, so that copy cannot be stale.)

**Hash state.** The running SHA-256 is part of the upload state: OpenSSL's ``SHA256_CTX``
(the public, fixed-layout struct of ``openssl/sha.h``; the same idea as distribution saving
Go's marshalled hash state under ``hashstates/``), driven through :mod:`ctypes` against the
``libcrypto`` that Python's own :mod:`hashlib` uses. So committing needs no re-read: the
digest is known before anything is assembled, a mismatch changes nothing, and a match
completes the multipart upload and copies it (server side) to its content-addressed key.
A blob smaller than one part never becomes a multipart upload: its segments are read back,
hashed and written to the final key with one PutObject.
Where that is unavailable (no ``libcrypto`` with the ``SHA256_*`` API, a state written
without it, or a ``sha512`` digest) commit *re-hashes*: it completes the multipart upload
into ``uploads/<id>/data`` (the upload is then *sealed*: it can be committed or cancelled,
no longer appended to), streams it through :mod:`hashlib`, and copies it only if it matches.

**Visibility.** A blob's key is written only by one atomic S3 operation (PutObject,
CopyObject or CompleteMultipartUpload of a copy) after its digest was verified, so no
reader ever sees a partial or unverified blob, whatever process dies when.

**Serving.** Blob GETs are streamed through the registry (ranged GetObject, read 1 MiB at a time),
not redirected to a presigned URL: clients that can reach the registry but not the bucket
keep working, and the bucket's credentials never leave the server.

Limits: an upload in progress buffers at most about one part (``chunksize``) per request;
S3 allows 10 000 parts, so the largest blob is ``10 000 * chunksize`` (about 98 GiB at the
default 10 MiB; raise ``chunksize`` for more).  Blobs up to 5 GiB reach their final key with
one CopyObject, bigger ones with a multipart UploadPartCopy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from strata.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StrataError,
    Unavailable,
)
from strata.oci import Digest
from strata.registry.server.storage.base import BlobStat, UploadOffsetError, UploadStatus

__all__ = ["S3Driver", "S3Options"]

_log = logging.getLogger(__name__)

MIB = 1 << 20
#: S3's smallest part (all but the last part of a multipart upload).
MIN_CHUNK_SIZE = 5 * MIB
DEFAULT_CHUNK_SIZE = 10 * MIB
#: S3's largest part, and the largest object a single CopyObject may copy.
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
_READ_SIZE = 1024 * 1024
#: Tags a saved hash state with its layout: OpenSSL's SHA256_CTX in this machine's byte order.
_HASH_FORMAT = f"openssl-sha256-ctx-{sys.byteorder}:"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class S3Options:
    """The ``storage.s3`` section of the registry configuration.

    Attributes:
        bucket: the bucket (it must exist; the driver does not create it).
        region: the region requests are signed for.
        regionendpoint: the endpoint URL of an S3-compatible store (``None``: AWS).
        accesskey: access key id (``None``: botocore's usual credential chain).
        secretkey: the matching secret.
        rootdirectory: key prefix for everything the registry stores.
        chunksize: multipart part size in bytes (at least 5 MiB, at most 5 GiB).
        secure: use HTTPS when ``regionendpoint`` names no scheme.
        skipverify: do not verify the endpoint's TLS certificate.
        maxconnections: connection pool size per serving process.
    """

    bucket: str
    region: str = "us-east-1"
    regionendpoint: str | None = None
    accesskey: str | None = None
    secretkey: str | None = field(default=None, repr=False)
    rootdirectory: str = ""
    chunksize: int = DEFAULT_CHUNK_SIZE
    secure: bool = True
    skipverify: bool = False
    maxconnections: int = 64

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> Self:
        """Validate a configuration section.

        Raises:
            InvalidArgument: a key is missing, has the wrong type or an impossible value.
        """

        def text(key: str, default: str | None = None) -> str | None:
            value = options.get(key, default)
            if value is None or value == "":
                return default
            if not isinstance(value, str):
                raise InvalidArgument(f"registry config: storage.s3.{key} must be a string")
            return value

        def flag(key: str, default: bool) -> bool:
            value = options.get(key, default)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise InvalidArgument(f"registry config: storage.s3.{key} must be true or false")
            return value

        def number(key: str, default: int) -> int:
            value = options.get(key, default)
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"registry config: storage.s3.{key} must be an integer")
            return value

        bucket = text("bucket")
        if not bucket:
            raise InvalidArgument("registry config: storage.s3.bucket is required")
        chunksize = number("chunksize", DEFAULT_CHUNK_SIZE)
        if not MIN_CHUNK_SIZE <= chunksize <= MAX_PART_SIZE:
            raise InvalidArgument(
                f"registry config: storage.s3.chunksize must be between {MIN_CHUNK_SIZE} (S3's "
                f"minimum part size) and {MAX_PART_SIZE}, not {chunksize}"
            )
        accesskey, secretkey = text("accesskey"), text("secretkey")
        if (accesskey is None) != (secretkey is None):
            raise InvalidArgument(
                "registry config: storage.s3 needs both accesskey and secretkey, or neither"
            )
        maxconnections = number("maxconnections", 64)
        if maxconnections < 1:
            raise InvalidArgument("registry config: storage.s3.maxconnections must be at least 1")
        root = (text("rootdirectory", "") or "").strip("/")
        if any(part in ("", ".", "..") for part in root.split("/")) and root:
            raise InvalidArgument(f"registry config: storage.s3.rootdirectory {root!r} is not a clean path")
        return cls(
            bucket=bucket,
            region=text("region", "us-east-1") or "us-east-1",
            regionendpoint=text("regionendpoint"),
            accesskey=accesskey,
            secretkey=secretkey,
            rootdirectory=root,
            chunksize=chunksize,
            secure=flag("secure", True),
            skipverify=flag("skipverify", False),
            maxconnections=maxconnections,
        )

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint with a scheme (``secure`` decides it when the config gave none)."""
        if self.regionendpoint is None:
            return None
        if "://" in self.regionendpoint:
            return self.regionendpoint
        return ("https://" if self.secure else "http://") + self.regionendpoint


# --------------------------------------------------------------------------- resumable SHA-256


def _load_libcrypto() -> ctypes.CDLL | None:
    """OpenSSL's libcrypto with the ``SHA256_*`` API, or ``None``."""
    candidates: list[str] = []
    found = ctypes.util.find_library("crypto")
    if found:
        candidates.append(found)
    candidates += ["libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"]
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes = [ctypes.c_void_p]
        init.restype = ctypes.c_int
        update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        update.restype = ctypes.c_int
        final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        final.restype = ctypes.c_int
        if _self_test(lib):
            return lib
    return None


def _self_test(lib: ctypes.CDLL) -> bool:
    ctx = ctypes.create_string_buffer(_ResumableSha256.CTX_SIZE)
    lib.SHA256_Init(ctx)
    lib.SHA256_Update(ctx, b"strata", 6)
    saved = ctx.raw
    ctx2 = ctypes.create_string_buffer(saved, _ResumableSha256.CTX_SIZE)
    lib.SHA256_Update(ctx2, b"!", 1)
    out = ctypes.create_string_buffer(32)
    lib.SHA256_Final(out, ctx2)
    return out.raw == hashlib.sha256(b"strata!").digest()


class _ResumableSha256:
    """SHA-256 whose state can be saved as bytes and resumed in another process.

    The state is OpenSSL's ``SHA256_CTX`` (eight 32-bit chaining words, a 64-bit length,
    a 64-byte block buffer and two counters: 112 bytes, fixed by ``openssl/sha.h``).
    """

    CTX_SIZE: ClassVar[int] = 112
    _lib: ClassVar[ctypes.CDLL | bool | None] = False  # False: not probed yet

    @classmethod
    def library(cls) -> ctypes.CDLL | None:
        """libcrypto, probed once; ``None`` when this machine cannot resume hashes."""
        if cls._lib is False:
            cls._lib = _load_libcrypto()
        lib = cls._lib
        return lib if isinstance(lib, ctypes.CDLL) else None

    @classmethod
    def available(cls) -> bool:
        """True when hash states can be saved here."""
        return cls.library() is not None

    def __init__(self, saved: bytes | None = None) -> None:
        lib = self.library()
        if lib is None:
            raise NotImplementedError("no libcrypto SHA256_* API")
        self._fns = lib
        if saved is None:
            self._ctx = ctypes.create_string_buffer(self.CTX_SIZE)
            lib.SHA256_Init(self._ctx)
        else:
            if len(saved) != self.CTX_SIZE:
                raise ValueError("bad SHA-256 state")
            self._ctx = ctypes.create_string_buffer(saved, self.CTX_SIZE)

    def update(self, data: bytes) -> None:
        self._fns.SHA256_Update(self._ctx, data, len(data))

    def save(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        copy = ctypes.create_string_buffer(self._ctx.raw, self.CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        self._fns.SHA256_Final(out, copy)
        return out.raw.hex()


# --------------------------------------------------------------------------- upload state


@dataclass(frozen=True, slots=True)
class _Part:
    number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class _Segment:
    key: str
    size: int


def _saved_hash(text: object) -> bytes | None:
    """A saved SHA-256 state, or ``None`` when it was saved in another layout (another byte
    order, another library) or is damaged: the commit then re-hashes."""
    if not isinstance(text, str) or not text.startswith(_HASH_FORMAT):
        return None
    try:
        raw = base64.b64decode(text[len(_HASH_FORMAT) :], validate=True)
    except ValueError:
        return None
    return raw if len(raw) == _ResumableSha256.CTX_SIZE else None


@dataclass(frozen=True, slots=True)
class _UploadState:
    """What ``uploads/<id>/state`` holds."""

    repository: str
    started: float
    size: int = 0
    multipart: str | None = None
    parts: tuple[_Part, ...] = ()
    segments: tuple[_Segment, ...] = ()
    sha256: bytes | None = None  # saved hash state after ``size`` bytes
    sealed: bool = False  # the bytes are complete in ``uploads/<id>/data``

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": 1,
                "repository": self.repository,
                "started": self.started,
                "size": self.size,
                "multipart": self.multipart,
                "parts": [[p.number, p.etag, p.size] for p in self.parts],
                "segments": [[s.key, s.size] for s in self.segments],
                "sha256": _HASH_FORMAT + base64.b64encode(self.sha256).decode()
                if self.sha256 is not None
                else None,
                "sealed": self.sealed,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, upload_id: str) -> _UploadState:
        try:
            doc = json.loads(raw)
            sha = doc.get("sha256")
            return cls(
                repository=str(doc["repository"]),
                started=float(doc["started"]),
                size=int(doc["size"]),
                multipart=doc.get("multipart"),
                parts=tuple(_Part(int(n), str(e), int(s)) for n, e, s in doc.get("parts", [])),
                segments=tuple(_Segment(str(k), int(s)) for k, s in doc.get("segments", [])),
                sha256=_saved_hash(sha),
                sealed=bool(doc.get("sealed", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable(
                f"upload {upload_id}: its state object is corrupt: {exc}", retryable=False
            ) from exc

    def status(self, upload_id: str) -> UploadStatus:
        return UploadStatus(id=upload_id, repository=self.repository, size=self.size, started=self.started)


def _client_error_code(exc: BaseException | None) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code") if isinstance(error, dict) else None
        return str(code) if code is not None else None
    return None


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Translate botocore/aiohttp failures into strata errors, once, at the boundary."""
    try:
        yield
    except (TimeoutError, ClientError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
        code = _client_error_code(exc)
        if code in _NOT_FOUND_CODES:
            raise NotFound(f"{what}: not found") from exc
        if code == "InvalidRange":
            raise InvalidArgument(f"{what}: the range is outside the object") from exc
        if code == "NoSuchBucket":
            raise Unavailable(f"{what}: the S3 bucket does not exist", retryable=False) from exc
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise Unavailable(
                f"{what}: S3 refused the registry's credentials ({code})", retryable=False
            ) from exc
        detail = f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"
        raise Unavailable(f"{what}: S3 request failed ({detail})") from exc


def _valid_upload_id(upload_id: str) -> str:
    try:
        return str(uuid.UUID(upload_id))
    except ValueError:
        raise NotFound(f"upload {upload_id!r} not found") from None


# --------------------------------------------------------------------------- the driver


class S3Driver:
    """A :class:`~strata.registry.server.storage.StorageDriver` on an S3-compatible bucket.

    Build it with :meth:`from_options` (the ``storage.s3`` config section), then
    ``await open()`` on the serving loop and ``await close()`` at shutdown.
    """

    name = "s3"

    def __init__(self, options: S3Options) -> None:
        self.options = options
        root = options.rootdirectory.strip("/")
        self._prefix = (root + "/" if root else "") + "docker/registry/v2/"
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        #: Objects at most this big are copied with one CopyObject; bigger ones part by part.
        self.copy_limit = MAX_PART_SIZE
        #: Whether the store honours ``If-Match`` on PutObject (cleared if it refuses it).
        self._conditional_writes = True
        #: Keys per list request (``None``: S3's maximum, 1000).
        self.page_size: int | None = None
        # Segments this process wrote lately (bounded), saving a GET when the next request
        # of the same upload lands here; purely an optimisation.
        self._segment_cache: OrderedDict[str, bytes] = OrderedDict()
        self._segment_cache_size = 0
        self._segment_cache_limit = max(4 * options.chunksize, 64 * MIB)

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Self:
        """Build a driver from the ``storage.s3`` configuration section.

        Raises:
            InvalidArgument: the section is invalid.
        """
        return cls(S3Options.parse(options))

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Connect and check that the bucket answers.

        Raises:
            Unavailable: the endpoint, the bucket or the credentials do not work.
        """
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        opts = self.options
        config = AioConfig(
            region_name=opts.region,
            s3={"addressing_style": "path" if opts.regionendpoint else "auto"},
            max_pool_connections=opts.maxconnections,
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = contextlib.AsyncExitStack()
        session = get_session()
        with _s3_errors(f"connecting to S3 bucket {opts.bucket!r}"):
            self._client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    region_name=opts.region,
                    endpoint_url=opts.endpoint_url,
                    aws_access_key_id=opts.accesskey,
                    aws_secret_access_key=opts.secretkey,
                    use_ssl=opts.secure,
                    verify=not opts.skipverify,
                    config=config,
                )
            )
        self._stack = stack
        try:
            with _s3_errors(f"S3 bucket {opts.bucket!r} at {opts.endpoint_url or 'AWS'}"):
                await self._client.head_bucket(Bucket=opts.bucket)
        except NotFound as exc:
            await self.close()
            raise Unavailable(f"S3 bucket {opts.bucket!r} does not exist", retryable=False) from exc
        except StrataError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection pool; idempotent."""
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            await stack.aclose()

    @property
    def _s3(self) -> Any:
        if self._client is None:
            raise FailedPrecondition("the S3 storage driver is not open")
        return self._client

    # ---------------------------------------------------------------- keys

    def _blob_key(self, digest: Digest) -> str:
        return f"{self._prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"

    def _repo(self, repository: str) -> str:
        return f"{self._prefix}repositories/{repository}/"

    def _layer_key(self, repository: str, digest: Digest) -> str:
        return f"{self._repo(repository)}_layers/{digest.algorithm}/{digest.hex}/link"

    def _revision_key(self, repository: str, digest: Digest) -> str:
        return f"{self._repo(repository)}_manifests/revisions/{digest.algorithm}/{digest.hex}/link"

    def _tag_key(self, repository: str, tag: str) -> str:
        return f"{self._repo(repository)}_manifests/tags/{tag}/current/link"

    def _referrers_prefix(self, repository: str, subject: Digest) -> str:
        return f"{self._repo(repository)}_referrers/{subject.algorithm}/{subject.hex}/"

    def _upload_prefix(self, upload_id: str) -> str:
        return f"{self._prefix}uploads/{upload_id}/"

    # ---------------------------------------------------------------- object primitives

    async def _get(self, key: str, what: str) -> bytes:
        with _s3_errors(what):
            resp = await self._s3.get_object(Bucket=self.options.bucket, Key=key)
            async with resp["Body"] as body:
                data: bytes = await body.read()
                return data

    async def _get_with_etag(self, key: str, what: str) -> tuple[bytes, str]:
        with _s3_errors(what):
            resp = await self._s3.get_object(Bucket=self.options.bucket, Key=key)
            async with resp["Body"] as body:
                data: bytes = await body.read()
            return data, str(resp["ETag"])

    async def _head(self, key: str, what: str) -> dict[str, Any]:
        with _s3_errors(what):
            resp: dict[str, Any] = await self._s3.head_object(Bucket=self.options.bucket, Key=key)
            return resp

    async def _exists(self, key: str, what: str) -> bool:
        try:
            await self._head(key, what)
        except NotFound:
            return False
        return True

    async def _put(self, key: str, data: bytes, what: str, **extra: Any) -> dict[str, Any]:
        with _s3_errors(what):
            resp: dict[str, Any] = await self._s3.put_object(
                Bucket=self.options.bucket, Key=key, Body=data, **extra
            )
            return resp

    async def _delete(self, key: str, what: str) -> None:
        with _s3_errors(what):
            await self._s3.delete_object(Bucket=self.options.bucket, Key=key)

    async def _delete_keys(self, keys: list[str], what: str) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with _s3_errors(what):
                resp = await self._s3.delete_objects(
                    Bucket=self.options.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise Unavailable(f"{what}: S3 could not delete {first.get('Key')}: {first.get('Code')}")

    def _pagination(self) -> dict[str, int]:
        return {"PageSize": self.page_size} if self.page_size else {}

    async def _list(self, prefix: str, what: str) -> AsyncIterator[dict[str, Any]]:
        """Every object under ``prefix`` (S3 pages through them 1000 at a time)."""
        paginator = self._s3.get_paginator("list_objects_v2")
        with _s3_errors(what):
            async for page in paginator.paginate(
                Bucket=self.options.bucket, Prefix=prefix, PaginationConfig=self._pagination()
            ):
                for obj in page.get("Contents", []):
                    yield obj

    async def _list_dirs(self, prefix: str, what: str) -> AsyncIterator[str]:
        """The names of the "directories" directly under ``prefix`` (no trailing ``/``)."""
        paginator = self._s3.get_paginator("list_objects_v2")
        with _s3_errors(what):
            async for page in paginator.paginate(
                Bucket=self.options.bucket, Prefix=prefix, Delimiter="/", PaginationConfig=self._pagination()
            ):
                for common in page.get("CommonPrefixes", []):
                    yield str(common["Prefix"])[len(prefix) :].rstrip("/")

    async def _copy(self, source: str, dest: str, size: int, what: str) -> None:
        """Server-side copy, atomic at ``dest`` (one CopyObject, or a multipart copy)."""
        bucket = self.options.bucket
        src = {"Bucket": bucket, "Key": source}
        if size <= self.copy_limit:
            with _s3_errors(what):
                await self._s3.copy_object(Bucket=bucket, Key=dest, CopySource=src)
            return
        part_size = max(self.options.chunksize, -(-size // MAX_PARTS))
        part_size = min(max(part_size, MIN_CHUNK_SIZE), self.copy_limit)
        with _s3_errors(what):
            created = await self._s3.create_multipart_upload(Bucket=bucket, Key=dest)
        upload_id = created["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(start + part_size, size) - 1
                with _s3_errors(what):
                    resp = await self._s3.upload_part_copy(
                        Bucket=bucket,
                        Key=dest,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=src,
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                parts.append({"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]})
            with _s3_errors(what):
                await self._s3.complete_multipart_upload(
                    Bucket=bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._s3.abort_multipart_upload(Bucket=bucket, Key=dest, UploadId=upload_id)
            raise

    # ---------------------------------------------------------------- blobs

    async def stat_blob(self, digest: Digest) -> BlobStat:
        """The committed blob's size.  Raises ``NotFound``."""
        try:
            head = await self._head(self._blob_key(digest), f"blob {digest}")
        except NotFound:
            raise NotFound(f"blob {digest} not found") from None
        return BlobStat(digest=digest, size=int(head["ContentLength"]))

    async def read_blob(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of a committed blob with one ranged GetObject."""
        if start < 0 or (end is not None and end < start):
            raise InvalidArgument(f"blob {digest}: bad range {start}-{end}")
        what = f"blob {digest}"
        if end is not None and end == start:
            await self.stat_blob(digest)
            return
        args: dict[str, Any] = {"Bucket": self.options.bucket, "Key": self._blob_key(digest)}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            with _s3_errors(what):
                resp = await self._s3.get_object(**args)
        except NotFound:
            raise NotFound(f"blob {digest} not found") from None
        async with resp["Body"] as body:
            while True:
                with _s3_errors(what):
                    chunk: bytes = await body.read(_READ_SIZE)
                if not chunk:
                    break
                yield chunk

    def local_path(self, digest: Digest) -> Path | None:
        """Always ``None``: S3 blobs are streamed, never sent from a local file."""
        return None

    async def put_blob(self, data: bytes) -> BlobStat:
        """Store small content (a manifest) under its digest; idempotent."""
        digest = Digest.of(data)
        key = self._blob_key(digest)
        if not await self._exists(key, f"blob {digest}"):
            await self._put(key, bytes(data), f"storing blob {digest}")
        return BlobStat(digest=digest, size=len(data))

    async def delete_blob(self, digest: Digest) -> None:
        """Remove a committed blob.  Raises ``NotFound``."""
        await self.stat_blob(digest)
        await self._delete(self._blob_key(digest), f"deleting blob {digest}")

    async def walk_blobs(self) -> AsyncIterator[BlobStat]:
        """Every committed blob."""
        prefix = f"{self._prefix}blobs/"
        async for obj in self._list(prefix, "listing blobs"):
            parts = str(obj["Key"])[len(prefix) :].split("/")
            if len(parts) != 4 or parts[3] != "data":
                continue
            try:
                digest = Digest.parse(f"{parts[0]}:{parts[2]}")
            except InvalidArgument:
                continue
            yield BlobStat(digest=digest, size=int(obj["Size"]))

    # ---------------------------------------------------------------- uploads

    async def _read_state(self, upload_id: str) -> tuple[_UploadState, str]:
        key = self._upload_prefix(upload_id) + "state"
        try:
            raw, etag = await self._get_with_etag(key, f"upload {upload_id}")
        except NotFound:
            raise NotFound(f"upload {upload_id} not found") from None
        return _UploadState.from_json(raw, upload_id), etag

    async def _write_state(
        self, upload_id: str, state: _UploadState, *, if_match: str | None, offset: int = 0
    ) -> None:
        """Replace the state; with ``if_match``, only if nobody replaced it since we read it
        (``offset``: where the client believed the upload stood, for the error).

        Raises:
            UploadOffsetError: another request changed the upload meanwhile.
        """
        key = self._upload_prefix(upload_id) + "state"
        extra: dict[str, Any] = {"ContentType": "application/json"}
        if if_match is not None and self._conditional_writes:
            extra["IfMatch"] = if_match
        try:
            await self._put(key, state.to_json(), f"upload {upload_id}", **extra)
        except Unavailable as exc:
            code = _client_error_code(exc.__cause__)
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                current, _ = await self._read_state(upload_id)
                raise UploadOffsetError(upload_id, expected=current.size, actual=offset) from exc
            if "IfMatch" in extra and code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                # An S3-compatible store without conditional writes: carry on without the
                # race check (racing PATCHes on one upload are a client error anyway).
                _log.warning(
                    "S3 store refuses If-Match (%s); upload states are written unconditionally", code
                )
                self._conditional_writes = False
                await self._put(key, state.to_json(), f"upload {upload_id}", ContentType="application/json")
                return
            raise

    async def create_upload(self, repository: str) -> UploadStatus:
        """Start an empty upload for ``repository`` (one small state object)."""
        upload_id = str(uuid.uuid4())
        state = _UploadState(
            repository=repository,
            started=time.time(),
            sha256=_ResumableSha256().save() if _ResumableSha256.available() else None,
        )
        await self._write_state(upload_id, state, if_match=None)
        return state.status(upload_id)

    async def upload_status(self, upload_id: str) -> UploadStatus:
        """Where an upload stands.  Raises ``NotFound``."""
        upload_id = _valid_upload_id(upload_id)
        state, _ = await self._read_state(upload_id)
        return state.status(upload_id)

    def _remember_segment(self, key: str, data: bytes) -> None:
        """Keep a segment's bytes for the next request on this process (a segment key is
        never rewritten, so a cached copy is always right; another process just GETs it)."""
        self._segment_cache[key] = data
        self._segment_cache_size += len(data)
        while self._segment_cache_size > self._segment_cache_limit:
            _, old = self._segment_cache.popitem(last=False)
            self._segment_cache_size -= len(old)

    def _forget_segments(self, keys: list[str]) -> None:
        for key in keys:
            old = self._segment_cache.pop(key, None)
            if old is not None:
                self._segment_cache_size -= len(old)

    async def _segment(self, key: str, what: str) -> bytes:
        cached = self._segment_cache.get(key)
        return cached if cached is not None else await self._get(key, what)

    async def _concat(self, segments: tuple[_Segment, ...] | list[_Segment], what: str) -> bytes:
        datas = await asyncio.gather(*(self._segment(s.key, what) for s in segments))
        data = b"".join(datas)
        expected = sum(s.size for s in segments)
        if len(data) != expected:
            raise Unavailable(f"{what}: stored segments hold {len(data)} bytes, expected {expected}")
        return data

    async def _upload_part(self, upload_id: str, multipart: str, number: int, data: bytes) -> _Part:
        if number > MAX_PARTS:
            raise InvalidArgument(
                f"upload {upload_id}: too large for S3 ({MAX_PARTS} parts of {self.options.chunksize} bytes)"
            )
        with _s3_errors(f"upload {upload_id}: part {number}"):
            resp = await self._s3.upload_part(
                Bucket=self.options.bucket,
                Key=self._upload_prefix(upload_id) + "data",
                UploadId=multipart,
                PartNumber=number,
                Body=data,
            )
        return _Part(number=number, etag=str(resp["ETag"]), size=len(data))

    async def _start_multipart(self, upload_id: str) -> str:
        with _s3_errors(f"upload {upload_id}: starting the multipart upload"):
            resp = await self._s3.create_multipart_upload(
                Bucket=self.options.bucket, Key=self._upload_prefix(upload_id) + "data"
            )
        return str(resp["UploadId"])

    async def append_upload(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> UploadStatus:
        """Append a stream at ``offset``; see the module docstring for how it is stored.

        Raises:
            NotFound: no such upload.
            UploadOffsetError: ``offset`` is not the upload's size, or another request
                appended meanwhile.
            FailedPrecondition: the upload is sealed (a commit re-hashed it and failed).
        """
        upload_id = _valid_upload_id(upload_id)
        state, etag = await self._read_state(upload_id)
        if offset != state.size:
            raise UploadOffsetError(upload_id, expected=state.size, actual=offset)
        if state.sealed:
            raise FailedPrecondition(
                f"upload {upload_id} was sealed by a failed commit; it can only be committed or cancelled"
            )
        what = f"upload {upload_id}"
        chunksize = self.options.chunksize
        hasher: _ResumableSha256 | None = None
        if state.sha256 is not None and _ResumableSha256.available():
            hasher = _ResumableSha256(state.sha256)
        multipart = state.multipart
        parts = list(state.parts)
        pending = list(state.segments)  # stored bytes after the last part
        pending_size = sum(s.size for s in pending)
        garbage: list[str] = []  # segments merged into ``buf``, deleted once the state says so
        buf = bytearray()  # bytes after the parts and ``pending``, not yet stored
        received = 0
        failure: Exception | None = None
        # One part uploads while the next one is received; its bytes are kept until S3 has
        # them, and go back to the front of ``buf`` if it fails, so nothing hashed is lost.
        inflight: tuple[asyncio.Task[_Part], bytes] | None = None

        async def settle() -> None:
            nonlocal inflight
            if inflight is None:
                return
            task, body = inflight
            inflight = None
            try:
                parts.append(await task)
            except BaseException:
                buf[0:0] = body
                raise

        try:
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    data = bytes(chunk)
                    if hasher is not None:
                        hasher.update(data)
                    buf += data
                    received += len(data)
                    if pending_size + len(buf) < chunksize:
                        continue
                    if pending:  # the stored tail becomes the start of the next part
                        buf[0:0] = await self._concat(pending, what)
                        garbage.extend(s.key for s in pending)
                        pending, pending_size = [], 0
                    while len(buf) >= chunksize:
                        await settle()  # at most one part in flight
                        if multipart is None:
                            multipart = await self._start_multipart(upload_id)
                        body = bytes(buf[:chunksize])
                        del buf[:chunksize]
                        task = asyncio.ensure_future(
                            self._upload_part(upload_id, multipart, len(parts) + 1, body)
                        )
                        inflight = (task, body)
            except Exception as exc:  # keep what arrived: the client resumes from the status
                failure = exc
            try:
                await settle()
            except Exception as exc:
                failure = failure or exc
        finally:
            if inflight is not None:  # cancelled: do not leave the upload running detached
                inflight[0].cancel()
        if buf:
            start = state.size + received - len(buf)
            key = f"{self._upload_prefix(upload_id)}seg-{start:015d}-{uuid.uuid4().hex[:8]}"
            tail = bytes(buf)
            try:
                await self._put(key, tail, what)
            except StrataError:
                if failure is not None:
                    raise failure from None
                raise
            self._remember_segment(key, tail)
            pending.append(_Segment(key, len(buf)))
        new_state = _UploadState(
            repository=state.repository,
            started=state.started,
            size=state.size + received,
            multipart=multipart,
            parts=tuple(parts),
            segments=tuple(pending),
            sha256=hasher.save() if hasher is not None else None,
        )
        if received or multipart != state.multipart:
            await self._write_state(upload_id, new_state, if_match=etag, offset=offset)
        if garbage:
            self._forget_segments(garbage)
            try:
                await self._delete_keys(garbage, what)
            except StrataError as exc:  # harmless: removed with the upload
                _log.warning("upload %s: could not delete merged segments: %s", upload_id, exc)
        if failure is not None:
            raise failure
        return new_state.status(upload_id)

    async def _finish_multipart(self, upload_id: str, state: _UploadState) -> int:
        """Upload the segments as the last part and complete the multipart upload into
        ``uploads/<id>/data``; returns its size."""
        assert state.multipart is not None
        what = f"upload {upload_id}"
        data_key = self._upload_prefix(upload_id) + "data"
        try:  # a commit that died after completing it leaves it complete: use it
            head = await self._head(data_key, what)
        except NotFound:
            pass
        else:
            return int(head["ContentLength"])
        parts = list(state.parts)
        if state.segments:
            body = await self._concat(state.segments, what)
            parts.append(await self._upload_part(upload_id, state.multipart, len(parts) + 1, body))
        with _s3_errors(what):
            await self._s3.complete_multipart_upload(
                Bucket=self.options.bucket,
                Key=data_key,
                UploadId=state.multipart,
                MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
            )
        return sum(p.size for p in parts)

    async def _hash_object(self, key: str, algorithm: str, what: str) -> str:
        hasher = hashlib.new(algorithm)
        with _s3_errors(what):
            resp = await self._s3.get_object(Bucket=self.options.bucket, Key=key)
            async with resp["Body"] as body:
                while True:
                    chunk = await body.read(1 << 20)
                    if not chunk:
                        break
                    hasher.update(chunk)
        return hasher.hexdigest()

    async def commit_upload(self, upload_id: str, digest: Digest) -> BlobStat:
        """Verify the upload hashes to ``digest``, then make it the blob ``digest``.

        Raises:
            NotFound: no such upload.
            DigestMismatch: the bytes hash to something else; nothing becomes visible and
                the upload stays (sealed if it had to be re-hashed from S3).
        """
        upload_id = _valid_upload_id(upload_id)
        state, etag = await self._read_state(upload_id)
        what = f"upload {upload_id}"
        final = self._blob_key(digest)
        if digest.algorithm not in hashlib.algorithms_available:
            raise DigestMismatch(
                f"upload {upload_id}: cannot verify a {digest.algorithm} digest",
                expected=str(digest),
                actual="",
            )

        def mismatch(actual_hex: str) -> DigestMismatch:
            return DigestMismatch(
                f"upload {upload_id}: content is {digest.algorithm}:{actual_hex}, not {digest}",
                expected=str(digest),
                actual=f"{digest.algorithm}:{actual_hex}",
            )

        data_key = self._upload_prefix(upload_id) + "data"
        if not state.sealed and state.multipart is None:
            # Everything is in segments, less than one part: verify in memory, one PutObject.
            data = await self._concat(state.segments, what)
            actual = hashlib.new(digest.algorithm, data).hexdigest()
            if actual != digest.hex:
                raise mismatch(actual)
            if not await self._exists(final, f"blob {digest}"):
                await self._put(final, data, f"storing blob {digest}")
            await self._drop_upload(upload_id)
            return BlobStat(digest=digest, size=len(data))

        if (
            not state.sealed
            and digest.algorithm == "sha256"
            and state.sha256 is not None
            and _ResumableSha256.available()
        ):
            actual = _ResumableSha256(state.sha256).hexdigest()
            if actual != digest.hex:
                raise mismatch(actual)
            if await self._exists(final, f"blob {digest}"):
                await self._drop_upload(upload_id)
                return BlobStat(digest=digest, size=state.size)
            size = await self._finish_multipart(upload_id, state)
        else:
            if not state.sealed:
                size = await self._finish_multipart(upload_id, state)
                sealed = _UploadState(
                    repository=state.repository, started=state.started, size=size, sealed=True
                )
                await self._write_state(upload_id, sealed, if_match=etag)
            else:
                size = state.size
            actual = await self._hash_object(data_key, digest.algorithm, what)
            if actual != digest.hex:
                raise mismatch(actual)
        if size != state.size:
            raise Unavailable(f"{what}: S3 assembled {size} bytes, the upload had {state.size}")
        if not await self._exists(final, f"blob {digest}"):
            await self._copy(data_key, final, size, f"storing blob {digest}")
        await self._drop_upload(upload_id)
        return BlobStat(digest=digest, size=size)

    async def _drop_upload(self, upload_id: str) -> bool:
        """Abort the upload's multipart uploads and delete its objects; True if any existed."""
        prefix = self._upload_prefix(upload_id)
        what = f"upload {upload_id}"
        found = False
        with _s3_errors(what):
            resp = await self._s3.list_multipart_uploads(Bucket=self.options.bucket, Prefix=prefix)
        for mpu in resp.get("Uploads", []):
            found = True
            try:
                with _s3_errors(what):
                    await self._s3.abort_multipart_upload(
                        Bucket=self.options.bucket, Key=mpu["Key"], UploadId=mpu["UploadId"]
                    )
            except NotFound:
                pass
        keys = [str(obj["Key"]) async for obj in self._list(prefix, what)]
        self._forget_segments(keys)
        if keys:  # the state goes last: while it exists the upload is listed, so GC can retry
            found = True
            await self._delete_keys([k for k in keys if not k.endswith("/state")], what)
            await self._delete_keys([k for k in keys if k.endswith("/state")], what)
        return found

    async def cancel_upload(self, upload_id: str) -> None:
        """Drop an upload, its multipart upload and its segments.  Raises ``NotFound``."""
        upload_id = _valid_upload_id(upload_id)
        if not await self._drop_upload(upload_id):
            raise NotFound(f"upload {upload_id} not found")

    async def purge_upload(self, upload_id: str) -> None:
        """Remove whatever an upload left (GC); no error if it is already gone."""
        try:
            upload_id = _valid_upload_id(upload_id)
        except NotFound:
            return
        await self._drop_upload(upload_id)

    async def list_uploads(self) -> AsyncIterator[UploadStatus]:
        """Every upload in progress, including remains without a state (started 0)."""
        async for name in self._list_dirs(f"{self._prefix}uploads/", "listing uploads"):
            try:
                upload_id = _valid_upload_id(name)
            except NotFound:
                continue
            try:
                state, _ = await self._read_state(upload_id)
            except NotFound:
                yield UploadStatus(id=upload_id, repository="", size=0, started=0.0)
                continue
            yield state.status(upload_id)

    # ---------------------------------------------------------------- repositories

    async def link_blob(self, repository: str, digest: Digest) -> None:
        """Make a committed blob servable through ``repository`` (idempotent)."""
        await self._put(
            self._layer_key(repository, digest), str(digest).encode(), f"linking {digest} into {repository}"
        )

    async def has_blob_link(self, repository: str, digest: Digest) -> bool:
        """True if ``repository`` links ``digest``."""
        return await self._exists(self._layer_key(repository, digest), f"link of {digest} in {repository}")

    async def unlink_blob(self, repository: str, digest: Digest) -> None:
        """Remove a blob link.  Raises ``NotFound``."""
        key = self._layer_key(repository, digest)
        if not await self._exists(key, f"link of {digest} in {repository}"):
            raise NotFound(f"blob {digest} is not linked in {repository}")
        await self._delete(key, f"unlinking {digest} from {repository}")

    async def _digests_under(self, prefix: str, what: str, suffix: str) -> AsyncIterator[Digest]:
        async for obj in self._list(prefix, what):
            parts = str(obj["Key"])[len(prefix) :].split("/")
            if len(parts) != 3 or parts[2] != suffix:
                continue
            try:
                yield Digest.parse(f"{parts[0]}:{parts[1]}")
            except InvalidArgument:
                continue

    async def list_blob_links(self, repository: str) -> AsyncIterator[Digest]:
        """The blobs ``repository`` links."""
        async for digest in self._digests_under(
            f"{self._repo(repository)}_layers/", f"listing blobs of {repository}", "link"
        ):
            yield digest

    async def put_manifest(self, repository: str, digest: Digest, media_type: str) -> None:
        """Record a manifest revision (link body: the digest; metadata: its media type)."""
        await self._put(
            self._revision_key(repository, digest),
            str(digest).encode(),
            f"manifest {digest} in {repository}",
            Metadata={"media-type": media_type},
        )

    async def get_manifest(self, repository: str, digest: Digest) -> str:
        """The media type of a manifest revision.  Raises ``NotFound``."""
        try:
            head = await self._head(self._revision_key(repository, digest), f"manifest {digest}")
        except NotFound:
            raise NotFound(f"manifest {digest} not found in {repository}") from None
        metadata = head.get("Metadata") or {}
        return str(metadata.get("media-type", ""))

    async def delete_manifest(self, repository: str, digest: Digest) -> None:
        """Remove a manifest revision (not its blob).  Raises ``NotFound``."""
        await self.get_manifest(repository, digest)
        await self._delete(self._revision_key(repository, digest), f"deleting manifest {digest}")

    async def list_manifests(self, repository: str) -> AsyncIterator[Digest]:
        """The manifest revisions of ``repository``."""
        async for digest in self._digests_under(
            f"{self._repo(repository)}_manifests/revisions/", f"listing manifests of {repository}", "link"
        ):
            yield digest

    async def put_tag(self, repository: str, tag: str, digest: Digest) -> None:
        """Point ``tag`` at a manifest digest (one PutObject: atomic)."""
        await self._put(self._tag_key(repository, tag), str(digest).encode(), f"tag {repository}:{tag}")

    async def get_tag(self, repository: str, tag: str) -> Digest:
        """The manifest digest ``tag`` points at.  Raises ``NotFound``."""
        try:
            raw = await self._get(self._tag_key(repository, tag), f"tag {repository}:{tag}")
        except NotFound:
            raise NotFound(f"tag {tag} not found in {repository}") from None
        try:
            return Digest.parse(raw.decode().strip())
        except (InvalidArgument, UnicodeDecodeError) as exc:
            raise Unavailable(f"tag {repository}:{tag}: its link object is corrupt", retryable=False) from exc

    async def delete_tag(self, repository: str, tag: str) -> None:
        """Remove a tag.  Raises ``NotFound``."""
        key = self._tag_key(repository, tag)
        if not await self._exists(key, f"tag {repository}:{tag}"):
            raise NotFound(f"tag {tag} not found in {repository}")
        await self._delete(key, f"deleting tag {repository}:{tag}")

    async def _repository_exists(self, repository: str) -> bool:
        async for name in self._list_dirs(self._repo(repository), f"repository {repository}"):
            if name in ("_layers", "_manifests", "_referrers"):
                return True
        return False

    async def list_tags(self, repository: str) -> list[str]:
        """The tags of ``repository``.  Raises ``NotFound`` for an unknown repository."""
        prefix = f"{self._repo(repository)}_manifests/tags/"
        tags = [t async for t in self._list_dirs(prefix, f"listing tags of {repository}")]
        if not tags and not await self._repository_exists(repository):
            raise NotFound(f"repository {repository} not found")
        return tags

    async def add_referrer(self, repository: str, subject: Digest, digest: Digest, descriptor: bytes) -> None:
        """Record that manifest ``digest`` refers to ``subject`` (``descriptor``: its JSON)."""
        key = f"{self._referrers_prefix(repository, subject)}{digest.algorithm}/{digest.hex}"
        await self._put(
            key, bytes(descriptor), f"referrer {digest} of {subject}", ContentType="application/json"
        )

    async def remove_referrer(self, repository: str, subject: Digest, digest: Digest) -> None:
        """Forget the referrer ``digest`` of ``subject`` (no error if absent)."""
        key = f"{self._referrers_prefix(repository, subject)}{digest.algorithm}/{digest.hex}"
        await self._delete(key, f"referrer {digest} of {subject}")

    async def list_referrers(self, repository: str, subject: Digest) -> list[bytes]:
        """The descriptors recorded for ``subject`` (empty if none), in key order."""
        prefix = self._referrers_prefix(repository, subject)
        what = f"referrers of {subject}"
        keys = [str(obj["Key"]) async for obj in self._list(prefix, what)]
        results: list[bytes] = []
        for start in range(0, len(keys), 32):
            batch = keys[start : start + 32]
            got = await asyncio.gather(*(self._get(k, what) for k in batch), return_exceptions=True)
            for item in got:
                if isinstance(item, NotFound):  # removed meanwhile
                    continue
                if isinstance(item, BaseException):
                    raise item
                results.append(item)
        return results

    async def list_repositories(self) -> AsyncIterator[str]:
        """Every repository name (a depth-first walk of the ``repositories/`` "directories")."""
        root = f"{self._prefix}repositories/"
        stack = [""]
        while stack:
            name = stack.pop()
            prefix = root + (name + "/" if name else "")
            is_repository = False
            children: list[str] = []
            async for child in self._list_dirs(prefix, "listing repositories"):
                if child.startswith("_"):
                    is_repository = is_repository or child in ("_layers", "_manifests", "_referrers")
                else:
                    children.append(f"{name}/{child}" if name else child)
            if is_repository and name:
                yield name
            stack.extend(reversed(children))
