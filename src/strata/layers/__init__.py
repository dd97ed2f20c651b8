"""Layer changesets: apply a layer tar onto a directory, compute one from changes, compress.

``apply`` extracts an uncompressed layer stream safely inside a root (umoci's semantics),
``scan`` checks and measures one without writing, ``diff`` writes the deterministic tar of
an overlay upper directory or of two trees' differences, and ``open_decompressed`` /
``CompressedWriter`` move between blobs and tar streams.  This package imports only
``strata.oci`` and ``strata.errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata._deferred import lazy_exports

if TYPE_CHECKING:
    from strata.layers.apply import ApplyOptions as ApplyOptions
    from strata.layers.apply import IdMap as IdMap
    from strata.layers.apply import apply as apply
    from strata.layers.compression import CompressedWriter as CompressedWriter
    from strata.layers.compression import compress_stream as compress_stream
    from strata.layers.compression import open_decompressed as open_decompressed
    from strata.layers.compression import sniff_compression as sniff_compression
    from strata.layers.diff import diff as diff
    from strata.layers.scan import LayerStats as LayerStats
    from strata.layers.scan import scan as scan
    from strata.layers.whiteout import WhiteoutMode as WhiteoutMode

__all__ = [
    "ApplyOptions",
    "CompressedWriter",
    "IdMap",
    "LayerStats",
    "WhiteoutMode",
    "apply",
    "compress_stream",
    "diff",
    "open_decompressed",
    "scan",
    "sniff_compression",
]

# Each submodule is imported when one of its names is first used (reading an image's config
# does not need the extractor, nor zstandard/isal until a blob is decompressed).
lazy_exports(__name__, {
    "apply": ("ApplyOptions", "IdMap", "apply"),
    "compression": ("CompressedWriter", "compress_stream", "open_decompressed",
                    "sniff_compression"),
    "diff": ("diff",),
    "scan": ("LayerStats", "scan"),
    "whiteout": ("WhiteoutMode",),
})
