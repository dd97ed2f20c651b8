"""The filesystem driver keeps its crash-safety promises on disk: blobs appear only complete
under their digest, uploads live under ``uploads/`` until committed or purged.  (The
driver suite itself runs in test_storage_suite.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strata.oci import Digest
from strata.registry.server.storage import StorageDriver, UploadOffsetError, open_driver
from strata.registry.server.storage.fs import FilesystemDriver


def test_driver_is_chosen_by_name_from_the_config(tmp_path: Path) -> None:
    driver = open_driver("filesystem", {"rootdirectory": str(tmp_path)})
    assert isinstance(driver, FilesystemDriver) and driver.root == tmp_path
    assert isinstance(driver, StorageDriver)


async def _failing_stream(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionResetError("client went away")


def test_an_interrupted_append_keeps_what_arrived_and_nothing_is_visible(tmp_path: Path) -> None:
    async def main() -> None:
        driver = FilesystemDriver(tmp_path)
        await driver.open()
        up = await driver.create_upload("r")
        with pytest.raises(ConnectionResetError):
            await driver.append_upload(up.id, 0, _failing_stream(b"x" * 1000))
        assert (await driver.upload_status(up.id)).size == 1000
        assert not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))

        async def rest() -> AsyncIterator[bytes]:
            yield b"y" * 24

        await driver.append_upload(up.id, 1000, rest())
        data = b"x" * 1000 + b"y" * 24
        await driver.commit_upload(up.id, Digest("sha256", hashlib.sha256(data).hexdigest()))
        [blob] = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
        assert blob.read_bytes() == data and blob.name == hashlib.sha256(data).hexdigest()
        assert os.listdir(tmp_path / "uploads") == []

    asyncio.run(main())


def test_an_append_while_another_process_appends_is_refused(tmp_path: Path) -> None:
    """Two workers (two driver instances) never interleave bytes of one upload."""

    async def main() -> None:
        a, b = FilesystemDriver(tmp_path), FilesystemDriver(tmp_path)
        await a.open()
        await b.open()
        up = await a.create_upload("r")
        gate = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield b"a" * 10
            await gate.wait()
            yield b"b" * 10

        first = asyncio.create_task(a.append_upload(up.id, 0, slow()))
        await asyncio.sleep(0.05)
        with pytest.raises(UploadOffsetError):
            await b.append_upload(up.id, 0, _one(b"x" * 5))
        gate.set()
        assert (await first).size == 20
        await b.append_upload(up.id, 20, _one(b"c"))
        data = b"a" * 10 + b"b" * 10 + b"c"
        assert (await b.commit_upload(up.id, Digest("sha256", hashlib.sha256(data).hexdigest()))).size == 21

    asyncio.run(main())


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
