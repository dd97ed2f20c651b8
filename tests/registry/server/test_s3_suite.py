"""The registry server's API and real-client tests again, with the S3 driver.

Every test of ``test_api.py`` and ``test_clients.py`` is collected here a second time; the
``registry`` fixture below (which wins over the conftest's filesystem one inside this
module) serves from a bucket of a real S3-protocol server (moto on 127.0.0.1) instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api import *  # type: ignore[import-not-found]  # noqa: F403
from test_clients import *  # type: ignore[import-not-found]  # noqa: F403

from strata.testing.registry_server import StrataRegistry
from strata.testing.s3 import S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def registry(tmp_path: Path, s3: S3Server) -> Iterator[StrataRegistry]:
    """strata's registry on a free port, storing in its own prefix of the S3 bucket."""
    storage = {"s3": s3.registry_storage(rootdirectory=f"suite-{uuid.uuid4().hex[:8]}")}
    with StrataRegistry(tmp_path / "registry", config={"storage": storage}) as reg:
        yield reg
