"""``strata copy SRC DST`` between docker://, oci:, oci-archive: and docker-archive:, checked
with skopeo and umoci; ``manifest inspect``, ``inspect --remote`` and referrers."""

from __future__ import annotations

import io
import json
from pathlib import Path

from strata.engine import Engine
from strata.oci import Descriptor, Digest, Index, Manifest, Reference, mediatypes
from strata.registry.client import ImageLocation
from strata.testing import baseimages, tools, trees
from strata.testing.registries import Proxy, Registry, TestImage, layout_image, skopeo_push


def _ref_digest(layout: Path, name: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
            digest: str = entry["digest"]
            return digest
    raise AssertionError(f"{name} not in {layout}/index.json: {index}")


def test_location_parsing() -> None:
    assert ImageLocation.parse("oci:/tmp/a:latest") == ImageLocation("oci", path=Path("/tmp/a"),
                                                                   name="latest")
    assert ImageLocation.parse("oci:/tmp/a").name is None
    archive = ImageLocation.parse("docker-archive:/tmp/x.tar:localhost/a/b:1")
    assert (archive.path, archive.name) == (Path("/tmp/x.tar"), "localhost/a/b:1")
    docker = ImageLocation.parse("docker://localhost:5000/a:1")
    assert docker.reference is not None and docker.reference.registry == "localhost:5000"


def test_copy_registry_to_oci_layout_keeps_the_digest(
    strata: tools.StrataCLI, registry: Registry, test_images: dict[str, baseimages.BuildahImage],
    tmp_path: Path,
) -> None:
    built = test_images["busybox-history"]
    image = layout_image(built.oci_layout, built.ref)
    ref = skopeo_push(image, registry, "copy/src:1")
    layout = tmp_path / "layout"

    out = strata("copy", f"docker://{ref}", f"oci:{layout}:copied").stdout
    assert f"Digest: {image.manifest_digest}" in out
    assert _ref_digest(layout, "copied") == image.manifest_digest
    assert strata("images", "-q").stdout == ""  # a copy names nothing in the store

    ours = tools.umoci_unpack(layout, "copied", tmp_path / "ours")
    theirs = tools.umoci_unpack(built.oci_layout, built.ref, tmp_path / "theirs")
    trees.assert_same_tree(theirs, ours)


def test_copy_oci_layout_to_registry_then_across_repositories_mounts(
    strata: tools.StrataCLI, registry: Registry, proxy: Proxy, busybox_image: TestImage,
) -> None:
    first = f"{proxy.address}/copy/one:1"
    strata("copy", f"oci:{busybox_image.layout}:{busybox_image.ref}", f"docker://{first}")
    assert registry.skopeo_digest("copy/one:1") == busybox_image.manifest_digest

    proxy.reset()
    second = f"{proxy.address}/copy/two:1"
    strata("copy", f"docker://{first}", f"docker://{second}")
    assert registry.skopeo_digest("copy/two:1") == busybox_image.manifest_digest
    # Every blob was known in copy/one of the same registry: mounted, not uploaded.
    assert proxy.upload_bytes_total() == 0
    mounts = proxy.requests_for("POST", r"/v2/copy/two/blobs/uploads/")
    assert {m.query.get("from") for m in mounts} == {"copy/one"}
    assert all(m.status == 201 for m in mounts)


def test_copy_docker_archive_round_trip(
    strata: tools.StrataCLI, registry: Registry, test_images: dict[str, baseimages.BuildahImage],
    tmp_path: Path,
) -> None:
    built = test_images["busybox-layers"]
    layout = tmp_path / "from-archive"
    strata("copy", f"docker-archive:{built.docker_archive}", f"oci:{layout}:from-archive")
    ours = tools.umoci_unpack(layout, "from-archive", tmp_path / "ours")
    theirs = tools.umoci_unpack(built.oci_layout, built.ref, tmp_path / "theirs")
    trees.assert_same_tree(theirs, ours)

    ref = f"{registry.address}/archive/layers:1"
    strata("copy", f"oci:{layout}:from-archive", f"docker://{ref}")
    archive = tmp_path / "out.tar"
    strata("copy", f"docker://{ref}", f"docker-archive:{archive}:{ref}")
    check = tmp_path / "skopeo-layout"
    tools.skopeo_copy(f"docker-archive:{archive}", f"oci:{check}:again")
    again = tools.umoci_unpack(check, "again", tmp_path / "again")
    trees.assert_same_tree(theirs, again)


def test_copy_missing_source_fails_cleanly(strata: tools.StrataCLI, tmp_path: Path) -> None:
    proc = strata("copy", f"oci:{tmp_path / 'nope'}:x", f"oci:{tmp_path / 'out'}:x", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    bad = strata("copy", "ftp://x", f"oci:{tmp_path / 'out'}", check=False)
    assert bad.returncode == 1 and "invalid image location" in bad.stderr


def test_manifest_inspect_and_inspect_remote(
    strata: tools.StrataCLI, registry: Registry, busybox_image: TestImage
) -> None:
    ref = skopeo_push(busybox_image, registry, "look/busybox:1")
    raw = strata("manifest", "inspect", "--raw", ref).stdout.encode()
    assert raw == busybox_image.raw_manifest()
    shown = json.loads(strata("manifest", "inspect", ref).stdout)
    assert shown["config"]["digest"] == busybox_image.config_digest

    (info,) = json.loads(strata("inspect", "--remote", ref).stdout)
    assert info["Digest"] == busybox_image.manifest_digest
    assert info["RepoTags"] == ["1"]
    assert info["Layers"] == list(busybox_image.layer_digests)
    assert strata("images", "-q").stdout == ""  # nothing was pulled


def test_referrers_through_the_tag_schema_fallback(
    strata_root: Path, registry: Registry, busybox_image: TestImage
) -> None:
    skopeo_push(busybox_image, registry, "refs/busybox:1")
    engine = Engine(strata_root)
    ref_text = f"{registry.address}/refs/busybox:1"
    assert engine.referrers(ref_text).manifests == ()

    # An artifact whose subject is the image, and the fallback tag index naming it, pushed
    # with strata's own client (docker-registry 2.8 has no referrers API).
    repo = engine.registry_client.repository(Reference.parse(ref_text))
    subject_digest = Digest.parse(busybox_image.manifest_digest)
    subject = Descriptor(mediatypes.OCI_MANIFEST, subject_digest,
                         len(busybox_image.raw_manifest()))
    empty = b"{}"
    empty_desc = Descriptor(mediatypes.OCI_EMPTY, Digest.of(empty), len(empty))
    location = repo.start_upload()
    repo.upload_blob(empty_desc, lambda: io.BytesIO(empty), location=location)
    artifact = Manifest(mediatypes.OCI_MANIFEST, empty_desc, (), subject=subject,
                        artifact_type="application/vnd.strata.test")
    raw = artifact.to_bytes()
    digest = repo.put_manifest(str(Digest.of(raw)), raw, mediatypes.OCI_MANIFEST)
    index = Index(mediatypes.OCI_INDEX, (Descriptor(mediatypes.OCI_MANIFEST, digest, len(raw),
                                                   artifact_type="application/vnd.strata.test"),))
    repo.put_manifest(f"sha256-{subject_digest.hex}", index.to_bytes(), mediatypes.OCI_INDEX)

    found = engine.referrers(ref_text)
    assert [d.digest for d in found.manifests] == [digest]
    assert engine.referrers(ref_text, artifact_type="application/other").manifests == ()
