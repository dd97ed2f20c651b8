"""Operating the registry: graceful shutdown finishes in-flight requests, ``--workers``
processes share one port, ``/metrics`` speaks Prometheus text, every request is one JSON
access line, and configuration files (YAML or TOML) are read or refused clearly."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from strata.testing import tools
from strata.testing.registry_server import StrataRegistry, http_request


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_sigterm_lets_an_in_flight_upload_finish_then_exits(tmp_path: Path) -> None:
    reg = StrataRegistry(tmp_path / "reg")
    reg.start()
    try:
        r = http_request(reg.url, "POST", "/v2/slow/blobs/uploads/")
        location = r.headers["location"]
        data = os.urandom(2_000_000)
        sock = socket.create_connection(("127.0.0.1", reg.port))
        sock.sendall(f"PATCH {location} HTTP/1.1\r\nHost: {reg.address}\r\nConnection: close\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode())
        sock.sendall(data[:1_000_000])
        time.sleep(0.3)
        assert reg.pid is not None
        os.kill(reg.pid, signal.SIGTERM)
        time.sleep(0.5)
        # No new connections once shutting down...
        try:
            late = http_request(reg.url, "GET", "/v2/", timeout=2).status
        except OSError:
            late = None
        assert late is None
        # ...but the request in flight completes.
        sock.sendall(data[1_000_000:])
        answer = _read_response(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
        assert b"Range: 0-1999999" in answer
        assert reg.stop(timeout=20) == 0
    finally:
        reg.kill()
    with StrataRegistry(tmp_path / "reg") as again:
        assert http_request(again.url, "GET", location).headers["range"] == "0-1999999"
        r = http_request(again.url, "PUT", f"{location}?digest={_d(data)}")
        assert r.status == 201


def test_workers_share_the_port(tmp_path: Path) -> None:
    with StrataRegistry(tmp_path / "reg", workers=3) as reg:
        assert reg.pid is not None
        children = Path(f"/proc/{reg.pid}/task/{reg.pid}/children").read_text().split()
        assert len(children) == 3
        data = b"through any worker"
        r = http_request(reg.url, "POST", f"/v2/w/blobs/uploads/?digest={_d(data)}", body=data)
        assert r.status == 201
        for _ in range(20):
            assert http_request(reg.url, "GET", f"/v2/w/blobs/{_d(data)}").body == data
        pids = {int(c) for c in children}
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_metrics_and_access_log(tmp_path: Path) -> None:
    with StrataRegistry(tmp_path / "reg") as reg:
        data = b"counted"
        http_request(reg.url, "POST", f"/v2/m/blobs/uploads/?digest={_d(data)}", body=data,
                     headers={"User-Agent": "strata-test"})
        http_request(reg.url, "GET", f"/v2/m/blobs/{_d(data)}")
        http_request(reg.url, "GET", f"/v2/m/blobs/{_d(b'absent')}")
        r = http_request(reg.url, "GET", "/metrics")
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = r.body.decode()
        assert 'strata_registry_http_requests_total{route="blob",method="GET",code="200"} 1' in text
        assert 'strata_registry_http_requests_total{route="blob",method="GET",code="404"} 1' in text
        assert 'strata_registry_http_requests_total{route="upload",method="POST",code="201"} 1' in text
        assert f'strata_registry_http_request_bytes_total{{route="upload"}} {len(data)}' in text
        assert 'strata_registry_http_request_duration_seconds_bucket{route="blob",le="+Inf"} 2' in text
        for line in text.splitlines():
            assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2
        log = reg.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    upload = next(e for e in lines if e["method"] == "POST")
    assert upload["status"] == 201 and upload["repository"] == "m" and upload["route"] == "upload"
    assert upload["bytes_in"] == len(data) and upload["user_agent"] == "strata-test"
    missing = next(e for e in lines if e["status"] == 404)
    assert missing["error"] == "BLOB_UNKNOWN"
    assert {"time", "remote", "path", "duration_ms", "bytes_out", "user"} <= set(upload)


def test_serve_reads_yaml_and_toml_and_refuses_bad_config(tmp_path: Path) -> None:
    port = tools.free_port()
    yaml_config = tmp_path / "config.yml"
    yaml_config.write_text(
        "version: 0.1\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'yaml-store'}\n"
        "  delete:\n    enabled: false\n"
    )
    toml_config = tmp_path / "config.toml"
    toml_config.write_text(f'[http]\naddr = "127.0.0.1:{port}"\n'
                           f'[storage.filesystem]\nrootdirectory = "{tmp_path / "toml-store"}"\n')
    for config in (yaml_config, toml_config):
        cli = [sys.executable, "-m", "strata", "registry", "serve", "--config", str(config)]
        proc = subprocess.Popen(cli, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            status = None
            while time.monotonic() < deadline:
                try:
                    status = http_request(f"http://127.0.0.1:{port}", "GET", "/v2/", timeout=1).status
                    break
                except OSError:
                    time.sleep(0.1)
            assert status == 200
            data = b"stored where the file says"
            url = f"http://127.0.0.1:{port}"
            http_request(url, "POST", f"/v2/c/blobs/uploads/?digest={_d(data)}", body=data)
            store = tmp_path / ("yaml-store" if config is yaml_config else "toml-store")
            assert (store / "blobs" / "sha256" / _d(data)[7:9] / _d(data)[7:]).read_bytes() == data
            if config is yaml_config:
                r = http_request(f"http://127.0.0.1:{port}", "DELETE", f"/v2/c/blobs/{_d(data)}")
                assert r.status == 405
        finally:
            proc.terminate()
            assert proc.wait(20) == 0
    bad = tmp_path / "bad.yml"
    bad.write_text("storage:\n  filesystem: {}\n  s3: {bucket: x}\n")
    done = tools.run([sys.executable, "-m", "strata", "registry", "serve", "--config", bad], check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: registry config: storage names several drivers: filesystem, s3"
    bad.write_text("access:\n  anonymous: [fly]\nauth:\n  htpasswd: {path: /nonexistent}\n")
    done = tools.run([sys.executable, "-m", "strata", "registry", "serve", "--config", bad], check=False)
    assert done.returncode == 1 and "unknown action(s) fly" in done.stderr


def test_access_log_goes_to_the_file_given(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with StrataRegistry(tmp_path / "reg", extra_args=("--access-log", str(log))) as reg:
        http_request(reg.url, "GET", "/v2/nothing/tags/list")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "NAME_UNKNOWN" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        assert '"method": "GET"' not in reg.log()  # not on stderr
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["path"] == "/v2/nothing/tags/list" and e["error"] == "NAME_UNKNOWN" for e in entries)


def test_a_worker_that_cannot_start_fails_the_server(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tools.run([sys.executable, "-m", "strata", "registry", "serve", "--root", tmp_path / "s",
                          "--listen", f"127.0.0.1:{port}", "--workers", "2"], check=False, timeout=60)
    assert done.returncode == 1
    assert "registry workers failed" in done.stderr
