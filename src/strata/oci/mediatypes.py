"""Media types of OCI and Docker manifests, indexes, configs and layers.

Pure constants and classification helpers; no I/O.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1_MANIFEST",
    "DOCKER_SCHEMA1_SIGNED",
    "DOCKER_UNCOMPRESSED_LAYER",
    "IMAGE_MANIFEST_TYPES",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDIST",
    "OCI_LAYER_NONDIST_GZIP",
    "OCI_LAYER_NONDIST_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_LAYOUT_VERSION",
    "OCI_MANIFEST",
    "Compression",
    "is_index",
    "is_layer",
    "is_manifest",
    "is_non_distributable",
    "layer_compression",
    "layer_media_type",
]

OCI_LAYOUT_VERSION = "1.0.0"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_UNCOMPRESSED_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES


class Compression(StrEnum):
    """How a layer blob is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_COMPRESSION = {
    OCI_LAYER: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    OCI_LAYER_NONDIST: Compression.NONE,
    OCI_LAYER_NONDIST_GZIP: Compression.GZIP,
    OCI_LAYER_NONDIST_ZSTD: Compression.ZSTD,
    DOCKER_LAYER: Compression.GZIP,
    DOCKER_UNCOMPRESSED_LAYER: Compression.NONE,
    DOCKER_FOREIGN_LAYER: Compression.GZIP,
}
LAYER_TYPES = frozenset(_LAYER_COMPRESSION)
_NONDIST = frozenset(
    {OCI_LAYER_NONDIST, OCI_LAYER_NONDIST_GZIP, OCI_LAYER_NONDIST_ZSTD, DOCKER_FOREIGN_LAYER}
)


def is_manifest(media_type: str) -> bool:
    """True for an image manifest (OCI or Docker schema 2)."""
    return media_type in IMAGE_MANIFEST_TYPES


def is_index(media_type: str) -> bool:
    """True for an OCI index or a Docker manifest list."""
    return media_type in INDEX_TYPES


def is_layer(media_type: str) -> bool:
    """True for a known layer media type."""
    return media_type in _LAYER_COMPRESSION


def is_non_distributable(media_type: str) -> bool:
    """True for foreign / non-distributable layers (fetched from their ``urls``)."""
    return media_type in _NONDIST


def layer_compression(media_type: str) -> Compression | None:
    """The compression a layer media type declares, or None if it is not a layer type."""
    return _LAYER_COMPRESSION.get(media_type)


def layer_media_type(compression: Compression, *, docker: bool = False) -> str:
    """The layer media type for ``compression`` in the OCI or the Docker family."""
    if docker:
        return DOCKER_LAYER if compression is Compression.GZIP else DOCKER_UNCOMPRESSED_LAYER
    return {
        Compression.NONE: OCI_LAYER,
        Compression.GZIP: OCI_LAYER_GZIP,
        Compression.ZSTD: OCI_LAYER_ZSTD,
    }[compression]
