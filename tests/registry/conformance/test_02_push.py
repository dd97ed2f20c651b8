"""Workflow 2, Push: upstream ``conformance/02_push_test.go`` (v1.1.1), spec by spec, with the
stricter check upstream added later: after the second chunk the ``Range`` header must be
``0-<size-1>``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ._client import Response
from ._env import Workflow, settings
from ._suite import Session, Spec, SpecList, expect_status_in

PUSH = Workflow.PUSH
specs = SpecList(PUSH, "Push")
_DELETE_MANIFEST_BEFORE_BLOBS = settings().delete_manifest_before_blobs
_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class PushState:
    """Upstream's closure variables."""

    last_response: Response | None = None
    prev_response: Response | None = None
    empty_layer_manifest_ref: str = ""


def _last(s: Session) -> Response:
    last = s.state(PushState).last_response
    assert last is not None, "lastResponse is nil"
    return last


# (upstream's Setup context has no specs in v1.1.1)

# ----------------------------------------------------------------------------- Blob Upload Streamed


@specs("Blob Upload Streamed", "PATCH request with blob in body should yield 202 response")
def streamed_patch(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    resp = s.client.do(s.client.request("POST", "/v2/<name>/blobs/uploads/"))
    assert resp.header("Location"), resp.describe()
    req = (
        s.client.request("PATCH", resp.get_relative_location())
        .set_header("Content-Type", "application/octet-stream")
        .set_body(s.data.test_blob_a.content)
    )
    resp = s.client.do(req)
    assert resp.status_code == 202, resp.describe()
    s.state(PushState).last_response = resp


@specs("Blob Upload Streamed", "PUT request to session URL with digest should yield 201 response")
def streamed_put(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    last = _last(s)
    blob = s.data.test_blob_a
    req = (
        s.client.request("PUT", last.get_relative_location())
        .set_query_param("digest", blob.digest)
        .set_header("Content-Type", "application/octet-stream")
        .set_header("Content-Length", blob.content_length)
    )
    resp = s.client.do(req)
    assert resp.status_code == 201, resp.describe()
    assert resp.header("Location"), resp.describe()


# ----------------------------------------------------------------------------- Blob Upload Monolithic


@specs("Blob Upload Monolithic", "GET nonexistent blob should result in 404 response")
def monolithic_get_missing(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/blobs/<digest>", digest=s.data.dummy_digest))
    assert resp.status_code == 404, resp.describe()


@specs("Blob Upload Monolithic", "POST request with digest and blob should yield a 201 or 202")
def monolithic_post_digest(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    c = s.data.configs[1]
    req = (
        s.client.request("POST", "/v2/<name>/blobs/uploads/")
        .set_header("Content-Length", c.content_length)
        .set_header("Content-Type", "application/octet-stream")
        .set_query_param("digest", c.digest)
        .set_body(c.content)
    )
    resp = s.client.do(req)
    assert resp.header("Location"), resp.describe()
    assert resp.status_code in (201, 202), resp.describe()
    s.state(PushState).last_response = resp


@specs(
    "Blob Upload Monolithic",
    "GET request to blob URL from prior request should yield 200 or 404 based on response code",
)
def monolithic_get_after_post(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    last = _last(s)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/blobs/<digest>", digest=s.data.configs[1].digest))
    if last.status_code == 202:
        assert resp.status_code == 404, resp.describe()
    else:
        assert resp.status_code == 200, resp.describe()


@specs("Blob Upload Monolithic", "POST request should yield a session ID")
def monolithic_post(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    resp = s.client.do(s.client.request("POST", "/v2/<name>/blobs/uploads/"))
    assert resp.status_code == 202, resp.describe()
    s.state(PushState).last_response = resp


@specs("Blob Upload Monolithic", "PUT upload of a blob should yield a 201 Response")
def monolithic_put(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    c = s.data.configs[1]
    req = (
        s.client.request("PUT", _last(s).get_relative_location())
        .set_header("Content-Length", c.content_length)
        .set_header("Content-Type", "application/octet-stream")
        .set_query_param("digest", c.digest)
        .set_body(c.content)
    )
    resp = s.client.do(req)
    assert resp.header("Location"), resp.describe()
    assert resp.status_code == 201, resp.describe()


@specs("Blob Upload Monolithic", "GET request to existing blob should yield 200 response")
def monolithic_get(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/blobs/<digest>", digest=s.data.configs[1].digest))
    assert resp.status_code == 200, resp.describe()


@specs("Blob Upload Monolithic", "PUT upload of a layer blob should yield a 201 Response")
def monolithic_put_layer(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    layer = s.data.layer
    resp = s.client.do(s.client.request("POST", "/v2/<name>/blobs/uploads/"))
    req = (
        s.client.request("PUT", resp.get_relative_location())
        .set_header("Content-Length", layer.content_length)
        .set_header("Content-Type", "application/octet-stream")
        .set_query_param("digest", layer.digest)
        .set_body(layer.content)
    )
    resp = s.client.do(req)
    assert resp.header("Location"), resp.describe()
    assert resp.status_code == 201, resp.describe()


@specs("Blob Upload Monolithic", "GET request to existing layer should yield 200 response")
def monolithic_get_layer(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/blobs/<digest>", digest=s.data.layer.digest))
    assert resp.status_code == 200, resp.describe()


# ----------------------------------------------------------------------------- Blob Upload Chunked


@specs("Blob Upload Chunked", "Out-of-order blob upload should return 416")
def chunked_out_of_order(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    resp = s.client.do(
        s.client.request("POST", "/v2/<name>/blobs/uploads/").set_header("Content-Length", "0")
    )
    assert resp.header("Location"), resp.describe()
    # rebuild chunked blob if min size is above our chunk size
    if min_size_text := resp.header("OCI-Chunk-Min-Length"):
        min_size = int(min_size_text)
        if min_size > len(s.data.chunked.chunk1):
            s.data.rechunk(min_size * 2 - 2)
    chunked = s.data.chunked
    req = (
        s.client.request("PATCH", resp.get_relative_location())
        .set_header("Content-Type", "application/octet-stream")
        .set_header("Content-Length", str(len(chunked.chunk2)))
        .set_header("Content-Range", chunked.chunk2_range)
        .set_body(chunked.chunk2)
    )
    resp = s.client.do(req)
    assert resp.status_code == 416, resp.describe()


@specs("Blob Upload Chunked", "PATCH request with first chunk should return 202")
def chunked_first(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    state = s.state(PushState)
    chunked = s.data.chunked
    resp = s.client.do(
        s.client.request("POST", "/v2/<name>/blobs/uploads/").set_header("Content-Length", "0")
    )
    assert resp.header("Location"), resp.describe()
    state.prev_response = resp
    req = (
        s.client.request("PATCH", resp.get_relative_location())
        .set_header("Content-Type", "application/octet-stream")
        .set_header("Content-Length", str(len(chunked.chunk1)))
        .set_header("Content-Range", chunked.chunk1_range)
        .set_body(chunked.chunk1)
    )
    resp = s.client.do(req)
    assert resp.status_code == 202, resp.describe()
    assert resp.header("Range") == chunked.chunk1_range, resp.describe()
    state.last_response = resp


def _prev(s: Session) -> Response:
    prev = s.state(PushState).prev_response
    assert prev is not None, "prevResponse is nil"
    return prev


@specs("Blob Upload Chunked", "Retry previous blob chunk should return 416")
def chunked_retry(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    chunked = s.data.chunked
    req = (
        s.client.request("PATCH", _prev(s).get_relative_location())
        .set_header("Content-Type", "application/octet-stream")
        .set_header("Content-Length", str(len(chunked.chunk1)))
        .set_header("Content-Range", chunked.chunk1_range)
        .set_body(chunked.chunk1)
    )
    resp = s.client.do(req)
    assert resp.status_code == 416, resp.describe()


@specs("Blob Upload Chunked", "Get on stale blob upload should return 204 with a range and location")
def chunked_status(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    resp = s.client.do(s.client.request("GET", _prev(s).get_relative_location()))
    assert resp.status_code == 204, resp.describe()
    assert resp.header("Location"), resp.describe()
    assert resp.header("Range") == s.data.chunked.chunk1_range, resp.describe()
    s.state(PushState).last_response = resp


@specs("Blob Upload Chunked", "PATCH request with second chunk should return 202")
def chunked_second(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    chunked = s.data.chunked
    req = (
        s.client.request("PATCH", _last(s).get_relative_location())
        .set_header("Content-Length", str(len(chunked.chunk2)))
        .set_header("Content-Range", chunked.chunk2_range)
        .set_header("Content-Type", "application/octet-stream")
        .set_body(chunked.chunk2)
    )
    resp = s.client.do(req)
    assert resp.status_code == 202, resp.describe()
    # stricter check added upstream after v1.1.1
    assert resp.header("Range") == f"0-{len(chunked.blob.content) - 1}", resp.describe()
    assert resp.header("Location"), resp.describe()
    s.state(PushState).last_response = resp


@specs("Blob Upload Chunked", "PUT request with digest should return 201")
def chunked_close(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    req = (
        s.client.request("PUT", _last(s).get_relative_location())
        .set_header("Content-Length", "0")
        .set_header("Content-Type", "application/octet-stream")
        .set_query_param("digest", s.data.chunked.blob.digest)
    )
    resp = s.client.do(req)
    assert resp.status_code == 201, resp.describe()
    assert resp.header("Location"), resp.describe()


# ----------------------------------------------------------------------------- Cross-Repository Blob Mount


@specs(
    "Cross-Repository Blob Mount",
    "Cross-mounting of a blob without the from argument should yield session id",
)
def mount_without_from(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    req = s.client.request(
        "POST", "/v2/<name>/blobs/uploads/", name=s.settings.crossmount_namespace
    ).set_query_param("mount", s.data.dummy_digest)
    resp = s.client.do(req)
    assert resp.status_code == 202, resp.describe()
    assert resp.get_absolute_location(), resp.describe()


@specs(
    "Cross-Repository Blob Mount", "POST request to mount another repository's blob should return 201 or 202"
)
def mount_from(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    req = (
        s.client.request("POST", "/v2/<name>/blobs/uploads/", name=s.settings.crossmount_namespace)
        .set_query_param("mount", s.data.test_blob_a.digest)
        .set_query_param("from", s.client.default_name)
    )
    resp = s.client.do(req)
    assert resp.status_code in (201, 202), resp.describe()
    s.state(PushState).last_response = resp


@specs(
    "Cross-Repository Blob Mount", "GET request to test digest within cross-mount namespace should return 200"
)
def mount_get(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    last = _last(s)
    s.run_only_if(last.status_code == 201, "the mount answered 202, not 201")
    expected = f"/v2/{s.settings.crossmount_namespace}/blobs/{s.data.test_blob_a.digest}"
    assert last.get_relative_location() == expected, last.describe()
    resp = s.client.do(s.client.request("GET", last.get_relative_location()))
    assert resp.status_code == 200, resp.describe()


@specs("Cross-Repository Blob Mount", "Cross-mounting of nonexistent blob should yield session id")
def mount_fallback(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    last = _last(s)
    s.run_only_if(last.status_code == 202, "the mount answered 201, not 202")
    prefix = f"/v2/{s.settings.crossmount_namespace}/blobs/uploads/"
    assert last.get_relative_location().startswith(prefix), last.describe()


@specs(
    "Cross-Repository Blob Mount",
    "Cross-mounting without from, and automatic content discovery enabled should return a 201",
)
def mount_automatic_enabled(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    s.run_only_if(s.settings.run_automatic_crossmount_test, "OCI_AUTOMATIC_CROSSMOUNT is unset")
    s.run_only_if(_last(s).status_code == 201, "the mount answered 202, not 201")
    s.run_only_if(s.settings.automatic_crossmount_enabled, "OCI_AUTOMATIC_CROSSMOUNT is false")
    req = s.client.request(
        "POST", "/v2/<name>/blobs/uploads/", name=s.settings.crossmount_namespace
    ).set_query_param("mount", s.data.test_blob_a.digest)
    resp = s.client.do(req)
    assert resp.status_code == 201, resp.describe()


@specs(
    "Cross-Repository Blob Mount",
    "Cross-mounting without from, and automatic content discovery disabled should return a 202",
)
def mount_automatic_disabled(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    s.run_only_if(s.settings.run_automatic_crossmount_test, "OCI_AUTOMATIC_CROSSMOUNT is unset")
    s.run_only_if(_last(s).status_code == 201, "the mount answered 202, not 201")
    s.run_only_if_not(s.settings.automatic_crossmount_enabled, "OCI_AUTOMATIC_CROSSMOUNT is true")
    req = s.client.request(
        "POST", "/v2/<name>/blobs/uploads/", name=s.settings.crossmount_namespace
    ).set_query_param("mount", s.data.test_blob_a.digest)
    resp = s.client.do(req)
    assert resp.status_code == 202, resp.describe()


# ----------------------------------------------------------------------------- Manifest Upload


@specs("Manifest Upload", "GET nonexistent manifest should return 404")
def manifest_get_missing(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    req = s.client.request("GET", "/v2/<name>/manifests/<reference>", reference=s.data.nonexistent_manifest)
    resp = s.client.do(req)
    assert resp.status_code == 404, resp.describe()


@specs("Manifest Upload", "PUT should accept a manifest upload")
def manifest_put(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    for i in range(4):
        req = (
            s.client.request("PUT", "/v2/<name>/manifests/<reference>", reference=f"test{i}")
            .set_header("Content-Type", _MANIFEST_TYPE)
            .set_body(s.data.manifests[1].content)
        )
        resp = s.client.do(req)
        assert resp.header("Location"), resp.describe()
        assert resp.status_code == 201, resp.describe()


@specs("Manifest Upload", "Registry should accept a manifest upload with no layers")
def manifest_put_no_layers(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    req = (
        s.client.request("PUT", "/v2/<name>/manifests/<reference>", reference="emptylayer")
        .set_header("Content-Type", _MANIFEST_TYPE)
        .set_body(s.data.empty_layer_manifest.content)
    )
    resp = s.client.do(req)
    if resp.status_code == 201:
        location = resp.header("Location")
        s.state(PushState).empty_layer_manifest_ref = location
        assert location, resp.describe()
    else:
        s.warn("image manifest with no layers is not supported")


@specs("Manifest Upload", "GET request to manifest URL (digest) should yield 200 response")
def manifest_get(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    req = s.client.request(
        "GET", "/v2/<name>/manifests/<digest>", digest=s.data.manifests[1].digest
    ).set_header("Accept", _MANIFEST_TYPE)
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()


# ----------------------------------------------------------------------------- Teardown


def _delete_manifests(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    s.run_only_if(s.settings.run_push_setup)
    req = s.client.request("DELETE", "/v2/<name>/manifests/<digest>", digest=s.data.manifests[1].digest)
    expect_status_in(s.client.do(req), 405, allow_2xx=True)
    if s.state(PushState).empty_layer_manifest_ref:
        req = s.client.request(
            "DELETE", "/v2/<name>/manifests/<reference>", reference=s.data.empty_layer_manifest.digest
        )
        expect_status_in(s.client.do(req), 405, allow_2xx=True)


def _register_manifest_delete() -> None:
    @specs("Teardown", "Delete manifest created in tests")
    def delete_manifest(s: Session) -> None:
        _delete_manifests(s)


if _DELETE_MANIFEST_BEFORE_BLOBS:
    _register_manifest_delete()


@specs("Teardown", "Delete config blob created in tests")
def delete_config(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    s.run_only_if(s.settings.run_push_setup)
    req = s.client.request("DELETE", "/v2/<name>/blobs/<digest>", digest=s.data.configs[1].digest)
    expect_status_in(s.client.do(req), 404, 405, allow_2xx=True)


@specs("Teardown", "Delete layer blob created in setup")
def delete_layer(s: Session) -> None:
    s.skip_if_disabled(PUSH)
    s.run_only_if(s.settings.run_push_setup)
    req = s.client.request("DELETE", "/v2/<name>/blobs/<digest>", digest=s.data.layer.digest)
    expect_status_in(s.client.do(req), 404, 405, allow_2xx=True)


if not _DELETE_MANIFEST_BEFORE_BLOBS:
    _register_manifest_delete()


@pytest.mark.parametrize("spec", specs.items, ids=specs.ids)
def test_push(spec: Spec, conformance: Session) -> None:
    """One upstream Push spec (its name is the test id)."""
    spec.run(conformance)
