"""Registry garbage collection: mark from manifests and tags, sweep the rest.

Owns the mark-and-sweep over a :class:`StorageDriver`: every manifest revision of every
repository is a root (tags point at revisions); a manifest marks itself, its config and
layers, and an index marks the manifests it lists.  Sweeping deletes unmarked blobs (and the
repository links to them) and purges uploads started longer ago than a threshold (those a
crash or a client abandoned).  Unreferenced blobs younger than a grace period (an hour by
default) are spared, because a client pushing an image uploads its blobs before the
manifest that names them; with that, collecting while clients push is safe for pushes that
take less than the grace period (distribution's ``garbage-collect`` asks for read-only
mode instead).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from strata.errors import NotFound, StrataError
from strata.oci import Digest, Index, Manifest, parse_any
from strata.registry.server.config import ServerConfig
from strata.registry.server.storage.base import BlobStat, StorageDriver, UploadStatus, open_driver

__all__ = ["GCReport", "collect_garbage", "run_gc"]


@dataclass(frozen=True, slots=True)
class GCReport:
    """What a collection found and (unless a dry run) removed; ``recent`` counts the
    unreferenced blobs spared for being younger than the grace period."""

    dry_run: bool
    marked: int
    swept: tuple[BlobStat, ...] = ()
    uploads: tuple[UploadStatus, ...] = ()
    links: int = 0
    repositories: int = 0
    recent: int = 0
    errors: tuple[str, ...] = field(default=())

    @property
    def freed(self) -> int:
        """Bytes of swept blobs and purged uploads."""
        return sum(b.size for b in self.swept) + sum(u.size for u in self.uploads)


async def collect_garbage(
    driver: StorageDriver,
    *,
    dry_run: bool = False,
    upload_max_age: float = 24 * 3600,
    blob_min_age: float = 3600,
) -> GCReport:
    """Mark and sweep; the driver must be open.

    Args:
        driver: the registry's storage.
        dry_run: only report what would be removed.
        upload_max_age: purge uploads started more than this many seconds ago.
        blob_min_age: spare unreferenced blobs committed less than this many seconds ago
            (a client pushing an image uploads its blobs before the manifest naming them).

    Returns:
        The report.
    """
    marked: set[Digest] = set()
    errors: list[str] = []
    repositories = [name async for name in driver.list_repositories()]
    for repo in repositories:
        async for digest in driver.list_manifests(repo):
            marked.add(digest)
            try:
                raw = b"".join([c async for c in driver.read_blob(digest)])
                media_type = await driver.get_manifest(repo, digest)
                parsed = parse_any(raw, media_type)
            except NotFound:
                errors.append(f"{repo}: manifest {digest} has no blob")
                continue
            except StrataError as exc:
                errors.append(f"{repo}: manifest {digest} unreadable: {exc}")
                continue
            if isinstance(parsed, Manifest):
                marked.add(parsed.config.digest)
                marked.update(layer.digest for layer in parsed.layers)
            elif isinstance(parsed, Index):
                marked.update(m.digest for m in parsed.manifests)
    now = time.time()
    swept, recent = [], 0
    async for blob in driver.walk_blobs():
        if blob.digest in marked:
            continue
        if blob.modified is not None and blob.modified > now - blob_min_age:
            recent += 1
            marked.add(blob.digest)  # keep its links too
            continue
        swept.append(blob)
    swept_digests = {b.digest for b in swept}
    cutoff = now - upload_max_age
    uploads = [u async for u in driver.list_uploads() if u.started <= cutoff]
    links = 0
    for repo in repositories:
        async for digest in driver.list_blob_links(repo):
            if digest in swept_digests or digest not in marked:
                links += 1
                if not dry_run:
                    try:
                        await driver.unlink_blob(repo, digest)
                    except NotFound:
                        pass
    if not dry_run:
        for blob in swept:
            try:
                await driver.delete_blob(blob.digest)
            except NotFound:
                pass
        for upload in uploads:
            await driver.purge_upload(upload.id)
    return GCReport(
        dry_run=dry_run,
        marked=len(marked),
        swept=tuple(swept),
        uploads=tuple(uploads),
        links=links,
        repositories=len(repositories),
        recent=recent,
        errors=tuple(errors),
    )


def run_gc(
    config: ServerConfig,
    *,
    dry_run: bool = False,
    upload_max_age: float = 24 * 3600,
    blob_min_age: float = 3600,
) -> GCReport:
    """Open the configured storage, collect garbage, close it (blocking).

    Raises:
        NotSupported: unknown storage driver.
        InvalidArgument: bad driver options.
        Unavailable: the storage failed.
    """

    async def main() -> GCReport:
        driver = open_driver(config.storage_driver, config.storage_options)
        await driver.open()
        try:
            return await collect_garbage(
                driver, dry_run=dry_run, upload_max_age=upload_max_age, blob_min_age=blob_min_age
            )
        finally:
            await driver.close()

    return asyncio.run(main())
