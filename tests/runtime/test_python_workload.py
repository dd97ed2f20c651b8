"""A Debian image with Python running a script, with both runtimes.

The image is built here from ``strata/testing/dockerfiles/python`` (Debian's python3-minimal
and ``job.py``) by buildah and loaded into strata. The job reads its environment and
arguments, computes, writes a file in the container and prints what it found; its exit code
is the container's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.testing import tools
from strata.testing.workloads import PYTHON_REF, python_image

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Path]:
    tools.require("runc")
    image = python_image(cache_dir)
    root = tmp_path_factory.mktemp("python") / "root"
    tools.StrataCLI(root)("load", "-i", image.oci_layout)
    yield root
    tools.assert_no_mounts_under(root)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_image_command_runs_the_script(root: Path, runtime: str) -> None:
    strata = tools.StrataCLI(root)
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none",
                 "--hostname", "job-host", PYTHON_REF)
    lines = out.stdout.splitlines()
    assert lines[0] == "hello strata"
    assert lines[1] == "primes below 2000: 303"
    assert lines[2] == f"sha256: {hashlib.sha256(b'strata').hexdigest()}"
    assert lines[3] == "pid 1 cwd /app host job-host"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_arguments_environment_and_exit_code_reach_the_script(root: Path, runtime: str) -> None:
    strata = tools.StrataCLI(root)
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", "-e", "GREETING=hi",
                 "-e", "EXIT_CODE=3", PYTHON_REF, "python3", "/app/job.py", "two", "words",
                 check=False)
    assert out.returncode == 3, out.stderr
    assert out.stdout.splitlines()[0] == "hi two words"
    assert f"sha256: {hashlib.sha256(b'two words').hexdigest()}" in out.stdout


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_detached_job_logs_and_leaves_its_file_in_the_writable_layer(root: Path,
                                                                     runtime: str) -> None:
    strata = tools.StrataCLI(root)
    cid = strata("run", "-d", "--runtime", runtime, "--network", "none", PYTHON_REF).stdout.strip()
    try:
        assert strata("wait", cid).stdout.strip() == "0"
        logs = strata("logs", cid).stdout
        assert "hello strata" in logs and "primes below 2000: 303" in logs
        assert "A /tmp/result.txt" in strata("diff", cid).stdout.splitlines()
    finally:
        strata("rm", "-f", cid)
