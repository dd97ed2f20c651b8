"""Fixtures for the registry server tests: a fresh ``strata registry serve`` per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.testing.registry_server import StrataRegistry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[StrataRegistry]:
    """strata's registry on a free port with filesystem storage under ``tmp_path``."""
    with StrataRegistry(tmp_path / "registry") as reg:
        yield reg
