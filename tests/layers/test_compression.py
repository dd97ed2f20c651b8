"""Compression: blobs to tar streams and back, digests of what was written, clean errors."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import zstandard
from isal import igzip

from strata.errors import InvalidContent, Unavailable
from strata.layers import CompressedWriter, compress_stream, open_decompressed, sniff_compression
from strata.oci import Compression, Digest

DATA = os.urandom(1 << 20) + b"compressible " * 200_000 + bytes(1 << 20)
ALL = [Compression.NONE, Compression.GZIP, Compression.ZSTD]


def read_all(blob: bytes, compression: Compression | None = None) -> bytes:
    with open_decompressed(io.BytesIO(blob), compression) as stream:
        parts = []
        while chunk := stream.read(1 << 16):
            parts.append(chunk)
        return b"".join(parts)


@pytest.mark.parametrize("compression", ALL, ids=str)
def test_compressed_writer_reports_the_digest_of_what_it_wrote(compression: Compression) -> None:
    out = io.BytesIO()
    with CompressedWriter(out, compression) as writer:
        for start in range(0, len(DATA), 300_001):
            writer.write(DATA[start : start + 300_001])
    digest, size = writer.finish()
    blob = out.getvalue()
    assert (digest, size) == (Digest.of(blob), len(blob))
    assert writer.close() == (digest, size)  # idempotent
    assert read_all(blob) == DATA
    assert sniff_compression(blob[:4]) is compression
    if compression is not Compression.NONE:
        assert size < len(DATA)


@pytest.mark.parametrize("compression", ALL, ids=str)
def test_compression_is_deterministic(compression: Compression) -> None:
    first, second = io.BytesIO(), io.BytesIO()
    assert compress_stream(io.BytesIO(DATA), first, compression) == compress_stream(
        io.BytesIO(DATA), second, compression
    )
    assert first.getvalue() == second.getvalue()


def test_gzip_header_has_no_name_and_no_time() -> None:
    out = io.BytesIO()
    compress_stream(io.BytesIO(b"x"), out, Compression.GZIP)
    header = out.getvalue()[:10]
    assert header[3] == 0 and header[4:8] == bytes(4)  # no FNAME flag, mtime 0


def test_decompression_reads_multi_member_gzip() -> None:
    blob = igzip.compress(b"first ") + igzip.compress(b"second")
    assert read_all(blob) == b"first second"


SKIPPABLE = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"chunk"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"write_checksum": True},
        {"write_content_size": False},
        {"write_checksum": True, "write_content_size": False, "level": 19},
    ],
    ids=["default", "checksum", "no-content-size", "checksum-no-size-level19"],
)
def test_decompression_reads_zstd_frames_and_skippable_frames(options: dict[str, object]) -> None:
    compressor = zstandard.ZstdCompressor(**options)  # type: ignore[arg-type]
    one, two = compressor.compress(DATA[:500_000]), compressor.compress(b"tail")
    blob = SKIPPABLE + one + SKIPPABLE + two + SKIPPABLE
    assert read_all(blob, Compression.ZSTD) == DATA[:500_000] + b"tail"
    # a stream that stops between frames is complete; one that stops inside a frame is not
    assert read_all(SKIPPABLE + one) == DATA[:500_000]
    for cut in (len(one) - 1, len(one) // 2, 5, len(SKIPPABLE) - 1):
        with pytest.raises(InvalidContent, match="truncated zstd stream in layer"):
            read_all((SKIPPABLE + one)[: cut + len(SKIPPABLE)], Compression.ZSTD)


def test_zstd_streamed_frames_are_read() -> None:
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as writer:
        for start in range(0, len(DATA), 100_000):
            writer.write(DATA[start : start + 100_000])
            writer.flush(zstandard.FLUSH_BLOCK)
    assert read_all(out.getvalue()) == DATA


@pytest.mark.parametrize(
    ("blob", "compression", "message"),
    [
        (igzip.compress(DATA)[:-10], Compression.GZIP, "truncated gzip stream in layer"),
        (igzip.compress(DATA)[:1000], Compression.GZIP, "truncated gzip stream in layer"),
        (b"\x1f\x8b\x08\x00garbage-garbage", None, "gzip stream in layer"),
        (b"not zstd at all", Compression.ZSTD, "corrupt zstd stream in layer"),
        (
            zstandard.ZstdCompressor().compress(DATA)[:-3],
            Compression.ZSTD,
            "truncated zstd stream in layer",
        ),
    ],
    ids=["gzip-truncated-end", "gzip-truncated-early", "gzip-garbage", "zstd-garbage", "zstd-cut"],
)
def test_decompression_errors_are_invalid_content(
    blob: bytes, compression: Compression | None, message: str
) -> None:
    with pytest.raises(InvalidContent, match=message):
        read_all(blob, compression)


def test_corrupt_gzip_is_invalid_content() -> None:
    blob = bytearray(igzip.compress(DATA))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(InvalidContent, match="gzip stream in layer"):
        read_all(bytes(blob))


def test_plain_and_empty_streams_pass_through() -> None:
    assert read_all(b"") == b""
    assert read_all(b"ab") == b"ab"
    assert read_all(DATA) == DATA
    assert read_all(b"", Compression.GZIP) == b""
    assert hashlib.sha256(read_all(DATA, Compression.NONE)).digest() == hashlib.sha256(DATA).digest()


class _Failing(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        raise OSError(5, "Input/output error")


def test_read_errors_of_the_source_are_unavailable() -> None:
    with pytest.raises(Unavailable):
        open_decompressed(_Failing(), Compression.NONE).read(10)  # type: ignore[arg-type]
