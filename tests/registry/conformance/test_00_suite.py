"""The port itself, checked without a registry: the upstream inventory (79 specs in four
workflows, upstream order of groups) and the generated test data."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

from . import test_01_pull, test_02_push, test_03_discovery, test_04_management
from ._data import EMPTY_JSON_DIGEST, generate, sha256
from ._env import Workflow
from ._suite import SpecList

WORKFLOWS: list[tuple[SpecList, int, list[str]]] = [
    (test_01_pull.specs, 24, ["Setup", "Pull blobs", "Pull manifests", "Error codes", "Teardown"]),
    (
        test_02_push.specs,
        29,
        [
            "Blob Upload Streamed",
            "Blob Upload Monolithic",
            "Blob Upload Chunked",
            "Cross-Repository Blob Mount",
            "Manifest Upload",
            "Teardown",
        ],
    ),
    (
        test_03_discovery.specs,
        16,
        [
            "Setup",
            "Test content discovery endpoints (listing tags)",
            "Test content discovery endpoints (listing references)",
            "Teardown",
        ],
    ),
    (test_04_management.specs, 10, ["Setup", "Manifest delete", "Blob delete"]),
]


def test_inventory_matches_upstream_v1_1_1() -> None:
    """79 specs: Pull 24, Push 29, Content Discovery 16, Content Management 10, each
    workflow's groups in upstream order, every test id unique."""
    assert sum(len(specs.items) for specs, _, _ in WORKFLOWS) == 79
    for specs, count, groups in WORKFLOWS:
        assert len(specs.items) == count, specs.title
        seen: list[str] = []
        for spec in specs.items:
            if not seen or seen[-1] != spec.context:
                seen.append(spec.context)
        assert seen == groups, specs.title
        assert len(set(specs.ids)) == len(specs.ids)
    assert [specs.workflow for specs, _, _ in WORKFLOWS] == [
        Workflow.PULL,
        Workflow.PUSH,
        Workflow.CONTENT_DISCOVERY,
        Workflow.CONTENT_MANAGEMENT,
    ]


def test_data_is_generated_as_upstream() -> None:
    """Fresh configs per run, manifests embedding them, the gzip layer, the empty JSON blob,
    the two-chunk blob and the referrers' subjects and annotations."""
    a, b = generate(seed=1), generate(seed=1)
    assert a.configs[0].digest != b.configs[0].digest  # random author each run
    assert a.test_blob_a == b.test_blob_a  # reproducible from the seed
    assert len(a.configs) == len(a.manifests) == 16

    config = json.loads(a.configs[0].content)
    assert list(config) == ["author", "architecture", "os", "rootfs"]
    assert config["rootfs"] == {"type": "layers", "diff_ids": []}
    assert b"\n\t" in a.configs[0].content  # MarshalIndent with a tab

    manifest = json.loads(a.manifests[4].content)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["digest"] == a.configs[4].digest
    assert manifest["config"]["newUnspecifiedField"] == "aGVsbG8gd29ybGQ="
    assert manifest["layers"][0]["digest"] == a.layer.digest == sha256(a.layer.content)
    assert a.manifests[4].digest == sha256(a.manifests[4].content)

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(a.layer.content))) as tar:
        member = tar.extractfile("test.txt")
        assert member is not None
        assert member.read() == b"you bothered to find out what was in here. Congratulations!\n"

    assert a.empty_json.digest == EMPTY_JSON_DIGEST
    assert a.chunked.chunk1 + a.chunked.chunk2 == a.chunked.blob.content
    assert (a.chunked.chunk1_range, a.chunked.chunk2_range) == ("0-21", "22-41")

    subject4 = {"mediaType": manifest["mediaType"], "digest": a.manifests[4].digest}
    for artifact in (a.refs_a_config, a.refs_a_layer, a.refs_b_config, a.refs_b_layer, a.refs_index):
        doc = json.loads(artifact.content)
        assert {k: doc["subject"][k] for k in subject4} == subject4
        assert (
            doc["annotations"]["org.opencontainers.conformance.test"] == a.annotation_values[artifact.digest]
        )
    assert json.loads(a.refs_c_layer.content)["subject"]["digest"] == a.manifests[3].digest
    assert a.refs_c_layer.digest not in a.annotation_values
    assert json.loads(a.refs_a_layer.content)["artifactType"] == "application/vnd.nhl.peanut.butter.bagel"
    assert json.loads(a.empty_layer_manifest.content)["layers"] == []
