"""The registry's acceptance checks for faults, load and hostile input, on the S3 driver:
several ``strata registry serve`` processes share one bucket of a real S3-protocol server
(moto on 127.0.0.1) and nothing but the bucket holds state."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from strata.testing.registry_server import StrataRegistry, http_request
from strata.testing.s3 import S3Server

CHUNK = 5 << 20
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def s3_config(s3: S3Server, root: str) -> dict[str, object]:
    return {"storage": {"s3": s3.registry_storage(rootdirectory=root, chunksize=CHUNK)}}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def path_of(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def start_upload(base: str, repo: str) -> str:
    answer = http_request(base, "POST", f"/v2/{repo}/blobs/uploads/")
    assert answer.status == 202, answer.body
    return path_of(answer.headers["location"])


def patch(base: str, location: str, start: int, piece: bytes) -> str:
    answer = http_request(
        base,
        "PATCH",
        location,
        body=piece,
        headers={**OCTETS, "Content-Range": f"{start}-{start + len(piece) - 1}"},
    )
    assert answer.status == 202, answer.body
    return path_of(answer.headers["location"])


def push_chunked(bases: list[str], repo: str, data: bytes, step: int) -> str:
    """POST, PATCH ``step`` bytes at a time and PUT, each request on the next server."""
    location = start_upload(bases[0], repo)
    turn = 1
    for start in range(0, len(data), step):
        location = patch(bases[turn % len(bases)], location, start, data[start : start + step])
        turn += 1
    answer = http_request(bases[turn % len(bases)], "PUT", with_digest(location, sha(data)))
    assert answer.status == 201, answer.body
    return answer.headers["docker-content-digest"]


def push_monolithic(base: str, repo: str, data: bytes) -> None:
    answer = http_request(
        base, "POST", f"/v2/{repo}/blobs/uploads/?digest={sha(data)}", body=data, headers=OCTETS
    )
    assert answer.status == 201, answer.body


def fetch(base: str, repo: str, digest: str) -> bytes:
    answer = http_request(base, "GET", f"/v2/{repo}/blobs/{digest}", timeout=120)
    assert answer.status == 200, answer.body
    return answer.body


def bucket_state(s3: S3Server, root: str) -> dict[str, int]:
    return dict(s3.iter_objects(f"{root}/"))


def bucket_blobs(s3: S3Server, root: str) -> set[str]:
    prefix = f"{root}/docker/registry/v2/blobs/sha256/"
    return {f"sha256:{key.split('/')[-2]}" for key, _ in s3.iter_objects(prefix)}


def no_uploads_left(s3: S3Server, root: str) -> None:
    assert s3.keys(prefix=f"{root}/docker/registry/v2/uploads/") == []
    assert s3.multipart_uploads(prefix=f"{root}/") == []


def test_sixteen_clients_on_two_servers_lose_and_corrupt_nothing(s3: S3Server, tmp_path: Path) -> None:
    root = f"load-{uuid.uuid4().hex[:8]}"
    shared = os.urandom(CHUNK + 1000)  # every client pushes it: a multipart upload each
    unique = [os.urandom(100_000 + i * 7919) for i in range(16)]
    config = s3_config(s3, root)
    with (
        StrataRegistry(tmp_path / "one", config=config, workers=2) as one,
        StrataRegistry(tmp_path / "two", config=config) as two,
    ):
        bases = [one.url, two.url]

        def client(i: int) -> None:
            order = bases if i % 2 else bases[::-1]
            assert push_chunked(order, f"load/c{i}", shared, 2 << 20) == sha(shared)
            push_monolithic(order[1], f"load/c{i}", unique[i])
            assert fetch(order[0], f"load/c{i}", sha(unique[i])) == unique[i]

        with ThreadPoolExecutor(16) as pool:
            for future in [pool.submit(client, i) for i in range(16)]:
                future.result()
        for i in range(16):
            assert fetch(bases[i % 2], f"load/c{i}", sha(shared)) == shared
            assert fetch(bases[(i + 1) % 2], f"load/c{i}", sha(unique[i])) == unique[i]
        assert "Traceback" not in one.log() + two.log()
    assert bucket_blobs(s3, root) == {sha(shared), *(sha(u) for u in unique)}
    no_uploads_left(s3, root)


def _half_sent_request(address: str, method: str, path: str, body: bytes, sent: int) -> socket.socket:
    """Send a request's headers and the first ``sent`` bytes of its body, then stall."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:sent])
    return sock


def test_sigkill_mid_upload_then_restart_and_gc(s3: S3Server, tmp_path: Path) -> None:
    """Killed with uploads in flight: every completed blob is intact, no partial blob is
    visible, a half-done chunked upload resumes on the new process, and GC purges the
    abandoned uploads (their objects and their S3 multipart uploads)."""
    root = f"crash-{uuid.uuid4().hex[:8]}"
    config = s3_config(s3, root)
    config_blob = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    config_bytes = config_blob.encode()
    layer = os.urandom(CHUNK + 12345)
    resumed = os.urandom(3 << 20)
    in_flight_patch = os.urandom(CHUNK + (2 << 20))
    in_flight_put = os.urandom(3 << 20)

    reg = StrataRegistry(tmp_path / "reg", config=config)
    reg.start()
    sockets: list[socket.socket] = []
    try:
        base = reg.url
        push_monolithic(base, "app", config_bytes)
        push_chunked([base], "app", layer, 2 << 20)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(config_bytes),
                    "size": len(config_bytes),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        answer = http_request(
            base,
            "PUT",
            "/v2/app/manifests/v1",
            body=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert answer.status == 201, answer.body

        half_done = start_upload(base, "app")
        half_done = patch(base, half_done, 0, resumed[: 1 << 20])

        streaming_patch = start_upload(base, "app")
        sockets.append(
            _half_sent_request(reg.address, "PATCH", streaming_patch, in_flight_patch, CHUNK + (1 << 20))
        )
        streaming_put = start_upload(base, "app")
        sockets.append(
            _half_sent_request(
                reg.address, "PUT", with_digest(streaming_put, sha(in_flight_put)), in_flight_put, 2 << 20
            )
        )
        # Wait until the streaming PATCH has sent its first part to S3: the crash then
        # leaves a multipart upload that no upload state mentions yet.
        patch_id = streaming_patch.split("?")[0].rsplit("/", 1)[1]
        deadline = time.monotonic() + 60
        while not any(patch_id in key for key, _ in s3.multipart_uploads(prefix=f"{root}/")):
            assert time.monotonic() < deadline, "the server never started the multipart upload"
            time.sleep(0.1)
        time.sleep(0.5)  # and let the streaming PUT's bytes arrive (the checks hold either way)
    finally:
        reg.kill()
        for sock in sockets:
            sock.close()

    with StrataRegistry(tmp_path / "again", config=config) as again:
        base = again.url
        assert fetch(base, "app", sha(layer)) == layer
        assert fetch(base, "app", sha(config_bytes)) == config_bytes
        assert http_request(base, "GET", "/v2/app/manifests/v1").body == manifest
        for partial in (in_flight_patch, in_flight_put):
            assert http_request(base, "HEAD", f"/v2/app/blobs/{sha(partial)}").status == 404
        # the interrupted PATCH stored nothing (its part is orphaned): the upload is still empty
        status = http_request(base, "GET", streaming_patch)
        assert status.status == 204
        assert status.headers.get("range", "0-0") == "0-0"
        # the chunked upload interrupted between requests resumes where it was
        status = http_request(base, "GET", half_done)
        assert (status.status, status.headers["range"]) == (204, f"0-{(1 << 20) - 1}")
        location = patch(base, half_done, 1 << 20, resumed[1 << 20 :])
        answer = http_request(base, "PUT", with_digest(location, sha(resumed)))
        assert answer.status == 201, answer.body
        assert fetch(base, "app", sha(resumed)) == resumed
        assert bucket_blobs(s3, root) == {sha(config_bytes), sha(layer), sha(manifest), sha(resumed)}
        assert any(patch_id in key for key, _ in s3.multipart_uploads(prefix=f"{root}/"))  # orphaned

        def gc(*args: str) -> None:
            command = [sys.executable, "-m", "strata", "registry", "gc", "--config", str(again.config_path)]
            done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, done.stderr

        before = bucket_state(s3, root)
        orphans = s3.multipart_uploads(prefix=f"{root}/")
        gc("--dry-run", "--uploads-older-than", "0")
        assert bucket_state(s3, root) == before  # a dry run removes nothing
        assert s3.multipart_uploads(prefix=f"{root}/") == orphans
        gc("--uploads-older-than", "0")
        # resumed was never referenced by a manifest: swept; the image stays whole
        assert bucket_blobs(s3, root) == {sha(config_bytes), sha(layer), sha(manifest)}
        no_uploads_left(s3, root)
        assert fetch(base, "app", sha(layer)) == layer


def test_hostile_requests_change_nothing_in_the_bucket(s3: S3Server, tmp_path: Path) -> None:
    root = f"hostile-{uuid.uuid4().hex[:8]}"
    with StrataRegistry(tmp_path / "reg", config=s3_config(s3, root)) as reg:
        base = reg.url
        layer = b"layer bytes"
        push_monolithic(base, "ok", layer)
        location = start_upload(base, "ok")
        location = patch(base, location, 0, b"0123456789")
        missing = sha(b"not pushed")
        manifest_missing_blob = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": missing,
                    "size": 10,
                },
                "layers": [],
            }
        ).encode()
        manifest_type = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        cases: list[tuple[str, str, str, bytes | None, dict[str, str], set[str]]] = [
            ("dotdot-name", "POST", "/v2/a/../ok/blobs/uploads/", None, {}, {"NAME_INVALID", "NAME_UNKNOWN"}),
            ("absurd-name", "POST", "/v2/" + "a" * 300 + "/blobs/uploads/", None, {}, {"NAME_INVALID"}),
            ("bad-digest-put", "PUT", with_digest(location, "sha256:zzz"), b"", OCTETS, {"DIGEST_INVALID"}),
            ("lying-digest", "PUT", with_digest(location, missing), b"abc", OCTETS, {"DIGEST_INVALID"}),
            (
                "overlapping-chunk",
                "PATCH",
                location,
                b"xyz",
                {**OCTETS, "Content-Range": "5-7"},
                {"RANGE_INVALID", "BLOB_UPLOAD_INVALID", ""},
            ),
            (
                "skipping-chunk",
                "PATCH",
                location,
                b"xyz",
                {**OCTETS, "Content-Range": "20-22"},
                {"RANGE_INVALID", "BLOB_UPLOAD_INVALID", ""},
            ),
            (
                "malformed-manifest",
                "PUT",
                "/v2/ok/manifests/v1",
                b"{not json",
                manifest_type,
                {"MANIFEST_INVALID"},
            ),
            (
                "manifest-missing-blob",
                "PUT",
                "/v2/ok/manifests/v1",
                manifest_missing_blob,
                manifest_type,
                {"MANIFEST_BLOB_UNKNOWN"},
            ),
            (
                "bad-digest-blob",
                "GET",
                "/v2/ok/blobs/sha256:1234",
                None,
                {},
                {"DIGEST_INVALID", "BLOB_UNKNOWN"},
            ),
        ]
        for name, method, path, body, headers, codes in cases:
            if name == "lying-digest":
                # the lying client's upload is dropped by the server: use a fresh one
                path = with_digest(start_upload(base, "ok"), missing)
            before = bucket_state(s3, root)
            answer = http_request(base, method, path, body=body, headers=headers)
            assert 400 <= answer.status < 500, (name, answer.status, answer.body)
            code = json.loads(answer.body)["errors"][0]["code"] if answer.body else ""
            assert code in codes, (name, answer.status, answer.body)
            after = bucket_state(s3, root)
            if name == "lying-digest":  # its own upload is gone, nothing else changed
                assert {k: v for k, v in before.items() if "/uploads/" not in k} == {
                    k: v for k, v in after.items() if "/uploads/" not in k
                }
            else:
                assert after == before, name
        # the well-behaved upload is still usable after all that
        location = patch(base, location, 10, b"abc")
        answer = http_request(base, "PUT", with_digest(location, sha(b"0123456789abc")))
        assert answer.status == 201, answer.body
