"""The content store: atomic verified ingest, resume, leases, GC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from strata.content import LocalStore, collect
from strata.errors import DigestMismatch, NotFound, SizeMismatch, Unavailable
from strata.oci import Descriptor, Digest


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "content")


def _desc(data: bytes) -> Descriptor:
    return Descriptor("application/octet-stream", Digest.of(data), len(data))


def test_commit_publishes_verified_blob(store: LocalStore) -> None:
    data = os.urandom(3 << 20)
    with store.writer("w", _desc(data)) as w:
        w.write(data)
        desc = w.commit()
    assert desc.digest == Digest.of(data)
    assert store.read(desc.digest) == data
    assert store.info(desc.digest).size == len(data)
    assert list(store.ingests()) == []


def test_digest_mismatch_publishes_nothing(store: LocalStore) -> None:
    wanted = _desc(b"expected")
    with store.writer("w", wanted) as w:
        w.write(b"imposter")
        with pytest.raises(DigestMismatch) as info:
            w.commit()
    assert info.value.expected == str(wanted.digest)
    assert list(store.walk()) == []
    assert list(store.ingests()) == []


def test_short_write_is_size_mismatch_and_resumable(store: LocalStore) -> None:
    data = b"0123456789" * 1000
    with store.writer("resume", _desc(data)) as w:
        w.write(data[:4000])
        with pytest.raises(SizeMismatch):
            w.commit()
    assert not store.exists(Digest.of(data))
    with store.writer("resume", _desc(data)) as w:
        assert w.offset == 4000
        w.write(data[4000:])
        w.commit()
    assert store.read(Digest.of(data)) == data


def test_partial_blob_never_visible_after_kill(store: LocalStore, tmp_path: Path) -> None:
    script = (
        "import os, sys; from pathlib import Path; from strata.content import LocalStore;"
        "s = LocalStore(Path(sys.argv[1])); w = s.writer('k');"
        "w.write(b'x' * 100000); w._file.flush(); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(store.root)], check=False)
    assert proc.returncode == -9
    assert list(store.walk()) == []
    ingests = list(store.ingests())
    assert len(ingests) == 1 and ingests[0].offset == 100000
    # The dead writer's lock is gone, so the ingest can be resumed or cleaned.
    assert store.clean_ingests() == 1


def test_concurrent_writer_on_same_ref_is_refused(store: LocalStore) -> None:
    with store.writer("same") as w:
        w.write(b"a")
        with pytest.raises(Unavailable):
            store.writer("same")


def test_commit_is_idempotent_for_existing_content(store: LocalStore) -> None:
    first = store.put(b"same bytes")
    second = store.put(b"same bytes")
    assert first == second
    assert len(list(store.walk())) == 1


def test_delete_and_not_found(store: LocalStore) -> None:
    desc = store.put(b"bye")
    store.delete(desc.digest)
    with pytest.raises(NotFound):
        store.info(desc.digest)
    with pytest.raises(NotFound):
        store.delete(desc.digest)


def test_gc_keeps_reachable_and_leased(store: LocalStore) -> None:
    root = store.put(b"root")
    child = store.put(b"child")
    orphan = store.put(b"orphan")
    with store.lease() as lease:
        leased = store.put(b"leased")
        result = collect(store, [root.digest],
                         lambda d: [child.digest] if d == root.digest else [])
        assert result.removed == (orphan.digest,)
        assert store.exists(leased.digest)
        del lease
    result = collect(store, [root.digest], lambda d: [child.digest] if d == root.digest else [])
    assert result.removed == (leased.digest,)
    assert store.exists(root.digest) and store.exists(child.digest)


def test_lease_of_dead_process_protects_nothing(store: LocalStore) -> None:
    script = (
        "import os, sys; from pathlib import Path; from strata.content import LocalStore;"
        "s = LocalStore(Path(sys.argv[1])); l = s.lease(); l.__enter__();"
        "s.put(b'work in progress'); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", script, str(store.root)], check=False)
    result = collect(store, [], lambda d: [])
    assert result.removed == (Digest.of(b"work in progress"),)
