"""Pull: fetch an image from a registry into the content store and record it.

The steps, as docker and containerd take them:

1. resolve the reference to a manifest (``Accept``: every OCI/Docker manifest and index type;
   an index is narrowed to ``platform``, the host's by default); every manifest is verified
   against the digest asked for and the ``Docker-Content-Digest`` announced;
2. fetch the config;
3. fetch the layers in a bounded thread pool.  Each layer streams into
   ``LocalStore.writer(ref, expected=desc)`` (size and digest verified while streaming;
   nothing is published on a mismatch).  As soon as a layer's blob is verified, its
   extraction into a snapshot starts (:class:`strata.images.ImageUnpack`, in worker
   processes) while the other layers are still downloading.  On a snapshotter that can
   rebase (overlay) the bytes are fed to the extraction as they arrive
   (:meth:`ImageUnpack.stream`), so download, decompression and extraction overlap; the
   feed is closed (and the snapshot may be committed) only after the content store verified
   the blob's digest, and aborted otherwise.  Without a snapshotter, the
   bytes are teed as they arrive into a thread that scans them (diff_id, sizes), so that
   when the last byte arrives the layer is done.
   A broken connection resumes with ``Range`` from the bytes already written; a layer whose
   blob is already in the store is skipped (``Already exists``); foreign layers are fetched
   from their ``urls``;
4. record the image with :func:`strata.images.store_images`, as ``load`` does.

All of it happens under a content lease; a failed pull removes the blobs it added.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from strata.content import BlobWriter, LocalStore
from strata.errors import (
    DigestMismatch,
    InvalidContent,
    NotFound,
    NotSupported,
    SizeMismatch,
    StrataError,
    Unavailable,
)
from strata.images import (
    Extractor,
    ImageStore,
    ImageToStore,
    ImageUnpack,
    LayerFacts,
    LayerFeed,
    store_images,
)
from strata.layers import LayerStats, open_decompressed, scan
from strata.oci import (
    Descriptor,
    Digest,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    Reference,
    mediatypes,
)
from strata.progress import Progress, ProgressEvent, Stage, no_progress
from strata.registry.client.errors import RegistryUnavailable
from strata.registry.client.pipe import ChunkPipe
from strata.registry.client.remote import FetchedManifest, RegistryClient, Repository
from strata.registry.client.sources import BlobSources
from strata.registry.client.transport import Response, read_chunks
from strata.snapshots import Snapshotter

__all__ = ["FetchedImage", "PullOptions", "PullResult", "fetch_image", "pull"]

log = logging.getLogger(__name__)

_PROGRESS_STEP = 512 << 10
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PullOptions:
    """How to pull.

    Attributes:
        platform: which manifest of an index (default: the host's).
        workers: layers downloaded at once.
        snapshotter: unpack the layers into it as they stream in (docker's pull extracts);
            None: only scan them (diff_id and sizes, for the image record).
        extractor: the worker processes extracting layers (default: a private pool).
        scan: with no snapshotter, scan each layer while it downloads (``copy`` does not
            need to).
    """

    platform: Platform | None = None
    workers: int = 4
    snapshotter: Snapshotter | None = None
    extractor: Extractor | None = None
    scan: bool = True


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull did.

    Attributes:
        reference: the reference pulled.
        digest: the digest the reference resolved to (an index's for multi-platform
            images), printed as ``Digest:`` like docker.
        manifest: the platform manifest recorded.
        image_id: the config digest.
        updated: False when the name already pointed at this manifest ("up to date").
        downloaded: layer digests fetched.
        existing: layer digests that were already in the store.
        bytes_downloaded: layer bytes received.
    """

    reference: Reference
    digest: Digest
    manifest: Descriptor
    image_id: Digest
    updated: bool
    downloaded: tuple[Digest, ...] = ()
    existing: tuple[Digest, ...] = ()
    bytes_downloaded: int = 0


@dataclass(slots=True)
class FetchedImage:
    """An image whose blobs are now in the content store (not yet recorded)."""

    top: FetchedManifest
    manifest: Descriptor
    raw_manifest: bytes
    config: ImageConfig
    facts: list[LayerFacts] = field(default_factory=list)
    chain_id: Digest | None = None
    downloaded: list[Digest] = field(default_factory=list)
    existing: list[Digest] = field(default_factory=list)
    bytes_downloaded: int = 0


def _short(digest: Digest) -> str:
    return digest.short()


def resolve(repo: Repository, ref: Reference, platform: Platform | None
            ) -> tuple[FetchedManifest, FetchedManifest]:
    """The manifest the reference names and the platform manifest it leads to (the same
    one for a single-platform image).

    Raises:
        NoMatchingPlatform: an index without the wanted platform.
        DigestMismatch: a manifest does not match its digest.
    """
    ident = str(ref.digest) if ref.digest is not None else (ref.tag or "latest")
    top = repo.get_manifest(ident)
    current = top
    for _ in range(4):
        if not mediatypes.is_index(current.media_type):
            return top, current
        index = Index.parse(current.raw, f"index {ref}")
        chosen = index.select(platform or Platform.host())
        current = repo.get_manifest(str(chosen.digest))
        if current.digest != chosen.digest:
            raise DigestMismatch(f"manifest {chosen.digest}: got {current.digest}",
                                 expected=str(chosen.digest), actual=str(current.digest))
    raise InvalidContent(f"{ref}: indexes nest too deeply")


class _Layer:
    """One layer's download, teeing into the store and into an extraction or a scan."""

    def __init__(self, puller: _Puller, index: int, desc: Descriptor,
                 unpack: Callable[[int, Descriptor], None] | None,
                 stream: Callable[[int, Descriptor], LayerFeed] | None = None) -> None:
        self.puller = puller
        self.index = index
        self.desc = desc
        self.unpack = unpack  # starts the layer's extraction from its committed blob
        self.stream = stream  # or: starts it now, fed with the bytes as they arrive
        self.id = _short(desc.digest)

    def run(self) -> LayerFacts | None:
        p = self.puller
        desc = self.desc
        ref = f"pull-{desc.digest}"
        writer = p.content.writer(ref, desc)
        pipe: ChunkPipe | LayerFeed | None = None
        consumer: cf.Future[LayerStats] | None = None
        feed: LayerFeed | None = None
        try:
            if self.stream is not None:
                # Extraction starts now and consumes the bytes as they arrive; the snapshot
                # is committed only if the feed is closed, i.e. after the digest verified.
                pipe = feed = self.stream(self.index, desc)
            elif self.unpack is None and p.scan:
                pipe = ChunkPipe()
                consumer = p.consumers.submit(self._scan, pipe)
        except BaseException:
            writer.close()
            raise
        try:
            if writer.offset:
                # Resumed from an interrupted pull: the consumer needs the bytes already held.
                self._replay(ref, writer.offset, pipe)
            self._download(writer, pipe)
            p.progress(ProgressEvent(self.id, Stage.VERIFYING, desc.size, desc.size))
            committed = writer.commit()
        except BaseException as exc:
            if feed is not None:
                feed.abort(exc)
            elif isinstance(pipe, ChunkPipe):
                pipe.close(exc if isinstance(exc, Exception) else None)
            if consumer is not None:
                cf.wait([consumer])
            if isinstance(exc, StrataError) and not isinstance(exc, RegistryUnavailable):
                writer.abort()
            else:
                writer.close()
            raise
        p.added(committed.digest)
        if pipe is not None:
            pipe.close()  # a LayerFeed: verified, the extraction may finish and commit
        if self.unpack is not None:
            # Verified and published: extract it now, while other layers still download.
            self.unpack(self.index, desc)
        p.progress(ProgressEvent(self.id, Stage.DOWNLOAD_COMPLETE, desc.size, desc.size))
        if consumer is None:
            return None
        p.progress(ProgressEvent(self.id, Stage.EXTRACTING, desc.size, desc.size))
        stats = consumer.result()
        want = p.config.rootfs.diff_ids[self.index]
        if stats.diff_id != want:
            raise DigestMismatch(
                f"layer {desc.digest}: its content has diff_id {stats.diff_id}, the config says"
                f" {want}", expected=str(want), actual=str(stats.diff_id))
        p.progress(ProgressEvent(self.id, Stage.PULL_COMPLETE, desc.size, desc.size))
        return LayerFacts(stats.diff_id, stats.size, stats.disk_size, stats.entries)

    def _scan(self, pipe: ChunkPipe) -> LayerStats:
        compression = mediatypes.layer_compression(self.desc.media_type)
        try:
            with open_decompressed(cast(BinaryIO, pipe), compression) as tar:
                return scan(tar)
        finally:
            pipe.abandon()

    def _tee(self, chunk: bytes, pipe: ChunkPipe | LayerFeed | None) -> None:
        if isinstance(pipe, ChunkPipe):
            pipe.feed(chunk)
        elif pipe is not None:
            pipe.write(chunk)

    def _replay(self, ref: str, offset: int, pipe: ChunkPipe | LayerFeed | None) -> None:
        if pipe is None:
            return
        try:
            with open(self.puller.content.ingest_dir(ref) / "data", "rb") as f:
                left = offset
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    self._tee(chunk, pipe)
        except OSError as exc:
            raise Unavailable(f"reading the ingest of {self.desc.digest}: {exc.strerror}") from exc

    def _download(self, w: BlobWriter, pipe: ChunkPipe | LayerFeed | None) -> None:
        p = self.puller
        desc = self.desc
        failures = 0
        last_report = 0
        p.progress(ProgressEvent(self.id, Stage.DOWNLOADING, w.offset, desc.size))
        while w.offset < desc.size:
            offset = w.offset
            try:
                resp = p.open_layer(desc, offset)
            except RegistryUnavailable:
                failures += 1
                if failures > p.retries:
                    raise
                p.progress(ProgressEvent(self.id, Stage.RETRYING, offset, desc.size,
                                         detail=f"attempt {failures}"))
                time.sleep(min(0.2 * 2 ** (failures - 1), 5.0))
                continue
            skip = offset if (offset and resp.status == 200) else 0
            progressed = False
            try:
                for chunk in read_chunks(resp):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    if w.offset + len(chunk) > desc.size:
                        raise SizeMismatch(f"blob {desc.digest}: the registry sent more than"
                                           f" {desc.size} bytes", expected=desc.size,
                                           actual=w.offset + len(chunk))
                    w.write(chunk)
                    progressed = True
                    self._tee(chunk, pipe)
                    if w.offset - last_report >= _PROGRESS_STEP:
                        last_report = w.offset
                        p.progress(ProgressEvent(self.id, Stage.DOWNLOADING, w.offset, desc.size))
                    p.count(len(chunk))
            except RegistryUnavailable:
                failures = 0 if progressed else failures + 1
                if failures > p.retries:
                    raise
                p.progress(ProgressEvent(self.id, Stage.RETRYING, w.offset, desc.size,
                                         detail="connection broken, resuming"))
                continue
            finally:
                resp.release_conn()
            if w.offset < desc.size:
                # The body ended early without an error: resume from where it stopped.
                failures = 0 if progressed else failures + 1
                if failures > p.retries:
                    raise SizeMismatch(f"blob {desc.digest}: got {w.offset} bytes, expected"
                                       f" {desc.size}", expected=desc.size, actual=w.offset)
        p.progress(ProgressEvent(self.id, Stage.DOWNLOADING, w.offset, desc.size))


class _Puller:
    def __init__(self, client: RegistryClient, content: LocalStore, repo: Repository,
                 config: ImageConfig, options: PullOptions, progress: Progress) -> None:
        self.client = client
        self.content = content
        self.repo = repo
        self.config = config
        self.scan = options.scan
        self.progress = progress
        self.retries = client.options.retries
        self.workers = max(1, options.workers)
        self.consumers = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="strata-extract")
        self._lock = threading.Lock()
        self._added: list[Digest] = []
        self.bytes = 0

    def added(self, digest: Digest) -> None:
        with self._lock:
            self._added.append(digest)

    def added_digests(self) -> list[Digest]:
        with self._lock:
            return list(self._added)

    def count(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def open_layer(self, desc: Descriptor, offset: int) -> Response:
        """Open a layer download: from its ``urls`` for a foreign layer, else from the
        registry."""
        if desc.urls and mediatypes.is_non_distributable(desc.media_type):
            last: StrataError | None = None
            for url in desc.urls:
                try:
                    return self.repo.transport.open_url(url, offset=offset)
                except StrataError as exc:
                    last = exc
            log.debug("foreign layer %s: urls failed (%s); trying the registry", desc.digest, last)
        return self.repo.open_blob(desc.digest, offset=offset)


def fetch_image(client: RegistryClient, content: LocalStore, ref: Reference, *,
                options: PullOptions | None = None, progress: Progress = no_progress,
                added: list[Digest] | None = None) -> FetchedImage:
    """Bring an image's manifest(s), config and layers into the content store.

    Call under a content lease; the blobs are not recorded as an image.

    Args:
        added: receives the digest of every blob this call added to the store (also on
            failure), for a rollback.

    Raises:
        NotFound: no such repository, tag or digest.
        Unauthorized: the registry refused access.
        DigestMismatch / SizeMismatch: a blob or manifest is not what was announced.
        NoMatchingPlatform: an index without the wanted platform.
    """
    opts = options or PullOptions()
    repo = client.repository(ref)
    top, fetched = resolve(repo, ref, opts.platform)
    manifest = Manifest.parse(fetched.raw, f"manifest {ref}@{fetched.digest}")
    if not manifest.is_image:
        raise NotSupported(f"{ref} is not an image (config media type"
                           f" {manifest.config.media_type}); use manifest inspect / referrers")
    if content.exists(manifest.config.digest):
        raw_config = content.read(manifest.config.digest)
        content.leases.add_current(manifest.config.digest)
    else:
        raw_config = repo.read_blob(manifest.config.digest)
    config = ImageConfig.parse(raw_config, f"config {manifest.config.digest}")
    if len(config.rootfs.diff_ids) != len(manifest.layers):
        raise InvalidContent(f"{ref}: the manifest has {len(manifest.layers)} layers, the config"
                             f" {len(config.rootfs.diff_ids)} diff_ids")
    result = FetchedImage(top, fetched.descriptor, fetched.raw, config)

    added_here = added if added is not None else []

    def put(data: bytes, media_type: str, digest: Digest) -> None:
        existed = content.exists(digest)
        content.put(data, media_type, digest)
        if not existed:
            added_here.append(digest)

    puller = _Puller(client, content, repo, config, opts, progress)
    diff_ids = config.rootfs.diff_ids
    # Extraction events name layers by diff_id; the CLI shows one row per blob digest.
    by_diff = {d.short(): manifest.layers[i].digest.short() for i, d in enumerate(diff_ids)}

    def unpack_progress(event: ProgressEvent) -> None:
        progress(ProgressEvent(by_diff.get(event.id, event.id), event.stage, event.current,
                               event.total, event.detail))

    job: ImageUnpack | None = None
    if opts.snapshotter is not None:
        job = ImageUnpack(opts.snapshotter, diff_ids, extractor=opts.extractor,
                          progress=unpack_progress)

    def unpack(index: int, desc: Descriptor) -> None:
        assert job is not None
        job.blob(index, content.blob_path(desc.digest),
                 mediatypes.layer_compression(desc.media_type))

    def stream(index: int, desc: Descriptor) -> LayerFeed:
        assert job is not None
        return job.stream(index, mediatypes.layer_compression(desc.media_type))

    # Streaming needs every layer's extraction to start at once (a rebasing snapshotter,
    # e.g. overlay): on one that applies layers in order, a layer waits for its parent's
    # commit, which only ``wait`` does after the downloads, so its feed would never drain.
    streaming = job is not None and job.overlay
    try:
        needed = set(job.needed) if job is not None else set()
        jobs: list[_Layer] = []
        later: list[int] = []  # needed layers whose blob another index downloads
        downloading: set[Digest] = set()
        for i, desc in enumerate(manifest.layers):
            compression = mediatypes.layer_compression(desc.media_type)
            if content.exists(desc.digest):
                content.leases.add_current(desc.digest)
                if desc.digest not in result.existing:
                    result.existing.append(desc.digest)
                    progress(ProgressEvent(_short(desc.digest), Stage.EXISTS, desc.size, desc.size))
                if job is not None and i in needed:
                    job.blob(i, content.blob_path(desc.digest), compression)
                continue
            if desc.digest in downloading:
                if i in needed:
                    later.append(i)
                continue
            downloading.add(desc.digest)
            extract = job is not None and i in needed
            jobs.append(_Layer(puller, i, desc, unpack if extract and not streaming else None,
                               stream if extract and streaming else None))
            progress(ProgressEvent(_short(desc.digest), Stage.WAITING, 0, desc.size))
        if jobs:
            with cf.ThreadPoolExecutor(puller.workers, thread_name_prefix="strata-pull") as pool:
                futures = [pool.submit(job_.run) for job_ in jobs]
                try:
                    for future in cf.as_completed(futures):
                        facts = future.result()
                        if facts is not None:
                            result.facts.append(facts)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        result.downloaded = [j.desc.digest for j in jobs]
        if job is not None:
            for i in later:
                desc = manifest.layers[i]
                job.blob(i, content.blob_path(desc.digest),
                         mediatypes.layer_compression(desc.media_type))
            result.chain_id = job.wait()
            for _, stats in sorted(job.stats().items()):
                result.facts.append(LayerFacts(stats.diff_id, stats.size, stats.disk_size,
                                               stats.entries))
        put(raw_config, manifest.config.media_type, manifest.config.digest)
        put(fetched.raw, fetched.media_type, fetched.digest)
        if top.digest != fetched.digest:
            put(top.raw, top.media_type, top.digest)
    finally:
        if job is not None:
            job.close()
        puller.consumers.shutdown(wait=True)
        added_here.extend(puller.added_digests())
        result.bytes_downloaded = puller.bytes
    return result


def _rollback(content: LocalStore, lease_id: str, added: Sequence[Digest]) -> None:
    others = content.leases.protected(exclude=lease_id)
    for digest in added:
        if str(digest) in others:
            continue
        try:
            content.delete(digest)
        except NotFound:
            continue


def pull(client: RegistryClient, content: LocalStore, images: ImageStore, ref: Reference, *,
         options: PullOptions | None = None, progress: Progress = no_progress,
         sources: BlobSources | None = None) -> PullResult:
    """Pull ``ref`` and record it under its name (see the module docstring).

    Raises:
        NotFound: no such repository, tag or digest.
        Unauthorized: the registry refused access.
        DigestMismatch / SizeMismatch: a blob or manifest is not what was announced;
            nothing is stored.
        NoMatchingPlatform: an index without the wanted platform.
    """
    added: list[Digest] = []
    with content.lease(label=f"pull {ref}") as lease:
        try:
            fetched = fetch_image(client, content, ref, options=options, progress=progress,
                                  added=added)
            previous = images.find(str(ref))
            if fetched.facts:
                images.put_many([], layers=fetched.facts)
            store_images(content, images, [ImageToStore([ref], fetched.manifest)],
                         progress=progress)
        except BaseException:
            _rollback(content, lease.id, added)
            raise
    if sources is not None:
        manifest = Manifest.parse(fetched.raw_manifest)
        sources.add([manifest.config.digest, *(d.digest for d in manifest.layers)],
                    ref.registry, ref.repository)
    updated = previous is None or previous.target.digest != fetched.manifest.digest
    return PullResult(
        reference=ref,
        digest=fetched.top.digest,
        manifest=fetched.manifest,
        image_id=Manifest.parse(fetched.raw_manifest).config.digest,
        updated=updated,
        downloaded=tuple(fetched.downloaded),
        existing=tuple(fetched.existing),
        bytes_downloaded=fetched.bytes_downloaded,
    )
