"""Local images: the image store, views, unpack, load/save (OCI layout, docker-archive),
import of rootfs tarballs, and docker's size accounting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata._deferred import lazy_exports

if TYPE_CHECKING:
    from strata.images.importer import ImportOptions as ImportOptions
    from strata.images.importer import ImportResult as ImportResult
    from strata.images.importer import import_rootfs as import_rootfs
    from strata.images.load import ImageToStore as ImageToStore
    from strata.images.load import LoadedImage as LoadedImage
    from strata.images.load import load as load
    from strata.images.load import name_from_annotations as name_from_annotations
    from strata.images.load import store_images as store_images
    from strata.images.rootfs import Extractor as Extractor
    from strata.images.rootfs import ImageUnpack as ImageUnpack
    from strata.images.rootfs import LayerFeed as LayerFeed
    from strata.images.rootfs import apply_layers as apply_layers
    from strata.images.rootfs import remove_abandoned as remove_abandoned
    from strata.images.save import SaveFormat as SaveFormat
    from strata.images.save import SaveItem as SaveItem
    from strata.images.save import write_docker_archive as write_docker_archive
    from strata.images.save import write_oci_archive as write_oci_archive
    from strata.images.save import write_oci_dir as write_oci_dir
    from strata.images.store import DANGLING_PREFIX as DANGLING_PREFIX
    from strata.images.store import ImageRecord as ImageRecord
    from strata.images.store import ImageStore as ImageStore
    from strata.images.store import LayerFacts as LayerFacts
    from strata.images.unpack import unpack as unpack
    from strata.images.usage import DiskUsage as DiskUsage
    from strata.images.usage import ImageFacts as ImageFacts
    from strata.images.usage import ImageSummary as ImageSummary
    from strata.images.usage import summarize as summarize
    from strata.images.usage import used_diff_ids as used_diff_ids
    from strata.images.view import Image as Image
    from strata.images.view import Layer as Layer
    from strata.images.view import LocalImage as LocalImage
    from strata.images.view import LocalLayer as LocalLayer
    from strata.images.view import resolve_manifest as resolve_manifest

__all__ = [
    "DANGLING_PREFIX",
    "DiskUsage",
    "Extractor",
    "Image",
    "ImageFacts",
    "ImageRecord",
    "ImageStore",
    "ImageSummary",
    "ImageToStore",
    "ImageUnpack",
    "ImportOptions",
    "ImportResult",
    "Layer",
    "LayerFeed",
    "LayerFacts",
    "LoadedImage",
    "LocalImage",
    "LocalLayer",
    "SaveFormat",
    "SaveItem",
    "apply_layers",
    "import_rootfs",
    "load",
    "name_from_annotations",
    "remove_abandoned",
    "resolve_manifest",
    "store_images",
    "summarize",
    "unpack",
    "used_diff_ids",
    "write_docker_archive",
    "write_oci_archive",
    "write_oci_dir",
]

# Each submodule is imported when one of its names is first used (``strata run`` needs the
# store and the views, not the loader, the archive writers or the layer extractor).
lazy_exports(__name__, {
    "importer": ("ImportOptions", "ImportResult", "import_rootfs"),
    "load": ("ImageToStore", "LoadedImage", "load", "name_from_annotations", "store_images"),
    "rootfs": ("Extractor", "ImageUnpack", "LayerFeed", "apply_layers", "remove_abandoned"),
    "save": ("SaveFormat", "SaveItem", "write_docker_archive", "write_oci_archive",
             "write_oci_dir"),
    "store": ("DANGLING_PREFIX", "ImageRecord", "ImageStore", "LayerFacts"),
    "unpack": ("unpack",),
    "usage": ("DiskUsage", "ImageFacts", "ImageSummary", "summarize", "used_diff_ids"),
    "view": ("Image", "Layer", "LocalImage", "LocalLayer", "resolve_manifest"),
})
