"""Shared fixtures: temporary strata roots, the CLI as a subprocess, cached base and test
images made by peer tools, reference trees unpacked by umoci, private podman stores, a
private dockerd, free loopback ports.

Slow things are session-scoped and cached on disk across runs in ``$STRATA_TEST_CACHE``
(default ``/var/cache/strata-tests``): the first run debootstraps Debian and builds the
test images with buildah (about a minute and a half here); later runs reuse them.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("strata.testing")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

from strata.testing import baseimages, tools  # noqa: E402

#: Dockerfiles of the interop test images, one directory per image.
DOCKERFILES = Path(__file__).parent / "interop" / "dockerfiles"

#: The test images' names (``localhost/NAME:latest``), known at collection time.
TEST_IMAGE_NAMES = sorted(p.parent.name for p in DOCKERFILES.glob("*/Dockerfile"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test asking for ``image_name`` runs once per test image."""
    if "image_name" in metafunc.fixturenames:
        metafunc.parametrize("image_name", TEST_IMAGE_NAMES)


@pytest.fixture
def strata_root(tmp_path: Path) -> Path:
    """A fresh, empty strata store root."""
    root = tmp_path / "strata-root"
    root.mkdir()
    return root


@pytest.fixture
def strata(strata_root: Path) -> tools.StrataCLI:
    """Run the CLI on ``strata_root``: ``strata("images", "-q").stdout``.

    ``check=True`` by default (a failure raises with strata's stderr); ``STRATA_ROOT`` is
    unset so only ``--root`` applies.
    """
    return tools.StrataCLI(strata_root)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where base and test images are cached across runs."""
    path = baseimages.default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def busybox_layout(cache_dir: Path) -> Path:
    """OCI layout holding ``localhost/busybox:latest`` (host busybox, made by umoci)."""
    return baseimages.busybox_oci(cache_dir)


@pytest.fixture(scope="session")
def debian_layout(cache_dir: Path) -> Path:
    """OCI layout holding ``localhost/debian:bookworm`` (debootstrap minbase, by umoci)."""
    return baseimages.debian_oci(cache_dir)


@pytest.fixture(scope="session")
def test_images(
    cache_dir: Path, busybox_layout: Path, debian_layout: Path
) -> dict[str, baseimages.BuildahImage]:
    """name → image built by buildah from ``tests/interop/dockerfiles/NAME`` and exported by
    skopeo: ``.oci_layout`` (ref ``.ref`` = ``localhost/NAME:latest``), ``.docker_archive``,
    ``.image_id``."""
    return baseimages.build_images(DOCKERFILES, cache_dir)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tools.Dockerd]:
    """A private dockerd (own data root, exec root, socket and containerd) for the session.

    Tests that load images should remove what they loaded, or expect others' images.
    """
    with tools.Dockerd(tmp_path_factory.mktemp("dockerd")) as daemon:
        yield daemon


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return tools.free_port()


@pytest.fixture(scope="session")
def umoci_rootfs(
    test_images: dict[str, baseimages.BuildahImage], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """``umoci_rootfs(name)``: the test image's rootfs as ``umoci unpack`` writes it (from
    the skopeo-exported OCI layout), unpacked once per session. Do not modify it."""
    base = tmp_path_factory.mktemp("umoci")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            image = test_images[name]
            done[name] = tools.umoci_unpack(image.oci_layout, image.ref, base / name)
        return done[name]

    return get


@pytest.fixture
def podman_store(tmp_path: Path) -> Iterator[tools.ContainersStore]:
    """A private containers-storage store for podman (never the system one); whatever
    podman leaves mounted in it is unmounted afterwards."""
    runroot = Path(tempfile.mkdtemp(prefix="strata-podman-run-"))
    store = tools.containers_store(tmp_path / "podman-root", runroot)
    try:
        yield store
    finally:
        tools.unmount_under(store.root, store.runroot)
        shutil.rmtree(runroot, ignore_errors=True)
