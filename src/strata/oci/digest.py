"""Content digests: ``sha256:<hex>`` names for bytes (OCI image-spec, descriptor.md#digests).

Owns parsing, validating and computing digests.  Does no I/O beyond hashing a stream the
caller passes in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO, Self

from strata.errors import InvalidArgument

__all__ = ["SHA256", "Digest", "Digester"]

SHA256 = "sha256"

_ALGORITHM = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*$")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[a-f0-9]+$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A digest ``algorithm:hex``; ``str()`` gives the text form, :meth:`parse` undoes it."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ``sha256:<64 hex>`` (or ``sha512:<128 hex>``).

        Raises:
            InvalidArgument: the text is not a well-formed digest of a known algorithm.
        """
        algorithm, sep, hexpart = text.partition(":")
        if not sep or not _ALGORITHM.match(algorithm):
            raise InvalidArgument(f"invalid digest {text!r}: expected algorithm:hex")
        expected = _HEX_LENGTH.get(algorithm)
        if expected is None:
            raise InvalidArgument(f"invalid digest {text!r}: unsupported algorithm {algorithm!r}")
        if len(hexpart) != expected or not _HEX.match(hexpart):
            raise InvalidArgument(
                f"invalid digest {text!r}: {algorithm} needs {expected} lowercase hex digits"
            )
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes | memoryview) -> Self:
        """The sha256 digest of ``data``."""
        return cls(SHA256, hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hex(cls, hexpart: str) -> Self:
        """A sha256 digest from its hex part, validated."""
        return cls.parse(f"{SHA256}:{hexpart}")

    @classmethod
    def of_stream(cls, stream: BinaryIO, *, chunk_size: int = 1 << 20) -> tuple[Self, int]:
        """Hash a stream to its end; returns the digest and the number of bytes read."""
        digester = Digester()
        while chunk := stream.read(chunk_size):
            digester.update(chunk)
        return cls(SHA256, digester.hexdigest()), digester.size

    def short(self, length: int = 12) -> str:
        """The first ``length`` hex digits, as docker shows image IDs."""
        return self.hex[:length]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class Digester:
    """A running sha256 that also counts bytes."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def digest(self) -> Digest:
        return Digest(SHA256, self._hash.hexdigest())
