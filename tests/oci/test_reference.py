"""Reference parsing and docker's normalisation (distribution/reference normalize_test.go)."""

from __future__ import annotations

import pytest

from strata.errors import InvalidArgument
from strata.oci import Digest, Reference

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("foo/bar", "docker.io/foo/bar:latest", "foo/bar:latest"),
        ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
        ("localhost:5000/a/b:t", "localhost:5000/a/b:t", "localhost:5000/a/b:t"),
        (f"localhost:5000/a/b@sha256:{HEX}", f"localhost:5000/a/b@sha256:{HEX}",
         f"localhost:5000/a/b@sha256:{HEX}"),
        (f"quay.io/a/b:1@sha256:{HEX}", f"quay.io/a/b:1@sha256:{HEX}", f"quay.io/a/b:1@sha256:{HEX}"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
        ("a-b_c__d/e.f", "docker.io/a-b_c__d/e.f:latest", "a-b_c__d/e.f:latest"),
        ("a.b/c", "a.b/c:latest", "a.b/c:latest"),
    ],
    ids=["short", "tag", "docker.io", "legacy-index", "user-repo", "localhost", "port",
         "digest", "tag-and-digest", "ip-port", "separators", "dotted-domain"],
)
def test_parse_normalises_like_docker(text: str, full: str, familiar: str) -> None:
    ref = Reference.parse(text)
    assert str(ref) == full
    assert ref.familiar() == familiar
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        (HEX, "64-byte hexadecimal"),
        ("a/b:", "invalid reference format"),
        ("a//b", "invalid reference format"),
        ("-a/b", "invalid reference format"),
        ("a/b@sha256:123", "invalid reference format"),
        ("a:b:c", "invalid reference format"),
        ("a/" + "b" * 300, "too long"),
        ("a b", "invalid reference format"),
    ],
    ids=["empty", "uppercase", "hex-id", "empty-tag", "double-slash", "leading-dash",
         "short-digest", "two-tags", "too-long", "space"],
)
def test_parse_rejects_invalid_with_clear_message(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Reference.parse(text)


def test_default_tag_can_be_suppressed() -> None:
    assert Reference.parse("busybox", default_tag=False).tag is None


def test_with_tag_and_digest() -> None:
    ref = Reference.parse("busybox")
    assert str(ref.with_tag("1")) == "docker.io/library/busybox:1"
    digest = Digest.parse(f"sha256:{HEX}")
    assert str(ref.with_digest(digest)) == f"docker.io/library/busybox@sha256:{HEX}"
