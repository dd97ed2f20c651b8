"""The suite's test data, generated as upstream's ``conformance/setup.go`` (v1.1.1) does.

Documents are serialised the way Go's ``json.MarshalIndent(v, "", "\\t")`` serialises
upstream's structs (``conformance/image.go``): same field order, same ``omitempty`` rules,
``[]byte`` as base64, a nil ``[]byte`` as ``null``, map keys sorted. Digests are of those
exact bytes. Configs carry a random 16-character author, so every run (and every registry
started for a run) gets blobs and manifests the registry has never seen.

- ``configs[i]`` / ``manifests[i]``: one per "workflow slot" (upstream makes 16: its
  ``numWorkflows`` constant continues the ``1 << iota`` sequence); the manifest has the
  config inline in ``data`` and a ``newUnspecifiedField``, and the one gzip layer.
- ``test_blob_a`` (42 random bytes, streamed upload), ``test_blob_b`` (42 random bytes in
  two chunks of 22 and 20), a seed as Ginkgo's (the time) decides them.
- the empty JSON blob ``{}``, the referrers artifacts A/B (config-typed and
  artifactType-typed), C (subject never pushed), an index with a subject, each with one
  annotation the referrers list must carry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import time
from dataclasses import dataclass

__all__ = ["Descriptor", "TestBlob", "TestData", "generate", "marshal"]

#: A gzip tarball of test.txt ("you bothered to find out what was in here. Congratulations!").
LAYER_BASE64 = (
    "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0"
    "WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD"
    "jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA"
)

NUM_WORKFLOWS = 16
ANNOTATION_KEY = "org.opencontainers.conformance.test"
ARTIFACT_TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
ARTIFACT_TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
ARTIFACT_TYPE_INDEX = "application/vnd.food.stand"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"

JSON = dict[str, object]


def sha256(data: bytes) -> str:
    """``godigest.FromBytes(data).String()``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def marshal(doc: JSON) -> bytes:
    """``json.MarshalIndent(doc, "", "\\t")`` for the documents built here."""
    return json.dumps(doc, indent="\t").encode()


@dataclass(frozen=True, slots=True)
class TestBlob:
    """Upstream's ``TestBlob``: content, its length as text, its digest (overridable)."""

    __test__ = False  # not a pytest test class

    content: bytes
    content_length: str
    digest: str

    @classmethod
    def of(cls, content: bytes, digest: str = "") -> TestBlob:
        """A blob of ``content``; ``digest`` overrides the computed one when given."""
        return cls(content, str(len(content)), digest or sha256(content))


@dataclass(frozen=True, slots=True)
class Descriptor:
    """Upstream's ``descriptor`` struct (the fields the suite uses)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    data: bytes | None = None
    artifact_type: str = ""
    new_unspecified_field: bytes | None = None

    def to_json(self) -> JSON:
        """The struct's JSON form, field order and ``omitempty`` as in image.go."""
        doc: JSON = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            doc["annotations"] = dict(sorted(self.annotations.items()))
        if self.data:
            doc["data"] = base64.b64encode(self.data).decode()
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        doc["newUnspecifiedField"] = (
            None
            if self.new_unspecified_field is None
            else base64.b64encode(self.new_unspecified_field).decode()
        )
        return doc


def manifest_json(
    *,
    media_type: str = "",
    artifact_type: str = "",
    config: Descriptor,
    layers: list[Descriptor],
    subject: Descriptor | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """Upstream's ``manifest`` struct, marshalled."""
    doc: JSON = {"schemaVersion": 2}
    if media_type:
        doc["mediaType"] = media_type
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = config.to_json()
    doc["layers"] = [layer.to_json() for layer in layers]
    if subject is not None:
        doc["subject"] = subject.to_json()
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return marshal(doc)


def index_json(
    *,
    artifact_type: str,
    manifests: list[Descriptor],
    subject: Descriptor | None,
    annotations: dict[str, str],
) -> bytes:
    """Upstream's ``index`` struct, marshalled."""
    doc: JSON = {"schemaVersion": 2, "mediaType": INDEX_TYPE}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["manifests"] = [m.to_json() for m in manifests]
    if subject is not None:
        doc["subject"] = subject.to_json()
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return marshal(doc)


def random_string(n: int) -> str:
    """Upstream's ``randomString``: crypto-random letters, digits and ``-``."""
    letters = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"
    return "".join(secrets.choice(letters) for _ in range(n))


def random_blob(size: int, seed: int) -> TestBlob:
    """Upstream's ``randomBlob``: ``size`` bytes reproducible from ``seed``."""
    return TestBlob.of(random.Random(seed).randbytes(size))


@dataclass
class ChunkedBlob:
    """Upstream's ``testBlobB*`` variables: a blob uploaded in two chunks."""

    blob: TestBlob
    chunk1: bytes
    chunk2: bytes
    chunk1_range: str
    chunk2_range: str

    @classmethod
    def make(cls, size: int, seed: int) -> ChunkedBlob:
        """Upstream's ``setupChunkedBlob``: first chunk ``size/2+1`` bytes, then the rest."""
        blob = random_blob(size, seed)
        cut = size // 2 + 1
        return cls(
            blob=blob,
            chunk1=blob.content[:cut],
            chunk2=blob.content[cut:],
            chunk1_range=f"0-{cut - 1}",
            chunk2_range=f"{cut}-{size - 1}",
        )


@dataclass
class TestData:
    """Everything upstream's ``init`` computes."""

    __test__ = False  # not a pytest test class

    seed: int
    configs: list[TestBlob]
    manifests: list[TestBlob]
    layer: TestBlob
    empty_layer_manifest: TestBlob
    test_blob_a: TestBlob
    chunked: ChunkedBlob
    empty_json: TestBlob
    ref_blob_a: TestBlob
    ref_blob_b: TestBlob
    refs_a_config: TestBlob
    refs_b_config: TestBlob
    refs_a_layer: TestBlob
    refs_b_layer: TestBlob
    refs_c_layer: TestBlob
    refs_index: TestBlob
    annotation_values: dict[str, str]
    dummy_digest: str
    nonexistent_manifest: str = ".INVALID_MANIFEST_NAME"
    invalid_manifest_content: bytes = b"blablabla"

    def rechunk(self, size: int) -> None:
        """``setupChunkedBlob(size)`` again (when a registry asks for bigger chunks)."""
        self.chunked = ChunkedBlob.make(size, self.seed + 2)


def generate(*, blob_digest: str = "", manifest_digest: str = "", seed: int | None = None) -> TestData:
    """Make a fresh set of test data.

    Args:
        blob_digest: ``OCI_BLOB_DIGEST`` (overrides every config's digest, as upstream).
        manifest_digest: ``OCI_MANIFEST_DIGEST`` (overrides every manifest's digest).
        seed: the random seed (default: the time, as Ginkgo's default seed).
    """
    if seed is None:
        seed = int(time.time())

    configs = []
    for _ in range(NUM_WORKFLOWS):
        config: JSON = {
            "author": random_string(16),
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }
        configs.append(TestBlob.of(marshal(config), blob_digest))

    layer = TestBlob.of(base64.b64decode(LAYER_BASE64))
    layers = [Descriptor(LAYER_TYPE, layer.digest, len(layer.content))]

    manifests = []
    for i in range(NUM_WORKFLOWS):
        content = manifest_json(
            media_type=MANIFEST_TYPE,
            config=Descriptor(
                CONFIG_TYPE,
                configs[i].digest,
                len(configs[i].content),
                data=configs[i].content,
                new_unspecified_field=b"hello world",
            ),
            layers=layers,
        )
        manifests.append(TestBlob.of(content, manifest_digest))

    empty_layer_manifest = TestBlob.of(
        manifest_json(
            config=Descriptor(
                CONFIG_TYPE,
                configs[1].digest,
                len(configs[1].content),
                data=configs[1].content,
                new_unspecified_field=b"hello world",
            ),
            layers=[],
        )
    )

    empty_json = TestBlob.of(b"{}")
    empty_desc = Descriptor(EMPTY_TYPE, empty_json.digest, len(empty_json.content))
    ref_blob_a = TestBlob.of(b"NHL Peanut Butter on my NHL bagel")
    ref_blob_b = TestBlob.of(b"NBA Strawberry Jam on my NBA croissant")

    def subject_of(target: TestBlob) -> Descriptor:
        return Descriptor(MANIFEST_TYPE, sha256(target.content), len(target.content))

    annotations: dict[str, str] = {}

    def artifact(
        *, artifact_type: str, config: Descriptor, layer: Descriptor, subject: TestBlob, note: str | None
    ) -> TestBlob:
        blob = TestBlob.of(
            manifest_json(
                media_type=MANIFEST_TYPE,
                artifact_type=artifact_type,
                config=config,
                layers=[layer],
                subject=subject_of(subject),
                annotations={ANNOTATION_KEY: note} if note is not None else None,
            )
        )
        if note is not None:
            annotations[blob.digest] = note
        return blob

    desc_a = Descriptor(ARTIFACT_TYPE_A, ref_blob_a.digest, len(ref_blob_a.content))
    desc_b = Descriptor(ARTIFACT_TYPE_B, ref_blob_b.digest, len(ref_blob_b.content))
    refs_a_config = artifact(
        artifact_type="", config=desc_a, layer=empty_desc, subject=manifests[4], note="test config a"
    )
    refs_b_config = artifact(
        artifact_type="", config=desc_b, layer=empty_desc, subject=manifests[4], note="test config b"
    )
    refs_a_layer = artifact(
        artifact_type=ARTIFACT_TYPE_A,
        config=empty_desc,
        layer=desc_a,
        subject=manifests[4],
        note="test layer a",
    )
    refs_b_layer = artifact(
        artifact_type=ARTIFACT_TYPE_B,
        config=empty_desc,
        layer=desc_b,
        subject=manifests[4],
        note="test layer b",
    )
    refs_c_layer = artifact(
        artifact_type=ARTIFACT_TYPE_B, config=empty_desc, layer=desc_b, subject=manifests[3], note=None
    )
    refs_index = TestBlob.of(
        index_json(
            artifact_type=ARTIFACT_TYPE_INDEX,
            manifests=[
                Descriptor(MANIFEST_TYPE, refs_a_config.digest, len(refs_a_config.content)),
                Descriptor(MANIFEST_TYPE, refs_a_layer.digest, len(refs_a_layer.content)),
            ],
            subject=subject_of(manifests[4]),
            annotations={ANNOTATION_KEY: "test index"},
        )
    )
    annotations[refs_index.digest] = "test index"

    return TestData(
        seed=seed,
        configs=configs,
        manifests=manifests,
        layer=layer,
        empty_layer_manifest=empty_layer_manifest,
        test_blob_a=random_blob(42, seed + 1),
        chunked=ChunkedBlob.make(42, seed + 2),
        empty_json=empty_json,
        ref_blob_a=ref_blob_a,
        ref_blob_b=ref_blob_b,
        refs_a_config=refs_a_config,
        refs_b_config=refs_b_config,
        refs_a_layer=refs_a_layer,
        refs_b_layer=refs_b_layer,
        refs_c_layer=refs_c_layer,
        refs_index=refs_index,
        annotation_values=annotations,
        dummy_digest=sha256(b"hello world"),
    )
