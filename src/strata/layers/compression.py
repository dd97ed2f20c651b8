"""Layer blob compression: gzip (through ISA-L) and zstd, streamed both ways.

Owns turning a compressed blob stream into the tar stream (:func:`open_decompressed`, which
sniffs the format when not told) and a tar stream into a compressed blob whose digest and
size are known when it is finished (:class:`CompressedWriter`, :func:`compress_stream`).

Nothing here holds a whole layer in memory.  Corrupt or truncated compressed data surfaces
as :class:`~strata.errors.InvalidContent`, never as ``zlib``/``EOFError``/``OSError``.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable
from gzip import BadGzipFile
from types import TracebackType
from typing import BinaryIO, Final, Self, cast

import zstandard
from isal import igzip_threaded, isal_zlib

from strata.errors import InvalidContent, StrataError, Unavailable
from strata.oci import SHA256, Compression, Digest

__all__ = ["CompressedWriter", "compress_stream", "open_decompressed", "sniff_compression"]

_CHUNK: Final = 1 << 20
_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_ZSTD_LEVEL: Final = 3  # zstd's and containerd's default
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)  # typed as an instance in isal's stubs
_open_gzip = cast("Callable[..., BinaryIO]", igzip_threaded.open)  # untyped in isal


def sniff_compression(head: bytes) -> Compression:
    """The compression whose magic bytes start ``head`` (at least 4 bytes to tell zstd).

    A zstd stream may start with a skippable frame (``50..5f 2a 4d 18``), as zstd:chunked
    layers can.
    """
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC) or (
        len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"
    ):
        return Compression.ZSTD
    return Compression.NONE


class _Source:
    """The compressed side: a prefix already read for sniffing, then the stream."""

    __slots__ = ("_frames", "_prefix", "_stream")

    def __init__(self, stream: BinaryIO, prefix: bytes, frames: _ZstdFrames | None) -> None:
        self._stream = stream
        self._prefix = prefix
        self._frames = frames

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0 or size >= len(self._prefix):
                data, self._prefix = self._prefix, b""
                if size < 0:
                    data += self._stream.read()
            else:
                data, self._prefix = self._prefix[:size], self._prefix[size:]
        else:
            data = self._stream.read(size)
        if self._frames is not None and data:
            self._frames.feed(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _ZstdFrames:
    """Follows zstd frame boundaries through the compressed bytes.

    ``zstandard``'s stream reader ends silently when its input stops in the middle of a
    frame; this walker tells a stream that ended between frames from a truncated one, by
    reading only frame and block headers (RFC 8878 §3.1).
    """

    __slots__ = ("_checksum", "_have", "_need", "_skip", "_state")

    _MAGIC: Final = 0  # expecting a frame's magic number (4 bytes)
    _FHD: Final = 1  # the frame header descriptor (1 byte)
    _BLOCK: Final = 2  # a block header (3 bytes)
    _SKIPPABLE: Final = 3  # a skippable frame's size (4 bytes)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4
        self._have = bytearray()
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            take = self._need - len(self._have)
            self._have += data[pos : pos + take]
            pos += take
            if len(self._have) == self._need:
                header = bytes(self._have)
                self._have.clear()
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        state = self._state
        if state == self._MAGIC:
            magic = int.from_bytes(header, "little")
            if header == _ZSTD_MAGIC:
                self._state, self._need = self._FHD, 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = self._SKIPPABLE, 4
            else:  # not zstd: the decompressor reports it
                self._state, self._need = self._MAGIC, 4
        elif state == self._FHD:
            fhd = header[0]
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            self._skip = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            self._state, self._need = self._BLOCK, 3
        elif state == self._BLOCK:
            value = int.from_bytes(header, "little")
            block_type = (value >> 1) & 3
            self._skip = 1 if block_type == 1 else value >> 3
            if value & 1:  # last block
                self._skip += 4 if self._checksum else 0
                self._state, self._need = self._MAGIC, 4
        else:
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = self._MAGIC, 4

    def complete(self) -> bool:
        """True when the bytes so far end exactly between frames."""
        return self._state == self._MAGIC and not self._have and not self._skip


class _Decompressed(io.RawIOBase):
    """A decompressing read stream that reports failures as :class:`InvalidContent`."""

    def __init__(
        self,
        inner: BinaryIO | _Source,
        compression: Compression,
        frames: _ZstdFrames | None = None,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._compression = compression
        self._frames = frames

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None else size
        try:
            data = self._inner.read(want)
        except StrataError:
            raise
        except EOFError as exc:
            raise InvalidContent(f"truncated {self._compression} stream in layer") from exc
        except (_ISAL_ERROR, BadGzipFile, zlib.error, zstandard.ZstdError) as exc:
            raise InvalidContent(f"corrupt {self._compression} stream in layer: {exc}") from exc
        except OSError as exc:
            raise Unavailable(f"reading layer stream failed: {exc}", retryable=False) from exc
        if not data and want != 0 and self._frames is not None and not self._frames.complete():
            raise InvalidContent(f"truncated {self._compression} stream in layer")
        return data

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(_CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and self._compression is not Compression.NONE:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        super().close()


def open_decompressed(stream: BinaryIO, compression: Compression | None = None) -> BinaryIO:
    """Open the uncompressed tar stream of a layer blob.

    Args:
        stream: the blob, read sequentially; it is not closed with the returned stream.
        compression: how the blob is compressed; None sniffs the magic bytes (gzip
            ``1f 8b``, zstd ``28 b5 2f fd``, anything else is taken as a plain tar).

    Returns:
        A stream of the uncompressed bytes, which the caller closes.  Reading it raises
        :class:`InvalidContent` on corrupt or truncated data (gzip is decompressed by ISA-L
        in a helper thread, so decompression overlaps with whatever consumes the stream).
    """
    prefix = b""
    if compression is None:
        while len(prefix) < 4:
            chunk = stream.read(4 - len(prefix))
            if not chunk:
                break
            prefix += chunk
        compression = sniff_compression(prefix)
    if compression is Compression.GZIP:
        source = _Source(stream, prefix, None)
        inner = _open_gzip(source, "rb", threads=1)
        return cast(BinaryIO, _Decompressed(inner, compression))
    if compression is Compression.ZSTD:
        frames = _ZstdFrames()
        source = _Source(stream, prefix, frames)
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, source), read_size=_CHUNK, read_across_frames=True
        )
        return cast(BinaryIO, _Decompressed(cast(BinaryIO, reader), compression, frames))
    return cast(BinaryIO, _Decompressed(_Source(stream, prefix, None), compression))


class _Sink:
    """Counts and hashes the compressed bytes on their way to ``out``."""

    __slots__ = ("_hash", "_out", "size")

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def writable(self) -> bool:
        return True

    def digest(self) -> Digest:
        return Digest(SHA256, self._hash.hexdigest())


class CompressedWriter:
    """Compresses what is written to it into ``out``; :meth:`finish` tells the blob's digest.

    gzip is ISA-L's (deterministic: mtime 0, no name; compressed in a helper thread), zstd is
    ``zstandard``'s at level 3, NONE passes bytes through.  ``out`` is not closed.

    Usage::

        with CompressedWriter(blob, Compression.GZIP) as w:
            w.write(tar_bytes)
        digest, size = w.finish()
    """

    def __init__(self, out: BinaryIO, compression: Compression, *, level: int | None = None) -> None:
        """Args:
        out: where the compressed bytes go.
        compression: the format.
        level: gzip 0-3 (ISA-L; default 2) or zstd 1-22 (default 3); None for the default.
        """
        self._sink = _Sink(out)
        self.compression = compression
        self._result: tuple[Digest, int] | None = None
        self._gzip: BinaryIO | None = None
        self._zstd: zstandard.ZstdCompressionWriter | None = None
        if compression is Compression.GZIP:
            gz_level = 2 if level is None else level
            self._gzip = _open_gzip(self._sink, "wb", compresslevel=gz_level, threads=1)
        elif compression is Compression.ZSTD:
            compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL if level is None else level)
            self._zstd = compressor.stream_writer(cast(BinaryIO, self._sink), closefd=False)

    def write(self, data: bytes | memoryview) -> int:
        """Compress ``data``; returns its (uncompressed) length.

        Raises:
            Unavailable: writing to ``out`` failed.
        """
        try:
            if self._gzip is not None:
                self._gzip.write(data)
            elif self._zstd is not None:
                self._zstd.write(data)
            else:
                self._sink.write(data)
        except OSError as exc:
            raise Unavailable(f"writing compressed layer failed: {exc}", retryable=False) from exc
        return len(data)

    def finish(self) -> tuple[Digest, int]:
        """End the compressed stream (idempotent).

        Returns:
            The digest and size of the compressed bytes written to ``out``.

        Raises:
            Unavailable: writing to ``out`` failed.
        """
        if self._result is None:
            try:
                if self._gzip is not None:
                    self._gzip.close()
                elif self._zstd is not None:
                    self._zstd.flush(zstandard.FLUSH_FRAME)
                    cast(BinaryIO, self._zstd).close()  # untyped in zstandard's stubs
                self._sink.flush()
            except OSError as exc:
                raise Unavailable(f"writing compressed layer failed: {exc}", retryable=False) from exc
            self._result = (self._sink.digest(), self._sink.size)
        return self._result

    close = finish

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        elif self._gzip is not None:
            try:
                self._gzip.close()
            except Exception:  # the original error matters more
                pass


def compress_stream(src: BinaryIO, out: BinaryIO, compression: Compression) -> tuple[Digest, int]:
    """Compress all of ``src`` into ``out``.

    Returns:
        The digest and size of the compressed bytes.

    Raises:
        Unavailable: reading ``src`` or writing ``out`` failed.
    """
    writer = CompressedWriter(out, compression)
    try:
        while chunk := src.read(_CHUNK):
            writer.write(chunk)
    except OSError as exc:
        raise Unavailable(f"reading layer to compress failed: {exc}", retryable=False) from exc
    return writer.finish()
