"""Fixtures for the strata.layers tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.testing.tars import Jail, make_jail


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[Jail]:
    """A target root and a sentinel beside it; fails the test if anything outside changed."""
    made = make_jail(tmp_path)
    yield made
    assert made.escapes() == []
