"""Latency of ``strata run --rm IMAGE true`` against runc, podman and docker on one image.

Contenders, all on the busybox image made locally (:func:`strata.testing.baseimages.busybox_oci`):

- **strata**: ``strata --root R run --rm localhost/busybox true`` (built-in runtime);
- **strata-runc**: the same with ``--runtime runc``;
- **strata-engine**: ``Engine(root).run(...)`` inside the bench process: strata's own work
  without the interpreter's start-up and the CLI's imports (a new Engine every time);
- **runc**: ``runc run`` of one prepared bundle (strata's own ``config.json`` and rootfs,
  mounted once, outside the timed region) — the floor any engine adds its work to;
- **podman** (``--podman``): ``podman run --rm --runtime runc --network none`` with the
  ulimits this machine needs, on a private store;
- **docker** (``--docker``): ``docker run --rm --network none`` against a private dockerd.

Contenders run interleaved (A B C ... A B C), ``--runs`` rounds after one warm-up round;
the medians and the ratios to strata are printed.  The issue's targets: strata at most
0.5x docker's and podman's latency, and within 3x raw runc (crun there; crun is not
installed here).  Exits 0 whether or not they are met, 1 when a tool fails.

Run from the checkout, as root::

    .venv/bin/python -m bench.run [--runs 20] [--podman] [--docker]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from strata.engine import Engine
from strata.runtime import RunOptions
from strata.testing import baseimages, tools

REF = baseimages.BUSYBOX_REF


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise tools.ToolError("a contender failed", cmd=cmd, returncode=proc.returncode,
                              stderr=proc.stderr.decode(errors="replace"))
    return elapsed


@contextlib.contextmanager
def _contenders(work: Path, layout: Path, podman: bool, docker: bool
                ) -> Iterator[dict[str, Callable[[], float]]]:
    root = work / "strata"
    strata = [sys.executable, "-m", "strata", "--root", str(root)]
    subprocess.run([*strata, "load", "-i", str(layout)], check=True, capture_output=True)
    out: dict[str, Callable[[], float]] = {
        "strata": lambda: _timed([*strata, "run", "--rm", REF, "true"]),
        "strata-runc": lambda: _timed([*strata, "run", "--rm", "--runtime", "runc", REF,
                                       "true"]),
    }

    def in_process() -> float:
        start = time.perf_counter()
        code = Engine(root).run(REF, RunOptions(command=("true",), remove=True))
        if code != 0:
            raise tools.ToolError("Engine.run failed", cmd=["Engine.run"], returncode=code)
        return time.perf_counter() - start

    out["strata-engine"] = in_process
    engine = Engine(root)
    record = engine.container_create(REF, RunOptions(command=("true",), runtime="runc"))
    runc = [tools.require("runc"), "--root", str(work / "runc-state")]
    bundle = root / "containers" / record.id / "bundle"
    counter = iter(range(1_000_000))
    out["runc"] = lambda: _timed([*runc, "run", "--bundle", str(bundle), f"b{next(counter)}"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(engine.containers.mounted(record.id))
        if podman:
            runroot = Path(tempfile.mkdtemp(prefix="strata-bench-podman-"))
            store = tools.containers_store(work / "podman", runroot)
            stack.callback(shutil.rmtree, runroot, ignore_errors=True)
            stack.callback(tools.unmount_under, store.root, store.runroot)
            tools.run(["skopeo", "copy", f"oci:{layout}:{REF}", store.transport(REF)],
                      env=store.env())
            tmpdir = store.runroot / "libpod-tmp"
            pod = [tools.require("podman"), *store.flags(), "--tmpdir", str(tmpdir),
                   "--events-backend", "none", "--cgroup-manager", "cgroupfs"]
            env = {**os.environ, **store.env()}
            out["podman"] = lambda: _timed(
                [*pod, "run", "--rm", "--pull", "never", "--runtime", "runc", "--network", "none",
                 "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", REF,
                 "true"], env)
        if docker:
            daemon = stack.enter_context(tools.Dockerd(work / "dockerd"))
            archive = work / "busybox.tar"
            tools.run(["skopeo", "copy", f"oci:{layout}:{REF}",
                       f"docker-archive:{archive}:{REF}"])
            daemon.docker("load", "-i", str(archive))
            cli = [tools.docker_cli(), "-H", daemon.host]
            out["docker"] = lambda: _timed([*cli, "run", "--rm", "--network", "none", REF,
                                            "true"])
        try:
            yield out
        finally:
            stack.close()
            engine.container_remove([record.id], force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--podman", action="store_true", help="include podman")
    parser.add_argument("--docker", action="store_true", help="include docker (dockerd)")
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args()
    layout = baseimages.busybox_oci()
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="strata-bench-run-") as tmp, \
            _contenders(Path(tmp), layout, args.podman, args.docker) as contenders:
        try:
            for fn in contenders.values():  # warm-up
                fn()
            for _ in range(args.runs):
                for name, fn in contenders.items():
                    samples.setdefault(name, []).append(fn())
        except tools.ToolError as exc:
            print(f"a tool failed: {exc}", file=sys.stderr)
            return 1
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians["strata"]
    print(f"run --rm IMAGE true, median of {args.runs} interleaved runs:")
    for name, value in medians.items():
        print(f"  {name:12s} {value * 1000:8.1f} ms   strata/{name} = {base / value:5.2f}")
    for peer, limit in (("docker", 0.5), ("podman", 0.5), ("runc", 3.0)):
        if peer in medians:
            ratio = base / medians[peer]
            verdict = "met" if ratio <= limit else "NOT met"
            print(f"  target strata <= {limit}x {peer}: {ratio:.2f}x ({verdict})")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
