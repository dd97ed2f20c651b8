"""strata's registry on S3 against Debian's ``docker-registry`` on S3, on one S3 server.

Both registries store in the same S3-protocol server (moto, :class:`strata.testing.s3.S3Server`,
on 127.0.0.1), each round under a fresh ``rootdirectory``, and both stream blobs through
themselves (docker-registry with ``redirect.disable``, as strata always does). Each round
starts each registry fresh and runs, with the same aiohttp load generator in this process:

- **blob upload**: 4 clients each push one blob of ``--size-mib`` (POST, then PUT with the
  body), MiB/s;
- **chunked upload**: 1 client pushes one blob in 4 MiB PATCHes, MiB/s;
- **blob GET**: 8 clients each GET one of those blobs, MiB/s;
- **manifest GET**: 64 clients GET one manifest by tag, requests/s;
- **tags list**: 16 clients GET the list of 100 tags, requests/s.

Contenders alternate (strata, docker-registry, strata, ...) for ``--runs`` rounds; the bench
prints each figure's median and the ratio strata / docker-registry. The S3 server is
Python and shares the machine, so it bounds the blob figures for both; the ratios say
whether strata's S3 driver costs more or less than distribution's on the same store.
The bench exits 0 whether or not strata is ahead, 1 if something failed.

Run from the checkout::

    .venv/bin/python -m bench.registry_s3 [--runs 3] [--size-mib 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp

from strata.testing.registry_server import StrataRegistry
from strata.testing.s3 import S3Server
from strata.testing.tools import ToolError, free_port, require

FIGURES = (
    "blob upload MiB/s",
    "chunked upload MiB/s",
    "blob GET MiB/s",
    "manifest GET req/s",
    "tags list req/s",
)
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


def _with_digest(url: str, digest: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={digest}"


async def _post(session: aiohttp.ClientSession, base: str, repo: str) -> str:
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST upload: {resp.status} {await resp.text()}")
        return _absolute(base, resp.headers["Location"])


async def _push(session: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> None:
    url = await _post(session, base, repo)
    headers = {"Content-Type": "application/octet-stream"}
    async with session.put(_with_digest(url, _sha(data)), data=data, headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"PUT blob: {resp.status} {await resp.text()}")


async def _push_chunked(session: aiohttp.ClientSession, base: str, repo: str, data: bytes, step: int) -> None:
    url = await _post(session, base, repo)
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(piece) - 1}",
        }
        async with session.patch(url, data=piece, headers=headers) as resp:
            if resp.status != 202:
                raise RuntimeError(f"PATCH: {resp.status} {await resp.text()}")
            url = _absolute(base, resp.headers["Location"])
    async with session.put(_with_digest(url, _sha(data))) as resp:
        if resp.status != 201:
            raise RuntimeError(f"PUT chunked: {resp.status} {await resp.text()}")


async def _get_size(session: aiohttp.ClientSession, url: str) -> int:
    size = 0
    async with session.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
    return size


async def _requests_per_second(session: aiohttp.ClientSession, url: str, clients: int, each: int) -> float:
    async def one() -> None:
        for _ in range(each):
            async with session.get(url, headers={"Accept": MANIFEST_TYPE}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET {url}: {resp.status}")
                await resp.read()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return clients * each / (time.perf_counter() - start)


async def _timed(work: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start


async def measure(base: str, size: int) -> dict[str, float]:
    """One round of every figure against the registry at ``base``."""
    blobs = [os.urandom(size) for _ in range(4)]
    chunked = os.urandom(size)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    connector = aiohttp.TCPConnector(limit=128)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        seconds = await _timed(lambda: asyncio.gather(*(_push(session, base, "bench/app", b) for b in blobs)))
        upload = len(blobs) * size / seconds / 2**20
        seconds = await _timed(lambda: _push_chunked(session, base, "bench/app", chunked, 4 << 20))
        chunked_upload = size / seconds / 2**20

        urls = [f"{base}/v2/bench/app/blobs/{_sha(blobs[i % len(blobs)])}" for i in range(8)]
        start = time.perf_counter()
        got = await asyncio.gather(*(_get_size(session, u) for u in urls))
        blob_get = sum(got) / (time.perf_counter() - start) / 2**20

        await _push(session, base, "bench/app", config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _sha(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _sha(b), "size": len(b)}
                    for b in blobs
                ],
            }
        ).encode()
        for i in range(100):
            async with session.put(
                f"{base}/v2/bench/app/manifests/t{i:03d}",
                data=manifest,
                headers={"Content-Type": MANIFEST_TYPE},
            ) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"PUT manifest: {resp.status} {await resp.text()}")
        manifest_rps = await _requests_per_second(session, f"{base}/v2/bench/app/manifests/t000", 64, 20)
        tags_rps = await _requests_per_second(session, f"{base}/v2/bench/app/tags/list", 16, 20)
    return dict(zip(FIGURES, (upload, chunked_upload, blob_get, manifest_rps, tags_rps), strict=True))


@contextlib.contextmanager
def docker_registry_on_s3(workdir: Path, s3: S3Server, root: str) -> Iterator[str]:
    """Debian's docker-registry storing in ``s3`` under ``root``; yields its base URL."""
    binary = require("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    st = s3.registry_storage(rootdirectory=f"/{root}")
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "s3": {
                "region": st["region"],
                "bucket": st["bucket"],
                "regionendpoint": st["regionendpoint"],
                "accesskey": st["accesskey"],
                "secretkey": st["secretkey"],
                "secure": False,
                "v4auth": True,
                "rootdirectory": f"/{root}",
            },
            "delete": {"enabled": True},
            "redirect": {"disable": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "strata-bench"},
        "health": {"storagedriver": {"enabled": False}},
    }
    path = workdir / "config.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    # The AWS SDK of docker-registry refuses a CA bundle variable for a plain-HTTP endpoint.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "serve", str(path)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ToolError(
                    "docker-registry did not start",
                    cmd=[binary, "serve", str(path)],
                    returncode=proc.poll(),
                    stderr=log.read_text(errors="replace"),
                )
            try:
                with urllib.request.urlopen(f"{url}/v2/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="rounds (each contender once per round)")
    parser.add_argument("--size-mib", type=int, default=32, help="size of each large blob")
    parser.add_argument("--workers", type=int, default=1, help="strata registry serve --workers")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args(argv)
    size = args.size_mib << 20
    results: dict[str, list[dict[str, float]]] = {"strata": [], "docker-registry": []}
    try:
        with tempfile.TemporaryDirectory(prefix="strata-bench-s3-") as tmp, S3Server(Path(tmp) / "s3") as s3:
            for run in range(args.runs):
                root = f"strata-{run}"
                config = {"storage": {"s3": s3.registry_storage(rootdirectory=root)}}
                with StrataRegistry(Path(tmp) / root, config=config, workers=args.workers) as reg:
                    results["strata"].append(asyncio.run(measure(reg.url, size)))
                root = f"docker-{run}"
                with docker_registry_on_s3(Path(tmp) / root, s3, root) as url:
                    results["docker-registry"].append(asyncio.run(measure(url, size)))
                print(f"round {run + 1}/{args.runs} done", file=sys.stderr)
    except (ToolError, RuntimeError, aiohttp.ClientError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(f"{'figure':<24}{'strata':>12}{'docker-registry':>18}{'ratio':>9}")
    for figure in FIGURES:
        ours = statistics.median(r[figure] for r in results["strata"])
        theirs = statistics.median(r[figure] for r in results["docker-registry"])
        print(f"{figure:<24}{ours:>12.1f}{theirs:>18.1f}{ours / theirs:>8.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
