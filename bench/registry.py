"""strata's registry against Debian's ``docker-registry`` (distribution 2.8), same load.

Both servers run as their own processes on 127.0.0.1 with filesystem storage, each started
fresh for every round; this script is the load generator (an aiohttp client, in this
process, never inside a server).  Workloads, in this order, per server and round:

- **blob GET**: ``--blob-clients`` (8) concurrent clients download ``--large-blobs`` blobs of
  ``--large-mib`` MiB each, ``--get-passes`` times over; throughput in MiB/s.
- **blob upload**: the same clients each upload their own ``--upload-mib`` MiB blobs
  (POST, then PUT with the body: the monolithic flow both servers support); MiB/s.
- **manifest GET**: ``--manifest-clients`` (64) concurrent clients, ``--manifest-requests``
  GETs of a tagged manifest; requests/s.
- **tags list**: 16 concurrent clients list a repository of ``--tags`` tags; requests/s.

Rounds interleave the servers (docker-registry, strata; then strata, docker-registry; ...).
The medians over rounds are printed with the ratio strata / docker-registry for each
figure (higher is better for all four; the issue's target is >= 1.0x on each).  strata runs
with ``--workers`` processes (default: the number of CPUs, as Go's registry uses every
core).  Every byte fetched is checked against its digest in the first round.

Run from the checkout, as root::

    .venv/bin/python -m bench.registry [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from strata.testing import tools
from strata.testing.registry_server import StrataRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO = "bench/app"
FIGURES = ("blob_get_mib_s", "blob_upload_mib_s", "manifest_get_rps", "tags_list_rps")


@dataclass
class Options:
    runs: int = 3
    workers: int = os.cpu_count() or 1
    blob_clients: int = 8
    large_blobs: int = 4
    large_mib: int = 64
    get_passes: int = 2
    upload_mib: int = 16
    manifest_clients: int = 64
    manifest_requests: int = 6000
    tags: int = 300
    tags_requests: int = 2000


@dataclass
class Round:
    server: str
    round: int
    figures: dict[str, float] = field(default_factory=dict)


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextmanager
def _server(kind: str, workdir: Path, workers: int) -> Iterator[str]:
    if kind == "docker-registry":
        with tools.DockerRegistry(workdir) as reg:
            yield reg.url
    else:
        with StrataRegistry(workdir, workers=workers,
                            config={"log": {"accesslog": {"disabled": True}}}) as reg:
            yield reg.url


async def _upload(session: aiohttp.ClientSession, url: str, repo: str, data: bytes) -> None:
    async with session.post(f"{url}/v2/{repo}/blobs/uploads/") as r:
        assert r.status == 202, await r.text()
        location = urljoin(url, r.headers["Location"])
    sep = "&" if "?" in location else "?"
    async with session.put(f"{location}{sep}digest={_d(data)}", data=data,
                           headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 201, await r.text()


async def _pool(concurrency: int, jobs: list[Callable[[], Awaitable[None]]]) -> float:
    """Run jobs with at most ``concurrency`` at once; the wall time in seconds."""
    queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            job = queue.get_nowait()
            await job()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def _round(url: str, opts: Options, large: list[bytes], verify: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=max(opts.manifest_clients, opts.blob_clients) + 4)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Setup (untimed): large blobs, a config, a manifest and many tags.
        for blob in large:
            await _upload(session, url, REPO, blob)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        await _upload(session, url, REPO, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _d(b),
                        "size": len(b)} for b in large],
        }).encode()
        for i in range(opts.tags):
            async with session.put(f"{url}/v2/{REPO}/manifests/t{i:04d}", data=manifest,
                                   headers={"Content-Type": OCI_MANIFEST}) as r:
                assert r.status == 201, await r.text()

        # Blob GET throughput.
        digests = [_d(b) for b in large]
        expected = {_d(b): b for b in large} if verify else {}

        async def fetch(digest: str) -> None:
            h = hashlib.sha256() if verify else None
            async with session.get(f"{url}/v2/{REPO}/blobs/{digest}") as r:
                assert r.status == 200
                async for chunk in r.content.iter_chunked(1 << 20):
                    if h is not None:
                        h.update(chunk)
            if h is not None:
                assert "sha256:" + h.hexdigest() == digest and digest in expected

        jobs: list[Callable[[], Awaitable[None]]] = [
            functools.partial(fetch, d)
            for _ in range(opts.get_passes) for _ in range(opts.blob_clients // 2) for d in digests
        ]
        seconds = await _pool(opts.blob_clients, jobs)
        figures["blob_get_mib_s"] = len(jobs) * opts.large_mib / seconds

        # Blob upload throughput (unique blobs, made before the clock starts).
        uploads = [os.urandom(opts.upload_mib << 20) for _ in range(opts.blob_clients)]
        seconds = await _pool(opts.blob_clients,
                              [functools.partial(_upload, session, url, "bench/uploads", b) for b in uploads])
        figures["blob_upload_mib_s"] = len(uploads) * opts.upload_mib / seconds
        del uploads

        # Manifest GET requests/s.
        manifest_digest = _d(manifest)

        async def get_manifest() -> None:
            async with session.get(f"{url}/v2/{REPO}/manifests/t0001",
                                   headers={"Accept": OCI_MANIFEST}) as r:
                body = await r.read()
                assert r.status == 200 and r.headers["Docker-Content-Digest"] == manifest_digest
                if verify:
                    assert _d(body) == manifest_digest

        seconds = await _pool(opts.manifest_clients, [get_manifest] * opts.manifest_requests)
        figures["manifest_get_rps"] = opts.manifest_requests / seconds

        # Tags list requests/s.
        async def list_tags() -> None:
            async with session.get(f"{url}/v2/{REPO}/tags/list") as r:
                body = await r.json()
                assert r.status == 200 and len(body["tags"]) == opts.tags

        seconds = await _pool(16, [list_tags] * opts.tags_requests)
        figures["tags_list_rps"] = opts.tags_requests / seconds
    return figures


def _parse() -> tuple[Options, Path | None, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Options()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=value)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--scratch", type=Path, help="where the servers store (default: a temp dir)")
    args = p.parse_args()
    opts = Options(**{k: getattr(args, k) for k in asdict(defaults)})
    return opts, args.json, args.scratch


def main() -> int:
    opts, json_out, scratch = _parse()
    tools.require("docker-registry")
    large = [os.urandom(opts.large_mib << 20) for _ in range(opts.large_blobs)]
    rounds: list[Round] = []
    base = Path(tempfile.mkdtemp(prefix="strata-bench-registry-", dir=scratch))
    print(f"strata registry bench: {opts.runs} rounds, strata --workers {opts.workers}, "
          f"{opts.large_blobs}x{opts.large_mib} MiB blobs, {opts.blob_clients} blob clients, "
          f"{opts.manifest_clients} manifest clients", flush=True)
    try:
        for n in range(opts.runs):
            order = ["docker-registry", "strata"] if n % 2 == 0 else ["strata", "docker-registry"]
            for kind in order:
                workdir = base / f"{kind}-{n}"
                with _server(kind, workdir, opts.workers) as url:
                    figures = asyncio.run(_round(url, opts, large, verify=(n == 0)))
                tools.run(["rm", "-rf", str(workdir)])
                rounds.append(Round(kind, n, figures))
                print(f"  round {n + 1} {kind:16} " + "  ".join(f"{k}={v:9.1f}" for k, v in figures.items()),
                      flush=True)
    except (tools.ToolError, AssertionError, aiohttp.ClientError) as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        tools.run(["rm", "-rf", str(base)], check=False)

    medians = {
        kind: {f: statistics.median(r.figures[f] for r in rounds if r.server == kind) for f in FIGURES}
        for kind in ("docker-registry", "strata")
    }
    print(f"\n{'figure':20} {'docker-registry':>16} {'strata':>12} {'ratio':>8}  target >= 1.0x")
    ratios = {}
    for f in FIGURES:
        ratio = medians["strata"][f] / medians["docker-registry"][f]
        ratios[f] = ratio
        unit = "MiB/s" if f.endswith("mib_s") else "req/s"
        print(f"{f:20} {medians['docker-registry'][f]:>10.1f} {unit} {medians['strata'][f]:>6.1f} {unit} "
              f"{ratio:>7.2f}x  {'met' if ratio >= 1.0 else 'NOT met'}")
    if json_out is not None:
        json_out.write_text(json.dumps({"options": asdict(opts), "rounds": [asdict(r) for r in rounds],
                                        "medians": medians, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
