"""``strata registry serve`` on the S3 driver, end to end: real clients, several stateless
server processes sharing one bucket of a real S3-protocol server (moto on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.testing import baseimages, tools, trees
from strata.testing.registry_server import StrataRegistry
from strata.testing.s3 import S3Server

CHUNK = 5 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def s3_config(s3: S3Server, root: str) -> dict[str, object]:
    return {"storage": {"s3": s3.registry_storage(rootdirectory=root, chunksize=CHUNK)}}


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


def with_digest(url: str, digest: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={digest}"


def layout_blobs(layout: Path) -> dict[str, int]:
    return {f"sha256:{p.name}": p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir()}


def bucket_blobs(s3: S3Server, root: str) -> dict[str, int]:
    prefix = f"{root}/docker/registry/v2/blobs/sha256/"
    return {f"sha256:{key.split('/')[-2]}": size for key, size in s3.iter_objects(prefix)}


@pytest.mark.parametrize("name", ["busybox-layers", "busybox-history"])
def test_skopeo_copy_in_and_out_through_s3(s3: S3Server, tmp_path: Path, cache_dir: Path, name: str) -> None:
    """skopeo pushes a test image to strata on S3 and pulls it back: same blobs, same tree."""
    image = baseimages.build_images(
        Path(__file__).parents[2] / "interop" / "dockerfiles", cache_dir, names=[name]
    )[name]
    root = f"skopeo-{uuid.uuid4().hex[:8]}"
    with StrataRegistry(tmp_path / "reg", config=s3_config(s3, root), workers=2) as reg:
        ref = f"{reg.address}/test/{name}:v1"
        tools.skopeo_copy(
            f"oci:{image.oci_layout}:{image.ref}", f"docker://{ref}", extra=["--dest-tls-verify=false"]
        )
        pulled = tmp_path / "pulled"
        tools.skopeo_copy(f"docker://{ref}", f"oci:{pulled}:{name}", extra=["--src-tls-verify=false"])
        raw = tools.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"]).stdout
    assert "Traceback" not in reg.log()

    # Every blob of the image is in the bucket, content-addressed, with its size.
    original = layout_blobs(image.oci_layout)
    manifest_digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    manifest = json.loads(raw)
    wanted = {
        manifest["config"]["digest"],
        *(layer["digest"] for layer in manifest["layers"]),
        manifest_digest,
    }
    stored = bucket_blobs(s3, root)
    assert wanted <= set(stored)
    for digest in wanted:
        assert stored[digest] == original[digest]
    # Pulled back: the same manifest, config and layers, byte for byte, and the same tree.
    assert wanted <= set(layout_blobs(pulled))
    for digest in wanted:
        hexpart = digest.split(":")[1]
        assert (pulled / "blobs" / "sha256" / hexpart).read_bytes() == (
            image.oci_layout / "blobs" / "sha256" / hexpart
        ).read_bytes()
    a = tools.umoci_unpack(image.oci_layout, image.ref, tmp_path / "a")
    b = tools.umoci_unpack(pulled, name, tmp_path / "b")
    trees.assert_same_tree(a, b, include_root=False)
    # Nothing of the uploads is left in the bucket.
    assert s3.keys(prefix=f"{root}/docker/registry/v2/uploads/") == []
    assert s3.multipart_uploads(prefix=f"{root}/") == []


def test_two_servers_share_one_bucket(s3: S3Server, tmp_path: Path) -> None:
    """An upload started on one server is continued and finished on the other, chunk by
    chunk; each sees what the other stored; a lying client is refused by either."""
    root = f"pair-{uuid.uuid4().hex[:8]}"
    data = os.urandom(2 * CHUNK + 4321)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    config = s3_config(s3, root)
    with (
        StrataRegistry(tmp_path / "one", config=config) as one,
        StrataRegistry(tmp_path / "two", config=config) as two,
    ):
        servers = [one, two]
        status, headers, _ = request("POST", f"{one.url}/v2/shared/app/blobs/uploads/")
        assert status == 202, headers
        location = headers["Location"]
        offset = 0
        step = 3 << 20
        for i, start in enumerate(range(0, len(data), step)):
            server = servers[(i + 1) % 2]
            piece = data[start : start + step]
            status, headers, body = request(
                "PATCH",
                absolute(server.url, location),
                piece,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(piece) - 1}",
                },
            )
            assert status == 202, body
            offset += len(piece)
            assert headers["Range"] == f"0-{offset - 1}"
            location = headers["Location"]
            # the other server reports the same progress
            other = servers[i % 2]
            status, headers, _ = request("GET", absolute(other.url, location))
            assert (status, headers["Range"]) == (204, f"0-{offset - 1}")
        # an out-of-order chunk is refused by either server
        status, _, body = request(
            "PATCH",
            absolute(one.url, location),
            b"x",
            {"Content-Type": "application/octet-stream", "Content-Range": "5-5"},
        )
        assert status == 416, body
        status, _, _ = request("HEAD", f"{two.url}/v2/shared/app/blobs/{digest}")
        assert status == 404  # not visible before the PUT
        status, headers, body = request("PUT", with_digest(absolute(one.url, location), digest))
        assert status == 201, body
        assert headers["Docker-Content-Digest"] == digest

        status, headers, body = request("GET", f"{two.url}/v2/shared/app/blobs/{digest}")
        assert (status, body == data) == (200, True)
        status, headers, body = request(
            "GET",
            f"{one.url}/v2/shared/app/blobs/{digest}",
            headers={"Range": f"bytes={CHUNK - 2}-{CHUNK + 1}"},
        )
        assert status == 206
        assert body == data[CHUNK - 2 : CHUNK + 2]
        assert headers["Content-Range"] == f"bytes {CHUNK - 2}-{CHUNK + 1}/{len(data)}"

        # a client lying about the digest: DIGEST_INVALID, nothing of it visible
        lie = os.urandom(CHUNK + 1)
        claimed = "sha256:" + hashlib.sha256(b"something else").hexdigest()
        status, headers, _ = request("POST", f"{two.url}/v2/shared/app/blobs/uploads/")
        status, _, body = request(
            "PUT",
            with_digest(absolute(one.url, headers["Location"]), claimed),
            lie,
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 400
        assert json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
        for server in servers:
            status, _, _ = request("HEAD", f"{server.url}/v2/shared/app/blobs/{claimed}")
            assert status == 404
    assert set(bucket_blobs(s3, root)) == {digest}
    assert s3.keys(prefix=f"{root}/docker/registry/v2/uploads/") == []
    assert s3.multipart_uploads(prefix=f"{root}/") == []
