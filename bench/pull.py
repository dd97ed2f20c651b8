"""``strata pull`` against ``skopeo copy`` + ``umoci unpack``, ``podman pull`` and ``docker pull``.

The image is the large multi-layer image of :mod:`bench.unpack` (built once, cached), pushed
by skopeo (digests kept) to Debian's ``docker-registry`` on 127.0.0.1.  Each round runs every
contender once, interleaved, each into a fresh store:

- **strata**: ``strata --root NEW pull REF`` — download, verify, record, and unpack every
  layer into (overlay) snapshots, as docker's pull extracts into its graph driver;
- **skopeo+umoci**: ``skopeo copy docker://REF oci:NEW:x`` then ``umoci unpack``;
- **podman**: ``podman pull`` into a fresh private containers-storage (overlay);
- **docker**: ``docker pull`` into a private dockerd 20.10 (overlay2); the image is removed,
  untimed, after each round (``--insecure-registry`` is implicit for 127.0.0.1).

The order of the contenders rotates from round to round, so that none always runs right
after the same neighbour (e.g. after docker's image removal).  Before every contender the
bench syncs and waits (up to 5 s) for the machine and the disk to
be quiet, as :mod:`bench.unpack` does: deleting a store of 54k files makes ext4 discard for
many seconds, which would slow down whoever comes next.  So stores are deleted after the last
round when the disk has room for all of them (docker's image is removed after each round,
untimed, or its next pull would find it).  Besides the wall time, each contender's CPU time
is reported: user+sys of the processes the bench started and their descendants (dockerd's
included for docker; the registry's excluded).  The bench makes itself a child subreaper so
that helpers which outlive their parent (strata's extraction workers' forkserver) are still
counted.

Medians of ``--runs`` rounds and ratios are printed.  Target (issue 3): strata's pull at most
0.5x the faster of podman and docker.  Exits 0 whether or not it is met, 1 if a tool fails.

Run from the checkout, as root::

    .venv/bin/python -m bench.pull [--runs 3] [--json out.json] [--skip docker]
        [--baseline-src DIR]   # A/B against another strata checkout's src/
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.unpack import Results, _settle, default_cache_dir, large_image
from strata.testing import tools

TARGET_RATIO = 0.5
REPOSITORY = "bench/large"
TAG = "1"


@dataclass(slots=True)
class Contender:
    """A named command sequence; ``prepare``/``cleanup`` run untimed around ``run``."""

    name: str
    run: Callable[[Path], None]
    cleanup: Callable[[Path], None] = field(default=lambda _: None)
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _strata(*args: str | Path, src: Path | None = None) -> None:
    env = {"PYTHONPATH": str(src)} if src is not None else None
    tools.run([sys.executable, "-m", "strata", *[str(a) for a in args]],
              env=env, unset=("STRATA_ROOT",), timeout=1800)


def _rm(path: Path) -> None:
    tools.unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def registry_with_image(scratch: Path, layout: Path, ref: str) -> Iterator[tuple[tools.DockerRegistry, str]]:
    """A docker-registry on 127.0.0.1 holding the bench image; yields it and the reference."""
    with tools.DockerRegistry(scratch / "registry") as reg:
        target = f"{reg.address}/{REPOSITORY}:{TAG}"
        tools.skopeo_copy(f"oci:{layout}:{ref}", f"docker://{target}",
                          extra=["--preserve-digests", "--dest-tls-verify=false"])
        yield reg, target


def short_runroot(work: Path) -> Path:
    """A run root for podman in /tmp (it refuses run roots longer than 50 characters)."""
    path = Path("/tmp") / f"sbr-{abs(hash(str(work))) % 10**8}"
    path.mkdir(exist_ok=True)
    return path


_EXCLUDED = frozenset({"docker-registry", "registry"})  # serves every contender alike


def _descendants_cpu() -> float:
    """CPU seconds (user+sys, their reaped children's included) of this process's live
    descendants, the registry's excepted; with RUSAGE_CHILDREN, what the contenders used."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
        fields = raw[raw.rindex(b")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        if comm not in _EXCLUDED:
            cpu[pid] = sum(int(v) for v in fields[11:15]) / tick
    me = os.getpid()
    total = 0.0
    for pid, value in cpu.items():
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor not in (me, 0, 1):
            ancestor = parents.get(ancestor)
        if ancestor == me:
            total += value
    return total


_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Orphaned descendants are reparented to this process (and counted by _tree_cpu)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_orphans() -> None:
    """Reap descendants that were reparented here and have exited (their CPU time then
    moves into RUSAGE_CHILDREN, where _tree_cpu finds it)."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


def _tree_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + _descendants_cpu()


def _median(samples: Sequence[float]) -> float | None:
    return statistics.median(samples) if samples else None


def report(contenders: Sequence[Contender], baseline_names: Sequence[str], subject: str,
           target: float, what: str) -> dict[str, object]:
    """Print medians and ratios; returns them for ``--json``."""
    medians = {c.name: _median(c.samples) for c in contenders}
    cpus = {c.name: _median(c.cpu) for c in contenders}
    print(f"\n{what}: median wall time of {len(contenders[0].samples)} interleaved runs"
          " (and median CPU time)")
    for c in contenders:
        runs = ", ".join(f"{s:.2f}" for s in c.samples)
        cpu_runs = ", ".join(f"{s:.1f}" for s in c.cpu)
        print(f"  {c.name:14s} {medians[c.name] or float('nan'):8.2f} s   ({runs})"
              f"   cpu {cpus[c.name] or float('nan'):6.1f} s ({cpu_runs})")
    ours = medians.get(subject)
    ratios: dict[str, float] = {}
    for c in contenders:
        m = medians[c.name]
        if c.name != subject and ours and m:
            ratios[c.name] = ours / m
            print(f"  {subject}/{c.name:12s} {ours / m:6.2f}x")
    base = [medians[n] for n in baseline_names if medians.get(n)]
    met: bool | None = None
    if ours and base:
        best = min(b for b in base if b is not None)
        ratio = ours / best
        met = ratio <= target
        print(f"  target: {subject} <= {target}x the faster of {', '.join(baseline_names)}:"
              f" {ratio:.2f}x -> {'met' if met else 'NOT met'}")
    return {"medians": medians, "cpu_medians": cpus, "ratios": ratios, "target": target,
            "met": met, "samples": {c.name: c.samples for c in contenders},
            "cpu_samples": {c.name: c.cpu for c in contenders}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["skopeo+umoci", "podman", "docker"])
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where stores go (default: a directory beside the cache)")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="A/B: also time the strata of another source tree (its src/"
                             " directory, e.g. from `git archive`), as 'strata-base'")
    args = parser.parse_args(argv)

    cache = default_cache_dir()
    image = large_image(cache)
    print(f"image: {image.ref} {len(image.layers)} layers, {image.compressed / 1e6:.0f} MB"
          f" compressed, {image.uncompressed / 1e6:.0f} MB uncompressed, {image.entries} entries")
    scratch_base = args.scratch or cache / "runs"
    scratch_base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="pull-", dir=scratch_base))
    try:
        with ExitStack() as stack:
            reg, ref = stack.enter_context(registry_with_image(scratch, image.layout, image.ref))
            contenders: list[Contender] = []

            contenders.append(Contender(
                "strata", lambda d: _strata("--root", d / "root", "pull", "-q", ref)))
            base_src = args.baseline_src
            if base_src is not None:
                contenders.append(Contender(
                    "strata-base",
                    lambda d: _strata("--root", d / "root", "pull", "-q", ref, src=base_src)))
            if "skopeo+umoci" not in args.skip:
                def skopeo_umoci(d: Path) -> None:
                    tools.skopeo_copy(f"docker://{ref}", f"oci:{d / 'layout'}:x",
                                      extra=["--src-tls-verify=false"])
                    tools.umoci_unpack(d / "layout", "x", d / "bundle")
                contenders.append(Contender("skopeo+umoci", skopeo_umoci))
            if "podman" not in args.skip:
                def podman_pull(d: Path) -> None:
                    store = tools.containers_store(d / "podman", short_runroot(d))
                    tools.podman(["pull", "-q", "--tls-verify=false", ref], store=store)

                def podman_clean(d: Path) -> None:
                    runroot = short_runroot(d)
                    tools.unmount_under(d / "podman", runroot)
                    shutil.rmtree(runroot, ignore_errors=True)
                contenders.append(Contender("podman", podman_pull, podman_clean))
            if "docker" not in args.skip:
                daemon = stack.enter_context(tools.Dockerd(scratch / "dockerd"))

                def docker_pull(d: Path) -> None:
                    daemon.docker("pull", "-q", ref)

                def docker_clean(d: Path) -> None:
                    daemon.docker("rmi", "-f", ref, check=False)
                    daemon.docker("image", "prune", "-f", check=False)
                contenders.append(Contender("docker", docker_pull, docker_clean))

            # A round leaves, per contender but docker, about the compressed blobs and the
            # unpacked layers.
            need = args.runs * len(contenders) * (image.compressed + image.uncompressed)
            defer = shutil.disk_usage(scratch).free > need + (4 << 30)
            print("stores deleted " + ("after the last round" if defer else
                                       "after each contender (not enough free space)"),
                  flush=True)
            quiet = Results()
            _become_subreaper()
            for round_ in range(args.runs):
                shift = round_ % len(contenders)
                for c in contenders[shift:] + contenders[:shift]:
                    work = scratch / f"{c.name}-{round_}"
                    work.mkdir()
                    _settle(False, quiet, scratch)
                    cpu0 = _tree_cpu()
                    started = time.perf_counter()
                    c.run(work)
                    c.samples.append(time.perf_counter() - started)
                    time.sleep(0.5)  # helpers of the contender finish exiting
                    c.cpu.append(_tree_cpu() - cpu0)
                    _reap_orphans()
                    c.cleanup(work)
                    if not defer:
                        _rm(work)
                print(f"round {round_ + 1}: " + ", ".join(
                    f"{c.name} {c.samples[-1]:.2f}s (cpu {c.cpu[-1]:.1f}s)" for c in contenders),
                    flush=True)
            if quiet.not_quiet:
                print(f"{quiet.not_quiet} contender run(s) started on a busy machine (after"
                      " waiting 5 s for a quiet one)")
            del reg
            baseline = [c.name for c in contenders if c.name in ("podman", "docker")]
            result = report(contenders, baseline, "strata", TARGET_RATIO, "pull")
    except tools.ToolError as exc:
        print(f"a tool failed: {exc}", file=sys.stderr)
        return 1
    finally:
        _rm(scratch)
    if args.json:
        args.json.write_text(json.dumps({"image": image.to_json(), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
