"""``strata registry gc``: marks from manifests (and the manifests an index lists), sweeps
unreferenced blobs and their links, purges old uploads, and ``--dry-run`` removes nothing."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from strata.testing import tools
from strata.testing.registry_server import StrataRegistry, http_request, tree_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(reg: StrataRegistry, repo: str, data: bytes) -> None:
    r = http_request(reg.url, "POST", f"/v2/{repo}/blobs/uploads/?digest={_d(data)}", body=data)
    assert r.status == 201


def _manifest(config: bytes, *layers: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _d(b), "size": len(b)}
                   for b in layers],
    }).encode()


def _gc(storage: Path, *args: str) -> str:
    return tools.run([sys.executable, "-m", "strata", "registry", "gc", "--root", storage, *args]).stdout


def test_gc_sweeps_only_unreferenced_blobs_and_old_uploads(tmp_path: Path) -> None:
    config, kept, shared, orphan, dropped = b"{}", b"kept layer", b"shared layer", b"orphan", b"dropped"
    with StrataRegistry(tmp_path / "reg") as reg:
        for data in (config, kept, shared, orphan, dropped):
            _blob(reg, "app", data)
        tagged = _manifest(config, kept, shared)
        untagged_in_index = _manifest(config, shared)
        deleted = _manifest(config, dropped)
        for ref, body in ((_d(untagged_in_index), untagged_in_index), ("v1", tagged), ("old", deleted)):
            r = http_request(reg.url, "PUT", f"/v2/app/manifests/{ref}", body=body,
                             headers={"Content-Type": OCI_MANIFEST})
            assert r.status == 201
        entry = {"mediaType": OCI_MANIFEST, "digest": _d(untagged_in_index), "size": len(untagged_in_index)}
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
        assert http_request(reg.url, "PUT", "/v2/app/manifests/multi", body=index,
                            headers={"Content-Type": OCI_INDEX}).status == 201
        assert http_request(reg.url, "DELETE", f"/v2/app/manifests/{_d(deleted)}").status == 202
        pending = http_request(reg.url, "POST", "/v2/app/blobs/uploads/").headers["location"]
        http_request(reg.url, "PATCH", pending, body=b"in flight")

    # Within the grace period (default an hour) unreferenced blobs are spared: a push may
    # still be about to name them in a manifest.
    out = _gc(reg.storage, "--dry-run", "--uploads-older-than", "0")
    assert "would delete blob" not in out
    assert "kept 3 unreferenced blobs younger than 3600s" in out  # orphan, dropped, deleted manifest

    before = tree_digest(reg.storage)
    out = _gc(reg.storage, "--dry-run", "--uploads-older-than", "0", "--blobs-younger-than", "0")
    assert f"would delete blob {_d(orphan)}" in out
    assert f"would delete blob {_d(dropped)}" in out
    assert f"would delete blob {_d(deleted)}" in out   # the deleted manifest's own bytes
    assert "would delete upload" in out
    assert tree_digest(reg.storage) == before

    # Default age (24h): a fresh upload is not abandoned yet.
    out = _gc(reg.storage, "--blobs-younger-than", "0")
    assert "0 uploads deleted" in out
    assert len(list((reg.storage / "uploads").iterdir())) == 1
    out = _gc(reg.storage, "--uploads-older-than", "0", "--blobs-younger-than", "0")
    assert list((reg.storage / "uploads").iterdir()) == []

    with StrataRegistry(tmp_path / "reg") as reg:
        for data in (config, kept, shared):
            assert http_request(reg.url, "GET", f"/v2/app/blobs/{_d(data)}").body == data
        for data in (orphan, dropped):
            assert http_request(reg.url, "GET", f"/v2/app/blobs/{_d(data)}").status == 404
        for ref in ("v1", "multi", _d(untagged_in_index)):
            assert http_request(reg.url, "GET", f"/v2/app/manifests/{ref}").status == 200
        assert http_request(reg.url, "GET", f"/v2/app/manifests/{_d(deleted)}").status == 404
    names = {p.name for p in (reg.storage / "blobs").rglob("*") if p.is_file()}
    assert names == {_d(b)[7:] for b in (config, kept, shared, tagged, untagged_in_index, index)}
