"""Digests and chainIDs."""

from __future__ import annotations

import hashlib
import io

import pytest

from strata.errors import InvalidArgument
from strata.oci import Digest, chain_id, chain_ids


def test_of_and_parse_round_trip() -> None:
    digest = Digest.of(b"hello")
    assert str(digest) == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert Digest.parse(str(digest)) == digest
    assert digest.short() == digest.hex[:12]


def test_of_stream_counts_bytes() -> None:
    data = b"x" * (3 << 20)
    digest, size = Digest.of_stream(io.BytesIO(data))
    assert digest == Digest.of(data)
    assert size == len(data)


@pytest.mark.parametrize(
    "text",
    ["sha256", "sha256:", "sha256:abc", "sha256:" + "A" * 64, "md5:" + "a" * 32,
     ":" + "a" * 64, "sha256:" + "g" * 64],
    ids=["no-colon", "empty-hex", "short", "uppercase", "unknown-alg", "no-alg", "non-hex"],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument):
        Digest.parse(text)


def test_chain_ids_follow_the_spec() -> None:
    a, b, c = (Digest.of(x) for x in (b"a", b"b", b"c"))
    ids = chain_ids([a, b, c])
    assert ids[0] == a
    assert ids[1] == Digest.of(f"{a} {b}".encode())
    assert ids[2] == Digest.of(f"{ids[1]} {c}".encode())
    assert chain_id([a, b, c]) == ids[2]
    assert chain_id([]) is None
