"""The content-addressable blob store, its leases and its garbage collector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata._deferred import lazy_exports

if TYPE_CHECKING:
    from strata.content.gc import GCResult as GCResult
    from strata.content.gc import collect as collect
    from strata.content.lease import Lease as Lease
    from strata.content.lease import LeaseManager as LeaseManager
    from strata.content.store import BlobInfo as BlobInfo
    from strata.content.store import BlobWriter as BlobWriter
    from strata.content.store import ContentStore as ContentStore
    from strata.content.store import IngestInfo as IngestInfo
    from strata.content.store import LocalStore as LocalStore

__all__ = [
    "BlobInfo",
    "BlobWriter",
    "ContentStore",
    "GCResult",
    "IngestInfo",
    "Lease",
    "LeaseManager",
    "LocalStore",
    "collect",
]

# Each submodule is imported when one of its names is first used (the collector and logging
# load with ``gc``, not with every command).
lazy_exports(__name__, {
    "gc": ("GCResult", "collect"),
    "lease": ("Lease", "LeaseManager"),
    "store": ("BlobInfo", "BlobWriter", "ContentStore", "IngestInfo", "LocalStore"),
})
