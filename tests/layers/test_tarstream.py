"""The tar wire format: what the reader accepts (as Go's does) and what the writer produces."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from strata.errors import InvalidContent
from strata.layers import apply, scan
from strata.layers._tarstream import DIR, HARDLINK, REG, SYMLINK, TarReader, TarWriter
from strata.testing import trees
from strata.testing.tars import Entry, build


def members(data: bytes) -> list[tuple[str, str, int]]:
    reader = TarReader(io.BytesIO(data))
    found = []
    while (member := reader.next()) is not None:
        found.append((member.name, member.type, member.size))
    reader.finish()
    return found


def resum(data: bytes) -> bytes:
    """The first header's checksum recomputed after editing it."""
    block = bytearray(data[:512])
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block) + data[512:]


def make_source(path: Path, *, long_names: bool, xattrs: bool) -> Path:
    """A small tree with every ordinary kind of entry, for real tar tools to archive."""
    (path / "dir/sub").mkdir(parents=True)
    (path / "dir/file").write_bytes(b"content\n" * 1000)
    (path / "dir/sub/empty").write_bytes(b"")
    (path / "dir/sub" / ("y" * 95)).write_bytes(b"ustar prefix")
    os.symlink("dir/file", path / "link")
    if long_names:
        (path / "dir" / ("x" * 120)).mkdir()
        (path / ("long-" * 40)).write_bytes(b"long name")
        os.symlink("t" * 150, path / "long-link")
    os.link(path / "dir/file", path / "hard")
    os.mkfifo(path / "fifo")
    os.chmod(path / "dir/file", 0o4751)
    os.chown(path / "dir/sub/empty", 1234, 4321)
    if xattrs:
        os.setxattr(path / "dir/file", "user.k", b"v")
    for sub in ("dir/file", "dir/sub", "dir"):
        os.utime(path / sub, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return path


@pytest.mark.parametrize("tar_format", ["gnu", "posix", "ustar", "oldgnu"])
def test_apply_reads_what_gnu_tar_writes(tmp_path: Path, tar_format: str) -> None:
    posix = tar_format == "posix"  # only GNU tar's posix format carries xattrs
    source = make_source(tmp_path / "source", long_names=tar_format != "ustar", xattrs=posix)
    options = ["--xattrs"] if posix else []
    data = subprocess.run(
        ["tar", "-C", str(source), f"--format={tar_format}", *options, "-cf", "-", "."],
        capture_output=True,
        check=True,
    ).stdout
    target = tmp_path / "target"
    target.mkdir()
    stats = apply(target, io.BytesIO(data))
    assert stats == scan(io.BytesIO(data))
    trees.assert_same_tree(source, target, include_root=False)
    if posix:
        assert os.getxattr(target / "dir/file", "user.k") == b"v"


def test_sparse_files_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "sparse", "wb") as handle:
        handle.truncate(1 << 20)
        handle.write(b"data")
    for tar_format in ("gnu", "posix"):
        data = subprocess.run(
            ["tar", "-C", str(source), f"--format={tar_format}", "--sparse", "-cf", "-", "."],
            capture_output=True,
            check=True,
        ).stdout
        with pytest.raises(InvalidContent, match="sparse member"):
            scan(io.BytesIO(data))


def test_reader_pax_times_and_base256_numbers(tmp_path: Path) -> None:
    data = build(
        [
            Entry("frac", pax={"mtime": "1700000000.123456789", "atime": "1600000000.5"}),
            Entry.file("big-ids", b"", uid=8**8 + 5, gid=8**9),
        ],
        header_format="gnu",
    )
    data_pax = build([Entry("frac", pax={"mtime": "1700000000.123456789", "atime": "1.5"})])
    apply(tmp_path, io.BytesIO(data_pax))
    st = os.lstat(tmp_path / "frac")
    assert st.st_mtime_ns == 1_700_000_000_123_456_789
    assert st.st_atime_ns == 1_500_000_000
    reader = TarReader(io.BytesIO(data))
    reader.next()
    big = reader.next()
    assert big is not None and (big.uid, big.gid) == (8**8 + 5, 8**9)


def test_reader_types_and_old_conventions() -> None:
    data = build(
        [
            Entry("olddir/", type=tarfile.AREGTYPE),
            Entry("oldfile", type=tarfile.AREGTYPE, data=b"12"),
            Entry("contiguous", type=tarfile.CONTTYPE, data=b"345"),
            Entry.hardlink("h", "oldfile"),
            Entry.symlink("s", "x"),
        ]
    )
    data_with_global = build([Entry("g", type=tarfile.XGLTYPE, pax={"comment": "x"})])
    assert members(data) == [
        ("olddir/", DIR, 0),
        ("oldfile", REG, 2),
        ("contiguous", REG, 3),
        ("h", HARDLINK, 0),
        ("s", SYMLINK, 0),
    ]
    assert len(members(data_with_global)) <= 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:1024] + bytes(512) + d[1024:], "data after a zero block"),
        (lambda d: d[:700], "unexpected end of data in member"),
        (lambda d: d[: 512 + 300], "unexpected end of data in member"),
        (lambda d: d[: 1024 + 100], "truncated tar header"),
        (lambda d: b"x" * 512, "bad checksum"),
        (lambda d: d[:1] + b"x" + d[2:], "bad checksum"),
        (lambda d: resum(d[:124] + b"zzzzzzzzzzz\x00" + d[136:]), "size is not a number"),
    ],
    ids=[
        "zero-block-then-data",
        "short-data",
        "short-data-small",
        "short-header",
        "garbage",
        "flipped-byte",
        "bad-size",
    ],
)
def test_reader_rejects_malformed_archives(mutate: object, message: str) -> None:
    data = build([Entry.file("a", b"y" * 400), Entry.file("b", b"z")])
    assert callable(mutate)
    with pytest.raises(InvalidContent, match=message):
        scan(io.BytesIO(mutate(data)))


def test_reader_tolerates_partial_end_of_archive() -> None:
    data = build([Entry.file("a", b"y")], trailer=False)
    assert members(data + bytes(512)) == [("a", REG, 1)]  # one zero block, then EOF
    assert members(data) == [("a", REG, 1)]
    with pytest.raises(InvalidContent, match="padding"):
        scan(io.BytesIO(data[:-100]))


def test_writer_output_reads_back_everywhere() -> None:
    out = io.BytesIO()
    writer = TarWriter(out)
    long_dir = "d" * 90 + "/" + "e" * 90 + "/"
    writer.add(long_dir, DIR, mode=0o755, mtime=5)
    long_name = "n" * 150 + "/" + "m" * 150
    writer.add(long_name, REG, mode=0o644, size=3, uid=8**8, xattrs={"user.k": b"\xff"})
    writer.write_data(b"abc")
    writer.end_data(3)
    writer.add("link", SYMLINK, linkname="t" * 200, mtime=-5)
    writer.add(os.fsdecode(b"caf\xe9"), REG, size=0)
    digest, size = writer.close()
    data = out.getvalue()
    assert size == len(data) and len(data) % 512 == 0 and data.endswith(bytes(1024))
    assert writer.entries == 4
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        got = [(m.name, m.size, m.uid, m.linkname, m.mtime) for m in tf.getmembers()]
        assert tf.getmembers()[1].pax_headers["SCHILY.xattr.user.k"] == "\udcff"
    assert got == [
        (long_dir.rstrip("/"), 0, 0, "", 5),
        (long_name, 3, 8**8, "", 0),
        ("link", 0, 0, "t" * 200, -5),
        (os.fsdecode(b"caf\xe9"), 0, 0, "", 0),
    ]
    assert scan(io.BytesIO(data)).diff_id == digest
    # a ustar prefix split, as Go writes it, for the long directory name
    assert data[345 : 345 + 90] == b"d" * 90 and data[:90] == b"e" * 90
    assert data[148:156] == b"%06o\x00 " % int(data[148:154], 8)


class _Chunks(io.RawIOBase):
    """A stream handing out ``data`` in pieces of odd sizes, then failing if asked to."""

    def __init__(self, data: bytes, piece: int, fail_at: int | None = None) -> None:
        super().__init__()
        self._data = data
        self._pos = 0
        self._piece = piece
        self._fail_at = fail_at

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._fail_at is not None and self._pos >= self._fail_at:
            raise InvalidContent("corrupt gzip stream in layer (test)")
        want = self._piece if size is None or size < 0 else min(size, self._piece)
        chunk = self._data[self._pos : self._pos + want]
        self._pos += len(chunk)
        return chunk


def _read_all(reader: TarReader) -> list[tuple[str, int, bytes]]:
    out = []
    while (member := reader.next()) is not None:
        r, w = os.pipe()
        try:
            if member.size <= 60_000:  # fits the pipe
                reader.copy_to_fd(w)
                os.close(w)
                w = -1
                data = os.read(r, 65536)
            else:
                reader.skip()
                data = b""
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        out.append((member.name, member.size, data))
    return out


def test_prefetching_reader_reads_and_hashes_like_the_plain_one() -> None:
    # Members straddle the chunks the thread reads (odd piece sizes, headers cut in two).
    entries = [Entry(f"d/f{i}", data=os.urandom(i * 97 % 5000)) for i in range(300)]
    entries.append(Entry("d/big", data=os.urandom(3 << 20)))
    entries += [Entry(f"e/{'n' * 150}{i}", data=b"x" * i) for i in range(50)]
    data = build(entries)
    plain = TarReader(io.BytesIO(data))
    expected = _read_all(plain)
    expected_sum = plain.finish()
    for piece in (511, 4093, 1 << 20):
        with TarReader(_Chunks(data, piece), prefetch=True) as reader:  # type: ignore[arg-type]
            assert _read_all(reader) == expected
            assert reader.finish() == expected_sum
    assert expected_sum[1] == len(data)


def test_prefetching_reader_raises_the_stream_error_where_it_happened() -> None:
    data = build([Entry(f"f{i}", data=b"%d" % i * 1000) for i in range(2000)])
    fail_at = len(data) // 2
    with TarReader(_Chunks(data, 4096, fail_at), prefetch=True) as reader:  # type: ignore[arg-type]
        seen = 0
        with pytest.raises(InvalidContent, match="corrupt gzip stream"):
            while reader.next() is not None:
                reader.skip()
                seen += 1
        assert 0 < seen < 2000  # the members before the failure were read


def test_prefetching_reader_stops_its_thread_when_closed_early() -> None:
    data = build([Entry(f"f{i}", data=os.urandom(4096)) for i in range(5000)])  # ~22 MiB
    reader = TarReader(_Chunks(data, 1 << 20), prefetch=True)  # type: ignore[arg-type]
    assert reader.next() is not None
    reader.close()
    assert not [t for t in threading.enumerate() if t.name == "strata-tar-read"]
