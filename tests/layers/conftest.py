"""Fixtures for the strata.layers tests: a target root with a sentinel tree beside it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.testing.trees import Node, diff, snapshot


def _times(top: Path) -> dict[str, int]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, top)] = os.lstat(path).st_mtime_ns
    return found


@dataclass(frozen=True, slots=True)
class Jail:
    """``root`` is where layers go; ``outside`` is a sentinel tree next to it.

    :meth:`escapes` lists what changed outside ``root``: the sentinel tree (content, metadata
    and times) and the listing of the directory holding both.
    """

    base: Path
    root: Path
    outside: Path
    before: dict[str, Node]
    times: dict[str, int]
    listing: frozenset[str]

    def escapes(self) -> list[str]:
        problems = diff(self.before, snapshot(self.outside), labels=("before", "after"))
        if _times(self.outside) != self.times:
            problems.append("sentinel times changed")
        listing = frozenset(os.listdir(self.base))
        if listing != self.listing:
            problems.append(f"entries beside the root changed: {sorted(listing ^ self.listing)}")
        return problems


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[Jail]:
    """A target root and a sentinel; fails the test if anything outside the root changed."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch\n")
    (outside / "sub").mkdir()
    (outside / "sub" / "keep").write_bytes(b"keep\n")
    for path in (outside / "sub" / "keep", outside / "secret", outside / "sub", outside):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    jail = Jail(
        base=tmp_path,
        root=root,
        outside=outside,
        before=snapshot(outside),
        times=_times(outside),
        listing=frozenset(os.listdir(tmp_path)),
    )
    yield jail
    assert jail.escapes() == []
