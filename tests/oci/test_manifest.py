"""Manifests, indexes, configs and platforms parse from exact bytes and refuse bad input."""

from __future__ import annotations

import json

import pytest

from strata.errors import InvalidContent, NotSupported
from strata.oci import (
    Descriptor,
    Digest,
    ImageConfig,
    Index,
    Manifest,
    NoMatchingPlatform,
    Platform,
    mediatypes,
    parse_any,
    parse_time,
)

D = "sha256:" + "b" * 64


def _manifest(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": D, "size": 10},
        "layers": [{"mediaType": mediatypes.OCI_LAYER_GZIP, "digest": D, "size": 20}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_manifest_parses_and_round_trips() -> None:
    manifest = Manifest.parse(_manifest())
    assert manifest.config.size == 10
    assert manifest.layers[0].media_type == mediatypes.OCI_LAYER_GZIP
    again = Manifest.parse(manifest.to_bytes())
    assert again == manifest


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", InvalidContent),
        (b"[]", InvalidContent),
        (_manifest(schemaVersion=1), NotSupported),
        (_manifest(schemaVersion=3), InvalidContent),
        (_manifest(config=None), InvalidContent),
        (_manifest(config={"mediaType": "x", "digest": "sha256:12", "size": 1}), InvalidContent),
        (_manifest(config={"mediaType": "x", "digest": D, "size": -1}), InvalidContent),
        (_manifest(config={"mediaType": "x", "digest": D, "size": "1"}), InvalidContent),
        (_manifest(layers="x"), InvalidContent),
        (_manifest(mediaType=mediatypes.OCI_INDEX), InvalidContent),
    ],
    ids=["not-json", "not-object", "schema1", "schema3", "no-config", "bad-digest",
         "negative-size", "string-size", "layers-not-list", "index-type"],
)
def test_manifest_rejects_malformed(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        Manifest.parse(raw)


def test_index_selects_platform() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            {"mediaType": mediatypes.OCI_MANIFEST, "digest": D, "size": 1,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": mediatypes.OCI_MANIFEST, "digest": "sha256:" + "c" * 64, "size": 2,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    index = Index.parse(json.dumps(doc).encode())
    assert index.select(Platform.parse("linux/amd64")).size == 2
    assert index.select(Platform.parse("linux/arm64")).size == 1
    with pytest.raises(NoMatchingPlatform, match="linux/s390x"):
        index.select(Platform.parse("linux/s390x"))
    assert isinstance(parse_any(json.dumps(doc).encode()), Index)


def test_config_parses_docker_fields_and_history() -> None:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05.123456789Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [D]},
        "history": [{"created_by": "/bin/sh -c #(nop) CMD", "empty_layer": True},
                    {"created_by": "ADD file"}],
        "docker_version": "20.10.24",
    }
    config = ImageConfig.parse(json.dumps(doc).encode())
    assert config.config is not None
    assert config.config.exposed_ports == ("80/tcp",)
    assert config.rootfs.diff_ids == (Digest.parse(D),)
    assert [i for _, i in config.layer_history()] == [None, 0]
    assert config.created_at == parse_time("2024-01-02T03:04:05.123456Z")
    docker = config.config.to_docker_json()
    assert docker["Cmd"] == ["sh"]
    assert docker["Entrypoint"] is None


def test_config_rejects_bad_diff_id() -> None:
    with pytest.raises(InvalidContent, match="diff_ids"):
        ImageConfig.parse(b'{"rootfs": {"type": "layers", "diff_ids": ["nope"]}}')


def test_descriptor_keeps_annotations_and_platform() -> None:
    desc = Descriptor.from_json({
        "mediaType": mediatypes.OCI_MANIFEST, "digest": D, "size": 3,
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
        "platform": {"os": "linux", "architecture": "amd64"},
    })
    assert desc.annotations["org.opencontainers.image.ref.name"] == "latest"
    assert Descriptor.from_json(desc.to_json()) == desc
