"""The distribution-spec surface beyond the conformance suite: pagination details, referrers
filtering and ``OCI-Subject``, cross-repository mount, ranges, deletes, the catalog."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from strata.testing.registry_server import StrataRegistry, http_request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = b"{}"


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(reg: StrataRegistry, repo: str, data: bytes) -> None:
    r = http_request(reg.url, "POST", f"/v2/{repo}/blobs/uploads/?digest={_d(data)}", body=data)
    assert r.status == 201, r.body


def _artifact(subject: bytes | None = None, artifact_type: str | None = None,
              annotations: dict[str, str] | None = None, layer: bytes = b"payload") -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _d(EMPTY), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": _d(layer), "size": len(layer)}],
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": _d(subject), "size": len(subject)}
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc, sort_keys=True).encode()


def _put(
    reg: StrataRegistry, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST
) -> dict[str, str]:
    r = http_request(reg.url, "PUT", f"/v2/{repo}/manifests/{ref}", body=body,
                     headers={"Content-Type": media_type})
    assert r.status == 201, r.body
    return r.headers


@pytest.fixture
def repo(registry: StrataRegistry) -> str:
    for blob in (EMPTY, b"payload", b"sig", b"sbom"):
        _push_blob(registry, "art", blob)
    return "art"


def test_tags_are_sorted_and_paginated_with_exclusive_last_and_link(
    registry: StrataRegistry, repo: str
) -> None:
    subject = _artifact()
    for tag in ("b", "a", "d", "c", "e"):
        _put(registry, repo, tag, subject)
    r = http_request(registry.url, "GET", f"/v2/{repo}/tags/list")
    assert r.json() == {"name": repo, "tags": ["a", "b", "c", "d", "e"]}
    assert "link" not in r.headers
    r = http_request(registry.url, "GET", f"/v2/{repo}/tags/list?n=2")
    assert r.json()["tags"] == ["a", "b"]
    assert r.headers["link"] == f'</v2/{repo}/tags/list?last=b&n=2>; rel="next"'
    r = http_request(registry.url, "GET", f"/v2/{repo}/tags/list?n=2&last=b")
    assert r.json()["tags"] == ["c", "d"]
    r = http_request(registry.url, "GET", f"/v2/{repo}/tags/list?n=2&last=d")
    assert r.json()["tags"] == ["e"] and "link" not in r.headers
    r = http_request(registry.url, "GET", f"/v2/{repo}/tags/list?n=0")
    assert r.json()["tags"] == [] and "link" not in r.headers


def test_catalog_lists_repositories_sorted_and_paginated(registry: StrataRegistry) -> None:
    for name in ("zeta", "alpha/one", "alpha/two", "mid"):
        _push_blob(registry, name, b"x")
    r = http_request(registry.url, "GET", "/v2/_catalog")
    assert r.json() == {"repositories": ["alpha/one", "alpha/two", "mid", "zeta"]}
    r = http_request(registry.url, "GET", "/v2/_catalog?n=3")
    assert r.json() == {"repositories": ["alpha/one", "alpha/two", "mid"]}
    assert r.headers["link"] == '</v2/_catalog?last=mid&n=3>; rel="next"'


def test_referrers_lists_filters_and_forgets_deleted_referrers(registry: StrataRegistry, repo: str) -> None:
    subject = _artifact()
    subject_digest = _d(subject)
    _put(registry, repo, "v1", subject)
    sig = _artifact(subject, "application/vnd.example.sig", {"k": "v"}, layer=b"sig")
    sbom = _artifact(subject, "application/vnd.example.sbom", layer=b"sbom")
    headers = _put(registry, repo, _d(sig), sig)
    assert headers["oci-subject"] == subject_digest
    _put(registry, repo, _d(sbom), sbom)
    r = http_request(registry.url, "GET", f"/v2/{repo}/referrers/{subject_digest}")
    assert r.status == 200 and r.headers["content-type"].startswith(OCI_INDEX)
    index = r.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_type = {m["artifactType"]: m for m in index["manifests"]}
    assert set(by_type) == {"application/vnd.example.sig", "application/vnd.example.sbom"}
    assert by_type["application/vnd.example.sig"] == {
        "mediaType": OCI_MANIFEST, "digest": _d(sig), "size": len(sig),
        "artifactType": "application/vnd.example.sig", "annotations": {"k": "v"},
    }
    r = http_request(registry.url, "GET",
                     f"/v2/{repo}/referrers/{subject_digest}?artifactType=application/vnd.example.sbom")
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [_d(sbom)]
    assert http_request(registry.url, "DELETE", f"/v2/{repo}/manifests/{_d(sig)}").status == 202
    r = http_request(registry.url, "GET", f"/v2/{repo}/referrers/{subject_digest}")
    assert [m["digest"] for m in r.json()["manifests"]] == [_d(sbom)]
    # A subject nobody refers to: an empty index, not 404.
    r = http_request(registry.url, "GET", f"/v2/{repo}/referrers/{_d(b'nothing')}")
    assert r.status == 200 and r.json()["manifests"] == []


def test_artifact_type_defaults_to_config_media_type_in_referrers(
    registry: StrataRegistry, repo: str
) -> None:
    subject = _artifact()
    _put(registry, repo, "s", subject)
    child = _artifact(subject, layer=b"sig")
    _put(registry, repo, "child", child)
    r = http_request(registry.url, "GET", f"/v2/{repo}/referrers/{_d(subject)}")
    assert [m["artifactType"] for m in r.json()["manifests"]] == ["application/vnd.oci.empty.v1+json"]


def test_cross_repository_mount_links_existing_blob_or_falls_back_to_upload(registry: StrataRegistry) -> None:
    data = b"shared layer" * 1000
    _push_blob(registry, "src/repo", data)
    r = http_request(registry.url, "POST", f"/v2/dst/repo/blobs/uploads/?mount={_d(data)}&from=src/repo")
    assert r.status == 201
    assert r.headers["location"] == f"/v2/dst/repo/blobs/{_d(data)}"
    assert r.headers["docker-content-digest"] == _d(data)
    assert http_request(registry.url, "GET", f"/v2/dst/repo/blobs/{_d(data)}").body == data
    # Unknown in the source repository: a normal upload session instead.
    r = http_request(registry.url, "POST", f"/v2/dst/repo/blobs/uploads/?mount={_d(b'nope')}&from=src/repo")
    assert r.status == 202 and "/blobs/uploads/" in r.headers["location"]
    # A blob the source does not link is not mountable, even if another repository has it.
    r = http_request(registry.url, "POST", f"/v2/third/blobs/uploads/?mount={_d(data)}&from=elsewhere")
    assert r.status == 202


@pytest.mark.parametrize(
    ("header", "status", "expected", "content_range"),
    [
        ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/4000"),
        ("bytes=3990-", 206, slice(3990, 4000), "bytes 3990-3999/4000"),
        ("bytes=-5", 206, slice(3995, 4000), "bytes 3995-3999/4000"),
        ("bytes=100-99999", 206, slice(100, 4000), "bytes 100-3999/4000"),
    ],
    ids=["first-ten", "open-end", "suffix", "past-end"],
)
def test_blob_ranges(registry: StrataRegistry, header: str, status: int, expected: slice,
                     content_range: str) -> None:
    data = bytes(range(200)) * 20
    _push_blob(registry, "ranges", data)
    r = http_request(registry.url, "GET", f"/v2/ranges/blobs/{_d(data)}", headers={"Range": header})
    assert r.status == status
    assert r.body == data[expected]
    assert r.headers["content-range"] == content_range
    assert r.headers["content-length"] == str(len(data[expected]))


def test_blob_get_and_head_headers(registry: StrataRegistry) -> None:
    data = b"z" * 12345
    _push_blob(registry, "h", data)
    for method in ("GET", "HEAD"):
        r = http_request(registry.url, method, f"/v2/h/blobs/{_d(data)}")
        assert r.status == 200
        assert r.headers["docker-content-digest"] == _d(data)
        assert r.headers["content-length"] == "12345"
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["accept-ranges"] == "bytes"
        assert r.body == (data if method == "GET" else b"")


def test_chunked_upload_resumes_from_status_and_commits(registry: StrataRegistry) -> None:
    data = bytes(range(256)) * 64
    r = http_request(registry.url, "POST", "/v2/chunks/blobs/uploads/")
    location = r.headers["location"]
    for start in range(0, len(data), 5000):
        chunk = data[start:start + 5000]
        r = http_request(registry.url, "PATCH", location, body=chunk,
                         headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"})
        assert r.status == 202 and r.headers["range"] == f"0-{start + len(chunk) - 1}"
        status = http_request(registry.url, "GET", r.headers["location"])
        assert status.status == 204 and status.headers["range"] == f"0-{start + len(chunk) - 1}"
        location = r.headers["location"]
    r = http_request(registry.url, "PUT", f"{location}?digest={_d(data)}")
    assert r.status == 201
    assert http_request(registry.url, "GET", f"/v2/chunks/blobs/{_d(data)}").body == data
    assert http_request(registry.url, "GET", location).status == 404


def test_manifest_delete_by_digest_drops_its_tags_and_tag_delete_keeps_the_manifest(
    registry: StrataRegistry, repo: str
) -> None:
    m = _artifact()
    _put(registry, repo, "one", m)
    _put(registry, repo, "two", m)
    assert http_request(registry.url, "DELETE", f"/v2/{repo}/manifests/one").status == 202
    assert http_request(registry.url, "GET", f"/v2/{repo}/manifests/one").status == 404
    assert http_request(registry.url, "GET", f"/v2/{repo}/manifests/{_d(m)}").status == 200
    assert http_request(registry.url, "DELETE", f"/v2/{repo}/manifests/{_d(m)}").status == 202
    assert http_request(registry.url, "GET", f"/v2/{repo}/manifests/two").status == 404
    assert http_request(registry.url, "GET", f"/v2/{repo}/tags/list").json()["tags"] == []
    r = http_request(registry.url, "DELETE", f"/v2/{repo}/manifests/{_d(m)}")
    assert r.status == 404 and r.error_codes == ["MANIFEST_UNKNOWN"]


def test_index_of_pushed_manifests_is_accepted_and_served_with_its_media_type(
    registry: StrataRegistry, repo: str
) -> None:
    m = _artifact()
    _put(registry, repo, _d(m), m)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": _d(m), "size": len(m),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    _put(registry, repo, "multi", index, OCI_INDEX)
    r = http_request(registry.url, "GET", f"/v2/{repo}/manifests/multi")
    assert r.body == index
    assert r.headers["content-type"] == OCI_INDEX
    assert r.headers["docker-content-digest"] == _d(index)


def test_deletes_are_refused_when_disabled(tmp_path: Path) -> None:
    with StrataRegistry(tmp_path / "r", config={"storage": {"delete": {"enabled": False}}}) as reg:
        data = b"keep me"
        _push_blob(reg, "k", data)
        r = http_request(reg.url, "DELETE", f"/v2/k/blobs/{_d(data)}")
        assert r.status == 405 and r.error_codes == ["UNSUPPORTED"]
        assert http_request(reg.url, "GET", f"/v2/k/blobs/{_d(data)}").body == data
