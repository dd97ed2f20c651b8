"""``strata build`` against ``buildah bud --isolation chroot --layers`` (and ``docker build``
on a private dockerd with ``--docker``) on the same Dockerfiles and contexts.

Workloads (bases made locally: :mod:`strata.testing.baseimages`):

- **apt**: Debian + ``apt-get install tcc libc6-dev`` (the local mirror; host network),
  a C file compiled;
- **multistage**: three busybox stages, two independent ones generating files, a final
  stage copying from both;
- **files**: a context of 10 000 small files copied in and listed.

Scenarios per workload: **cold** (a fresh store with the base image loaded and unpacked
outside the timed region — strata's snapshots, buildah's containers-storage, docker's
graph; for docker the build cache pruned and the built images removed), **cached** (the
same build again), **changed** (one source file of the context rewritten, then built).
Contenders run interleaved (strata, buildah, docker, strata, ...) for ``--runs`` rounds;
medians and the ratio of strata to the faster peer are printed.  The targets: cold at most
1.0x the faster peer, cached at most 0.3x.  Exits 0 whether or not they are met, 1 when a
tool fails.

Run from the checkout, as root::

    .venv/bin/python -m bench.build [--runs 3] [--docker] [--only apt,files]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from strata.engine import Engine
from strata.testing import baseimages, tools

BUSYBOX = baseimages.BUSYBOX_REF
DEBIAN = "localhost/debian:bookworm"

WORKLOADS: dict[str, tuple[str, str]] = {
    "apt": (DEBIAN, """\
FROM localhost/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends tcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
COPY src/ /src/
RUN tcc -o /usr/local/bin/hello /src/main.c
CMD ["hello"]
"""),
    "multistage": (BUSYBOX, """\
FROM localhost/busybox:latest AS gen-a
RUN mkdir /out && for i in $(seq 1 300); do echo "a $i" > /out/a$i; done
FROM localhost/busybox:latest AS gen-b
COPY src/ /src/
RUN mkdir /out && for i in $(seq 1 300); do cat /src/main.c > /out/b$i; done
FROM localhost/busybox:latest
COPY --from=gen-a /out /a
COPY --from=gen-b /out /b
RUN ls /a /b | wc -l > /count
CMD ["cat", "/count"]
"""),
    "files": (BUSYBOX, """\
FROM localhost/busybox:latest
COPY src/ /app/
RUN find /app -type f | wc -l > /count
"""),
}

MAIN_C = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


def _context(root: Path, name: str) -> Path:
    ctx = root / f"ctx-{name}"
    shutil.rmtree(ctx, ignore_errors=True)
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(WORKLOADS[name][1])
    (ctx / "src" / "main.c").write_text(MAIN_C)
    if name == "files":
        for i in range(10_000):
            d = ctx / "src" / f"d{i // 500:02d}"
            d.mkdir(exist_ok=True)
            (d / f"f{i:05d}.txt").write_text(f"file {i}\n")
    return ctx


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise tools.ToolError("a contender failed", cmd=cmd, returncode=proc.returncode,
                              stderr=(proc.stderr + proc.stdout).decode(errors="replace")[-3000:])
    return elapsed


class Strata:
    def __init__(self, work: Path, layouts: dict[str, Path]) -> None:
        self.work = work
        self.layouts = layouts
        self.root = work / "strata-root"
        self.n = 0

    def fresh(self, base: str) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "strata", "--root", str(self.root), "load", "-i",
                        str(self.layouts[base])], check=True, capture_output=True)
        # unpacked into snapshots, as `docker load` and skopeo into containers-storage
        # leave the peers' bases (outside the timed region for every contender)
        Engine(self.root).unpack_snapshots(base)

    def build(self, ctx: Path) -> float:
        self.n += 1
        return _timed([sys.executable, "-m", "strata", "--root", str(self.root), "build",
                       "-q", "-t", f"bench:{self.n}", str(ctx)])

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Buildah:
    def __init__(self, work: Path, layouts: dict[str, Path]) -> None:
        self.work = work
        self.layouts = layouts
        self.n = 0
        self.runroot = Path(tempfile.mkdtemp(prefix="bench-buildah-"))
        self.store: tools.ContainersStore | None = None

    def fresh(self, base: str) -> None:
        self.close()
        self.runroot = Path(tempfile.mkdtemp(prefix="bench-buildah-"))
        self.store = tools.containers_store(self.work / "buildah", self.runroot)
        tools.run(["skopeo", "copy", f"oci:{self.layouts[base]}:{base}",
                   self.store.transport(base)], env=self.store.env())

    def build(self, ctx: Path) -> float:
        assert self.store is not None
        self.n += 1
        cmd = ["buildah", *self.store.flags(), "bud", "--isolation", "chroot", "--layers",
               "--pull=never", "-q", "-t", f"bench:{self.n}", str(ctx)]
        return _timed(cmd, env={**os.environ, **self.store.env()})

    def close(self) -> None:
        if self.store is not None:
            tools.unmount_under(self.store.root, self.store.runroot)
            shutil.rmtree(self.store.root, ignore_errors=True)
            self.store = None
        shutil.rmtree(self.runroot, ignore_errors=True)


class Docker:
    def __init__(self, work: Path, layouts: dict[str, Path]) -> None:
        self.daemon = tools.Dockerd(work / "dockerd")
        self.daemon.start()
        self.cli = [tools.docker_cli(), "-H", self.daemon.host]
        for ref, layout in layouts.items():
            archive = work / "base.tar"
            tools.run(["skopeo", "copy", f"oci:{layout}:{ref}", f"docker-archive:{archive}:{ref}"])
            self.daemon.docker("load", "-i", str(archive))
            archive.unlink()
        self.n = 0

    def fresh(self, base: str) -> None:
        del base
        subprocess.run([*self.cli, "builder", "prune", "-af"], capture_output=True, check=True)
        images = subprocess.run([*self.cli, "images", "-q", "bench"], capture_output=True,
                                text=True, check=True).stdout.split()
        if images:
            subprocess.run([*self.cli, "rmi", "-f", *set(images)], capture_output=True,
                           check=False)

    def build(self, ctx: Path) -> float:
        self.n += 1
        return _timed([*self.cli, "build", "-q", "--network", "host", "-t", f"bench:{self.n}",
                       str(ctx)], env={**os.environ, "DOCKER_BUILDKIT": "1"})

    def close(self) -> None:
        self.daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docker", action="store_true", help="include docker build")
    parser.add_argument("--only", default="", help="comma-separated workloads")
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    chosen = [w for w in WORKLOADS if not args.only or w in args.only.split(",")]
    work = Path(tempfile.mkdtemp(prefix="strata-bench-build-", dir="/var/tmp"))
    layouts = {BUSYBOX: baseimages.busybox_oci(), DEBIAN: baseimages.debian_oci()}
    contenders: dict[str, Strata | Buildah | Docker] = {
        "strata": Strata(work, layouts), "buildah": Buildah(work, layouts)}
    if args.docker:
        contenders["docker"] = Docker(work, layouts)
    times: dict[str, dict[str, dict[str, list[float]]]] = {}
    failed = False
    try:
        for workload in chosen:
            base = WORKLOADS[workload][0]
            results = times.setdefault(workload, {})
            for _ in range(args.runs):
                for name, tool in contenders.items():
                    ctx = _context(work / "contexts" / name, workload)
                    try:
                        tool.fresh(base)
                        for key in ("cold", "cached"):
                            results.setdefault(key, {}).setdefault(name, []).append(
                                tool.build(ctx))
                        (ctx / "src" / "main.c").write_text(MAIN_C.replace("hello", "changed"))
                        results.setdefault("changed", {}).setdefault(name, []).append(
                            tool.build(ctx))
                    except tools.ToolError as exc:
                        print(f"{name} failed on {workload}: {exc}", file=sys.stderr)
                        failed = True
                    finally:
                        shutil.rmtree(ctx, ignore_errors=True)
            print(f"\n== {workload} (median of {args.runs}, seconds)", flush=True)
            for scenario, per_tool in results.items():
                medians: dict[str, float] = {n: statistics.median(v) for n, v in per_tool.items()}
                peers = [m for n, m in medians.items() if n != "strata"]
                fastest = min(peers) if peers else 0.0
                ratio = medians.get("strata", 0.0) / fastest if fastest else 0.0
                target = {"cold": 1.0, "cached": 0.3}.get(scenario)
                verdict = "" if target is None else (
                    f" (target <= {target:.1f}x: {'met' if ratio <= target else 'NOT met'})")
                cells = "  ".join(f"{n} {m:7.2f}" for n, m in medians.items())
                print(f"  {scenario:8s} {cells}   strata/faster peer {ratio:5.2f}x{verdict}",
                      flush=True)
    finally:
        for tool in contenders.values():
            tool.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(
            {w: {s: {n: statistics.median(v) for n, v in t.items()} for s, t in r.items()}
             for w, r in times.items()}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
