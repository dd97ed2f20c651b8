"""Hostile and wrong input gets the spec's error code, and nothing on disk changes.

Each row sends one request to a registry holding one repository (``good``: a config blob, a
layer, a tagged manifest, and an upload with 10 bytes received) and checks the status, the
error code, and that the storage tree is byte-for-byte the same afterwards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from strata.testing.registry_server import StrataRegistry, http_request, tree_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER = b"layer bytes " * 100
MISSING = "sha256:" + "0" * 64


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(config: bytes = CONFIG, layers: tuple[bytes, ...] = (LAYER,), **extra: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _d(layer),
                    "size": len(layer)} for layer in layers],
    }
    doc.update(extra)
    return json.dumps(doc).encode()


@dataclass
class Setup:
    registry: StrataRegistry
    upload: str = ""
    other_upload: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with StrataRegistry(tmp_path_factory.mktemp("hostile")) as reg:
        for blob in (CONFIG, LAYER):
            r = http_request(reg.url, "POST", f"/v2/good/blobs/uploads/?digest={_d(blob)}", body=blob)
            assert r.status == 201, r.body
        r = http_request(reg.url, "PUT", "/v2/good/manifests/v1", body=_manifest(),
                         headers={"Content-Type": OCI_MANIFEST})
        assert r.status == 201, r.body
        r = http_request(reg.url, "POST", "/v2/good/blobs/uploads/")
        upload = r.headers["location"]
        r = http_request(reg.url, "PATCH", upload, body=b"0123456789",
                         headers={"Content-Range": "0-9", "Content-Type": "application/octet-stream"})
        assert r.status == 202 and r.headers["range"] == "0-9"
        r = http_request(reg.url, "POST", "/v2/other/blobs/uploads/")
        yield Setup(reg, upload=upload, other_upload=r.headers["location"])


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    status: int
    code: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


LONG = "a" * 300
CASES = [
    Case("name-dotdot", "GET", "/v2/good/../etc/tags/list", 400, "NAME_INVALID"),
    Case("name-dotdot-upload", "POST", "/v2/../../tmp/blobs/uploads/", 400, "NAME_INVALID"),
    Case("name-encoded-dotdot", "POST", "/v2/good/%2e%2e/x/blobs/uploads/", 400, "NAME_INVALID"),
    Case("name-too-long", "POST", f"/v2/{LONG}/blobs/uploads/", 400, "NAME_INVALID"),
    Case("name-too-long-manifest", "PUT", f"/v2/{'ab/' * 90}c/manifests/v1", 400, "NAME_INVALID",
         body=_manifest(), headers=(("Content-Type", OCI_MANIFEST),)),
    Case("name-uppercase", "GET", "/v2/Good/tags/list", 400, "NAME_INVALID"),
    Case("name-trailing-separator", "GET", "/v2/good-/tags/list", 400, "NAME_INVALID"),
    Case("digest-garbage", "GET", "/v2/good/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
    Case("digest-unknown-algorithm", "GET", "/v2/good/blobs/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
    Case("digest-uppercase-hex", "GET", "/v2/good/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
    Case("manifest-digest-garbage", "GET", "/v2/good/manifests/sha256:totallywrong", 400, "DIGEST_INVALID"),
    Case("post-bad-digest", "POST", "/v2/good/blobs/uploads/?digest=sha256:nothex", 400, "DIGEST_INVALID",
         body=b"data"),
    Case("post-lying-digest", "POST", f"/v2/good/blobs/uploads/?digest={_d(b'other')}", 400,
         "DIGEST_INVALID", body=b"the real content"),
    Case("manifest-not-json", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID", body=b"{not json",
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-not-object", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID", body=b"[1,2]",
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-schema-version", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID",
         body=_manifest(schemaVersion=3), headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-schema1", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID",
         body=json.dumps({"schemaVersion": 1, "name": "good", "tag": "v2", "fsLayers": []}).encode(),
         headers=(("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws"),)),
    Case("manifest-media-type-mismatch", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID",
         body=_manifest(),
         headers=(("Content-Type", "application/vnd.docker.distribution.manifest.v2+json"),)),
    Case("manifest-missing-config-field", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID",
         body=json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-bad-descriptor-digest", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID",
         body=_manifest().replace(_d(LAYER).encode(), b"sha256:nothex"),
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-missing-layer", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_BLOB_UNKNOWN",
         body=_manifest(layers=(LAYER, b"never uploaded")), headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-missing-config", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_BLOB_UNKNOWN",
         body=_manifest(config=b"{}"), headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-blob-of-other-repo", "PUT", "/v2/other/manifests/v2", 400, "MANIFEST_BLOB_UNKNOWN",
         body=_manifest(), headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-wrong-layer-size", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_INVALID",
         body=_manifest().replace(f'"size": {len(LAYER)}'.encode(), b'"size": 7'),
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-digest-mismatch", "PUT", f"/v2/good/manifests/{MISSING}", 400, "DIGEST_INVALID",
         body=_manifest(), headers=(("Content-Type", OCI_MANIFEST),)),
    Case("manifest-huge", "PUT", "/v2/good/manifests/v2", 413, "SIZE_INVALID",
         body=b'{"schemaVersion":2,"annotations":{"x":"' + b"x" * (5 << 20) + b'"}}',
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("index-missing-manifest", "PUT", "/v2/good/manifests/v2", 400, "MANIFEST_BLOB_UNKNOWN",
         body=json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
             {"mediaType": OCI_MANIFEST, "digest": MISSING, "size": 10}]}).encode(),
         headers=(("Content-Type", OCI_INDEX),)),
    Case("tag-invalid", "PUT", "/v2/good/manifests/-bad", 400, "TAG_INVALID", body=_manifest(),
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("tag-too-long", "PUT", "/v2/good/manifests/" + "t" * 129, 400, "TAG_INVALID", body=_manifest(),
         headers=(("Content-Type", OCI_MANIFEST),)),
    Case("chunk-overlaps", "PATCH", "{upload}", 416, "RANGE_INVALID", body=b"x" * 10,
         headers=(("Content-Range", "5-14"),)),
    Case("chunk-skips", "PATCH", "{upload}", 416, "RANGE_INVALID", body=b"x" * 10,
         headers=(("Content-Range", "20-29"),)),
    Case("chunk-restarts", "PATCH", "{upload}", 416, "RANGE_INVALID", body=b"x" * 10,
         headers=(("Content-Range", "0-9"),)),
    Case("chunk-reversed-range", "PATCH", "{upload}", 416, "RANGE_INVALID", body=b"x" * 10,
         headers=(("Content-Range", "19-10"),)),
    Case("chunk-length-disagrees", "PATCH", "{upload}", 416, "RANGE_INVALID", body=b"x" * 10,
         headers=(("Content-Range", "10-14"),)),
    Case("chunk-range-garbage", "PATCH", "{upload}", 416, "RANGE_INVALID", body=b"x" * 10,
         headers=(("Content-Range", "ten-twenty"),)),
    Case("final-chunk-overlaps", "PUT", "{upload}?digest=" + _d(b"0123456789xxxxx"), 416, "RANGE_INVALID",
         body=b"x" * 10, headers=(("Content-Range", "5-14"),)),
    Case("put-upload-without-digest", "PUT", "{upload}", 400, "DIGEST_INVALID"),
    Case("upload-of-other-repo", "PATCH", "{other_upload_as_good}", 404, "BLOB_UPLOAD_UNKNOWN", body=b"x"),
    Case("upload-id-traversal", "PATCH", "/v2/good/blobs/uploads/..%2F..%2Fblobs", 404, "BLOB_UPLOAD_UNKNOWN",
         body=b"x"),
    Case("upload-id-unknown", "GET", "/v2/good/blobs/uploads/00000000-0000-4000-8000-000000000000", 404,
         "BLOB_UPLOAD_UNKNOWN"),
    Case("blob-unknown", "GET", f"/v2/good/blobs/{MISSING}", 404, "BLOB_UNKNOWN"),
    Case("blob-of-other-repo", "GET", f"/v2/other/blobs/{_d(LAYER)}", 404, "BLOB_UNKNOWN"),
    Case("manifest-unknown-tag", "GET", "/v2/good/manifests/nope", 404, "MANIFEST_UNKNOWN"),
    Case("tags-unknown-repo", "GET", "/v2/nobody/tags/list", 404, "NAME_UNKNOWN"),
    Case("tags-bad-n", "GET", "/v2/good/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
    Case("range-unsatisfiable", "GET", f"/v2/good/blobs/{_d(LAYER)}", 416, "",
         headers=(("Range", f"bytes={len(LAYER) + 10}-"),)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request_gets_spec_error_and_changes_nothing(setup: Setup, case: Case) -> None:
    reg = setup.registry
    path = case.path.replace("{upload}", setup.upload).replace(
        "{other_upload_as_good}", setup.other_upload.replace("/v2/other/", "/v2/good/")
    )
    before = tree_digest(reg.storage)
    answer = http_request(reg.url, case.method, path, body=case.body, headers=dict(case.headers))
    assert answer.status == case.status, answer.body[:500]
    if case.code:
        assert answer.error_codes and set(answer.error_codes) == {case.code}, answer.body[:500]
        assert answer.headers["content-type"].startswith("application/json")
        error = answer.json()["errors"][0]
        assert isinstance(error["message"], str) and error["message"]
    assert tree_digest(reg.storage) == before
    # The upload still stands where it stood.
    status = http_request(reg.url, "GET", setup.upload)
    assert status.status == 204 and status.headers["range"] == "0-9"


def test_lying_client_gets_digest_invalid_and_its_bytes_are_not_kept(registry: StrataRegistry) -> None:
    """A chunked upload finished with a digest its bytes do not have: refused, the upload
    session is dropped (the client must start over), no blob appears under either digest."""
    content = b"what I really send"
    claimed = _d(b"what I claim")
    r = http_request(registry.url, "POST", "/v2/liar/blobs/uploads/")
    location = r.headers["location"]
    r = http_request(registry.url, "PATCH", location, body=content,
                     headers={"Content-Range": f"0-{len(content) - 1}"})
    assert r.status == 202
    r = http_request(registry.url, "PUT", f"{location}?digest={claimed}")
    assert r.status == 400 and r.error_codes == ["DIGEST_INVALID"]
    for digest in (claimed, _d(content)):
        assert http_request(registry.url, "HEAD", f"/v2/liar/blobs/{digest}").status == 404
    assert not list((registry.storage / "blobs").rglob("*" + _d(content)[7:]))
    assert list((registry.storage / "uploads").iterdir()) == []
