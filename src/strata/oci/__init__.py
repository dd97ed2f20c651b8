"""Pure OCI data: digests, media types, descriptors, manifests, configs, references.

No I/O happens in this package.
"""

from __future__ import annotations

from strata.oci import mediatypes as mediatypes
from strata.oci.chain import chain_id as chain_id
from strata.oci.chain import chain_ids as chain_ids
from strata.oci.config import ContainerConfig as ContainerConfig
from strata.oci.config import Healthcheck as Healthcheck
from strata.oci.config import History as History
from strata.oci.config import ImageConfig as ImageConfig
from strata.oci.config import RootFS as RootFS
from strata.oci.config import format_time as format_time
from strata.oci.config import parse_time as parse_time
from strata.oci.descriptor import Descriptor as Descriptor
from strata.oci.descriptor import Platform as Platform
from strata.oci.digest import SHA256 as SHA256
from strata.oci.digest import Digest as Digest
from strata.oci.digest import Digester as Digester
from strata.oci.manifest import Index as Index
from strata.oci.manifest import Manifest as Manifest
from strata.oci.manifest import NoMatchingPlatform as NoMatchingPlatform
from strata.oci.manifest import manifests_of as manifests_of
from strata.oci.manifest import parse_any as parse_any
from strata.oci.manifest import sniff_media_type as sniff_media_type
from strata.oci.mediatypes import Compression as Compression
from strata.oci.reference import DEFAULT_REGISTRY as DEFAULT_REGISTRY
from strata.oci.reference import DEFAULT_TAG as DEFAULT_TAG
from strata.oci.reference import Reference as Reference

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "SHA256",
    "Compression",
    "ContainerConfig",
    "Descriptor",
    "Digest",
    "Digester",
    "Healthcheck",
    "History",
    "ImageConfig",
    "Index",
    "Manifest",
    "NoMatchingPlatform",
    "Platform",
    "Reference",
    "RootFS",
    "chain_id",
    "chain_ids",
    "format_time",
    "manifests_of",
    "mediatypes",
    "parse_any",
    "parse_time",
    "sniff_media_type",
]
