"""Crash safety: ``strata load`` killed with SIGKILL at random moments leaves the store
consistent (``system fsck`` clean), and running it again completes the load."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from strata.testing import images as testimages
from strata.testing.tools import StrataCLI

TRIALS = 20


def _layer(seed: int, files: int, size: int) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            data = rng.randbytes(size)
            info = tarfile.TarInfo(f"layer{seed}/dir{i % 10}/file{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def large_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-layer image (about 120 MB, incompressible) as an OCI layout and a docker-archive."""
    base = tmp_path_factory.mktemp("crash-image")
    image = testimages.build_image([_layer(i, 200, 100_000) for i in range(6)],
                                   name="localhost/crash:latest")
    return {
        "oci-dir": testimages.write_layout(base / "layout", [image]),
        "docker-archive": testimages.write_docker_archive(base / "image.tar", [image]),
    }


def _load_cmd(root: Path, source: Path) -> list[str]:
    return [sys.executable, "-m", "strata", "--root", str(root), "load", "-q", "-i", str(source)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["oci-dir", "docker-archive"])
def test_sigkill_during_load_leaves_store_consistent(
    kind: str, large_image: dict[str, Path], tmp_path: Path
) -> None:
    """Half the trials per source kind: each kills a load in a fresh store at a random
    moment, checks ``fsck``, then reruns the load in that store and checks it completed."""
    source = large_image[kind]
    env = {k: v for k, v in os.environ.items() if k != "STRATA_ROOT"}
    # How long an uninterrupted load takes here, to spread the kills over it.
    durations = []
    for probe in range(2):
        started = time.monotonic()
        subprocess.run(_load_cmd(tmp_path / f"probe{probe}", source), check=True, env=env,
                       stdout=subprocess.DEVNULL)
        durations.append(time.monotonic() - started)
    full = min(durations)
    rng = random.Random(1234)
    killed = 0
    expected_id = _image_id(large_image)
    for trial in range(TRIALS // 2):
        root = tmp_path / f"trial{trial}"
        cli = StrataCLI(root)
        proc = subprocess.Popen(_load_cmd(root, source), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.02, full * 0.9))
        if proc.poll() is None:
            proc.kill()
            killed += 1
        proc.wait()
        fsck = cli("system", "fsck", check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert "0 problems" in fsck.stdout
        done = cli("load", "-i", source)
        assert "Loaded image: localhost/crash:latest" in done.stdout
        assert "0 problems" in cli("system", "fsck").stdout
        assert cli("images", "-q").stdout.strip() == expected_id
    assert killed >= TRIALS // 4, f"only {killed} loads were interrupted; the image is too small"


def _image_id(large_image: dict[str, Path]) -> str:
    import json

    index = json.loads((large_image["oci-dir"] / "index.json").read_text())
    manifest_hex = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((large_image["oci-dir"] / "blobs" / "sha256" / manifest_hex).read_text())
    return str(manifest["config"]["digest"]).split(":", 1)[1][:12]
