"""The S3 storage driver against a real S3-protocol server (moto, over HTTP on 127.0.0.1).

Several driver instances sharing one bucket stand for several stateless ``strata registry
serve`` processes: an upload started on one is appended to by another and committed by a
third. Each test works under its own ``rootdirectory`` so they do not see each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

import pytest

from strata.errors import DigestMismatch, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from strata.oci import Digest
from strata.registry.server.storage import StorageDriver, UploadOffsetError, open_driver
from strata.registry.server.storage.s3 import MIB, S3Driver, S3Options, _ResumableSha256
from strata.testing.s3 import S3Server

T = TypeVar("T")
CHUNK = 5 * MIB  # the smallest part S3 allows, so that tests make several parts cheaply


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def root() -> str:
    """A fresh ``rootdirectory`` per test."""
    return f"t-{uuid.uuid4().hex[:12]}"


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


class Drivers:
    """``n`` independently opened drivers on the same bucket and root (the "processes")."""

    def __init__(self, s3: S3Server, root: str, n: int = 1, **options: object) -> None:
        config = {**s3.registry_storage(rootdirectory=root, chunksize=CHUNK), **options}
        self.drivers = [S3Driver.from_options(config) for _ in range(n)]

    async def __aenter__(self) -> list[S3Driver]:
        for d in self.drivers:
            await d.open()
        return self.drivers

    async def __aexit__(self, *exc: object) -> None:
        for d in self.drivers:
            await d.close()


async def stream(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def split(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    out.append(data[pos:])
    return [p for p in out if p]


async def read_all(driver: S3Driver, digest: Digest, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in driver.read_blob(digest, start, end)])


def sha256(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"region": "us-east-1"}, "bucket is required"),
        ({"bucket": "b", "chunksize": 1024}, "chunksize must be between"),
        ({"bucket": "b", "chunksize": "lots"}, "chunksize must be an integer"),
        ({"bucket": "b", "accesskey": "k"}, "both accesskey and secretkey"),
        ({"bucket": "b", "rootdirectory": "/a/../b"}, "not a clean path"),
        ({"bucket": "b", "secure": "maybe"}, "secure must be true or false"),
        ({"bucket": 7}, "bucket must be a string"),
    ],
    ids=[
        "no-bucket",
        "chunk-too-small",
        "chunk-not-int",
        "half-credentials",
        "dotdot-root",
        "bad-bool",
        "bad-type",
    ],
)
def test_options_reject_bad_config(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        S3Options.parse(options)


def test_options_accept_distribution_shaped_section() -> None:
    opts = S3Options.parse(
        {
            "bucket": "reg",
            "region": "eu-west-1",
            "regionendpoint": "minio.local:9000",
            "accesskey": "a",
            "secretkey": "s",
            "rootdirectory": "/prefix/x/",
            "chunksize": "8388608",
            "secure": "false",
        }
    )
    assert (opts.bucket, opts.region, opts.rootdirectory, opts.chunksize, opts.secure) == (
        "reg",
        "eu-west-1",
        "prefix/x",
        8 * MIB,
        False,
    )
    assert opts.endpoint_url == "http://minio.local:9000"
    assert "secretkey" not in repr(opts)


def test_driver_is_chosen_by_name_and_satisfies_the_interface(s3: S3Server, root: str) -> None:
    driver = open_driver("s3", s3.registry_storage(rootdirectory=root))
    assert isinstance(driver, S3Driver)
    assert isinstance(driver, StorageDriver)
    typed: StorageDriver = S3Driver.from_options(s3.registry_storage())  # mypy checks signatures
    assert typed.name == "s3"
    assert driver.name == "s3"
    assert driver.local_path(sha256(b"x")) is None


def test_open_fails_clearly_for_a_missing_bucket(s3: S3Server, root: str) -> None:
    driver = S3Driver.from_options({**s3.registry_storage(rootdirectory=root), "bucket": "no-such-bucket"})
    with pytest.raises(Unavailable, match="no-such-bucket"):
        run(driver.open)


def test_unopened_driver_refuses_work(s3: S3Server) -> None:
    driver = S3Driver.from_options(s3.registry_storage())
    with pytest.raises(FailedPrecondition, match="not open"):
        run(lambda: driver.stat_blob(sha256(b"x")))


# --------------------------------------------------------------------------- blobs


def test_blob_put_stat_ranged_read_delete(s3: S3Server, root: str) -> None:
    data = os.urandom(700_000)
    digest = sha256(data)

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            stat = await d.put_blob(data)
            assert (stat.digest, stat.size) == (digest, len(data))
            assert await d.put_blob(data) == stat  # idempotent
            assert await d.stat_blob(digest) == stat
            assert await read_all(d, digest) == data
            assert await read_all(d, digest, 10, 20) == data[10:20]
            assert await read_all(d, digest, 699_990) == data[699_990:]
            assert await read_all(d, digest, 5, 5) == b""
            chunks = [c async for c in d.read_blob(digest)]
            assert max(len(c) for c in chunks) <= 256 * 1024  # streamed, not read whole
            assert [b async for b in d.walk_blobs()] == [stat]
            await d.delete_blob(digest)
            with pytest.raises(NotFound, match=str(digest)):
                await d.stat_blob(digest)
            with pytest.raises(NotFound):
                await read_all(d, digest)
            with pytest.raises(NotFound):
                await d.delete_blob(digest)

    run(scenario)
    assert s3.keys(prefix=f"{root}/") == []


def test_blobs_use_distributions_layout(s3: S3Server, root: str) -> None:
    data = b"layout"
    digest = sha256(data)

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            await d.put_blob(data)
            await d.link_blob("library/app", digest)

    run(scenario)
    assert s3.keys(prefix=f"{root}/") == [
        f"{root}/docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data",
        f"{root}/docker/registry/v2/repositories/library/app/_layers/sha256/{digest.hex}/link",
    ]


# --------------------------------------------------------------------------- repository metadata


def test_repository_metadata_round_trip(s3: S3Server, root: str) -> None:
    manifest = b'{"schemaVersion":2}'
    m = sha256(manifest)
    layer = sha256(b"layer")
    referrer = sha256(b"referrer")
    descriptor = json.dumps(
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(referrer), "size": 8}
    ).encode()
    media_type = "application/vnd.docker.distribution.manifest.v2+json"

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            assert [r async for r in d.list_repositories()] == []
            with pytest.raises(NotFound, match="repository a/b"):
                await d.list_tags("a/b")
            await d.link_blob("a/b", layer)
            assert await d.has_blob_link("a/b", layer)
            assert not await d.has_blob_link("a", layer)
            assert await d.list_tags("a/b") == []  # exists, no tags
            assert [x async for x in d.list_blob_links("a/b")] == [layer]

            await d.put_blob(manifest)
            await d.put_manifest("a/b", m, media_type)
            assert await d.get_manifest("a/b", m) == media_type
            assert [x async for x in d.list_manifests("a/b")] == [m]
            with pytest.raises(NotFound):
                await d.get_manifest("a", m)

            for tag in ("v2", "latest", "v1.0-rc_1"):
                await d.put_tag("a/b", tag, m)
            assert sorted(await d.list_tags("a/b")) == ["latest", "v1.0-rc_1", "v2"]
            assert await d.get_tag("a/b", "latest") == m
            await d.delete_tag("a/b", "v2")
            with pytest.raises(NotFound, match="tag v2"):
                await d.get_tag("a/b", "v2")
            with pytest.raises(NotFound):
                await d.delete_tag("a/b", "v2")

            await d.add_referrer("a/b", m, referrer, descriptor)
            await d.add_referrer("a/b", m, referrer, descriptor)  # idempotent
            assert await d.list_referrers("a/b", m) == [descriptor]
            assert await d.list_referrers("a/b", layer) == []
            await d.remove_referrer("a/b", m, referrer)
            await d.remove_referrer("a/b", m, referrer)  # absent: no error
            assert await d.list_referrers("a/b", m) == []

            # nested names: "a" is a repository and so is "a/b"; "c" is only a path.
            await d.link_blob("a", layer)
            await d.put_tag("c/d/e", "t", m)
            assert sorted([r async for r in d.list_repositories()]) == ["a", "a/b", "c/d/e"]

            await d.unlink_blob("a/b", layer)
            with pytest.raises(NotFound):
                await d.unlink_blob("a/b", layer)
            await d.delete_manifest("a/b", m)
            with pytest.raises(NotFound):
                await d.delete_manifest("a/b", m)
            assert await d.stat_blob(m)  # the manifest's blob stays

    run(scenario)


# --------------------------------------------------------------------------- uploads


def upload_keys(s3: S3Server, root: str) -> list[str]:
    return s3.keys(prefix=f"{root}/docker/registry/v2/uploads/")


def multiparts(s3: S3Server, root: str) -> list[tuple[str, str]]:
    return s3.multipart_uploads(prefix=f"{root}/")


def test_chunked_upload_moves_between_processes(s3: S3Server, root: str) -> None:
    """POST on one process, PATCHes on others, PUT on a third: one verified blob."""
    data = os.urandom(12 * MIB + 12345)
    digest = sha256(data)
    pieces = split(data, [2 * MIB, 4 * MIB, 1, 3 * MIB])  # crosses part boundaries mid-chunk

    async def scenario() -> None:
        async with Drivers(s3, root, n=3) as drivers:
            status = await drivers[0].create_upload("team/app")
            assert (status.repository, status.size) == ("team/app", 0)
            offset = 0
            for i, piece in enumerate(pieces):
                d = drivers[(i + 1) % 3]
                status = await d.append_upload(
                    status.id, offset, stream(piece[: len(piece) // 2], piece[len(piece) // 2 :])
                )
                offset += len(piece)
                assert status.size == offset
                assert (await drivers[i % 3].upload_status(status.id)).size == offset
            assert multiparts(s3, root), "a blob bigger than chunksize is a multipart upload"
            assert [u.id async for u in drivers[2].list_uploads()] == [status.id]
            with pytest.raises(NotFound):
                await drivers[1].stat_blob(digest)  # nothing visible before commit
            stat = await drivers[2].commit_upload(status.id, digest)
            assert (stat.digest, stat.size) == (digest, len(data))
            assert await read_all(drivers[0], digest) == data
            with pytest.raises(NotFound):
                await drivers[1].upload_status(status.id)
            assert [u async for u in drivers[0].list_uploads()] == []

    run(scenario)
    assert upload_keys(s3, root) == []
    assert multiparts(s3, root) == []


def test_large_blob_in_one_stream_is_a_multipart_upload(s3: S3Server, root: str) -> None:
    data = os.urandom(3 * CHUNK + 777)
    digest = sha256(data)
    seen_parts: list[int] = []

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            status = await d.create_upload("big")
            await d.append_upload(status.id, 0, stream(*split(data, [65536] * (len(data) // 65536))))
            client = s3.client()
            try:
                ((key, mpu),) = multiparts(s3, root)
                parts = client.list_parts(Bucket=s3.bucket, Key=key, UploadId=mpu)["Parts"]
                seen_parts.extend(p["Size"] for p in parts)
            finally:
                client.close()
            await d.commit_upload(status.id, digest)
            assert await read_all(d, digest) == data
            assert await read_all(d, digest, CHUNK - 3, CHUNK + 3) == data[CHUNK - 3 : CHUNK + 3]

    run(scenario)
    assert seen_parts == [CHUNK, CHUNK, CHUNK]  # the 777-byte tail waits for the commit
    assert upload_keys(s3, root) == []


def test_multipart_copy_for_blobs_beyond_one_copy(s3: S3Server, root: str) -> None:
    """Blobs above S3's 5 GiB CopyObject limit are copied part by part (limit lowered here)."""
    data = os.urandom(2 * CHUNK + 10)
    digest = sha256(data)

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            d.copy_limit = CHUNK
            status = await d.create_upload("big")
            await d.append_upload(status.id, 0, stream(data))
            await d.commit_upload(status.id, digest)
            assert await read_all(d, digest) == data

    run(scenario)
    assert multiparts(s3, root) == []


@pytest.mark.parametrize("size", [1000, 2 * CHUNK + 1], ids=["small", "multipart"])
def test_digest_mismatch_leaves_nothing_visible(s3: S3Server, root: str, size: int) -> None:
    data = os.urandom(size)
    wrong = sha256(data + b"!")
    right = sha256(data)

    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            status = await d1.create_upload("r")
            await d1.append_upload(status.id, 0, stream(data))
            with pytest.raises(DigestMismatch) as err:
                await d2.commit_upload(status.id, wrong)
            assert err.value.expected == str(wrong)
            assert err.value.actual == str(right)
            assert [b async for b in d1.walk_blobs()] == []
            with pytest.raises(NotFound):
                await d1.stat_blob(wrong)
            assert (await d1.upload_status(status.id)).size == size  # kept for the client
            await d2.commit_upload(status.id, right)  # the right digest still commits
            assert await read_all(d1, right) == data

    run(scenario)
    assert s3.keys(prefix=f"{root}/") == [
        f"{root}/docker/registry/v2/blobs/sha256/{right.hex[:2]}/{right.hex}/data"
    ]


def test_append_at_wrong_offset_is_refused_and_changes_nothing(s3: S3Server, root: str) -> None:
    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            status = await d.create_upload("r")
            await d.append_upload(status.id, 0, stream(b"abc"))
            before = upload_keys(s3, root)
            for offset in (0, 2, 4):
                with pytest.raises(UploadOffsetError) as err:
                    await d.append_upload(status.id, offset, stream(b"zzz"))
                assert (err.value.expected, err.value.actual) == (3, offset)
            assert upload_keys(s3, root) == before
            assert (await d.upload_status(status.id)).size == 3
            await d.append_upload(status.id, 3, stream(b"def"))
            stat = await d.commit_upload(status.id, sha256(b"abcdef"))
            assert await read_all(d, stat.digest) == b"abcdef"

    run(scenario)


def test_racing_appends_at_one_offset_let_exactly_one_win(s3: S3Server, root: str) -> None:
    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            status = await d1.create_upload("r")
            both_read = asyncio.Barrier(2)

            async def body(piece: bytes) -> AsyncIterator[bytes]:
                await both_read.wait()  # both requests have read the state by now
                yield piece

            results = await asyncio.gather(
                d1.append_upload(status.id, 0, body(b"first")),
                d2.append_upload(status.id, 0, body(b"second!")),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(errors) == 1
            assert isinstance(errors[0], UploadOffsetError)
            won = b"first" if not isinstance(results[0], BaseException) else b"second!"
            assert errors[0].expected == len(won)
            stat = await d2.commit_upload(status.id, sha256(won))
            assert await read_all(d1, stat.digest) == won

    run(scenario)


def test_interrupted_append_keeps_what_arrived(s3: S3Server, root: str) -> None:
    data = os.urandom(CHUNK + 100_000)

    async def broken() -> AsyncIterator[bytes]:
        yield data[: CHUNK + 50_000]
        raise ConnectionResetError("client went away")

    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            status = await d1.create_upload("r")
            with pytest.raises(ConnectionResetError):
                await d1.append_upload(status.id, 0, broken())
            resumed = await d2.upload_status(status.id)
            assert resumed.size == CHUNK + 50_000
            await d2.append_upload(status.id, resumed.size, stream(data[resumed.size :]))
            stat = await d1.commit_upload(status.id, sha256(data))
            assert await read_all(d2, stat.digest) == data

    run(scenario)


def test_cancel_removes_parts_segments_and_state(s3: S3Server, root: str) -> None:
    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            status = await d1.create_upload("r")
            await d1.append_upload(status.id, 0, stream(os.urandom(CHUNK + 10)))
            assert multiparts(s3, root)
            assert upload_keys(s3, root)
            await d2.cancel_upload(status.id)
            with pytest.raises(NotFound):
                await d1.upload_status(status.id)
            with pytest.raises(NotFound):
                await d1.append_upload(status.id, CHUNK + 10, stream(b"x"))
            with pytest.raises(NotFound):
                await d1.commit_upload(status.id, sha256(b""))
            with pytest.raises(NotFound):
                await d2.cancel_upload(status.id)
            with pytest.raises(NotFound):
                await d2.upload_status("../../blobs")  # ids are UUIDs, nothing else

    run(scenario)
    assert upload_keys(s3, root) == []
    assert multiparts(s3, root) == []


def test_empty_blob_and_identical_concurrent_commits(s3: S3Server, root: str) -> None:
    data = os.urandom(CHUNK + 3)

    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            empty = await d1.create_upload("r")
            stat = await d1.commit_upload(empty.id, sha256(b""))
            assert stat.size == 0
            assert await read_all(d2, sha256(b"")) == b""

            a = await d1.create_upload("r")
            b = await d2.create_upload("s")
            await asyncio.gather(
                d1.append_upload(a.id, 0, stream(data)), d2.append_upload(b.id, 0, stream(data))
            )
            s1, s2 = await asyncio.gather(
                d1.commit_upload(a.id, sha256(data)), d2.commit_upload(b.id, sha256(data))
            )
            assert s1 == s2
            assert await read_all(d1, s1.digest) == data

    run(scenario)
    assert upload_keys(s3, root) == []


def test_commit_rehashes_when_no_hash_state_was_kept(
    s3: S3Server, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a resumable hash (no libcrypto API, or a sha512 digest) commit re-reads the
    assembled upload; a mismatch seals it: no more appends, nothing visible."""
    monkeypatch.setattr(_ResumableSha256, "_lib", None)
    data = os.urandom(CHUNK + 4096)
    right = sha256(data)

    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            status = await d1.create_upload("r")
            await d1.append_upload(status.id, 0, stream(data[:100]))
            await d2.append_upload(status.id, 100, stream(data[100:]))
            with pytest.raises(DigestMismatch):
                await d2.commit_upload(status.id, sha256(b"other"))
            assert [b async for b in d1.walk_blobs()] == []
            with pytest.raises(FailedPrecondition, match="sealed"):
                await d1.append_upload(status.id, len(data), stream(b"more"))
            assert (await d1.upload_status(status.id)).size == len(data)
            stat = await d1.commit_upload(status.id, right)
            assert await read_all(d2, stat.digest) == data

            other = await d1.create_upload("r")
            await d1.append_upload(other.id, 0, stream(data))
            sha512 = Digest("sha512", hashlib.sha512(data).hexdigest())
            stat = await d2.commit_upload(other.id, sha512)
            assert (stat.digest, stat.size) == (sha512, len(data))
            assert await read_all(d1, sha512) == data

    run(scenario)
    assert upload_keys(s3, root) == []
    assert multiparts(s3, root) == []


def test_resumable_sha256_matches_hashlib_across_saves() -> None:
    assert _ResumableSha256.available(), "libcrypto's SHA256_* API is expected on Debian"
    data = os.urandom(300_001)
    h = _ResumableSha256()
    for piece in split(data, [1, 63, 64, 65, 100_000]):
        h = _ResumableSha256(h.save())
        h.update(piece)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()  # hexdigest does not finalize


def test_abandoned_upload_remains_are_listed_for_gc(s3: S3Server, root: str) -> None:
    """A process killed between writing a segment and the state leaves objects; GC sees them."""
    orphan = str(uuid.uuid4())

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            assert d._s3 is not None
            await d._s3.put_object(
                Bucket=s3.bucket,
                Key=f"{root}/docker/registry/v2/uploads/{orphan}/seg-000000000000000-x",
                Body=b"x",
            )
            live = await d.create_upload("r")
            listed = {u.id: u async for u in d.list_uploads()}
            assert set(listed) == {orphan, live.id}
            assert listed[orphan].started == 0.0
            await d.purge_upload(orphan)
            await d.purge_upload(orphan)  # already gone: no error
            await d.purge_upload("not-a-uuid")
            assert [u.id async for u in d.list_uploads()] == [live.id]

    run(scenario)


def test_storage_driver_keys_stay_under_rootdirectory(s3: S3Server, root: str) -> None:
    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            status = await d.create_upload("x/y")
            await d.append_upload(status.id, 0, stream(b"data"))
            await d.commit_upload(status.id, sha256(b"data"))
            await d.link_blob("x/y", sha256(b"data"))
            await d.put_tag("x/y", "t", sha256(b"data"))

    run(scenario)
    keys = s3.keys()
    mine = [k for k in keys if k.startswith(f"{root}/")]
    assert len(mine) == 3
    assert all(k.startswith(f"{root}/docker/registry/v2/") for k in mine)


def test_commit_retried_after_a_process_died_mid_commit(s3: S3Server, root: str) -> None:
    """The first commit completed the multipart upload and died before the copy: a retry on
    another process finishes the job from what is in the bucket."""
    data = os.urandom(CHUNK + 10)

    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            status = await d1.create_upload("r")
            await d1.append_upload(status.id, 0, stream(data))
            state, _ = await d1._read_state(status.id)
            assert await d1._finish_multipart(status.id, state) == len(data)
            assert multiparts(s3, root) == []
            assert [b async for b in d1.walk_blobs()] == []  # not visible yet
            stat = await d2.commit_upload(status.id, sha256(data))
            assert await read_all(d1, stat.digest) == data

    run(scenario)
    assert upload_keys(s3, root) == []


def test_listings_follow_s3_pagination(s3: S3Server, root: str) -> None:
    """Tags, repositories, blobs, links and uploads are complete across list pages."""

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            d.page_size = 2
            blobs = [await d.put_blob(f"blob {i}".encode()) for i in range(5)]
            names = ["r", "r/a", "r/b", "s/t/u", "v"]
            for name in names:
                for b in blobs:
                    await d.link_blob(name, b.digest)
            tags = [f"t{i}" for i in range(7)]
            for tag in tags:
                await d.put_tag("r", tag, blobs[0].digest)
            uploads = {(await d.create_upload("r")).id for _ in range(3)}
            assert sorted(await d.list_tags("r")) == tags
            assert sorted([r async for r in d.list_repositories()]) == names
            assert sorted([b async for b in d.walk_blobs()], key=lambda b: b.digest) == sorted(
                blobs, key=lambda b: b.digest
            )
            assert sorted([x async for x in d.list_blob_links("r/a")]) == sorted(b.digest for b in blobs)
            assert {u.id async for u in d.list_uploads()} == uploads

    run(scenario)


def test_hash_state_from_another_layout_is_not_resumed(s3: S3Server, root: str) -> None:
    """A state saved by a machine of another byte order is ignored: commit re-hashes."""
    data = os.urandom(CHUNK + 99)

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            status = await d.create_upload("r")
            await d.append_upload(status.id, 0, stream(data))
            key = f"{root}/docker/registry/v2/uploads/{status.id}/state"
            doc = json.loads(await d._get(key, "state"))
            assert doc["sha256"].startswith("openssl-sha256-ctx-")
            doc["sha256"] = "openssl-sha256-ctx-elsewhere:" + doc["sha256"].split(":", 1)[1]
            await d._put(key, json.dumps(doc).encode(), "state")
            with pytest.raises(DigestMismatch):
                await d.commit_upload(status.id, sha256(b"wrong"))
            with pytest.raises(FailedPrecondition, match="sealed"):  # it was re-hashed
                await d.append_upload(status.id, len(data), stream(b"x"))
            stat = await d.commit_upload(status.id, sha256(data))
            assert await read_all(d, stat.digest) == data

    run(scenario)


def test_failed_part_upload_loses_no_bytes(s3: S3Server, root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 fails one UploadPart mid-stream: the append reports the failure, every byte it had
    taken in is kept (as a segment), and the client resumes from the status."""
    data = os.urandom(4 * CHUNK + 5)

    async def scenario() -> None:
        async with Drivers(s3, root, n=2) as (d1, d2):
            real = d1._upload_part
            calls = 0

            async def flaky(upload_id: str, multipart: str, number: int, body: bytes) -> object:
                nonlocal calls
                calls += 1
                if calls == 2:
                    await asyncio.sleep(0.05)
                    raise Unavailable("S3 is having a moment")
                return await real(upload_id, multipart, number, body)

            monkeypatch.setattr(d1, "_upload_part", flaky)
            status = await d1.create_upload("r")
            with pytest.raises(Unavailable, match="moment"):
                await d1.append_upload(status.id, 0, stream(*split(data, [1 << 20] * 20)))
            kept = (await d2.upload_status(status.id)).size
            assert 2 * CHUNK <= kept < len(data)
            await d2.append_upload(status.id, kept, stream(data[kept:]))
            stat = await d2.commit_upload(status.id, sha256(data))
            assert await read_all(d1, stat.digest) == data

    run(scenario)
    assert upload_keys(s3, root) == []
    assert multiparts(s3, root) == []


def test_store_without_conditional_writes_still_works(
    s3: S3Server, root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3-compatible store that answers If-Match with NotImplemented: states are then
    written unconditionally and uploads keep working."""
    from botocore.exceptions import ClientError

    async def scenario() -> None:
        async with Drivers(s3, root) as (d,):
            real = d._put
            refused = 0

            async def put(key: str, data: bytes, what: str, **extra: object) -> object:
                nonlocal refused
                if "IfMatch" in extra:
                    refused += 1
                    error = ClientError({"Error": {"Code": "NotImplemented", "Message": "no"}}, "PutObject")
                    raise Unavailable("refused") from error
                return await real(key, data, what, **extra)

            monkeypatch.setattr(d, "_put", put)
            status = await d.create_upload("r")
            await d.append_upload(status.id, 0, stream(b"abc"))
            await d.append_upload(status.id, 3, stream(b"def"))
            stat = await d.commit_upload(status.id, sha256(b"abcdef"))
            assert await read_all(d, stat.digest) == b"abcdef"
            assert refused == 1  # asked once, then no more

    run(scenario)
