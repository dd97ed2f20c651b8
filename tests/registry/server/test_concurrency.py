"""Sixteen clients push at once — the same blob, each its own blob, manifests naming both —
and nothing is lost or corrupted: every blob reads back exactly, every file under ``blobs/``
hashes to its name, and no upload is left behind."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from strata.testing.registry_server import StrataRegistry, http_request

CLIENTS = 16
CHUNK = 256 * 1024


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_chunked(url: str, repo: str, data: bytes) -> str:
    r = http_request(url, "POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202, r.body
    location = r.headers["location"]
    for start in range(0, len(data), CHUNK):
        chunk = data[start:start + CHUNK]
        r = http_request(url, "PATCH", location, body=chunk,
                         headers={"Content-Range": f"{start}-{start + len(chunk) - 1}",
                                  "Content-Type": "application/octet-stream"})
        assert r.status == 202, r.body
        location = r.headers["location"]
    r = http_request(url, "PUT", f"{location}?digest={_d(data)}")
    assert r.status == 201, r.body
    return r.headers["docker-content-digest"]


def _client(url: str, index: int, shared: bytes, config: bytes) -> tuple[str, bytes, str]:
    repo = f"load/c{index % 4}"
    own = os.urandom(512 * 1024 + index * 1000)
    assert _push_chunked(url, repo, shared) == _d(shared)
    assert _push_chunked(url, repo, own) == _d(own)
    r = http_request(url, "POST", f"/v2/{repo}/blobs/uploads/?digest={_d(config)}", body=config)
    assert r.status == 201, r.body
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _d(b), "size": len(b)}
                   for b in (shared, own)],
    }).encode()
    r = http_request(url, "PUT", f"/v2/{repo}/manifests/t{index}", body=manifest,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 201, r.body
    return repo, own, _d(manifest)


def _check_store(storage: Path) -> int:
    count = 0
    for path in (storage / "blobs").rglob("*"):
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"corrupt blob {path}"
            count += 1
    return count


@pytest.mark.parametrize("workers", [1, 4], ids=["one-process", "four-workers"])
def test_sixteen_concurrent_pushers_lose_and_corrupt_nothing(tmp_path: Path, workers: int) -> None:
    shared = os.urandom(3 * 1024 * 1024 + 17)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    with StrataRegistry(tmp_path / "reg", workers=workers) as reg:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda i: _client(reg.url, i, shared, config), range(CLIENTS)))
        for index, (repo, own, manifest_digest) in enumerate(results):
            assert http_request(reg.url, "GET", f"/v2/{repo}/blobs/{_d(shared)}").body == shared
            assert http_request(reg.url, "GET", f"/v2/{repo}/blobs/{_d(own)}").body == own
            r = http_request(reg.url, "HEAD", f"/v2/{repo}/manifests/t{index}")
            assert r.headers["docker-content-digest"] == manifest_digest
        # one shared blob + one config + sixteen own blobs + sixteen manifests
        assert _check_store(reg.storage) == 2 + 2 * CLIENTS
        assert list((reg.storage / "uploads").iterdir()) == []
        tags = {repo: http_request(reg.url, "GET", f"/v2/{repo}/tags/list").json()["tags"]
                for repo in {r for r, _, _ in results}}
        assert sum(len(t) for t in tags.values()) == CLIENTS
