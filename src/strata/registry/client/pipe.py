"""A bounded in-memory pipe: one thread feeds chunks, another reads them as a stream.

A pull tees each layer's bytes, as they arrive from the network, into the content store and
into this pipe; a second thread decompresses and extracts (or scans) from the pipe, so that
download, decompression and unpack overlap.  When the reader stops early (it failed), feeding
keeps working and drops the data, so the download is never blocked by a dead consumer.
"""

from __future__ import annotations

import queue
import threading

__all__ = ["ChunkPipe"]


class _End:
    pass


_END = _End()


class ChunkPipe:
    """Bytes fed by one thread, read as a binary stream by another."""

    def __init__(self, max_chunks: int = 64) -> None:
        self._queue: queue.Queue[bytes | _End | BaseException] = queue.Queue(max_chunks)
        self._buffer = memoryview(b"")
        self._eof = False
        self._reader_gone = threading.Event()

    # -- writer side ---------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Hand ``data`` to the reader (blocks while the pipe is full, unless it is gone)."""
        while not self._reader_gone.is_set():
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, error: BaseException | None = None) -> None:
        """End the stream; with ``error`` the reader raises it instead of seeing EOF."""
        item: _End | BaseException = error if error is not None else _END
        while not self._reader_gone.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- reader side ---------------------------------------------------------------------
    def abandon(self) -> None:
        """The reader will read no more: further feeds are dropped."""
        self._reader_gone.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        while not self._buffer and not self._eof:
            item = self._queue.get()
            if isinstance(item, _End):
                self._eof = True
            elif isinstance(item, BaseException):
                self._eof = True
                raise item
            else:
                self._buffer = memoryview(item)
        if not self._buffer:
            return b""
        out = bytes(self._buffer[:size])
        self._buffer = self._buffer[size:]
        return out

    def readinto(self, target: bytearray | memoryview) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)
