"""Workflow 4, Content Management: upstream ``conformance/04_management_test.go`` (v1.1.1),
spec by spec."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from ._env import Workflow
from ._suite import Session, Spec, SpecList, expect_2xx

MANAGEMENT = Workflow.CONTENT_MANAGEMENT
specs = SpecList(MANAGEMENT, "Content Management")
_DEFAULT_TAG_NAME = "tagtest0"


@dataclass
class ManagementState:
    """Upstream's closure variables."""

    tag_to_delete: str = ""
    num_tags: int = 0
    blob_delete_allowed: bool = True


def _tags(body: bytes) -> list[str]:
    """``json.Unmarshal`` into upstream's ``TagList`` (asserting it parses)."""
    doc = json.loads(body)
    assert isinstance(doc, dict), body
    tags = doc.get("tags") or []
    assert isinstance(tags, list), body
    return [str(t) for t in tags]


# ----------------------------------------------------------------------------- Setup


@specs("Setup", "Populate registry with test config blob")
def setup_config(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    s.run_only_if(s.settings.run_content_management_setup)
    c = s.data.configs[3]
    resp = s.client.do(s.client.request("POST", "/v2/<name>/blobs/uploads/"))
    req = (
        s.client.request("PUT", resp.get_relative_location())
        .set_header("Content-Length", c.content_length)
        .set_header("Content-Type", "application/octet-stream")
        .set_query_param("digest", c.digest)
        .set_body(c.content)
    )
    expect_2xx(s.client.do(req))


@specs("Setup", "Populate registry with test layer")
def setup_layer(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    s.run_only_if(s.settings.run_content_management_setup)
    layer = s.data.layer
    resp = s.client.do(s.client.request("POST", "/v2/<name>/blobs/uploads/"))
    req = (
        s.client.request("PUT", resp.get_relative_location())
        .set_query_param("digest", layer.digest)
        .set_header("Content-Type", "application/octet-stream")
        .set_header("Content-Length", layer.content_length)
        .set_body(layer.content)
    )
    expect_2xx(s.client.do(req))


@specs("Setup", "Populate registry with test tag")
def setup_tag(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    s.run_only_if(s.settings.run_content_management_setup)
    state = s.state(ManagementState)
    state.tag_to_delete = _DEFAULT_TAG_NAME
    req = (
        s.client.request("PUT", "/v2/<name>/manifests/<reference>", reference=state.tag_to_delete)
        .set_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .set_body(s.data.manifests[3].content)
    )
    expect_2xx(s.client.do(req))


@specs("Setup", "Check how many tags there are before anything gets deleted")
def setup_count_tags(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    s.run_only_if(s.settings.run_content_management_setup)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/tags/list"))
    assert resp.status_code == 200, resp.describe()
    s.state(ManagementState).num_tags = len(_tags(resp.body))


# ----------------------------------------------------------------------------- Manifest delete


@specs(
    "Manifest delete",
    "DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)",
)
def delete_tag(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    tag = s.state(ManagementState).tag_to_delete
    resp = s.client.do(s.client.request("DELETE", "/v2/<name>/manifests/<reference>", reference=tag))
    assert resp.status_code in (400, 202, 405), resp.describe()
    if resp.status_code == 400:
        errors = resp.errors()
        assert errors, resp.describe()
        assert errors[0].code == "UNSUPPORTED", resp.describe()


@specs(
    "Manifest delete", "DELETE request to manifest (digest) should yield 202 response unless already deleted"
)
def delete_manifest(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    req = s.client.request("DELETE", "/v2/<name>/manifests/<digest>", digest=s.data.manifests[3].digest)
    resp = s.client.do(req)
    # In the case that the previous request was accepted, this may or may not fail (which is ok)
    assert resp.status_code in (202, 404), resp.describe()


@specs(
    "Manifest delete",
    "GET request to deleted manifest URL should yield 404 response, unless delete is disallowed",
)
def get_deleted_manifest(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    req = s.client.request("GET", "/v2/<name>/manifests/<digest>", digest=s.data.manifests[3].digest)
    resp = s.client.do(req)
    assert resp.status_code in (404, 200), resp.describe()


@specs("Manifest delete", "GET request to tags list should reflect manifest deletion")
def tags_after_delete(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/tags/list"))
    assert resp.status_code == 200, resp.describe()
    tags = _tags(resp.body)
    assert len(tags) < s.state(ManagementState).num_tags, resp.describe()


# ----------------------------------------------------------------------------- Blob delete


@specs("Blob delete", "DELETE request to blob URL should yield 202 response")
def delete_blobs(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    s.run_only_if(s.settings.run_content_management_setup)
    # config blob
    req = s.client.request("DELETE", "/v2/<name>/blobs/<digest>", digest=s.data.configs[3].digest)
    resp = s.client.do(req)
    assert resp.status_code in (202, 404, 405), resp.describe()
    # layer blob
    req = s.client.request("DELETE", "/v2/<name>/blobs/<digest>", digest=s.data.layer.digest)
    resp = s.client.do(req)
    assert resp.status_code in (202, 404, 405), resp.describe()
    if resp.status_code == 405:
        s.state(ManagementState).blob_delete_allowed = False


@specs("Blob delete", "GET request to deleted blob URL should yield 404 response")
def get_deleted_blob(s: Session) -> None:
    s.skip_if_disabled(MANAGEMENT)
    s.run_only_if(s.settings.run_content_management_setup)
    s.run_only_if(s.state(ManagementState).blob_delete_allowed, "blob DELETE answered 405")
    req = s.client.request("GET", "/v2/<name>/blobs/<digest>", digest=s.data.configs[3].digest)
    resp = s.client.do(req)
    assert resp.status_code == 404, resp.describe()


# (upstream's Teardown context has no specs in v1.1.1)


@pytest.mark.parametrize("spec", specs.items, ids=specs.ids)
def test_management(spec: Spec, conformance: Session) -> None:
    """One upstream Content Management spec (its name is the test id)."""
    spec.run(conformance)
