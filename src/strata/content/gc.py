"""Garbage collection by reachability (containerd ``gc``): mark from roots, sweep the rest.

The content store knows nothing of manifests, so the caller gives the roots (digests that
image records name) and ``refs(digest)``: the digests a blob references (an index its
manifests, a manifest its config and layers).  Blobs protected by live leases are roots too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from strata.content.store import LocalStore
from strata.errors import InvalidArgument, NotFound
from strata.oci import Digest

__all__ = ["GCResult", "collect"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GCResult:
    """What a collection removed (or would remove, in a dry run)."""

    removed: tuple[Digest, ...]
    reclaimed: int
    ingests_removed: int


def collect(
    store: LocalStore,
    roots: Iterable[Digest],
    refs: Callable[[Digest], Iterable[Digest]],
    *,
    dry_run: bool = False,
) -> GCResult:
    """Delete every blob not reachable from ``roots`` or a live lease.

    Args:
        store: the content store.
        roots: digests named by image records (and any other root set).
        refs: the digests one blob references; called only for blobs that exist.
        dry_run: report without deleting.

    Returns:
        The removed digests and the bytes reclaimed.
    """
    marked: set[Digest] = set()
    pending: list[Digest] = list(roots)
    for resource in store.leases.protected():
        try:
            pending.append(Digest.parse(resource))
        except InvalidArgument:  # non-digest resources (snapshots) are not blobs
            continue
    while pending:
        digest = pending.pop()
        if digest in marked:
            continue
        marked.add(digest)
        if store.exists(digest):
            pending.extend(refs(digest))
    removed: list[Digest] = []
    reclaimed = 0
    for info in store.walk():
        if info.digest in marked:
            continue
        removed.append(info.digest)
        reclaimed += info.size
        if not dry_run:
            try:
                store.delete(info.digest)
            except NotFound:
                continue
            log.debug("gc removed %s", info.digest)
    ingests = 0 if dry_run else store.clean_ingests()
    return GCResult(tuple(removed), reclaimed, ingests)
