"""The nginx workload: ``run -d -p HOST:80``, ``curl`` the page, ``logs``, ``stop``.

The image is built here from ``strata/testing/dockerfiles/nginx`` (Debian's nginx, a page
COPYed in, logs linked to stdout/stderr) by buildah and loaded into strata; every check runs
with the built-in runtime and with runc.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.runtime import network
from strata.testing import tools
from strata.testing.workloads import NGINX_PAGE, NGINX_REF, nginx_image

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Path]:
    tools.require("runc")
    tools.require("curl")
    image = nginx_image(cache_dir)
    root = tmp_path_factory.mktemp("nginx") / "root"
    tools.StrataCLI(root)("load", "-i", image.oci_layout)
    yield root
    tools.assert_no_mounts_under(root)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _curl(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "5", url], capture_output=True,
                          text=True, check=False)


def test_nginx_serves_the_page_logs_the_request_and_stops_in_the_grace_period(
        root: Path, runtime: str) -> None:
    strata = tools.StrataCLI(root)
    port = tools.free_port()
    started = strata("run", "-d", "--runtime", runtime, "-p", f"{port}:80", NGINX_REF)
    cid = started.stdout.strip()
    assert len(cid) == 64, started.stdout
    try:
        page = None
        for _ in range(200):  # nginx needs a moment to listen
            page = _curl(f"http://127.0.0.1:{port}/")
            if page.returncode == 0:
                break
            time.sleep(0.05)
        assert page is not None and page.returncode == 0, page
        assert page.stdout == NGINX_PAGE.read_text()
        # The published port answers on the host's own address too.
        host_ip = next(iter(os.popen("hostname -I").read().split()), "")
        if host_ip:
            assert _curl(f"http://{host_ip}:{port}/").stdout == NGINX_PAGE.read_text()
        assert strata("port", cid).stdout.splitlines()[0] == f"80/tcp -> 0.0.0.0:{port}"
        logs = ""
        for _ in range(100):  # the access line is written after the response
            logs = strata("logs", cid).stdout
            if '"GET / HTTP/1.1" 200' in logs:
                break
            time.sleep(0.05)
        assert '"GET / HTTP/1.1" 200' in logs and "curl/" in logs
        attachment = network.attachment_of(root / "containers" / cid)
        assert attachment is not None and attachment.proxy_pid
        before = time.monotonic()
        strata("stop", cid)
        elapsed = time.monotonic() - before
        assert elapsed < 10, f"stop took {elapsed:.1f}s: nginx did not end in the grace period"
        assert strata("wait", cid).stdout == "0\n"  # a graceful exit on SIGQUIT
        # Stopped: the port is closed, the proxy and the veth are gone.
        assert _curl(f"http://127.0.0.1:{port}/").returncode != 0
        for _ in range(200):  # the kernel deletes the veth with the namespace, soon
            if not os.path.exists(f"/sys/class/net/{attachment.veth}"):
                break
            time.sleep(0.05)
        assert not os.path.exists(f"/sys/class/net/{attachment.veth}")
        assert not os.path.exists(f"/proc/{attachment.proxy_pid}/cmdline") or (
            b"portproxy" not in Path(f"/proc/{attachment.proxy_pid}/cmdline").read_bytes())
    finally:
        strata("rm", "-f", cid, check=False)
    assert not (root / "containers" / cid).exists()


def test_publish_all_maps_the_exposed_port_to_a_free_host_port(root: Path, runtime: str
                                                               ) -> None:
    strata = tools.StrataCLI(root)
    cid = strata("run", "-d", "--runtime", runtime, "-P", NGINX_REF).stdout.strip()
    try:
        lines = strata("port", cid, "80/tcp").stdout.splitlines()
        assert lines and lines[0].startswith("0.0.0.0:")
        port = int(lines[0].rpartition(":")[2])
        page = None
        for _ in range(200):
            page = _curl(f"http://127.0.0.1:{port}/")
            if page.returncode == 0:
                break
            time.sleep(0.05)
        assert page is not None and page.stdout == NGINX_PAGE.read_text(), page
    finally:
        strata("rm", "-f", cid, check=False)
    assert not (root / "containers" / cid).exists()
