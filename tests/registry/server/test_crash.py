"""SIGKILL in the middle of uploads, then restart: every blob whose upload was acknowledged
is served intact, no partial blob is ever visible under ``blobs/``, interrupted uploads can
be inspected, and ``strata registry gc`` purges the abandoned ones."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from strata.testing import tools
from strata.testing.registry_server import StrataRegistry, http_request


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _half_sent_patch(address: str, location: str, total: int) -> socket.socket:
    """Start a PATCH announcing ``total`` bytes and send only half of them."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"PATCH {location} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {total}\r\n\r\n".encode()
    )
    sock.sendall(os.urandom(total // 2))
    return sock


def _pusher(url: str, stop: threading.Event, done: list[bytes], index: int) -> None:
    """Push blobs until stopped; record those the registry acknowledged with 201."""
    n = 0
    while not stop.is_set():
        data = os.urandom(200_000 + 1000 * index + n)
        n += 1
        try:
            r = http_request(url, "POST", f"/v2/crash/p{index}/blobs/uploads/", timeout=5)
            location = r.headers["location"]
            half = len(data) // 2
            http_request(url, "PATCH", location, body=data[:half], timeout=5,
                         headers={"Content-Range": f"0-{half - 1}"})
            r = http_request(url, "PUT", f"{location}?digest={_d(data)}", body=data[half:], timeout=5,
                             headers={"Content-Range": f"{half}-{len(data) - 1}"})
        except (OSError, KeyError):
            return  # the server died under us
        if r.status == 201:
            done.append(data)


def _visible_blobs(storage: Path) -> dict[str, Path]:
    return {p.name: p for p in (storage / "blobs").rglob("*") if p.is_file()}


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.7], ids=["early", "middle", "late"])
def test_sigkill_during_uploads_keeps_completed_blobs_and_exposes_no_partial_one(
    tmp_path: Path, delay: float
) -> None:
    workdir = tmp_path / "reg"
    reg = StrataRegistry(workdir)
    reg.start()
    try:
        stalled = []
        for i in range(3):
            r = http_request(reg.url, "POST", f"/v2/crash/stalled{i}/blobs/uploads/")
            stalled.append(_half_sent_patch(reg.address, r.headers["location"], 4_000_000))
        stop = threading.Event()
        done: list[list[bytes]] = [[] for _ in range(6)]
        threads = [threading.Thread(target=_pusher, args=(reg.url, stop, done[i], i)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(delay)
        reg.kill()
        stop.set()
        for t in threads:
            t.join(30)
        for sock in stalled:
            sock.close()
    finally:
        reg.kill()
    completed = [blob for per_client in done for blob in per_client]
    assert completed, "no upload completed before the kill: the trial tested nothing"

    # Nothing partial is visible: every file under blobs/ hashes to its name.
    for name, path in _visible_blobs(reg.storage).items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name, f"partial or corrupt blob {path}"
    assert list((reg.storage / "uploads").iterdir()), "the interrupted uploads should still be there"

    with StrataRegistry(workdir) as again:
        for i, per_client in enumerate(done):
            for blob in per_client:
                r = http_request(again.url, "GET", f"/v2/crash/p{i}/blobs/{_d(blob)}")
                assert r.status == 200 and r.body == blob
        # Reference the completed blobs from a manifest so GC keeps them.
        config = b"{}"
        assert http_request(again.url, "POST", f"/v2/crash/keep/blobs/uploads/?digest={_d(config)}",
                            body=config).status == 201
        for i, per_client in enumerate(done):
            for blob in per_client:
                r = http_request(again.url, "POST",
                                 f"/v2/crash/keep/blobs/uploads/?mount={_d(blob)}&from=crash/p{i}")
                assert r.status == 201
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _d(config), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _d(b),
                        "size": len(b)} for b in completed],
        }).encode()
        r = http_request(again.url, "PUT", "/v2/crash/keep/manifests/kept", body=manifest,
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status == 201, r.body

    gc = tools.run([sys.executable, "-m", "strata", "registry", "gc", "--root", reg.storage,
                    "--uploads-older-than", "0"])
    assert "uploads deleted" in gc.stdout
    assert list((reg.storage / "uploads").iterdir()) == []
    remaining = _visible_blobs(reg.storage)
    for blob in completed:
        path = remaining[_d(blob)[7:]]
        assert path.read_bytes() == blob
    with StrataRegistry(workdir) as last:
        for blob in completed:
            assert http_request(last.url, "GET", f"/v2/crash/keep/blobs/{_d(blob)}").body == blob
