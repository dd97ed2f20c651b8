"""``strata push`` against ``skopeo copy``, ``podman push`` and ``docker push``.

The large image of :mod:`bench.unpack` is put, once and untimed, into each tool's store
(strata: ``load``; podman: ``skopeo copy`` into its containers-storage; docker: ``docker
load`` of a docker-archive).  Each round starts a *fresh* docker-registry on 127.0.0.1 per
contender (so no blob is already there and nothing can be mounted), then times:

- **strata**: ``strata push ADDR/bench/large:1``;
- **skopeo**: ``skopeo copy oci:LAYOUT:REF docker://ADDR/bench/large:1`` (blobs as they are);
- **podman**: ``podman push`` (compresses layers from its store);
- **docker**: ``docker push`` (compresses layers from its graph driver).

Target (issue 3): strata's push at most 1.0x skopeo's.  Exits 0 whether or not it is met,
1 if a tool fails.  Run from the checkout, as root::

    .venv/bin/python -m bench.push [--runs 3] [--json out.json] [--skip docker]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.pull import REPOSITORY, TAG, Contender, _rm, _strata, report, short_runroot
from bench.unpack import default_cache_dir, large_image
from strata.testing import tools

TARGET_RATIO = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip", action="append", default=[], choices=["podman", "docker"])
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args(argv)

    cache = default_cache_dir()
    image = large_image(cache)
    print(f"image: {image.ref} {len(image.layers)} layers, {image.compressed / 1e6:.0f} MB"
          f" compressed")
    scratch_base = args.scratch or cache / "runs"
    scratch_base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="push-", dir=scratch_base))
    try:
        with ExitStack() as stack:
            strata_root = scratch / "strata-root"
            _strata("--root", strata_root, "load", "-q", "-i", image.layout)
            contenders: list[Contender] = []

            def strata_push(address: str) -> None:
                target = f"{address}/{REPOSITORY}:{TAG}"
                _strata("--root", strata_root, "tag", image.ref, target)
                started = time.perf_counter()
                _strata("--root", strata_root, "push", "-q", target)
                timings["strata"] = time.perf_counter() - started
                _strata("--root", strata_root, "rmi", target)

            def skopeo_push(address: str) -> None:
                started = time.perf_counter()
                tools.skopeo_copy(f"oci:{image.layout}:{image.ref}",
                                  f"docker://{address}/{REPOSITORY}:{TAG}",
                                  extra=["--dest-tls-verify=false"])
                timings["skopeo"] = time.perf_counter() - started

            runners = {"strata": strata_push, "skopeo": skopeo_push}
            if "podman" not in args.skip:
                runroot = short_runroot(scratch)
                stack.callback(shutil.rmtree, runroot, True)
                stack.callback(tools.unmount_under, scratch / "podman", runroot)
                store = tools.containers_store(scratch / "podman", runroot)
                tools.skopeo_copy(f"oci:{image.layout}:{image.ref}",
                                  store.transport(image.ref), store=store)

                def podman_push(address: str) -> None:
                    started = time.perf_counter()
                    tools.podman(["push", "-q", "--tls-verify=false", image.ref,
                                  f"docker://{address}/{REPOSITORY}:{TAG}"], store=store)
                    timings["podman"] = time.perf_counter() - started
                runners["podman"] = podman_push
            if "docker" not in args.skip:
                daemon = stack.enter_context(tools.Dockerd(scratch / "dockerd"))
                archive = scratch / "image.tar"
                tools.skopeo_copy(f"oci:{image.layout}:{image.ref}",
                                  f"docker-archive:{archive}:{image.ref}")
                daemon.docker("load", "-q", "-i", archive)
                archive.unlink()

                def docker_push(address: str) -> None:
                    target = f"{address}/{REPOSITORY}:{TAG}"
                    daemon.docker("tag", image.ref, target)
                    started = time.perf_counter()
                    daemon.docker("push", "-q", target)
                    timings["docker"] = time.perf_counter() - started
                    daemon.docker("rmi", target)
                runners["docker"] = docker_push

            timings: dict[str, float] = {}
            contenders = [Contender(name, lambda _: None) for name in runners]
            for round_ in range(args.runs):
                for c in contenders:
                    reg_dir = scratch / f"registry-{c.name}-{round_}"
                    with tools.DockerRegistry(reg_dir) as reg:
                        subprocess.run(["sync"], check=False)
                        time.sleep(1.0)
                        runners[c.name](reg.address)
                        c.samples.append(timings[c.name])
                    _rm(reg_dir)
                print(f"round {round_ + 1}: " + ", ".join(
                    f"{c.name} {c.samples[-1]:.2f}s" for c in contenders), flush=True)
            result = report(contenders, ["skopeo"], "strata", TARGET_RATIO, "push")
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
