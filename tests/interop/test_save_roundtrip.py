"""What ``strata save`` writes, other tools read back as the same image.

Every format (docker-archive, oci-archive, oci layout directory) is read by skopeo into a
fresh OCI layout and unpacked by umoci: the tree must equal umoci's unpack of the original
export, and the image ID (config digest) must survive. podman loads strata's
docker-archive into a private store with the same ID and the same tree; dockerd loads a
multi-image archive; strata loads its own output back under the same names.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from strata.testing import baseimages, tools, trees

FORMATS = ["docker-archive", "oci-archive", "oci"]


def _config_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    manifests = index["manifests"]
    assert len(manifests) == 1, manifests
    manifest_hex = manifests[0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_hex).read_text())
    digest: str = manifest["config"]["digest"]
    return digest


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_roundtrip_through_skopeo_and_umoci(
    image_name: str,
    fmt: str,
    *,
    strata: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    image = test_images[image_name]
    strata("load", "-i", image.oci_layout)
    saved = tmp_path / ("saved" if fmt == "oci" else "saved.tar")
    strata("save", "-o", saved, "--format", fmt, image.ref)

    copied = tmp_path / "copied"
    tools.skopeo_copy(f"{fmt}:{saved}", f"oci:{copied}:{image.ref}")
    assert _config_digest(copied) == image.image_id

    rootfs = tools.umoci_unpack(copied, image.ref, tmp_path / "bundle")
    trees.assert_same_tree(umoci_rootfs(image_name), rootfs)


def test_save_default_format_is_a_docker_archive(
    strata: tools.StrataCLI, test_images: dict[str, baseimages.BuildahImage], tmp_path: Path
) -> None:
    image = test_images["busybox-history"]
    strata("load", "-i", image.oci_layout)
    strata("save", "-o", tmp_path / "out.tar", image.ref)
    with tarfile.open(tmp_path / "out.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        entries = json.load(member)
    assert [e["RepoTags"] for e in entries] == [[image.ref]]


def test_podman_loads_strata_docker_archive(
    image_name: str,
    *,
    strata: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
    podman_store: tools.ContainersStore,
    tmp_path: Path,
) -> None:
    image = test_images[image_name]
    strata("load", "-i", image.oci_layout)
    strata("save", "-o", tmp_path / "out.tar", "--format", "docker-archive", image.ref)

    loaded = tools.podman(["load", "-i", tmp_path / "out.tar"], store=podman_store)
    assert f"Loaded image: {image.ref}" in loaded.stdout
    listed = tools.podman(
        ["images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"],
        store=podman_store,
    ).stdout.splitlines()
    assert listed == [f"{image.ref} {image.image_id}"]

    mounted = tools.podman(["image", "mount", image.ref], store=podman_store).stdout.strip()
    # containers-storage mounts the merged tree with a 0555 root; compare below it.
    trees.assert_same_tree(umoci_rootfs(image_name), Path(mounted), include_root=False)


def test_docker_loads_a_multi_image_strata_archive(
    strata: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
    dockerd: tools.Dockerd,
    tmp_path: Path,
) -> None:
    images = [test_images["busybox-layers"], test_images["busybox-history"]]
    for image in images:
        strata("load", "-i", image.oci_layout)
    archive = tmp_path / "both.tar"
    strata("save", "-o", archive, *(i.ref for i in images))

    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        entries = json.load(member)
        layer_files = {layer for entry in entries for layer in entry["Layers"]}
        # The shared busybox layer is stored once.
        assert len(layer_files) < sum(len(entry["Layers"]) for entry in entries)

    out = dockerd.docker("load", "-i", archive).stdout
    try:
        for image in images:
            assert f"Loaded image: {image.ref}" in out
            got = dockerd.docker("image", "inspect", "--format", "{{.Id}}", image.ref).stdout
            assert got.strip() == image.image_id
    finally:
        dockerd.docker("rmi", *(i.ref for i in images), check=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strata_loads_its_own_save_output(
    fmt: str, test_images: dict[str, baseimages.BuildahImage], tmp_path: Path
) -> None:
    first = tools.StrataCLI(tmp_path / "first")
    second = tools.StrataCLI(tmp_path / "second")
    images = list(test_images.values())
    for image in images:
        first("load", "-i", image.oci_layout)
    saved = tmp_path / ("saved" if fmt == "oci" else "saved.tar")
    first("save", "-o", saved, "--format", fmt, *(i.ref for i in images))

    loaded = second("load", "-i", saved).stdout.splitlines()
    assert sorted(line for line in loaded if line.startswith("Loaded image")) == sorted(
        f"Loaded image: {i.ref}" for i in images
    )

    def listing(cli: tools.StrataCLI) -> list[dict[str, str]]:
        rows = tools.parse_table(cli("images", "--no-trunc").stdout)
        return [{k: v for k, v in row.items() if k != "CREATED"} for row in rows]

    assert listing(second) == listing(first)
