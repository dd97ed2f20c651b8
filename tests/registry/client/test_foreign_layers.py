"""Foreign (non-distributable) layers: fetched from their ``urls``, the registry as fallback.

A Docker schema2 manifest names busybox's layer as
``application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`` with ``urls`` on a plain HTTP
server the test runs. ``strata pull`` fetches the layer from there (the registry sees no GET
of it), verifies it, and unpacks the same tree as the ordinary image; when the URL answers
404 the layer comes from the registry, as docker does.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.testing import tools
from strata.testing.registries import Proxy, Registry, TestImage, skopeo_push
from strata.testing.trees import assert_same_tree

FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


class _BlobServer:
    """Serves ``blobs`` (path → bytes) on a free loopback port and counts GETs per path."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.gets: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                body = server.blobs.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> _BlobServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def foreign_registry(tmp_path: Path) -> Iterator[Registry]:
    """docker-registry allowing foreign layer URLs on 127.0.0.1 (it refuses every URL unless
    ``validation.manifests.urls.allow`` says otherwise)."""
    validation = {"manifests": {"urls": {"allow": [r"^http://127\.0\.0\.1:[0-9]+/"]}}}
    with Registry(tmp_path / "registry", extra_config={"validation": validation}) as reg:
        yield reg


def _put_foreign_manifest(reg: Registry, image: TestImage, repo_tag: str, urls: list[str]) -> None:
    digest, size = image.layers[0]
    config = image.blob(image.config_digest)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config), "digest": image.config_digest},
        "layers": [{"mediaType": FOREIGN, "size": size, "digest": digest, "urls": urls}],
    }
    repo, tag = repo_tag.split(":")
    request = urllib.request.Request(
        f"{reg.url}/v2/{repo}/manifests/{tag}", data=json.dumps(manifest).encode(), method="PUT",
        headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 201


@pytest.mark.parametrize("url_works", [True, False], ids=["from-urls", "registry-fallback"])
def test_pull_fetches_a_foreign_layer_from_its_urls(
    tmp_path: Path,
    strata: tools.StrataCLI,
    foreign_registry: Registry,
    proxy_for: Callable[[Registry], Proxy],
    busybox_image: TestImage,
    url_works: bool,
) -> None:
    reg = foreign_registry
    skopeo_push(busybox_image, reg, "base/busybox:1")  # the config and, for the fallback, the layer
    digest, _ = busybox_image.layers[0]
    blob = busybox_image.blob(digest)
    with _BlobServer({"/layer.tar.gz": blob} if url_works else {}) as files:
        _put_foreign_manifest(reg, busybox_image, "base/busybox:foreign", [f"{files.url}/layer.tar.gz"])
        proxy = proxy_for(reg)

        pulled = strata("pull", f"{proxy.address}/base/busybox:foreign")

        assert files.gets == {"/layer.tar.gz": 1}
    assert "Digest: sha256:" in pulled.stdout
    registry_gets = proxy.requests_for("GET", rf"/v2/.+/blobs/{digest}")
    assert len(registry_gets) == (0 if url_works else 1)
    strata("unpack", f"{proxy.address}/base/busybox:foreign", str(tmp_path / "foreign"))
    tools.run(["umoci", "unpack", "--image", f"{busybox_image.layout}:{busybox_image.ref}",
               str(tmp_path / "reference")])
    assert_same_tree(tmp_path / "foreign", tmp_path / "reference" / "rootfs")


def test_push_leaves_a_foreign_layer_where_its_urls_say(
    strata: tools.StrataCLI,
    foreign_registry: Registry,
    proxy_for: Callable[[Registry], Proxy],
    busybox_image: TestImage,
) -> None:
    reg = foreign_registry
    skopeo_push(busybox_image, reg, "base/busybox:1")
    digest, _ = busybox_image.layers[0]
    with _BlobServer({"/layer.tar.gz": busybox_image.blob(digest)}) as files:
        _put_foreign_manifest(reg, busybox_image, "base/busybox:foreign", [f"{files.url}/layer.tar.gz"])
        strata("pull", f"{reg.address}/base/busybox:foreign")
    proxy = proxy_for(reg)
    strata("tag", f"{reg.address}/base/busybox:foreign", f"{proxy.address}/other/busybox:foreign")

    strata("push", f"{proxy.address}/other/busybox:foreign")

    touched = [ex for ex in proxy.exchanges if digest in ex.path or ex.query.get("digest") == digest
               or ex.query.get("mount") == digest]
    assert touched == [], touched  # no HEAD, mount or upload of the foreign layer
    assert reg.skopeo_digest("other/busybox:foreign") == reg.skopeo_digest("base/busybox:foreign")
