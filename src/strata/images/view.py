"""Read-only views of images and layers (go-containerregistry ``v1.Image`` / ``v1.Layer``).

A view reads lazily from a source; the local source is the content store.  Views are never
edited in place: deriving a changed image makes a new view (``mutate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import BinaryIO, Protocol

from strata.content import ContentStore
from strata.errors import InvalidContent, NotFound
from strata.oci import Descriptor, Digest, ImageConfig, Index, Manifest, Platform, mediatypes

__all__ = ["Image", "Layer", "LocalImage", "LocalLayer", "resolve_manifest"]


class Layer(Protocol):
    """One layer: the compressed blob's descriptor, its diff_id and its bytes."""

    @property
    def descriptor(self) -> Descriptor: ...

    @property
    def diff_id(self) -> Digest: ...

    def open_compressed(self) -> BinaryIO: ...

    def open_uncompressed(self) -> BinaryIO: ...


class Image(Protocol):
    """A single-platform image: exact manifest and config bytes, parsed views, layers."""

    def raw_manifest(self) -> bytes: ...

    def manifest(self) -> Manifest: ...

    def raw_config(self) -> bytes: ...

    def config(self) -> ImageConfig: ...

    def layers(self) -> Sequence[Layer]: ...


class LocalLayer:
    """A layer whose blob is in the content store."""

    def __init__(self, store: ContentStore, descriptor: Descriptor, diff_id: Digest) -> None:
        self._store = store
        self._descriptor = descriptor
        self._diff_id = diff_id

    @property
    def descriptor(self) -> Descriptor:
        return self._descriptor

    @property
    def diff_id(self) -> Digest:
        return self._diff_id

    def open_compressed(self) -> BinaryIO:
        return self._store.open(self._descriptor.digest)

    def open_uncompressed(self) -> BinaryIO:
        # The decompressors (zstandard, isal) load with the first layer read, not with the
        # views every command uses.
        from strata.layers import open_decompressed

        compression = mediatypes.layer_compression(self._descriptor.media_type)
        return open_decompressed(self.open_compressed(), compression)


def resolve_manifest(store: ContentStore, target: Descriptor, platform: Platform | None = None,
                     ) -> Descriptor:
    """Follow an index to the manifest for ``platform`` (the host's by default)."""
    seen = 0
    while mediatypes.is_index(target.media_type):
        seen += 1
        if seen > 8:
            raise InvalidContent(f"index {target.digest} nests too deeply")
        index = Index.parse(store.read(target.digest), f"index {target.digest}")
        target = index.select(platform or Platform.host())
    return target


class LocalImage:
    """An image whose manifest, config and layers are in the content store."""

    def __init__(self, store: ContentStore, target: Descriptor) -> None:
        self._store = store
        self.target = resolve_manifest(store, target)

    @property
    def manifest_digest(self) -> Digest:
        return self.target.digest

    @cached_property
    def _raw_manifest(self) -> bytes:
        return self._store.read(self.target.digest)

    def raw_manifest(self) -> bytes:
        return self._raw_manifest

    @cached_property
    def _manifest(self) -> Manifest:
        return Manifest.parse(self._raw_manifest, f"manifest {self.target.digest}")

    def manifest(self) -> Manifest:
        return self._manifest

    @cached_property
    def _raw_config(self) -> bytes:
        return self._store.read(self._manifest.config.digest)

    def raw_config(self) -> bytes:
        return self._raw_config

    @cached_property
    def _config(self) -> ImageConfig:
        return ImageConfig.parse(self._raw_config, f"config {self._manifest.config.digest}")

    def config(self) -> ImageConfig:
        return self._config

    @property
    def id(self) -> Digest:
        """The image ID: the config digest."""
        return self._manifest.config.digest

    def layers(self) -> Sequence[LocalLayer]:
        """The layers, bottom first, each paired with its diff_id from the config.

        Raises:
            InvalidContent: the manifest and the config disagree on the number of layers.
            NotFound: a layer blob is missing from the store.
        """
        manifest, config = self._manifest, self._config
        if len(manifest.layers) != len(config.rootfs.diff_ids):
            raise InvalidContent(
                f"image {self.target.digest}: manifest has {len(manifest.layers)} layers but the"
                f" config lists {len(config.rootfs.diff_ids)} diff_ids"
            )
        out = []
        for desc, diff_id in zip(manifest.layers, config.rootfs.diff_ids, strict=True):
            if not self._store.exists(desc.digest):
                raise NotFound(f"layer {desc.digest} of image {self.id.short()} is not in the store")
            out.append(LocalLayer(self._store, desc, diff_id))
        return out
