"""Workflow 3, Content Discovery: upstream ``conformance/03_discovery_test.go`` (v1.1.1), spec
by spec, with the stricter checks upstream added later: the setup tags each ``testN`` also as
``TESTN``, the tag list must be sorted (case-insensitively, or byte-wise as registries
historically do), and ``last`` is exclusive (the page after ``last`` must not contain it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ._client import Request
from ._data import ANNOTATION_KEY, ARTIFACT_TYPE_A, EMPTY_JSON_DIGEST
from ._env import Workflow, settings
from ._suite import Session, Spec, SpecList, expect_2xx, expect_status_in, get_index_manifests, get_tag_list

DISCOVERY = Workflow.CONTENT_DISCOVERY
specs = SpecList(DISCOVERY, "Content Discovery")
_DELETE_MANIFEST_BEFORE_BLOBS = settings().delete_manifest_before_blobs
_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
_INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


@dataclass
class DiscoveryState:
    """Upstream's closure variables."""

    num_tags: int = 4
    tag_list: list[str] = field(default_factory=list)


def _push_blob(s: Session, digest: str, length: str, content: bytes) -> None:
    resp = s.client.do(s.client.request("POST", "/v2/<name>/blobs/uploads/"))
    req = (
        s.client.request("PUT", resp.get_relative_location())
        .set_query_param("digest", digest)
        .set_header("Content-Type", "application/octet-stream")
        .set_header("Content-Length", length)
        .set_body(content)
    )
    expect_2xx(s.client.do(req))


def _push_manifest(s: Session, reference: str, content: bytes, media_type: str, subject: str | None) -> None:
    req = (
        s.client.request("PUT", "/v2/<name>/manifests/<reference>", reference=reference)
        .set_header("Content-Type", media_type)
        .set_body(content)
    )
    resp = s.client.do(req)
    expect_2xx(resp)
    if subject is not None:
        assert resp.header("OCI-Subject") == subject, resp.describe()


# ----------------------------------------------------------------------------- Setup


@specs("Setup", "Populate registry with test blob")
def setup_config(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    c = s.data.configs[2]
    _push_blob(s, c.digest, c.content_length, c.content)


@specs("Setup", "Populate registry with test layer")
def setup_layer(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    layer = s.data.layer
    _push_blob(s, layer.digest, layer.content_length, layer.content)


@specs("Setup", "Populate registry with test tags")
def setup_tags(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    state = s.state(DiscoveryState)
    for i in range(state.num_tags):
        for tag in (f"test{i}", f"TEST{i}"):
            state.tag_list.append(tag)
            req = (
                s.client.request("PUT", "/v2/<name>/manifests/<reference>", reference=tag)
                .set_header("Content-Type", _MANIFEST_TYPE)
                .set_body(s.data.manifests[2].content)
            )
            expect_2xx(s.client.do(req))
    resp = s.client.do(s.client.request("GET", "/v2/<name>/tags/list"))
    state.tag_list = get_tag_list(resp)


@specs("Setup", "Populate registry with test tags (no push)")
def setup_tags_no_push(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if_not(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is unset")
    s.state(DiscoveryState).tag_list = s.settings.tag_list.split(",")


@specs("Setup", "References setup")
def setup_references(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    d = s.data
    subject = d.manifests[4].digest
    # Populate registry with empty JSON blob; validate expected empty JSON blob digest
    assert d.empty_json.digest == EMPTY_JSON_DIGEST
    _push_blob(s, d.empty_json.digest, d.empty_json.content_length, d.empty_json.content)
    # reference blob before the image manifest is pushed
    _push_blob(s, d.ref_blob_a.digest, d.ref_blob_a.content_length, d.ref_blob_a.content)
    # references manifest (config.MediaType = artifactType)
    _push_manifest(s, d.refs_a_config.digest, d.refs_a_config.content, _MANIFEST_TYPE, subject)
    # references manifest (ArtifactType, config.MediaType = emptyJSON)
    _push_manifest(s, d.refs_a_layer.digest, d.refs_a_layer.content, _MANIFEST_TYPE, subject)
    # index manifest
    _push_manifest(s, d.refs_index.digest, d.refs_index.content, _INDEX_TYPE, subject)
    # test blob, test layer, test manifest (the subject, pushed after its referrers)
    c = d.configs[4]
    _push_blob(s, c.digest, c.content_length, c.content)
    _push_blob(s, d.layer.digest, d.layer.content_length, d.layer.content)
    _push_manifest(s, "tagtest0", d.manifests[4].content, _MANIFEST_TYPE, None)
    # reference blob after the image manifest is pushed
    _push_blob(s, d.ref_blob_b.digest, d.ref_blob_b.content_length, d.ref_blob_b.content)
    _push_manifest(s, d.refs_b_config.digest, d.refs_b_config.content, _MANIFEST_TYPE, subject)
    _push_manifest(s, d.refs_b_layer.digest, d.refs_b_layer.content, _MANIFEST_TYPE, subject)
    # references manifest to a non-existent subject
    _push_manifest(s, d.refs_c_layer.digest, d.refs_c_layer.content, _MANIFEST_TYPE, d.manifests[3].digest)


# ----------------------------------------------------------------------------- listing tags


@specs(
    "Test content discovery endpoints (listing tags)",
    "GET request to list tags should yield 200 response and be in sorted order",
)
def tags_list(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    state = s.state(DiscoveryState)
    resp = s.client.do(s.client.request("GET", "/v2/<name>/tags/list"))
    assert resp.status_code == 200, resp.describe()
    state.tag_list = get_tag_list(resp)
    state.num_tags = len(state.tag_list)
    # If the list is not empty, the tags MUST be in lexical order (case-insensitive
    # alphanumeric order); historically registries sort byte-wise, which is allowed too.
    lexical = sorted(state.tag_list, key=str.lower)
    asciibetical = sorted(state.tag_list)
    assert state.tag_list in (lexical, asciibetical), f"tags not sorted: {state.tag_list}"


@specs(
    "Test content discovery endpoints (listing tags)",
    "GET number of tags should be limitable by `n` query parameter",
)
def tags_list_n(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    state = s.state(DiscoveryState)
    num_results = state.num_tags // 2
    req = s.client.request("GET", "/v2/<name>/tags/list").set_query_param("n", str(num_results))
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()
    state.tag_list = get_tag_list(resp)
    assert len(state.tag_list) == num_results, resp.describe()


@specs("Test content discovery endpoints (listing tags)", "GET start of tag is set by `last` query parameter")
def tags_list_last(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    state = s.state(DiscoveryState)
    num_results = state.num_tags // 2
    req = s.client.request("GET", "/v2/<name>/tags/list").set_query_param("n", str(num_results))
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()
    state.tag_list = get_tag_list(resp)
    assert 0 < num_results <= len(state.tag_list), f"index out of range: {resp.describe()}"
    last = state.tag_list[num_results - 1]
    req = (
        s.client.request("GET", "/v2/<name>/tags/list")
        .set_query_param("n", str(num_results))
        .set_query_param("last", last)
    )
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()
    state.tag_list = get_tag_list(resp)
    assert len(state.tag_list) <= num_results, resp.describe()
    assert last not in state.tag_list, f"`last` is not exclusive: {resp.describe()}"


# ----------------------------------------------------------------------------- listing references


def _referrers(s: Session, digest: str) -> Request:
    return s.client.request("GET", "/v2/<name>/referrers/<digest>", digest=digest)


@specs(
    "Test content discovery endpoints (listing references)",
    "GET request to nonexistent blob should result in empty 200 response",
)
def referrers_missing(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    resp = s.client.do(_referrers(s, s.data.dummy_digest))
    assert resp.status_code == 200, resp.describe()
    assert resp.header("Content-Type") == _INDEX_TYPE, resp.describe()
    assert len(get_index_manifests(resp)) == 0, resp.describe()


def _check_annotations(s: Session, manifests: list[dict[str, object]]) -> None:
    for desc in manifests:
        annotations = desc.get("annotations") or {}
        assert isinstance(annotations, dict), desc
        assert len(annotations) == 1, desc
        assert annotations.get(ANNOTATION_KEY) == s.data.annotation_values.get(str(desc.get("digest"))), desc


@specs(
    "Test content discovery endpoints (listing references)", "GET request to existing blob should yield 200"
)
def referrers(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    resp = s.client.do(_referrers(s, s.data.manifests[4].digest))
    assert resp.status_code == 200, resp.describe()
    assert resp.header("Content-Type") == _INDEX_TYPE, resp.describe()
    manifests = get_index_manifests(resp)
    assert len(manifests) == 5, resp.describe()
    assert manifests[0].get("digest") != manifests[1].get("digest"), resp.describe()
    _check_annotations(s, manifests)


@specs(
    "Test content discovery endpoints (listing references)",
    "GET request to existing blob with filter should yield 200",
)
def referrers_filtered(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    req = _referrers(s, s.data.manifests[4].digest).set_query_param("artifactType", ARTIFACT_TYPE_A)
    resp = s.client.do(req)
    assert resp.status_code == 200, resp.describe()
    assert resp.header("Content-Type") == _INDEX_TYPE, resp.describe()
    manifests = get_index_manifests(resp)
    # also check resp header "OCI-Filters-Applied: artifactType" denoting that an
    # artifactType filter was applied
    if resp.header("OCI-Filters-Applied"):
        assert len(manifests) == 2, resp.describe()
        assert resp.header("OCI-Filters-Applied") == "artifactType", resp.describe()
    else:
        assert len(manifests) == 5, resp.describe()
        s.warn("filtering by artifact-type is not implemented")
    _check_annotations(s, manifests)


@specs(
    "Test content discovery endpoints (listing references)",
    "GET request to missing manifest should yield 200",
)
def referrers_of_missing_subject(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    resp = s.client.do(_referrers(s, s.data.manifests[3].digest))
    assert resp.status_code == 200, resp.describe()
    assert resp.header("Content-Type") == _INDEX_TYPE, resp.describe()
    manifests = get_index_manifests(resp)
    assert len(manifests) == 1, resp.describe()
    assert manifests[0].get("digest") == s.data.refs_c_layer.digest, resp.describe()


# ----------------------------------------------------------------------------- Teardown


def _delete_manifests_and_tags(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    d = s.data
    references = [
        d.refs_index.digest,
        d.manifests[2].digest,
        d.manifests[4].digest,
        d.refs_a_config.digest,
        d.refs_a_layer.digest,
        "tagtest0",
        d.refs_b_config.digest,
        d.refs_b_layer.digest,
        d.refs_c_layer.digest,
    ]
    for ref in references:
        req = s.client.request("DELETE", "/v2/<name>/manifests/<digest>", digest=ref)
        expect_status_in(s.client.do(req), 405, 404, allow_2xx=True)


def _register_manifest_delete() -> None:
    @specs("Teardown", "Delete created manifest & associated tags")
    def delete_manifests(s: Session) -> None:
        _delete_manifests_and_tags(s)


if _DELETE_MANIFEST_BEFORE_BLOBS:
    _register_manifest_delete()


@specs("Teardown", "Delete config blob created in tests")
def delete_config(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    req = s.client.request("DELETE", "/v2/<name>/blobs/<digest>", digest=s.data.configs[2].digest)
    expect_status_in(s.client.do(req), 405, allow_2xx=True)


@specs("Teardown", "Delete layer blob created in setup")
def delete_layer(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    req = s.client.request("DELETE", "/v2/<name>/blobs/<digest>", digest=s.data.layer.digest)
    expect_status_in(s.client.do(req), 405, allow_2xx=True)


if not _DELETE_MANIFEST_BEFORE_BLOBS:
    _register_manifest_delete()


@specs("Teardown", "References teardown")
def references_teardown(s: Session) -> None:
    s.skip_if_disabled(DISCOVERY)
    s.run_only_if(s.settings.run_content_discovery_setup, "OCI_TAG_LIST is set")
    d = s.data

    def delete(kind: str, ref: str) -> None:
        req = s.client.request("DELETE", f"/v2/<name>/{kind}/<reference>", reference=ref)
        expect_status_in(s.client.do(req), 405, 404, allow_2xx=True)

    manifests = [
        d.refs_index.digest,
        d.refs_a_config.digest,
        d.refs_a_layer.digest,
        d.manifests[4].digest,
        d.refs_b_config.digest,
        d.refs_b_layer.digest,
    ]
    if s.settings.delete_manifest_before_blobs:
        for ref in manifests:
            delete("manifests", ref)
    # config blob, reference blobs, empty JSON blob created in setup
    for digest in (d.configs[4].digest, d.ref_blob_a.digest, d.ref_blob_b.digest, d.empty_json.digest):
        delete("blobs", digest)
    if not s.settings.delete_manifest_before_blobs:
        for ref in manifests:
            delete("manifests", ref)


@pytest.mark.parametrize("spec", specs.items, ids=specs.ids)
def test_discovery(spec: Spec, conformance: Session) -> None:
    """One upstream Content Discovery spec (its name is the test id)."""
    spec.run(conformance)
