"""The grammar of repository names, tags and references in registry URLs (distribution spec).

Pure functions; no I/O.  A name that passes :func:`check_name` is safe as a relative path:
its components match ``[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*``, so ``..``, ``.``, empty
components and absolute paths are impossible.
"""

from __future__ import annotations

import re

from strata.errors import InvalidArgument
from strata.oci import Digest

__all__ = ["MAX_NAME_LENGTH", "check_name", "check_tag", "is_digest_reference", "parse_digest"]

MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name.

    Raises:
        InvalidArgument: it is empty, longer than 255 characters, or breaks the grammar.
    """
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise InvalidArgument(f"invalid repository name {name[:300]!r}")
    return name


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag (``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``).

    Raises:
        InvalidArgument: it is not.
    """
    if not _TAG.match(tag):
        raise InvalidArgument(f"invalid tag {tag[:200]!r}")
    return tag


def is_digest_reference(reference: str) -> bool:
    """True if a manifest reference is a digest (it has a ``:``, which tags cannot)."""
    return ":" in reference


def parse_digest(text: str) -> Digest:
    """Parse a digest from a URL or query parameter.

    Raises:
        InvalidArgument: malformed, or an unsupported algorithm.
    """
    return Digest.parse(text)
