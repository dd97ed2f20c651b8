"""Real clients push to and pull from strata's registry and get identical images back.

skopeo copies each test image in and out (the tree ``umoci`` unpacks from the copy equals
the original's); podman pushes and pulls (same image ID, same mounted tree); buildah pushes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from strata.testing import baseimages, tools, trees
from strata.testing.registry_server import StrataRegistry, http_request
from strata.testing.s3 import S3Server


def _manifest_digest(layout: Path, ref: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            return str(m["digest"])
    raise AssertionError(f"{ref} not in {layout}")


def test_skopeo_copies_each_test_image_in_and_out_unchanged(
    registry: StrataRegistry,
    tmp_path: Path,
    image_name: str,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
) -> None:
    image = test_images[image_name]
    remote = f"docker://{registry.address}/interop/{image_name}:v1"
    tools.skopeo_copy(f"oci:{image.oci_layout}:{image.ref}", remote, extra=["--dest-tls-verify=false"])
    out = tmp_path / "out"
    tools.skopeo_copy(remote, f"oci:{out}:{image.ref}", extra=["--src-tls-verify=false"])
    # The manifest's bytes went through untouched: same digest both ways.
    original = _manifest_digest(image.oci_layout, image.ref)
    assert _manifest_digest(out, image.ref) == original
    head = http_request(registry.url, "HEAD", f"/v2/interop/{image_name}/manifests/v1")
    assert head.status == 200
    assert head.headers["docker-content-digest"] == original
    unpacked = tools.umoci_unpack(out, image.ref, tmp_path / "unpacked")
    trees.assert_same_tree(umoci_rootfs(image_name), unpacked)


def test_podman_push_then_pull_gives_the_same_image(
    registry: StrataRegistry,
    tmp_path: Path,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
) -> None:
    image = test_images["busybox-layers"]
    pusher = tools.containers_store(tmp_path / "push-root", Path(tempfile.mkdtemp(prefix="strata-push-")))
    puller = tools.containers_store(tmp_path / "pull-root", Path(tempfile.mkdtemp(prefix="strata-pull-")))
    remote = f"{registry.address}/podman/layers:v1"
    try:
        tools.podman(["load", "-i", image.docker_archive], store=pusher)
        tools.podman(["push", "--tls-verify=false", image.ref, f"docker://{remote}"], store=pusher)
        tools.podman(["pull", "--tls-verify=false", remote], store=puller)
        ids = tools.podman(
            ["images", "--no-trunc", "--format", "{{.ID}}", remote], store=puller
        ).stdout.split()
        assert ids == [image.image_id]
        mounted = tools.podman(["image", "mount", remote], store=puller).stdout.strip()
        trees.assert_same_tree(umoci_rootfs("busybox-layers"), Path(mounted), include_root=False)
    finally:
        tools.unmount_under(pusher.root, pusher.runroot, puller.root, puller.runroot)
        shutil.rmtree(pusher.runroot, ignore_errors=True)
        shutil.rmtree(puller.runroot, ignore_errors=True)


def test_buildah_push_is_pulled_back_by_skopeo_unchanged(
    registry: StrataRegistry,
    tmp_path: Path,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
) -> None:
    image = test_images["busybox-history"]
    store = tools.containers_store(tmp_path / "b-root", Path(tempfile.mkdtemp(prefix="strata-buildah-")))
    remote = f"{registry.address}/buildah/history:v2"
    try:
        tools.skopeo_copy(f"oci:{image.oci_layout}:{image.ref}", store.transport(image.ref), store=store)
        tools.run(
            ["buildah", *store.flags(), "push", "--tls-verify=false", image.ref, f"docker://{remote}"],
            env=store.env(),
        )
    finally:
        tools.unmount_under(store.root, store.runroot)
        shutil.rmtree(store.runroot, ignore_errors=True)
    out = tmp_path / "out"
    tools.skopeo_copy(f"docker://{remote}", f"oci:{out}:{image.ref}", extra=["--src-tls-verify=false"])
    config = json.loads(
        http_request(registry.url, "GET", "/v2/buildah/history/manifests/v2",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json,"
                              "application/vnd.docker.distribution.manifest.v2+json"}).body
    )["config"]["digest"]
    assert config == image.image_id
    unpacked = tools.umoci_unpack(out, image.ref, tmp_path / "unpacked")
    trees.assert_same_tree(umoci_rootfs("busybox-history"), unpacked)


def test_two_servers_sharing_one_s3_bucket_serve_what_the_other_received(
    tmp_path: Path,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
) -> None:
    """Stateless scale-out: skopeo pushes through one ``strata registry serve``, pulls
    through another process that shares only the S3 bucket with it."""
    image = test_images["busybox-layers"]
    with S3Server(tmp_path / "s3") as s3:
        config = {"storage": {"s3": s3.registry_storage(rootdirectory="/shared")}}
        with StrataRegistry(tmp_path / "a", config=config) as a, \
                StrataRegistry(tmp_path / "b", config=config, workers=2) as b:
            tools.skopeo_copy(f"oci:{image.oci_layout}:{image.ref}", f"docker://{a.address}/s3/layers:v1",
                              extra=["--dest-tls-verify=false"])
            out = tmp_path / "out"
            tools.skopeo_copy(f"docker://{b.address}/s3/layers:v1", f"oci:{out}:{image.ref}",
                              extra=["--src-tls-verify=false"])
    assert _manifest_digest(out, image.ref) == _manifest_digest(image.oci_layout, image.ref)
    unpacked = tools.umoci_unpack(out, image.ref, tmp_path / "unpacked")
    trees.assert_same_tree(umoci_rootfs("busybox-layers"), unpacked)


def test_docker_pushes_and_pulls_through_strata(
    registry: StrataRegistry,
    dockerd: tools.Dockerd,
    test_images: dict[str, baseimages.BuildahImage],
) -> None:
    """docker 20.10 (a private dockerd) pushes a loaded image and pulls it back: same image
    ID. (dockerd treats 127.0.0.0/8 registries as insecure, so plain HTTP is allowed.)"""
    image = test_images["busybox-history"]
    remote = f"{registry.address}/docker/history:v1"
    dockerd.docker("load", "-i", str(image.docker_archive))
    try:
        dockerd.docker("tag", image.ref, remote)
        dockerd.docker("push", remote)
        dockerd.docker("rmi", remote, image.ref)
        dockerd.docker("pull", remote)
        pulled = dockerd.docker("image", "inspect", "--format", "{{.Id}}", remote).stdout.strip()
        assert pulled == image.image_id
        digest = http_request(registry.url, "HEAD", "/v2/docker/history/manifests/v1",
                              headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        repo_digests = dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}", remote).stdout
        assert digest.headers["docker-content-digest"] in repo_digests
    finally:
        dockerd.docker("rmi", "-f", remote, check=False)
