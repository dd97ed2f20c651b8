"""Every storage driver passes the same suite (strata.testing.registry_storage): the
filesystem driver on a temporary directory, the S3 driver on a real S3-protocol server
(moto over HTTP on 127.0.0.1), each check on a fresh root."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.registry.server.storage import open_driver
from strata.testing.registry_storage import CHECKS, Check, run_check
from strata.testing.s3 import S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_filesystem_driver(check: Check, tmp_path: Path) -> None:
    run_check(check, lambda: open_driver("filesystem", {"rootdirectory": str(tmp_path / "store")}))


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_s3_driver(check: Check, s3: S3Server) -> None:
    options = s3.registry_storage(rootdirectory=f"suite-{uuid.uuid4().hex[:12]}")
    run_check(check, lambda: open_driver("s3", options))
