"""Image manifests and indexes, OCI and Docker schema 2 (image-spec manifest.md, image-index.md).

A manifest is parsed from its exact bytes with :meth:`Manifest.parse`; its digest is always the
digest of those bytes, never of a re-serialisation.  Docker schema 1 is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

from strata.errors import InvalidContent, NotSupported
from strata.oci import mediatypes as mt
from strata.oci._json import (
    JSONObject,
    as_object,
    dumps,
    get_int,
    get_list,
    get_object,
    loads_object,
    opt_str,
    str_map,
)
from strata.oci.descriptor import Descriptor, Platform

__all__ = ["Index", "Manifest", "NoMatchingPlatform", "manifests_of", "parse_any", "sniff_media_type"]


def sniff_media_type(raw: bytes, what: str = "manifest") -> str:
    """The media type a manifest or index declares, or infers from its shape.

    Raises:
        InvalidContent: not a JSON object, or neither shape.
        NotSupported: a Docker schema 1 manifest.
    """
    obj = loads_object(raw, what)
    declared = opt_str(obj, "mediaType", what)
    if declared:
        return declared
    if obj.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1_MANIFEST
    if "manifests" in obj:
        return mt.OCI_INDEX
    if "config" in obj or "layers" in obj:
        return mt.OCI_MANIFEST
    raise InvalidContent(f"malformed {what}: neither a manifest nor an index", path=what)


def _check_schema(obj: JSONObject, what: str) -> None:
    version = get_int(obj, "schemaVersion", what)
    if version == 1:
        raise NotSupported(f"{what}: Docker schema 1 manifests are not supported")
    if version != 2:
        raise InvalidContent(f"malformed {what}: schemaVersion {version}, expected 2", path=what)


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest: a config descriptor and an ordered list of layer descriptors."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @classmethod
    def parse(cls, raw: bytes, what: str = "manifest") -> Self:
        """Parse the exact bytes of an image manifest.

        Raises:
            InvalidContent: malformed JSON, a missing field, a mediaType that is no image
                manifest, or a layer descriptor with a non-layer media type.
            NotSupported: Docker schema 1.
        """
        obj = loads_object(raw, what)
        _check_schema(obj, what)
        media_type = opt_str(obj, "mediaType", what) or mt.OCI_MANIFEST
        if media_type in mt.INDEX_TYPES:
            raise InvalidContent(f"malformed {what}: is an index ({media_type})", path=what)
        if media_type not in mt.IMAGE_MANIFEST_TYPES:
            raise InvalidContent(f"malformed {what}: unknown mediaType {media_type!r}", path=what)
        config_obj = get_object(obj, "config", what)
        if config_obj is None:
            raise InvalidContent(f"malformed {what}: missing field 'config'", path=what)
        config = Descriptor.from_json(config_obj, f"{what}.config")
        layers = tuple(
            Descriptor.from_json(as_object(v, f"{what}.layers[{i}]"), f"{what}.layers[{i}]")
            for i, v in enumerate(get_list(obj, "layers", what))
        )
        subject_obj = get_object(obj, "subject", what)
        return cls(
            media_type=media_type,
            config=config,
            layers=layers,
            annotations=str_map(obj, "annotations", what) or {},
            subject=Descriptor.from_json(subject_obj, f"{what}.subject") if subject_obj else None,
            artifact_type=opt_str(obj, "artifactType", what),
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    def to_bytes(self) -> bytes:
        """Canonical bytes for a manifest strata creates."""
        return dumps(self.to_json())

    @property
    def is_image(self) -> bool:
        """True when the config is an image config (not an artifact)."""
        return self.config.media_type in (mt.OCI_CONFIG, mt.DOCKER_CONFIG)


@dataclass(frozen=True, slots=True)
class Index:
    """An OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @classmethod
    def parse(cls, raw: bytes, what: str = "index") -> Self:
        """Parse the exact bytes of an index / manifest list.

        Raises:
            InvalidContent: malformed JSON or a missing field.
        """
        obj = loads_object(raw, what)
        _check_schema(obj, what)
        media_type = opt_str(obj, "mediaType", what) or mt.OCI_INDEX
        if media_type not in mt.INDEX_TYPES:
            raise InvalidContent(f"malformed {what}: mediaType {media_type!r} is no index", path=what)
        manifests = tuple(
            Descriptor.from_json(as_object(v, f"{what}.manifests[{i}]"), f"{what}.manifests[{i}]")
            for i, v in enumerate(get_list(obj, "manifests", what))
        )
        subject_obj = get_object(obj, "subject", what)
        return cls(
            media_type=media_type,
            manifests=manifests,
            annotations=str_map(obj, "annotations", what) or {},
            subject=Descriptor.from_json(subject_obj, f"{what}.subject") if subject_obj else None,
            artifact_type=opt_str(obj, "artifactType", what),
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["manifests"] = [m.to_json() for m in self.manifests]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    def to_bytes(self) -> bytes:
        return dumps(self.to_json())

    def select(self, want: Platform) -> Descriptor:
        """The first image manifest entry whose platform matches ``want``.

        Raises:
            NotFoundPlatform: no entry matches (an InvalidContent naming what exists).
        """
        for desc in self.manifests:
            if desc.platform is not None and want.matches(desc.platform):
                return desc
        have = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise NoMatchingPlatform(f"no image for platform {want} in the index (it has: {have})")


class NoMatchingPlatform(InvalidContent):
    """An index lists no manifest for the wanted platform."""


def parse_any(raw: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest | Index:
    """Parse bytes as a manifest or an index, by ``media_type`` or by sniffing."""
    kind = media_type or sniff_media_type(raw, what)
    if kind in mt.INDEX_TYPES:
        return Index.parse(raw, what)
    if kind in (mt.DOCKER_SCHEMA1_MANIFEST, mt.DOCKER_SCHEMA1_SIGNED):
        raise NotSupported(f"{what}: Docker schema 1 manifests are not supported")
    return Manifest.parse(raw, what)


def manifests_of(items: Sequence[Descriptor]) -> tuple[Descriptor, ...]:
    """The entries of an index that are image manifests or nested indexes."""
    return tuple(d for d in items if d.media_type in mt.MANIFEST_TYPES)
