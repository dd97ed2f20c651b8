"""Acceptance: ``strata pull`` and ``strata push`` against Debian's docker-registry, checked
with real peer tools.

- pull: every test image (busybox and debian bases, the buildah-built test images) is pushed
  to the registry by skopeo; ``strata pull`` must report the same manifest digest, leave the
  image's layers unpacked in committed snapshots, and ``strata unpack`` must give the tree
  ``skopeo copy docker://… oci:`` + ``umoci unpack`` gives;
- push: an image strata holds is pushed; skopeo reads it back with the same manifest digest
  and umoci unpacks an identical tree; ``podman pull`` of it works;
- push output and a second push (``Layer already exists``) read as docker's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.engine import Engine
from strata.oci import Digest, chain_ids
from strata.snapshots import Kind
from strata.testing import baseimages, tools, trees
from strata.testing.registries import Proxy, Registry, TestImage, layout_image, skopeo_push


def _umoci_tree(registry: Registry, ref: str, work: Path) -> Path:
    """What skopeo + umoci make of ``ref`` in the registry: the rootfs directory."""
    layout = work / "skopeo-layout"
    tools.skopeo_copy(f"docker://{ref}", f"oci:{layout}:pulled", extra=registry.skopeo_flags("src"))
    return tools.umoci_unpack(layout, "pulled", work / "umoci-bundle")


def _pull_and_compare(strata: tools.StrataCLI, strata_root: Path, registry: Registry,
                      source_image: TestImage, work: Path) -> None:
    ref = skopeo_push(source_image, registry, "interop/image:v1")

    pulled = strata("pull", ref)

    lines = pulled.stdout.splitlines()
    assert lines[0] == "v1: Pulling from interop/image"
    assert f"Digest: {source_image.manifest_digest}" in lines
    assert f"Status: Downloaded newer image for {ref}" in lines
    assert lines[-1] == ref
    assert sum(line.endswith(": Pull complete") for line in lines) == len(
        set(source_image.layer_digests))
    assert strata("inspect", "--format", "{{.Id}}", ref).stdout.strip() == (
        source_image.config_digest)

    # The layers were unpacked into snapshots while they downloaded.
    engine = Engine(strata_root)
    config = engine.resolve(ref).image.config()
    top = chain_ids(config.rootfs.diff_ids)[-1]
    assert engine.snapshotter.stat(str(top)).kind is Kind.COMMITTED

    ours = work / "strata-rootfs"
    strata("unpack", ref, ours)
    trees.assert_same_tree(_umoci_tree(registry, ref, work), ours)


@pytest.mark.parametrize("base", ["busybox", "debian"])
def test_pull_base_image_matches_skopeo_and_umoci(
    base: str, strata: tools.StrataCLI, strata_root: Path, registry: Registry,
    cache_dir: Path, tmp_path: Path,
) -> None:
    if base == "busybox":
        image = layout_image(baseimages.busybox_oci(cache_dir), baseimages.BUSYBOX_REF)
    else:
        image = layout_image(baseimages.debian_oci(cache_dir), baseimages.DEBIAN_REF)
    _pull_and_compare(strata, strata_root, registry, image, tmp_path)


def test_pull_test_image_matches_skopeo_and_umoci(
    image_name: str, strata: tools.StrataCLI, strata_root: Path, registry: Registry,
    test_images: dict[str, baseimages.BuildahImage], tmp_path: Path,
) -> None:
    built = test_images[image_name]
    _pull_and_compare(strata, strata_root, registry, layout_image(built.oci_layout, built.ref),
                      tmp_path)


def test_pull_again_is_up_to_date(
    strata: tools.StrataCLI, registry: Registry, busybox_image: TestImage
) -> None:
    ref = skopeo_push(busybox_image, registry, "again/busybox:1")
    strata("pull", ref)
    second = strata("pull", ref).stdout.splitlines()
    layer = Digest.parse(busybox_image.layer_digests[0]).short()
    assert f"{layer}: Already exists" in second
    assert f"Status: Image is up to date for {ref}" in second


def test_pull_by_digest_and_quiet(
    strata: tools.StrataCLI, registry: Registry, busybox_image: TestImage
) -> None:
    skopeo_push(busybox_image, registry, "bydigest/busybox:1")
    ref = f"{registry.address}/bydigest/busybox@{busybox_image.manifest_digest}"
    out = strata("pull", "-q", ref).stdout
    assert out == f"{ref}\n"
    assert strata("inspect", "--format", "{{.Id}}", ref).stdout.strip() == (
        busybox_image.config_digest)


def test_pull_unknown_tag_fails_cleanly(strata: tools.StrataCLI, registry: Registry) -> None:
    proc = strata("pull", f"{registry.address}/nothing/here:1", check=False)
    assert proc.returncode == 1
    assert "manifest unknown" in proc.stderr.lower() or "name unknown" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert strata("images", "-q").stdout == ""


def test_push_is_read_back_by_skopeo_umoci_and_podman(
    strata: tools.StrataCLI, registry: Registry, test_images: dict[str, baseimages.BuildahImage],
    podman_store: tools.ContainersStore, tmp_path: Path,
) -> None:
    image = test_images["busybox-layers"]
    strata("load", "-i", image.oci_layout)
    target = f"{registry.address}/pushed/layers:v2"
    strata("tag", image.ref, target)

    pushed = strata("push", target).stdout.splitlines()

    source = layout_image(image.oci_layout, image.ref)
    assert pushed[0] == f"The push refers to repository [{registry.address}/pushed/layers]"
    assert pushed[-1].startswith(f"v2: digest: {source.manifest_digest} size: ")
    # One line per layer, named by its short diff_id as docker does; the config is silent.
    diff_ids = {d.removeprefix("sha256:")[:12] for d in source.diff_ids}
    assert {line.split(":")[0] for line in pushed if line.endswith(": Pushed")} == diff_ids
    assert registry.skopeo_digest("pushed/layers:v2") == source.manifest_digest

    ours = tmp_path / "strata-rootfs"
    strata("unpack", image.ref, ours)
    trees.assert_same_tree(_umoci_tree(registry, target, tmp_path), ours)

    tools.podman(["pull", "--tls-verify=false", target], store=podman_store)
    listed = tools.podman(["images", "--format", "{{.ID}}", target], store=podman_store)
    assert source.config_digest.removeprefix("sha256:").startswith(listed.stdout.strip())

    again = strata("push", target).stdout.splitlines()
    assert {line.split(":")[0] for line in again if line.endswith(": Layer already exists")} == diff_ids
    assert again[-1].startswith(f"v2: digest: {source.manifest_digest} size: ")


def test_push_chunked_upload(
    strata: tools.StrataCLI, registry: Registry, proxy: Proxy, busybox_image: TestImage
) -> None:
    strata("load", "-i", busybox_image.layout)
    target = f"{proxy.address}/chunked/busybox:1"
    strata("tag", busybox_image.ref, target)
    chunk = 256 << 10
    strata("push", "--chunk-size", str(chunk), target)

    assert registry.skopeo_digest("chunked/busybox:1") == busybox_image.manifest_digest
    _, size = busybox_image.layers[0]
    patches = proxy.requests_for("PATCH", r"/v2/chunked/busybox/blobs/uploads/.+")
    assert len(patches) >= -(-size // chunk)
    assert all(p.request_bytes <= chunk for p in patches)
    assert all(p.request_headers.get("Content-Range") for p in patches)
