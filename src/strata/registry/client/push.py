"""Push: send an image from the content store to a registry, never resending what it has.

For each blob (layers, then the config), in a bounded thread pool:

1. ``HEAD`` it in the target repository: present -> ``Layer already exists``;
2. else, when the blob is known to live in another repository of the same registry (it was
   pulled from or pushed there: :class:`BlobSources`), ask for a cross-repository mount
   (``POST …/blobs/uploads/?mount=<digest>&from=<repo>``): ``201`` -> ``Mounted from``;
3. else upload it: one monolithic ``PUT ?digest=`` or, with a chunk size, ``PATCH`` chunks
   with ``Content-Range`` then a final ``PUT ?digest=``.

Then the manifest is ``PUT`` under the tag (or its digest), and its digest is checked against
the one the registry announces.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from strata.content import LocalStore
from strata.errors import InvalidArgument, StrataError
from strata.images import Image
from strata.oci import Descriptor, Digest, Reference, mediatypes
from strata.progress import Progress, ProgressEvent, Stage, no_progress
from strata.registry.client.remote import RegistryClient, Repository
from strata.registry.client.sources import BlobSources

__all__ = ["PushOptions", "PushResult", "push", "push_blobs"]


@dataclass(frozen=True, slots=True)
class PushOptions:
    """How to push.

    Attributes:
        workers: blobs sent at once.
        chunk_size: upload blobs larger than this in PATCH chunks (None: monolithic PUT).
        mount: try cross-repository mounts for blobs known in other repositories.
    """

    workers: int = 4
    chunk_size: int | None = None
    mount: bool = True


@dataclass(frozen=True, slots=True)
class PushResult:
    """``<tag>: digest: <digest> size: <size>``, and what happened to the blobs."""

    reference: Reference
    digest: Digest
    size: int
    uploaded: tuple[Digest, ...] = ()
    mounted: tuple[Digest, ...] = ()
    existing: tuple[Digest, ...] = ()
    bytes_uploaded: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    digest: Digest
    how: str  # "exists" | "mounted" | "uploaded"
    size: int


def _push_one(repo: Repository, content: LocalStore, desc: Descriptor, options: PushOptions,
              sources: BlobSources | None, progress: Progress, short: str) -> _Outcome:
    if repo.head_blob(desc.digest, push=True) is not None:
        progress(ProgressEvent(short, Stage.LAYER_EXISTS, desc.size, desc.size))
        return _Outcome(desc.digest, "exists", 0)
    location: str | None = None
    if options.mount and sources is not None:
        for source in sources.repositories(desc.digest, repo.registry):
            if source == repo.name:
                continue
            try:
                location = repo.mount_blob(desc.digest, source)
            except StrataError:
                location = None
                continue
            if location is None:
                progress(ProgressEvent(short, Stage.MOUNTED, desc.size, desc.size, detail=source))
                return _Outcome(desc.digest, "mounted", 0)
            break
    progress(ProgressEvent(short, Stage.PUSHING, 0, desc.size))

    def open_blob() -> BinaryIO:
        return content.open(desc.digest)

    def report(sent: int) -> None:
        progress(ProgressEvent(short, Stage.PUSHING, sent, desc.size))

    repo.upload_blob(desc, open_blob, location=location, chunk_size=options.chunk_size,
                     on_progress=report)
    progress(ProgressEvent(short, Stage.PUSHED, desc.size, desc.size))
    return _Outcome(desc.digest, "uploaded", desc.size)


def push_blobs(repo: Repository, content: LocalStore, blobs: Sequence[Descriptor], *,
               options: PushOptions | None = None, sources: BlobSources | None = None,
               progress: Progress = no_progress,
               labels: Mapping[Digest, str] | None = None) -> list[_Outcome]:
    """Make sure the repository holds every blob (HEAD, mount, or upload), in parallel.

    Progress events name a blob by ``labels[digest]`` (docker shows a pushed layer's short
    diff_id); a blob without a label is pushed silently, as docker pushes the config.
    Without ``labels`` every blob reports under its short digest.
    """
    opts = options or PushOptions()
    unique: dict[Digest, Descriptor] = {}
    for desc in blobs:
        unique.setdefault(desc.digest, desc)

    def reporter(digest: Digest) -> tuple[str, Progress]:
        if labels is None:
            return digest.short(), progress
        label = labels.get(digest)
        return (label, progress) if label is not None else (digest.short(), no_progress)

    reporters = {digest: reporter(digest) for digest in unique}
    for desc in unique.values():
        label, report = reporters[desc.digest]
        report(ProgressEvent(label, Stage.PREPARING, 0, desc.size))
    out: list[_Outcome] = []
    with cf.ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="strata-push") as pool:
        futures = [pool.submit(_push_one, repo, content, d, opts, sources,
                               reporters[d.digest][1], reporters[d.digest][0])
                   for d in unique.values()]
        try:
            for future in futures:
                out.append(future.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out


def push(client: RegistryClient, content: LocalStore, image: Image, ref: Reference, *,
         options: PushOptions | None = None, sources: BlobSources | None = None,
         progress: Progress = no_progress) -> PushResult:
    """Push ``image`` to ``ref`` (a tag, or a digest that must be the manifest's).

    Raises:
        Unauthorized: the registry refused access.
        InvalidArgument: ``ref`` has a digest other than the image manifest's.
        NotFound: a blob of the image is missing from the store.
    """
    raw_manifest = image.raw_manifest()
    manifest = image.manifest()
    digest = Digest.of(raw_manifest)
    if ref.digest is not None and ref.digest != digest:
        raise InvalidArgument(f"cannot push {ref}: the image's manifest digest is {digest}")
    repo = client.repository(ref)
    # Foreign layers stay where their urls say, as docker leaves them (the manifest keeps
    # naming them; the registry checks their urls against its policy).
    blobs = [*(layer for layer in manifest.layers
               if not (layer.urls and mediatypes.is_non_distributable(layer.media_type))),
             manifest.config]
    diff_ids = image.config().rootfs.diff_ids
    labels = {layer.digest: diff_id.short()
              for layer, diff_id in zip(manifest.layers, diff_ids, strict=False)}
    outcomes = push_blobs(repo, content, blobs, options=options, sources=sources,
                          progress=progress, labels=labels)
    ident = ref.tag if ref.tag else str(digest)
    repo.put_manifest(ident, raw_manifest, manifest.media_type)
    if sources is not None:
        sources.add([d.digest for d in blobs], ref.registry, ref.repository)
    return PushResult(
        reference=ref,
        digest=digest,
        size=len(raw_manifest),
        uploaded=tuple(o.digest for o in outcomes if o.how == "uploaded"),
        mounted=tuple(o.digest for o in outcomes if o.how == "mounted"),
        existing=tuple(o.digest for o in outcomes if o.how == "exists"),
        bytes_uploaded=sum(o.size for o in outcomes),
    )
