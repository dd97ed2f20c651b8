"""Unpack an image's layers into a directory: the rootfs ``umoci unpack`` would produce.

Each layer is streamed from its source, decompressed and applied in order with OCI whiteout
semantics; the diff_id of what was applied is checked against the config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from strata.errors import DigestMismatch
from strata.images.view import Image
from strata.layers import ApplyOptions, LayerStats, apply

__all__ = ["unpack"]


def unpack(
    image: Image,
    dest: Path,
    *,
    options: ApplyOptions | None = None,
    on_layer: Callable[[int, LayerStats], None] | None = None,
) -> list[LayerStats]:
    """Apply every layer of ``image`` onto ``dest`` (created if missing).

    Args:
        image: the image to unpack.
        dest: the target directory; whatever it holds is the base the layers apply on.
        options: how to apply (whiteout mode, owners, id maps).
        on_layer: called after each layer with its index and stats.

    Raises:
        DigestMismatch: a layer's content does not match its diff_id in the config.
        UnsafeArchive: a layer member would escape ``dest`` or cannot be created.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: list[LayerStats] = []
    for index, layer in enumerate(image.layers()):
        with layer.open_uncompressed() as stream:
            stats = apply(dest, stream, options)
        if stats.diff_id != layer.diff_id:
            raise DigestMismatch(
                f"layer {index} ({layer.descriptor.digest}) has diff_id {stats.diff_id},"
                f" the config says {layer.diff_id}",
                expected=str(layer.diff_id),
                actual=str(stats.diff_id),
            )
        out.append(stats)
        if on_layer is not None:
            on_layer(index, stats)
    return out
