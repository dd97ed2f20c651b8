"""Image references with docker's normalisation (distribution/reference, normalize.go).

``busybox`` → ``docker.io/library/busybox:latest``; ``localhost:5000/a/b@sha256:…`` keeps its
registry; a bare 64-hex string is refused as a name, as docker does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

from strata.errors import InvalidArgument
from strata.oci.digest import Digest

__all__ = ["DEFAULT_REGISTRY", "DEFAULT_TAG", "Reference"]

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_REGISTRY = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_NAME_TOTAL_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_PATH = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_ONLY = re.compile(rf"^{_TAG}$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


def _split_domain(name: str) -> tuple[str, str]:
    """docker's splitDockerDomain: the first component is a registry if it looks like a host."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, remainder = DEFAULT_REGISTRY, name
    else:
        domain, remainder = first, rest
    if domain == _LEGACY_REGISTRY:
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = _OFFICIAL_PREFIX + remainder
    return domain, remainder


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference: registry, repository, and a tag and/or a digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: bool = True) -> Self:
        """Parse and normalise a reference as ``docker pull`` does.

        Args:
            text: ``busybox``, ``quay.io/a/b:1``, ``localhost:5000/x@sha256:…``.
            default_tag: add ``latest`` when neither a tag nor a digest is given.

        Raises:
            InvalidArgument: the reference is malformed, has uppercase letters in the
                repository, is a bare 64-hex ID, or is too long.
        """
        if not text:
            raise InvalidArgument("invalid reference format: empty reference")
        if _HEX64.match(text):
            raise InvalidArgument(
                f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
            )
        match = _REFERENCE.match(text)
        if match is None:
            name_part = text.split("@", 1)[0]
            name_part = name_part.rsplit(":", 1)[0] if "/" not in name_part.rsplit(":", 1)[-1] else name_part
            if name_part.lower() != name_part and _REFERENCE.match(text.lower()):
                raise InvalidArgument(
                    f"invalid reference format: repository name must be lowercase ({text!r})"
                )
            raise InvalidArgument(f"invalid reference format: {text!r}")
        name = match.group("name")
        domain, remainder = _split_domain(name)
        if remainder.lower() != remainder:
            raise InvalidArgument(f"invalid reference format: repository name must be lowercase ({text!r})")
        if len(f"{domain}/{remainder}") > _NAME_TOTAL_MAX:
            raise InvalidArgument(f"invalid reference format: repository name too long ({text!r})")
        digest: Digest | None = None
        if match.group("digest"):
            digest = Digest.parse(match.group("digest"))
        tag = match.group("tag")
        if tag is None and digest is None and default_tag:
            tag = DEFAULT_TAG
        return cls(domain, remainder, tag, digest)

    @classmethod
    def from_parts(cls, repository: str, tag: str | None = None, digest: Digest | None = None) -> Self:
        """Build from a (possibly familiar) repository name and a tag/digest."""
        base = cls.parse(repository, default_tag=False)
        if base.tag or base.digest:
            raise InvalidArgument(f"invalid repository name {repository!r}: has a tag or digest")
        if tag is not None and not _TAG_ONLY.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r}")
        return cls(base.registry, base.repository, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    def familiar_name(self) -> str:
        """The repository as docker shows it (``busybox``, ``quay.io/a/b``)."""
        if self.registry == DEFAULT_REGISTRY:
            if self.repository.startswith(_OFFICIAL_PREFIX) and self.repository.count("/") == 1:
                return self.repository[len(_OFFICIAL_PREFIX):]
            return self.repository
        return self.name

    def familiar(self) -> str:
        """The whole reference as docker shows it (``busybox:latest``)."""
        out = self.familiar_name()
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_ONLY.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r}")
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out
