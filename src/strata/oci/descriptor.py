"""Content descriptors and platforms (OCI image-spec descriptor.md, image-index.md).

Pure values: parse from JSON objects, serialise back in the spec's field order.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from strata.errors import InvalidArgument, InvalidContent
from strata.oci._json import (
    JSONObject,
    JSONValue,
    get_int,
    get_object,
    get_str,
    opt_str,
    str_list,
    str_map,
)
from strata.oci.digest import Digest

__all__ = ["Descriptor", "Platform"]


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS / architecture pair with optional variant (``linux/arm64/v8``)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ``os/arch[/variant]`` as docker's ``--platform`` does.

        Raises:
            InvalidArgument: not of that shape.
        """
        parts = text.strip().lower().split("/")
        if len(parts) < 2 or len(parts) > 3 or not all(parts):
            raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant]")
        arch = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}.get(parts[1], parts[1])
        variant = parts[2] if len(parts) == 3 else None
        return cls(parts[0], arch, variant)

    @classmethod
    def host(cls) -> Self:
        """The platform of this machine, normalised as containerd does."""
        machine = _platform.machine().lower()
        arch, variant = {
            "x86_64": ("amd64", None),
            "amd64": ("amd64", None),
            "aarch64": ("arm64", None),
            "arm64": ("arm64", None),
            "armv7l": ("arm", "v7"),
            "armv6l": ("arm", "v6"),
            "i386": ("386", None),
            "i686": ("386", None),
        }.get(machine, (machine, None))
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, obj: Mapping[str, JSONValue], what: str = "platform") -> Self:
        return cls(
            os=get_str(obj, "os", what),
            architecture=get_str(obj, "architecture", what),
            variant=opt_str(obj, "variant", what),
            os_version=opt_str(obj, "os.version", what),
            os_features=str_list(obj, "os.features", what) or (),
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (an index entry) can run where ``self`` describes.

        An absent variant matches any variant; arm64's default variant is v8.
        """
        if self.os != other.os or self.architecture != other.architecture:
            return False
        mine = self.variant or ("v8" if self.architecture == "arm64" else None)
        theirs = other.variant or ("v8" if other.architecture == "arm64" else None)
        return mine is None or theirs is None or mine == theirs

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


@dataclass(frozen=True, slots=True)
class Descriptor:
    """Media type + digest + size of a blob, with optional annotations and platform."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, JSONValue], what: str = "descriptor") -> Self:
        """Parse a descriptor object.

        Raises:
            InvalidContent: a field is missing or of the wrong type, or the digest is malformed.
        """
        try:
            digest = Digest.parse(get_str(obj, "digest", what))
        except InvalidContent:
            raise
        except InvalidArgument as exc:
            raise InvalidContent(f"malformed {what}: {exc}", path=what) from exc
        size = get_int(obj, "size", what)
        if size < 0:
            raise InvalidContent(f"malformed {what}: negative size {size}", path=what)
        plat = get_object(obj, "platform", what)
        return cls(
            media_type=get_str(obj, "mediaType", what),
            digest=digest,
            size=size,
            annotations=str_map(obj, "annotations", what) or {},
            platform=Platform.from_json(plat, f"{what}.platform") if plat is not None else None,
            urls=str_list(obj, "urls", what) or (),
            artifact_type=opt_str(obj, "artifactType", what),
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        """A copy with ``annotations`` (replacing the existing ones)."""
        return Descriptor(
            self.media_type, self.digest, self.size, dict(annotations), self.platform, self.urls,
            self.artifact_type,
        )
