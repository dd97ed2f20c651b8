"""A conformance suite for registry storage drivers (:class:`StorageDriver`).

Every driver runs it (containerd's snapshotter ``testsuite`` idea): ``check_driver(make)``
where ``make()`` returns a new, *unopened* driver on the same fresh backing store each time
it is called (two drivers from one ``make`` stand for two server processes).  Each check is
a plain async function raising ``AssertionError``; :data:`CHECKS` lists them by name so a
test can parametrize over them::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_fs_driver(check, tmp_path):
        run_check(check, lambda: FilesystemDriver(tmp_path))
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any

from strata.errors import DigestMismatch, NotFound
from strata.oci import Digest
from strata.registry.server.storage.base import StorageDriver, UploadOffsetError

__all__ = ["CHECKS", "Check", "DriverFactory", "check_driver", "run_check"]

DriverFactory = Callable[[], StorageDriver]
Check = Callable[[DriverFactory], Coroutine[Any, Any, None]]


def _d(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read(driver: StorageDriver, digest: Digest, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in driver.read_blob(digest, start, end)])


async def _opened(make: DriverFactory) -> StorageDriver:
    driver = make()
    await driver.open()
    return driver


async def _raises_not_found(call: Callable[[], Awaitable[object]]) -> None:
    try:
        await call()
    except NotFound:
        return
    raise AssertionError("expected NotFound")


async def blobs_are_content_addressed_and_idempotent(make: DriverFactory) -> None:
    d = await _opened(make)
    try:
        data = b"hello registry" * 1000
        stat = await d.put_blob(data)
        assert stat.digest == _d(data) and stat.size == len(data)
        assert await d.put_blob(data) == stat
        assert (await d.stat_blob(stat.digest)).size == len(data)
        assert await _read(d, stat.digest) == data
        assert await _read(d, stat.digest, 5, 20) == data[5:20]
        assert await _read(d, stat.digest, len(data) - 3) == data[-3:]
        assert stat in [b async for b in d.walk_blobs()]
        await d.delete_blob(stat.digest)
        await _raises_not_found(lambda: d.stat_blob(stat.digest))
        await _raises_not_found(lambda: _read(d, stat.digest))
        await _raises_not_found(lambda: d.delete_blob(stat.digest))
    finally:
        await d.close()


async def chunked_upload_commits_verified(make: DriverFactory) -> None:
    d = await _opened(make)
    try:
        parts = [bytes([i]) * (100_000 + i) for i in range(5)]
        whole = b"".join(parts)
        up = await d.create_upload("repo/a")
        assert up.size == 0 and up.repository == "repo/a"
        offset = 0
        for part in parts:
            status = await d.append_upload(up.id, offset, _chunks(part[:10], part[10:]))
            offset += len(part)
            assert status.size == offset
            assert (await d.upload_status(up.id)).size == offset
        assert up.id in [u.id async for u in d.list_uploads()]
        stat = await d.commit_upload(up.id, _d(whole))
        assert stat.size == len(whole)
        assert await _read(d, _d(whole)) == whole
        await _raises_not_found(lambda: d.upload_status(up.id))
        assert up.id not in [u.id async for u in d.list_uploads()]
    finally:
        await d.close()


async def appends_out_of_order_are_refused_and_change_nothing(make: DriverFactory) -> None:
    d = await _opened(make)
    try:
        up = await d.create_upload("r")
        await d.append_upload(up.id, 0, _chunks(b"0123456789"))
        for bad in (0, 5, 11, 1000):
            try:
                await d.append_upload(up.id, bad, _chunks(b"xx"))
            except UploadOffsetError as exc:
                assert exc.expected == 10 and exc.actual == bad
            else:
                raise AssertionError(f"append at {bad} accepted")
        assert (await d.upload_status(up.id)).size == 10
        await d.commit_upload(up.id, _d(b"0123456789"))
        assert await _read(d, _d(b"0123456789")) == b"0123456789"
    finally:
        await d.close()


async def wrong_digest_makes_nothing_visible(make: DriverFactory) -> None:
    d = await _opened(make)
    try:
        up = await d.create_upload("r")
        await d.append_upload(up.id, 0, _chunks(b"actual"))
        try:
            await d.commit_upload(up.id, _d(b"claimed"))
        except DigestMismatch as exc:
            assert exc.expected == str(_d(b"claimed")) and exc.actual == str(_d(b"actual"))
        else:
            raise AssertionError("commit with a wrong digest accepted")
        await _raises_not_found(lambda: d.stat_blob(_d(b"claimed")))
        await _raises_not_found(lambda: d.stat_blob(_d(b"actual")))
        assert (await d.upload_status(up.id)).size == 6
        await d.cancel_upload(up.id)
        await _raises_not_found(lambda: d.upload_status(up.id))
        await _raises_not_found(lambda: d.cancel_upload(up.id))
    finally:
        await d.close()


async def another_process_continues_an_upload(make: DriverFactory) -> None:
    a, b = await _opened(make), await _opened(make)
    try:
        up = await a.create_upload("r")
        await a.append_upload(up.id, 0, _chunks(b"first half, "))
        await b.append_upload(up.id, 12, _chunks(b"second half"))
        await a.append_upload(up.id, 23, _chunks(b"!"))
        whole = b"first half, second half!"
        assert (await b.commit_upload(up.id, _d(whole))).size == len(whole)
        assert await _read(a, _d(whole)) == whole
    finally:
        await a.close()
        await b.close()


async def concurrent_commits_of_one_digest_both_succeed(make: DriverFactory) -> None:
    d = await _opened(make)
    try:
        data = b"same content" * 50_000
        uploads = [await d.create_upload(f"r{i}") for i in range(6)]
        for up in uploads:
            await d.append_upload(up.id, 0, _chunks(data))
        stats = await asyncio.gather(*(d.commit_upload(up.id, _d(data)) for up in uploads))
        assert {s.size for s in stats} == {len(data)}
        assert await _read(d, _d(data)) == data
    finally:
        await d.close()


async def repository_metadata(make: DriverFactory) -> None:
    d = await _opened(make)
    try:
        blob = await d.put_blob(b"layer")
        manifest = await d.put_blob(b'{"schemaVersion":2}')
        assert not await d.has_blob_link("ns/app", blob.digest)
        await d.link_blob("ns/app", blob.digest)
        await d.link_blob("ns/app", blob.digest)
        assert await d.has_blob_link("ns/app", blob.digest)
        assert not await d.has_blob_link("ns/other", blob.digest)
        assert [x async for x in d.list_blob_links("ns/app")] == [blob.digest]
        await d.put_manifest("ns/app", manifest.digest, "application/vnd.oci.image.manifest.v1+json")
        assert await d.get_manifest("ns/app", manifest.digest) == "application/vnd.oci.image.manifest.v1+json"
        await _raises_not_found(lambda: d.get_manifest("ns/other", manifest.digest))
        assert [x async for x in d.list_manifests("ns/app")] == [manifest.digest]
        for tag in ("v2", "v1", "latest"):
            await d.put_tag("ns/app", tag, manifest.digest)
        assert sorted(await d.list_tags("ns/app")) == ["latest", "v1", "v2"]
        assert await d.get_tag("ns/app", "v1") == manifest.digest
        await d.delete_tag("ns/app", "v1")
        await _raises_not_found(lambda: d.get_tag("ns/app", "v1"))
        await _raises_not_found(lambda: d.delete_tag("ns/app", "v1"))
        await _raises_not_found(lambda: d.list_tags("ns/nothing"))
        subject = _d(b"subject")
        desc = json.dumps({"digest": str(manifest.digest), "artifactType": "x"}).encode()
        await d.add_referrer("ns/app", subject, manifest.digest, desc)
        await d.add_referrer("ns/app", subject, manifest.digest, desc)
        assert await d.list_referrers("ns/app", subject) == [desc]
        assert await d.list_referrers("ns/other", subject) == []
        await d.remove_referrer("ns/app", subject, manifest.digest)
        assert await d.list_referrers("ns/app", subject) == []
        await d.link_blob("zz/top", blob.digest)
        assert {r async for r in d.list_repositories()} >= {"ns/app", "zz/top"}
        await d.unlink_blob("ns/app", blob.digest)
        assert not await d.has_blob_link("ns/app", blob.digest)
        await _raises_not_found(lambda: d.unlink_blob("ns/app", blob.digest))
        await d.delete_manifest("ns/app", manifest.digest)
        await _raises_not_found(lambda: d.get_manifest("ns/app", manifest.digest))
    finally:
        await d.close()


async def uploads_are_listed_for_gc_and_purged(make: DriverFactory) -> None:
    d = await _opened(make)
    try:
        up = await d.create_upload("gc/r")
        await d.append_upload(up.id, 0, _chunks(b"abandoned"))
        listed = {u.id: u async for u in d.list_uploads()}
        assert listed[up.id].size == 9 and listed[up.id].started > 0
        await d.purge_upload(up.id)
        await d.purge_upload(up.id)
        assert up.id not in {u.id async for u in d.list_uploads()}
    finally:
        await d.close()


CHECKS: tuple[Check, ...] = (
    blobs_are_content_addressed_and_idempotent,
    chunked_upload_commits_verified,
    appends_out_of_order_are_refused_and_change_nothing,
    wrong_digest_makes_nothing_visible,
    another_process_continues_an_upload,
    concurrent_commits_of_one_digest_both_succeed,
    repository_metadata,
    uploads_are_listed_for_gc_and_purged,
)


def run_check(check: Check, make: DriverFactory) -> None:
    """Run one check to completion on a fresh event loop."""
    asyncio.run(check(make))


def check_driver(make: DriverFactory, *, only: Iterable[str] | None = None) -> None:
    """Run every check (or those named in ``only``) against drivers from ``make``."""
    wanted = set(only) if only is not None else None
    for check in CHECKS:
        if wanted is None or check.__name__ in wanted:
            run_check(check, make)
