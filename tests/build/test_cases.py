"""The Dockerfile case corpus: each case built by the reference tools (buildah, and docker's
BuildKit on a private dockerd) and by strata, compared tree for tree and config field for
config field; cases no tool here can build are checked against written expectations.

See :mod:`strata.testing.buildcases` for the case format. A case whose strata side cannot pass
yet carries ``xfail = "executor lacks X"`` in its ``case.toml``: it is a *strict* xfail, so
the suite fails as soon as that case starts passing and the marker must go. Reference results
are cached on disk (keyed by the case's files and the tool's version), so buildah and dockerd
only run for cases that changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.testing import buildcases, tools

CASES_DIR = Path(__file__).parent / "cases"
CASES = buildcases.load_cases(CASES_DIR)


class _LazyDockerd:
    """Starts the private dockerd the first time a reference result is not cached."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.daemon: tools.Dockerd | None = None

    def __call__(self) -> tools.Dockerd:
        if self.daemon is None:
            daemon = tools.Dockerd(self.workdir)
            daemon.start()
            self.daemon = daemon
        return self.daemon


@pytest.fixture(scope="module")
def lazy_dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_LazyDockerd]:
    lazy = _LazyDockerd(tmp_path_factory.mktemp("case-dockerd"))
    yield lazy
    if lazy.daemon is not None:
        lazy.daemon.stop()


def _param(case: buildcases.Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40, [c.name for c in CASES]


def test_corpus_cases_all_check_something() -> None:
    for case in CASES:
        assert case.references or case.expect or case.expect_failure, case.name
        assert case.dockerfile.is_file(), case.name


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(
    case: buildcases.Case, cache_dir: Path, tmp_path: Path, lazy_dockerd: _LazyDockerd
) -> None:
    references = {
        tool: buildcases.reference_build(case, tool, cache_dir, tmp_path / tool, dockerd=lazy_dockerd)
        for tool in case.references
    }
    strata = buildcases.strata_build(case, tmp_path / "root", tmp_path / "strata", cache_dir)
    problems = [f"strata left a mount behind: {m}" for m in strata.leaked_mounts]
    if case.expect or not references:
        problems += buildcases.check_expected(case, strata)
    for tool, reference in references.items():
        problems += buildcases.compare(case, tool, reference, strata)
    assert not problems, f"{buildcases.describe(case)}\n" + "\n".join(problems)
