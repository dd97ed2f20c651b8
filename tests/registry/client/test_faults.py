"""Acceptance: ``strata pull`` / ``strata push`` through the counting, fault-injecting proxy
in front of docker-registry.

- a connection cut in the middle of a layer resumes with ``Range`` and the pull finishes;
- a flipped byte gives a digest mismatch, a non-zero exit, and nothing stored;
- 500s and a 429 (``Retry-After``) are retried and the pull succeeds;
- a manifest whose bytes do not hash to the digest asked for (or announced in
  ``Docker-Content-Digest``) is refused;
- incremental: pushing an image that shares base layers with one already in the registry
  sends no byte of the shared layers, and pulling it downloads only the new layer and says
  ``Already exists`` for the others.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from strata.testing import tools
from strata.testing.registries import Fault, FaultKind, Proxy, Registry, TestImage, skopeo_push


def _stored_blobs(root: Path, digest: str) -> list[Path]:
    """Committed blobs named ``digest`` anywhere under a strata root."""
    algorithm, hex_ = digest.split(":", 1)
    return list(root.glob(f"**/blobs/{algorithm}/{hex_}"))


def _failed(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def _assert_pulled(strata: tools.StrataCLI, ref: str, image: TestImage, out: str) -> None:
    assert f"Digest: {image.manifest_digest}" in out
    assert strata("inspect", "--format", "{{.Id}}", ref).stdout.strip() == image.config_digest


def _layer_gets(proxy: Proxy, digest: str) -> list[tuple[int, str | None, int]]:
    """(status, Range header, body bytes sent) of each GET of blob ``digest``."""
    return [
        (ex.status, ex.request_headers.get("Range"), ex.response_bytes)
        for ex in proxy.requests_for("GET", rf"/v2/.+/blobs/{re.escape(digest)}")
    ]


def test_pull_resumes_a_layer_cut_mid_body(
    strata: tools.StrataCLI, registry: Registry, proxy: Proxy, busybox_image: TestImage
) -> None:
    skopeo_push(busybox_image, registry, "busybox:1")
    digest, size = busybox_image.layers[0]
    cut_at = size // 2
    fault = Fault.cut_blob(digest, after=cut_at)
    proxy.inject(fault)

    ref = f"{proxy.address}/busybox:1"
    pulled = strata("pull", ref)
    _assert_pulled(strata, ref, busybox_image, pulled.stdout)
    assert proxy.fired(fault) == 1

    gets = _layer_gets(proxy, digest)
    assert gets[0] == (200, None, cut_at)
    assert len(gets) == 2, gets  # one resumed request, not a restart from zero
    status, range_header, sent = gets[1]
    assert status == 206
    assert range_header is not None
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)
    assert m is not None, range_header
    start = int(m[1])
    assert 0 < start <= cut_at
    assert sent == size - start
    assert len(_stored_blobs(strata.root, digest)) == 1


def test_pull_refuses_a_corrupted_layer_and_stores_nothing(
    strata: tools.StrataCLI, registry: Registry, proxy: Proxy, busybox_image: TestImage
) -> None:
    skopeo_push(busybox_image, registry, "busybox:1")
    digest, size = busybox_image.layers[0]
    proxy.inject(Fault.flip_blob(digest, offset=size // 3, times=None))

    ref = f"{proxy.address}/busybox:1"
    stderr = _failed(strata("pull", ref, check=False))
    assert "digest" in stderr.lower()
    assert digest in stderr or digest.split(":")[1][:12] in stderr, stderr
    assert _layer_gets(proxy, digest), "the layer was never fetched"

    assert _stored_blobs(strata.root, digest) == []
    assert strata("images", "-q").stdout.strip() == ""
    assert strata("inspect", ref, check=False).returncode != 0


@pytest.mark.parametrize(
    ("status", "retry_after", "times"),
    [(500, None, 2), (503, None, 1), (429, 1, 1)],
    ids=["500-twice", "503-once", "429-retry-after"],
)
def test_pull_retries_server_errors_then_succeeds(
    strata: tools.StrataCLI,
    registry: Registry,
    proxy: Proxy,
    busybox_image: TestImage,
    status: int,
    retry_after: int | None,
    times: int,
) -> None:
    skopeo_push(busybox_image, registry, "busybox:1")
    digest = busybox_image.layers[0][0]
    faults = [
        Fault.error(r"/v2/busybox/manifests/1", status=status, times=times, retry_after=retry_after),
        Fault.blob_error(busybox_image.config_digest, status=status, times=times, retry_after=retry_after),
        Fault.blob_error(digest, status=status, times=times, retry_after=retry_after),
    ]
    for fault in faults:
        proxy.inject(fault)

    ref = f"{proxy.address}/busybox:1"
    pulled = strata("pull", ref)
    _assert_pulled(strata, ref, busybox_image, pulled.stdout)
    assert [proxy.fired(f) for f in faults] == [times] * 3
    injected = [ex for ex in proxy.exchanges if ex.fault is FaultKind.STATUS]
    assert len(injected) == 3 * times and all(ex.status == status for ex in injected)
    assert len(_stored_blobs(strata.root, digest)) == 1


def test_push_retries_a_server_error_on_upload(
    strata: tools.StrataCLI,
    registry: Registry,
    proxy: Proxy,
    derived_image: TestImage,
    archive_of: Callable[[TestImage], Path],
) -> None:
    strata("load", "-i", archive_of(derived_image))
    fault = Fault.error(r"/v2/derived/blobs/uploads/", status=500, times=1, methods=("POST",))
    proxy.inject(fault)
    strata("tag", derived_image.ref, f"{proxy.address}/derived:1")
    pushed = strata("push", f"{proxy.address}/derived:1")
    assert proxy.fired(fault) == 1
    assert f"digest: {derived_image.manifest_digest}" in pushed.stdout
    assert registry.skopeo_digest("derived:1") == derived_image.manifest_digest


@pytest.mark.parametrize("by", ["digest", "tag"])
def test_pull_refuses_a_manifest_that_is_not_the_one_asked_for(
    strata: tools.StrataCLI,
    registry: Registry,
    proxy: Proxy,
    busybox_image: TestImage,
    derived_image: TestImage,
    by: str,
) -> None:
    """By digest, the bytes must hash to the digest in the reference; by tag, to the
    ``Docker-Content-Digest`` the registry announced (the proxy keeps the registry's header
    and swaps the body for another valid manifest whose blobs are all there)."""
    skopeo_push(busybox_image, registry, "busybox:1")
    skopeo_push(derived_image, registry, "derived:1")
    reference = busybox_image.manifest_digest if by == "digest" else "1"
    fault = Fault.replace_manifest(reference, derived_image.raw_manifest())
    proxy.inject(fault)

    ref = (
        f"{proxy.address}/busybox@{busybox_image.manifest_digest}"
        if by == "digest"
        else f"{proxy.address}/busybox:1"
    )
    stderr = _failed(strata("pull", ref, check=False))
    assert proxy.fired(fault) >= 1
    assert "digest" in stderr.lower(), stderr
    assert strata("images", "-q").stdout.strip() == ""
    for digest in derived_image.layer_digests[-1:]:
        assert _stored_blobs(strata.root, digest) == []


@pytest.mark.parametrize("where", ["same-repository", "cross-repository-mount"])
def test_incremental_push_sends_no_byte_of_shared_layers(
    strata: tools.StrataCLI,
    registry: Registry,
    proxy: Proxy,
    busybox_image: TestImage,
    derived_image: TestImage,
    archive_of: Callable[[TestImage], Path],
    where: str,
) -> None:
    """The base is in the registry already: pushed by skopeo into the same repository
    (HEAD finds each shared blob), or pushed by strata into another repository (strata knows
    where the blob is and mounts it with ``POST ?mount=&from=``)."""
    if where == "same-repository":
        skopeo_push(busybox_image, registry, "app:base")
    else:
        strata("load", "-i", archive_of(busybox_image))
        strata("tag", busybox_image.ref, f"{proxy.address}/base:1")
        strata("push", f"{proxy.address}/base:1")
    strata("load", "-i", archive_of(derived_image))
    strata("tag", derived_image.ref, f"{proxy.address}/app:1")
    proxy.reset()

    pushed = strata("push", f"{proxy.address}/app:1")
    assert f"digest: {derived_image.manifest_digest}" in pushed.stdout
    for digest in busybox_image.layer_digests:
        assert proxy.uploaded_bytes(digest) == 0, f"shared layer {digest} was uploaded"
    new_digest, new_size = derived_image.layers[-1]
    assert proxy.uploaded_bytes(new_digest) == new_size
    config_size = len(derived_image.blob(derived_image.config_digest))
    assert proxy.upload_bytes_total() == new_size + config_size
    assert registry.skopeo_digest("app:1") == derived_image.manifest_digest
    if where == "cross-repository-mount":
        mounts = [ex for ex in proxy.requests_for("POST", r"/v2/app/blobs/uploads/")
                  if ex.query.get("mount") in busybox_image.layer_digests]
        assert [(ex.query["from"], ex.status) for ex in mounts] == [("base", 201)]

    # Pushing again sends no blob at all: every HEAD finds it.
    proxy.reset()
    strata("push", f"{proxy.address}/app:1")
    assert proxy.upload_bytes_total() == 0


def test_incremental_pull_downloads_only_new_layers(
    strata: tools.StrataCLI,
    registry: Registry,
    proxy: Proxy,
    busybox_image: TestImage,
    derived_image: TestImage,
) -> None:
    skopeo_push(busybox_image, registry, "base:1")
    skopeo_push(derived_image, registry, "derived:1")
    strata("pull", f"{proxy.address}/base:1")
    proxy.reset()

    ref = f"{proxy.address}/derived:1"
    pulled = strata("pull", ref)
    _assert_pulled(strata, ref, derived_image, pulled.stdout)
    shared = busybox_image.layer_digests[0]
    assert proxy.downloaded_bytes(shared) == 0
    assert re.search(rf"{shared.split(':')[1][:12]}: Already exists", pulled.stdout), pulled.stdout
    new_digest, new_size = derived_image.layers[-1]
    assert proxy.downloaded_bytes(new_digest) == new_size
