"""Latency of ``strata run --rm IMAGE true`` and of ``run -d`` + ``exec``, against runc, crun,
podman and docker on one image.

Contenders, all on the busybox image made locally (:func:`strata.testing.baseimages.busybox_oci`)
and all without networking (``--network none``: docker and podman here run without a bridge):

- **strata**: ``strata --root R run --rm --network none localhost/busybox true`` (the
  console script, built-in runtime);
- **strata-runc**: the same with ``--runtime runc``;
- **strata-engine**: ``Engine(root).run(...)`` inside the bench process: strata's own work
  without the interpreter's start-up and the CLI's imports (a new Engine every time);
- **runc** (and **crun** when installed): ``runc run`` of one prepared bundle (strata's own
  ``config.json`` and rootfs, mounted once, outside the timed region) — the floor any engine
  adds its work to;
- **podman** (``--podman``): ``podman run --rm --runtime runc --network none`` with the
  ulimits this machine needs, on a private store;
- **docker** (``--docker``): ``docker run --rm --network none`` against a private dockerd;
- **python**: ``python -c pass`` with the same interpreter — the start-up no Python CLI avoids.

With ``--exec`` the detached path is measured too, for strata (both runtimes) and the peers
given: ``run -d IMAGE sleep 600`` (until the command returns the ID) and then ``exec ID true``
into that running container; the container is removed (``rm -f``) outside the timed region.

Contenders run interleaved (A B C ... A B C), ``--runs`` rounds after one warm-up round;
medians, minima and the ratios to strata are printed.  The issue's targets: strata at most
0.5x docker's and podman's latency, and within 3x raw crun (runc when crun is missing).

strata runs with its bytecode cached, as an installed package (or any checkout run without
``PYTHONDONTWRITEBYTECODE``) has it: the strata processes get a private
``PYTHONPYCACHEPREFIX`` that the warm-up round fills.  ``--cold`` measures them compiling
every module on every run instead (``PYTHONDONTWRITEBYTECODE=1`` and no cache).

Exits 0 whether or not the targets are met, 1 when a contender fails (the others still run).

Run from the checkout, as root::

    .venv/bin/python -m bench.run [--runs 20] [--podman] [--docker] [--exec] [--cold]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
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
_PODMAN_LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


#: A contender's measure: wall time, and CPU time (user + system) of the processes it
#: waited for (the daemons docker and podman talk to are not counted).
Sample = tuple[float, float]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[Sample, str]:
    """Run ``cmd``; its sample and stdout.  Raises ToolError when it fails."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise tools.ToolError("a contender failed", cmd=cmd, returncode=proc.returncode,
                              stderr=proc.stderr.decode(errors="replace"))
    return (elapsed, _children_cpu() - cpu), proc.stdout.decode(errors="replace").strip()


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> Sample:
    return _run(cmd, env)[0]


def _strata_command() -> list[str]:
    """The console script next to this interpreter (how users run strata), else ``-m``."""
    script = Path(sys.executable).with_name("strata")
    return [str(script)] if script.exists() else [sys.executable, "-m", "strata"]


def _strata_env(work: Path, cold: bool) -> dict[str, str]:
    env = dict(os.environ)
    if cold:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


class _Detached:
    """``run -d`` then ``exec`` for one engine: two contenders sharing the container."""

    def __init__(self, cli: list[str], run_flags: list[str], env: dict[str, str] | None = None
                 ) -> None:
        self.cli = cli
        self.run_flags = run_flags
        self.env = env
        self.container = ""

    def run_d(self) -> Sample:
        self.remove()
        sample, out = _run([*self.cli, "run", "-d", *self.run_flags, REF, "sleep", "600"],
                            self.env)
        self.container = out.splitlines()[-1].strip()
        return sample

    def exec(self) -> Sample:
        if not self.container:
            self.run_d()
        return _timed([*self.cli, "exec", self.container, "true"], self.env)

    def remove(self) -> None:
        if self.container:
            subprocess.run([*self.cli, "rm", "-f", self.container], capture_output=True,
                           env=self.env, check=False)
            self.container = ""


@contextlib.contextmanager
def _contenders(work: Path, layout: Path, args: argparse.Namespace
                ) -> Iterator[dict[str, Callable[[], Sample]]]:
    root = work / "strata"
    env = _strata_env(work, args.cold)
    strata = [*_strata_command(), "--root", str(root)]
    subprocess.run([*strata, "load", "-i", str(layout)], check=True, capture_output=True,
                   env=env)
    none = ["--network", "none"]
    out: dict[str, Callable[[], Sample]] = {
        "strata": lambda: _timed([*strata, "run", "--rm", *none, REF, "true"], env),
        "strata-runc": lambda: _timed([*strata, "run", "--rm", *none, "--runtime", "runc", REF,
                                       "true"], env),
    }

    def in_process() -> Sample:
        cpu = time.process_time() + _children_cpu()
        start = time.perf_counter()
        code = Engine(root).run(REF, RunOptions(command=("true",), remove=True, network="none"))
        if code != 0:
            raise tools.ToolError("Engine.run failed", cmd=["Engine.run"], returncode=code)
        return time.perf_counter() - start, time.process_time() + _children_cpu() - cpu

    out["strata-engine"] = in_process
    engine = Engine(root)
    record = engine.container_create(REF, RunOptions(command=("true",), runtime="runc",
                                                     network="none"))
    bundle = root / "containers" / record.id / "bundle"
    counter = iter(range(1_000_000))

    def raw_runtime(name: str) -> Callable[[], Sample]:
        state = [name, "--root", str(work / f"{name}-state")]
        return lambda: _timed([*state, "run", "--bundle", str(bundle), f"b{next(counter)}"])

    detached: list[_Detached] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(engine.containers.mounted(record.id))
        for raw in ("crun", "runc"):
            if shutil.which(raw) is None:
                continue
            try:
                raw_runtime(raw)()
            except tools.ToolError as exc:
                if raw == "runc":
                    raise
                # crun refuses this machine's hybrid cgroup layout: said, not counted as failure.
                print(f"{raw} cannot run the bundle here, left out: {exc.stderr.strip()}",
                      file=sys.stderr)
                continue
            out[raw] = raw_runtime(raw)

        if args.exec:
            for name, flags in (("strata", none), ("strata-runc", [*none, "--runtime", "runc"])):
                d = _Detached(strata, flags, env)
                detached.append(d)
                out[f"{name} run -d"] = d.run_d
                out[f"{name} exec"] = d.exec
        if args.podman:
            runroot = Path(tempfile.mkdtemp(prefix="strata-bench-podman-"))
            store = tools.containers_store(work / "podman", runroot)
            stack.callback(shutil.rmtree, runroot, ignore_errors=True)
            stack.callback(tools.unmount_under, store.root, store.runroot)
            tools.run(["skopeo", "copy", f"oci:{layout}:{REF}", store.transport(REF)],
                      env=store.env())
            tmpdir = store.runroot / "libpod-tmp"
            pod = [tools.require("podman"), *store.flags(), "--tmpdir", str(tmpdir),
                   "--events-backend", "none", "--cgroup-manager", "cgroupfs"]
            penv = {**os.environ, **store.env()}
            flags = ["--pull", "never", "--runtime", "runc", *none, *_PODMAN_LIMITS]
            out["podman"] = lambda: _timed([*pod, "run", "--rm", *flags, REF, "true"], penv)
            if args.exec:
                d = _Detached(pod, flags, penv)
                detached.append(d)
                out["podman run -d"] = d.run_d
                out["podman exec"] = d.exec
        if args.docker:
            daemon = stack.enter_context(tools.Dockerd(work / "dockerd"))
            archive = work / "busybox.tar"
            tools.run(["skopeo", "copy", f"oci:{layout}:{REF}",
                       f"docker-archive:{archive}:{REF}"])
            daemon.docker("load", "-i", str(archive))
            cli = [tools.docker_cli(), "-H", daemon.host]
            out["docker"] = lambda: _timed([*cli, "run", "--rm", *none, REF, "true"])
            if args.exec:
                d = _Detached(cli, none)
                detached.append(d)
                out["docker run -d"] = d.run_d
                out["docker exec"] = d.exec

        def remove_detached() -> None:
            for d in detached:
                d.remove()

        # Registered last, run first: the containers go while their engines still run.
        stack.callback(remove_detached)
        python = [sys.executable, "-c", "pass"]
        out["python"] = lambda: _timed(python, env)
        try:
            yield out
        finally:
            stack.close()
            engine.container_remove([record.id], force=True)


def _report(samples: dict[str, list[Sample]], runs: int) -> None:
    medians = {name: statistics.median(w for w, _ in values)
               for name, values in samples.items() if values}
    print(f"{runs} interleaved runs, ms: wall median (min) | cpu median of the processes waited"
          " for | ratio")
    for name, value in medians.items():
        base = medians.get(f"strata {name.split(' ', 1)[1]}") if " " in name else \
            medians.get("strata")
        versus = f"   strata/{name} = {base / value:5.2f}" if base else ""
        fastest = min(w for w, _ in samples[name])
        cpu = statistics.median(c for _, c in samples[name])
        print(f"  {name:20s} {value * 1000:8.1f} ({fastest * 1000:7.1f}) | {cpu * 1000:7.1f}"
              f"{versus}")
    floor = "crun" if "crun" in medians else "runc"
    checks = [("strata", "docker", 0.5), ("strata", "podman", 0.5), ("strata", floor, 3.0)]
    for verb in ("run -d", "exec"):
        for peer in ("docker", "podman"):
            checks.append((f"strata {verb}", f"{peer} {verb}", 0.5))
    for ours, peer, limit in checks:
        if ours in medians and peer in medians:
            ratio = medians[ours] / medians[peer]
            verdict = "met" if ratio <= limit else "NOT met"
            print(f"  target {ours} <= {limit}x {peer}: {ratio:.2f}x ({verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--podman", action="store_true", help="include podman")
    parser.add_argument("--docker", action="store_true", help="include docker (dockerd)")
    parser.add_argument("--exec", action="store_true", help="also run -d + exec")
    parser.add_argument("--cold", action="store_true",
                        help="strata without cached bytecode (compiles every module each run)")
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args()
    layout = baseimages.busybox_oci()
    samples: dict[str, list[Sample]] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="strata-bench-run-") as tmp, \
            _contenders(Path(tmp), layout, args) as contenders:
        for round_ in range(args.runs + 1):  # round 0: warm-up (fills the bytecode cache)
            for name, fn in contenders.items():
                if name in failed:
                    continue
                try:
                    sample = fn()
                except tools.ToolError as exc:
                    failed[name] = str(exc)
                    print(f"{name} failed: {exc}", file=sys.stderr)
                    continue
                if round_:
                    samples.setdefault(name, []).append(sample)
    print(f"strata bytecode: {'not cached (--cold)' if args.cold else 'cached'}")
    _report(samples, args.runs)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
