"""strata's registry against Debian's ``docker-registry`` (distribution 2.8), same load.

Both servers run as their own processes on 127.0.0.1 with filesystem storage, each started
fresh for every round; this script is the load generator (an aiohttp client, in this
process, never inside a server).  Workloads, in this order, per server and round:

- **blob GET**: ``--blob-clients`` (8) concurrent clients, spread over ``--client-processes``
  (2) load-generator processes, download ``--large-blobs`` blobs of ``--large-mib`` MiB
  each, ``--get-passes`` times over; throughput in MiB/s.
- **blob upload**: the same clients each upload their own ``--upload-mib`` MiB blobs
  (POST, then PUT with the body: the monolithic flow both servers support); MiB/s.
- **manifest GET**: ``--manifest-clients`` (64) concurrent clients, ``--manifest-requests``
  GETs of a tagged manifest; requests/s.
- **tags list**: 16 concurrent clients list a repository of ``--tags`` tags; requests/s.

In each round both servers are started fresh and run side by side, idle when not measured;
every workload alternates between them ``--repeats`` times (A B, then B A, ...) and the
round keeps each server's median, so drift in the machine's load reaches both alike.  Rounds
alternate which server goes first.
The medians over rounds are printed with the ratio strata / docker-registry for each
figure (higher is better for all four; the issue's target is >= 1.0x on each), then the
servers' own CPU time per unit of work (read from /proc; lower is better), which a busy
machine disturbs less than throughput.  strata runs
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
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from strata.testing import tools
from strata.testing.registry_server import StrataRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO = "bench/app"
FIGURES = ("blob_get_mib_s", "blob_upload_mib_s", "manifest_get_rps", "tags_list_rps")
#: Server CPU per unit of work (lower is better): less sensitive to a busy machine.
CPU_FIGURES = ("blob_get_cpu_s_per_gib", "blob_upload_cpu_s_per_gib", "manifest_get_cpu_ms_per_req",
               "tags_list_cpu_ms_per_req")


@dataclass
class Options:
    runs: int = 3
    workers: int = os.cpu_count() or 1
    blob_clients: int = 8
    large_blobs: int = 4
    large_mib: int = 64
    get_passes: int = 2
    upload_mib: int = 16
    client_processes: int = 2
    repeats: int = 3
    manifest_clients: int = 64
    manifest_requests: int = 6000
    tags: int = 300
    tags_requests: int = 2000


@dataclass
class Round:
    server: str
    round: int
    figures: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process and its children (workers)."""
        total = 0.0
        pids = [self.pid]
        with suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        for pid in pids:
            with suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / _TICKS
        return total


_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def _server(kind: str, workdir: Path, workers: int) -> Iterator[Server]:
    if kind == "docker-registry":
        with tools.DockerRegistry(workdir) as reg:
            assert reg._proc is not None
            yield Server(reg.url, reg._proc.pid)
    else:
        with StrataRegistry(workdir, workers=workers,
                            config={"log": {"accesslog": {"disabled": True}}}) as sreg:
            assert sreg.pid is not None
            yield Server(sreg.url, sreg.pid)


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


def _get_worker(url: str, digests: list[str], connections: int, verify: bool) -> int:
    """One client process: GET ``digests`` over ``connections`` connections; bytes read."""

    async def main() -> int:
        total = 0
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600),
                                         read_bufsize=4 << 20) as session:

            async def fetch(digest: str) -> None:
                nonlocal total
                h = hashlib.sha256() if verify else None
                async with session.get(f"{url}/v2/{REPO}/blobs/{digest}") as r:
                    assert r.status == 200, r.status
                    async for chunk in r.content.iter_any():
                        total += len(chunk)
                        if h is not None:
                            h.update(chunk)
                if h is not None:
                    assert "sha256:" + h.hexdigest() == digest

            await _pool(connections, [functools.partial(fetch, d) for d in digests])
        return total

    return asyncio.run(main())


def _session(opts: Options) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max(opts.manifest_clients, opts.blob_clients) + 4)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600))


async def _setup(server: Server, opts: Options, large: list[bytes]) -> str:
    """Untimed: the large blobs, a config, a manifest tagged ``--tags`` times; its digest."""
    async with _session(opts) as session:
        for blob in large:
            await _upload(session, server.url, REPO, blob)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        await _upload(session, server.url, REPO, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _d(b),
                        "size": len(b)} for b in large],
        }).encode()
        for i in range(opts.tags):
            async with session.put(f"{server.url}/v2/{REPO}/manifests/t{i:04d}", data=manifest,
                                   headers={"Content-Type": OCI_MANIFEST}) as r:
                assert r.status == 201, await r.text()
    return _d(manifest)


@dataclass(frozen=True)
class Context:
    opts: Options
    digests: list[str]
    manifest_digest: str
    pool: ProcessPoolExecutor
    verify: bool


async def _blob_get(server: Server, ctx: Context) -> dict[str, float]:
    """Blob GET throughput; the clients are spread over --client-processes processes so that
    one Python client process is not what is measured."""
    opts = ctx.opts
    jobs = [d for _ in range(opts.get_passes) for _ in range(opts.blob_clients // 2) for d in ctx.digests]
    procs = max(1, min(opts.client_processes, opts.blob_clients))
    loop = asyncio.get_running_loop()
    cpu = server.cpu_seconds()
    start = time.perf_counter()
    fetched = await asyncio.gather(*(
        loop.run_in_executor(ctx.pool, _get_worker, server.url, jobs[i::procs], opts.blob_clients // procs,
                             ctx.verify)
        for i in range(procs)
    ))
    seconds = time.perf_counter() - start
    assert sum(fetched) == len(jobs) * (opts.large_mib << 20)
    gib = len(jobs) * opts.large_mib / 1024
    return {"blob_get_mib_s": gib * 1024 / seconds,
            "blob_get_cpu_s_per_gib": (server.cpu_seconds() - cpu) / gib}


async def _blob_upload(server: Server, ctx: Context) -> dict[str, float]:
    """Blob upload throughput: unique blobs, made before the clock starts."""
    opts = ctx.opts
    uploads = [os.urandom(opts.upload_mib << 20) for _ in range(opts.blob_clients)]
    async with _session(opts) as session:
        cpu = server.cpu_seconds()
        seconds = await _pool(opts.blob_clients, [
            functools.partial(_upload, session, server.url, "bench/uploads", b) for b in uploads])
    gib = len(uploads) * opts.upload_mib / 1024
    return {"blob_upload_mib_s": gib * 1024 / seconds,
            "blob_upload_cpu_s_per_gib": (server.cpu_seconds() - cpu) / gib}


async def _manifest_get(server: Server, ctx: Context) -> dict[str, float]:
    opts = ctx.opts
    async with _session(opts) as session:

        async def get_manifest() -> None:
            async with session.get(f"{server.url}/v2/{REPO}/manifests/t0001",
                                   headers={"Accept": OCI_MANIFEST}) as r:
                body = await r.read()
                assert r.status == 200 and r.headers["Docker-Content-Digest"] == ctx.manifest_digest
                if ctx.verify:
                    assert _d(body) == ctx.manifest_digest

        cpu = server.cpu_seconds()
        seconds = await _pool(opts.manifest_clients, [get_manifest] * opts.manifest_requests)
    return {"manifest_get_rps": opts.manifest_requests / seconds,
            "manifest_get_cpu_ms_per_req": (server.cpu_seconds() - cpu) * 1000 / opts.manifest_requests}


async def _tags_list(server: Server, ctx: Context) -> dict[str, float]:
    opts = ctx.opts
    async with _session(opts) as session:

        async def list_tags() -> None:
            async with session.get(f"{server.url}/v2/{REPO}/tags/list") as r:
                body = await r.json()
                assert r.status == 200 and len(body["tags"]) == opts.tags

        cpu = server.cpu_seconds()
        seconds = await _pool(16, [list_tags] * opts.tags_requests)
    return {"tags_list_rps": opts.tags_requests / seconds,
            "tags_list_cpu_ms_per_req": (server.cpu_seconds() - cpu) * 1000 / opts.tags_requests}


WORKLOADS = (_blob_get, _blob_upload, _manifest_get, _tags_list)


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
    pool = ProcessPoolExecutor(opts.client_processes, mp_context=multiprocessing.get_context("spawn"))
    list(pool.map(abs, range(opts.client_processes)))  # start the client processes now
    rounds: list[Round] = []
    base = Path(tempfile.mkdtemp(prefix="strata-bench-registry-", dir=scratch))
    print(f"strata registry bench: {opts.runs} rounds, strata --workers {opts.workers}, "
          f"{opts.large_blobs}x{opts.large_mib} MiB blobs, {opts.blob_clients} blob clients, "
          f"{opts.manifest_clients} manifest clients", flush=True)
    try:
        for n in range(opts.runs):
            # Both servers start fresh and run side by side; each workload alternates between
            # them --repeats times (A B B A ...), so that drift in the machine's load hits both.
            order = ["docker-registry", "strata"] if n % 2 == 0 else ["strata", "docker-registry"]
            samples: dict[str, dict[str, list[float]]] = {kind: {} for kind in order}
            with ExitStack() as stack:
                servers = {kind: stack.enter_context(_server(kind, base / f"{kind}-{n}", opts.workers))
                           for kind in order}
                digests = [_d(b) for b in large]
                contexts = {
                    kind: Context(opts, digests, asyncio.run(_setup(servers[kind], opts, large)), pool,
                                  verify=(n == 0))
                    for kind in order
                }
                for workload in WORKLOADS:
                    for rep in range(opts.repeats):
                        for kind in order if rep % 2 == 0 else order[::-1]:
                            figures = asyncio.run(workload(servers[kind], contexts[kind]))
                            for key, value in figures.items():
                                samples[kind].setdefault(key, []).append(value)
            tools.run(["rm", "-rf", str(base / f"docker-registry-{n}"), str(base / f"strata-{n}")])
            for kind in order:
                figures = {k: statistics.median(v) for k, v in samples[kind].items()}
                rounds.append(Round(kind, n, figures, samples[kind]))
                print(f"  round {n + 1} {kind:16} "
                      + "  ".join(f"{k}={figures[k]:.1f}" for k in FIGURES + CPU_FIGURES), flush=True)
    except (tools.ToolError, AssertionError, aiohttp.ClientError) as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        pool.shutdown()
        tools.run(["rm", "-rf", str(base)], check=False)

    medians = {
        kind: {f: statistics.median(r.figures[f] for r in rounds if r.server == kind)
               for f in FIGURES + CPU_FIGURES}
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
    print(f"\n{'server CPU (lower is better)':30} {'docker-registry':>16} {'strata':>10} {'strata/dr':>10}")
    for f in CPU_FIGURES:
        ratio = medians["strata"][f] / medians["docker-registry"][f] if medians["docker-registry"][f] else 0.0
        print(f"{f:30} {medians['docker-registry'][f]:>16.3f} {medians['strata'][f]:>10.3f} {ratio:>9.2f}x")
    if json_out is not None:
        json_out.write_text(json.dumps({"options": asdict(opts), "rounds": [asdict(r) for r in rounds],
                                        "medians": medians, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
