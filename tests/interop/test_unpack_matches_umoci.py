"""strata load + unpack writes exactly the tree umoci unpacks from the same image.

Each test image (built by buildah, exported by skopeo; see tests/interop/dockerfiles) is
loaded into strata from its OCI layout and from its docker-archive, unpacked with
``strata unpack IMAGE DIR``, and compared with ``umoci unpack`` of the OCI layout
(``DIR/rootfs``): types, modes with setuid/setgid/sticky, owners, contents, symlink
targets, device numbers, xattrs and hardlink groups; not timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from strata.testing import baseimages, tools, trees


def _source(image: baseimages.BuildahImage, kind: str) -> Path:
    return image.oci_layout if kind == "oci-layout" else image.docker_archive


@pytest.mark.parametrize("source", ["oci-layout", "docker-archive"])
def test_unpack_matches_umoci(
    image_name: str,
    source: str,
    *,
    strata: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    image = test_images[image_name]
    loaded = strata("load", "-i", _source(image, source))
    assert f"Loaded image: {image.ref}" in loaded.stdout.splitlines()

    dest = tmp_path / "rootfs"
    strata("unpack", image.ref, dest)

    trees.assert_same_tree(umoci_rootfs(image_name), dest)


def test_unpack_by_image_id_matches_unpack_by_name(
    strata: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    image = test_images["busybox-layers"]
    strata("load", "-i", image.oci_layout)
    strata("unpack", image.image_id.removeprefix("sha256:")[:12], tmp_path / "by-id")
    trees.assert_same_tree(umoci_rootfs("busybox-layers"), tmp_path / "by-id")


def test_images_sharing_a_base_unpack_independently(
    strata: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """Two images on the same busybox layer: unpacking one must not disturb the other
    (a shared snapshot mutated in place would show up here)."""
    names = ["busybox-layers", "busybox-history"]
    for name in names:
        strata("load", "-i", test_images[name].oci_layout)
    for name in names:
        strata("unpack", test_images[name].ref, tmp_path / name)
    for name in names:
        trees.assert_same_tree(umoci_rootfs(name), tmp_path / name)
