"""Workflow 1, Pull: upstream ``conformance/01_pull_test.go`` (v1.1.1), spec by spec."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ._env import Workflow, settings
from ._suite import ERROR_CODES, Session, Spec, SpecList, expect_2xx, expect_status_in

PULL = Workflow.PULL
specs = SpecList(PULL, "Pull")
_DELETE_MANIFEST_BEFORE_BLOBS = settings().delete_manifest_before_blobs
_SETUP = "OCI_TAG_NAME, OCI_MANIFEST_DIGEST and OCI_BLOB_DIGEST name existing content"
_NO_SETUP = "OCI_TAG_NAME, OCI_MANIFEST_DIGEST and OCI_BLOB_DIGEST are not all set"


@dataclass
class PullState:
    """Upstream's closure variable ``tag``."""

    tag: str = ""


def _populate_blob(s: Session, digest: str, length: str, content: bytes) -> None:
    req = s.client.request("POST", "/v2/<name>/blobs/uploads/")
    resp = s.client.do(req)
    req = (
        s.client.request("PUT", resp.get_relative_location())
        .set_query_param("digest", digest)
        .set_header("Content-Type", "application/octet-stream")
        .set_header("Content-Length", length)
        .set_body(content)
    )
    expect_2xx(s.client.do(req))


# ----------------------------------------------------------------------------- Setup


@specs("Setup", "Populate registry with test blob")
def setup_config0(s: Session) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if(s.settings.run_pull_setup, _SETUP)
    c = s.data.configs[0]
    _populate_blob(s, c.digest, c.content_length, c.content)


@specs("Setup", "Populate registry with test blob")
def setup_config1(s: Session) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if(s.settings.run_pull_setup, _SETUP)
    c = s.data.configs[1]
    _populate_blob(s, c.digest, c.content_length, c.content)


@specs("Setup", "Populate registry with test layer")
def setup_layer(s: Session) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if(s.settings.run_pull_setup, _SETUP)
    layer = s.data.layer
    _populate_blob(s, layer.digest, layer.content_length, layer.content)


@specs("Setup", "Populate registry with test manifest")
def setup_manifest_tag(s: Session) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if(s.settings.run_pull_setup, _SETUP)
    state = s.state(PullState)
    state.tag = "tagtest0"
    req = (
        s.client.request("PUT", "/v2/<name>/manifests/<reference>", reference=state.tag)
        .set_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .set_body(s.data.manifests[0].content)
    )
    expect_2xx(s.client.do(req))


@specs("Setup", "Populate registry with test manifest")
def setup_manifest_digest(s: Session) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if(s.settings.run_pull_setup, _SETUP)
    m = s.data.manifests[1]
    req = (
        s.client.request("PUT", "/v2/<name>/manifests/<reference>", reference=m.digest)
        .set_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .set_body(m.content)
    )
    expect_2xx(s.client.do(req))


@specs("Setup", "Get tag name from environment")
def setup_tag_from_env(s: Session) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if_not(s.settings.run_pull_setup, _NO_SETUP)
    if s.settings.tag_name:
        s.state(PullState).tag = s.settings.tag_name


# ----------------------------------------------------------------------------- Pull blobs


@specs("Pull blobs", "HEAD request to nonexistent blob should result in 404 response")
def head_missing_blob(s: Session) -> None:
    s.skip_if_disabled(PULL)
    resp = s.client.do(s.client.request("HEAD", "/v2/<name>/blobs/<digest>", digest=s.data.dummy_digest))
    assert resp.status_code == 404, resp.describe()


@specs("Pull blobs", "HEAD request to existing blob should yield 200")
def head_blob(s: Session) -> None:
    s.skip_if_disabled(PULL)
    digest = s.data.configs[0].digest
    resp = s.client.do(s.client.request("HEAD", "/v2/<name>/blobs/<digest>", digest=digest))
    assert resp.status_code == 200, resp.describe()
    if h := resp.header("Docker-Content-Digest"):
        assert h == digest


@specs("Pull blobs", "GET nonexistent blob should result in 404 response")
def get_missing_blob(s: Session) -> None:
    s.skip_if_disabled(PULL)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/blobs/<digest>", digest=s.data.dummy_digest))
    assert resp.status_code == 404, resp.describe()


@specs("Pull blobs", "GET request to existing blob URL should yield 200")
def get_blob(s: Session) -> None:
    s.skip_if_disabled(PULL)
    digest = s.data.configs[0].digest
    resp = s.client.do(s.client.request("GET", "/v2/<name>/blobs/<digest>", digest=digest))
    assert resp.status_code == 200, resp.describe()


# ----------------------------------------------------------------------------- Pull manifests

_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


@specs("Pull manifests", "HEAD request to nonexistent manifest should return 404")
def head_missing_manifest(s: Session) -> None:
    s.skip_if_disabled(PULL)
    req = s.client.request("HEAD", "/v2/<name>/manifests/<reference>", reference=s.data.nonexistent_manifest)
    resp = s.client.do(req)
    assert resp.status_code == 404, resp.describe()


def _head_manifest_digest(s: Session, index: int) -> None:
    s.skip_if_disabled(PULL)
    digest = s.data.manifests[index].digest
    req = s.client.request("HEAD", "/v2/<name>/manifests/<digest>", digest=digest).set_header(
        "Accept", _ACCEPT
    )
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()
    if h := resp.header("Docker-Content-Digest"):
        assert h == digest


@specs("Pull manifests", "HEAD request to manifest[0] path (digest) should yield 200 response")
def head_manifest0(s: Session) -> None:
    _head_manifest_digest(s, 0)


@specs("Pull manifests", "HEAD request to manifest[1] path (digest) should yield 200 response")
def head_manifest1(s: Session) -> None:
    _head_manifest_digest(s, 1)


@specs("Pull manifests", "HEAD request to manifest path (tag) should yield 200 response")
def head_manifest_tag(s: Session) -> None:
    s.skip_if_disabled(PULL)
    tag = s.state(PullState).tag
    assert tag, "tag is empty"
    req = s.client.request("HEAD", "/v2/<name>/manifests/<reference>", reference=tag).set_header(
        "Accept", _ACCEPT
    )
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()
    if h := resp.header("Docker-Content-Digest"):
        assert h == s.data.manifests[0].digest


@specs("Pull manifests", "GET nonexistent manifest should return 404")
def get_missing_manifest(s: Session) -> None:
    s.skip_if_disabled(PULL)
    req = s.client.request("GET", "/v2/<name>/manifests/<reference>", reference=s.data.nonexistent_manifest)
    resp = s.client.do(req)
    assert resp.status_code == 404, resp.describe()


def _get_manifest_digest(s: Session, index: int) -> None:
    s.skip_if_disabled(PULL)
    digest = s.data.manifests[index].digest
    req = s.client.request("GET", "/v2/<name>/manifests/<digest>", digest=digest).set_header(
        "Accept", _ACCEPT
    )
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()


@specs("Pull manifests", "GET request to manifest[0] path (digest) should yield 200 response")
def get_manifest0(s: Session) -> None:
    _get_manifest_digest(s, 0)


@specs("Pull manifests", "GET request to manifest[1] path (digest) should yield 200 response")
def get_manifest1(s: Session) -> None:
    _get_manifest_digest(s, 1)


@specs("Pull manifests", "GET request to manifest path (tag) should yield 200 response")
def get_manifest_tag(s: Session) -> None:
    s.skip_if_disabled(PULL)
    tag = s.state(PullState).tag
    assert tag, "tag is empty"
    req = s.client.request("GET", "/v2/<name>/manifests/<reference>", reference=tag).set_header(
        "Accept", _ACCEPT
    )
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()


# ----------------------------------------------------------------------------- Error codes


@specs("Error codes", "400 response body should contain OCI-conforming JSON message")
def error_body(s: Session) -> None:
    s.skip_if_disabled(PULL)
    req = (
        s.client.request("GET", "/v2/<name>/manifests/<reference>", reference="sha256:totallywrong")
        .set_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .set_body(s.data.invalid_manifest_content)
    )
    resp = s.client.do(req)
    assert resp.status_code in (400, 404), resp.describe()
    if resp.status_code == 400:
        errors = resp.errors()
        assert errors, resp.describe()
        assert errors[0].code in ERROR_CODES, resp.describe()


# ----------------------------------------------------------------------------- Teardown


def _delete_manifest(s: Session, index: int) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if(s.settings.run_pull_setup, _SETUP)
    req = s.client.request("DELETE", "/v2/<name>/manifests/<digest>", digest=s.data.manifests[index].digest)
    expect_status_in(s.client.do(req), 405, allow_2xx=True)


def _delete_blob(s: Session, digest: str) -> None:
    s.skip_if_disabled(PULL)
    s.run_only_if(s.settings.run_pull_setup, _SETUP)
    req = s.client.request("DELETE", "/v2/<name>/blobs/<digest>", digest=digest)
    expect_status_in(s.client.do(req), 404, 405, allow_2xx=True)


def _register_manifest_deletes() -> None:
    @specs("Teardown", "Delete manifest[0] created in setup")
    def delete_manifest0(s: Session) -> None:
        _delete_manifest(s, 0)

    @specs("Teardown", "Delete manifest[1] created in setup")
    def delete_manifest1(s: Session) -> None:
        _delete_manifest(s, 1)


if _DELETE_MANIFEST_BEFORE_BLOBS:
    _register_manifest_deletes()


@specs("Teardown", "Delete config[0] blob created in setup")
def delete_config0(s: Session) -> None:
    _delete_blob(s, s.data.configs[0].digest)


@specs("Teardown", "Delete config[1] blob created in setup")
def delete_config1(s: Session) -> None:
    _delete_blob(s, s.data.configs[1].digest)


@specs("Teardown", "Delete layer blob created in setup")
def delete_layer(s: Session) -> None:
    _delete_blob(s, s.data.layer.digest)


if not _DELETE_MANIFEST_BEFORE_BLOBS:
    _register_manifest_deletes()


@pytest.mark.parametrize("spec", specs.items, ids=specs.ids)
def test_pull(spec: Spec, conformance: Session) -> None:
    """One upstream Pull spec (its name is the test id)."""
    spec.run(conformance)
