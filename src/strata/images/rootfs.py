"""Unpack image layers into snapshots, as containerd's ``rootfs.ApplyLayers`` — in parallel
and from streams.

Owns turning a stack of layers (diff_ids from the image config, compressed bytes from the
content store or from a download still in progress) into committed snapshots named by
chainID.  For each layer: ``stat(chainID)``; if missing, prepare a temporary key
(``extract-<pid>-<start>-<rand> <chainID>``), apply the layer into it, check its diff_id
against the config, commit it as the chainID (a chainID committed meanwhile by someone else
is success); on any error the temporary key is removed.

Parallel: tar extraction in Python is bound by the GIL, so layers are extracted in worker
*processes* (:class:`Extractor`, a ``forkserver`` pool).  On a snapshotter that can rebase
(overlay: each snapshot is an independent directory of one layer's changes, written with
overlay whiteouts) every layer is extracted at once into an active snapshot without a
parent, and committed in chain order onto its parent as soon as the layers below are
committed.  On one that cannot (native: each snapshot a full copy), layers are applied one
after another on their parent's copy, with OCI whiteouts.

Streaming, for pull: :class:`ImageUnpack` accepts each layer either as a blob already in the
store (:meth:`ImageUnpack.blob`) or as a stream of compressed bytes fed while they arrive
(:meth:`ImageUnpack.stream` returns a :class:`LayerFeed`)::

    with ImageUnpack(snapshotter, config.rootfs.diff_ids, extractor=extractor) as job:
        for i in job.needed:                       # layers whose snapshots are missing
            feed = job.stream(i, Compression.GZIP)
            # in the download thread of layer i:
            #   for chunk in response: writer.write(chunk); feed.write(chunk)
            #   writer.commit()  -> on DigestMismatch: feed.abort(exc); else feed.close()
        top = job.wait()                           # the chainID of the whole image

The bytes go to the worker through a FIFO (a pipe with a name), so decompression and
extraction run in another process while the download goes on; ``LayerFeed.write`` blocks
while the worker is behind (backpressure) and raises if the extraction has failed.  A layer
whose download is aborted is never committed: its temporary snapshot is removed.  Nothing is
committed for a layer before its diff_id has been checked, and the compressed digest is the
caller's to check (the content store writer does) before it calls ``close``: ``wait``
commits only layers whose feed was closed, not aborted.

Crash safety: a process killed mid-unpack leaves active ``extract-`` keys whose owner is
dead; :func:`remove_abandoned` (run at the start of every :class:`ImageUnpack`) removes
them, and the snapshotter's own ``cleanup`` removes half-made directories.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import operator
import os
import secrets
import select
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self, cast

from strata.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    StrataError,
    Unavailable,
)
from strata.layers import ApplyOptions, LayerStats, WhiteoutMode, apply, open_decompressed
from strata.oci import Compression, Digest, chain_ids
from strata.progress import Progress, ProgressEvent, Stage, no_progress
from strata.snapshots import Kind, Mount, Snapshotter

__all__ = [
    "Extractor",
    "ImageUnpack",
    "LayerFeed",
    "apply_layers",
    "remove_abandoned",
]

_KEY_PREFIX = "extract-"
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_CHUNK = 1 << 20
_OPENED = ".opened"


# -- worker side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Failure:
    """A StrataError crossing the process boundary (their constructors take keywords)."""

    cls: type[StrataError]
    message: str
    attrs: dict[str, object]

    def rebuild(self) -> StrataError:
        exc = self.cls.__new__(self.cls)
        Exception.__init__(exc, self.message)
        exc.__dict__.update(self.attrs)
        return exc


def _extract(target: str, source: str, compression: str | None,
             overlay: bool) -> LayerStats | _Failure:
    """Worker: decompress ``source`` (a blob file or a FIFO) and apply it onto ``target``."""
    options = ApplyOptions(whiteouts=WhiteoutMode.OVERLAY if overlay else WhiteoutMode.OCI)
    try:
        try:
            raw = open(source, "rb", buffering=0)  # noqa: SIM115 - closed below
            if stat.S_ISFIFO(os.fstat(raw.fileno()).st_mode):
                # Tell the feeding side it may close its end now: the bytes in the pipe
                # outlive its close only while a reader has the FIFO open.
                os.close(os.open(f"{source}{_OPENED}", os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            raise Unavailable(f"cannot open layer source {source}: {exc.strerror}") from exc
        with raw:
            comp = Compression(compression) if compression is not None else None
            with open_decompressed(cast(BinaryIO, raw), comp) as stream:
                return apply(Path(target), stream, options)
    except StrataError as exc:
        return _Failure(type(exc), str(exc), dict(exc.__dict__))


class Extractor:
    """A pool of worker processes that extract layers (thread-safe; reuse it across images).

    Workers are forked from a ``forkserver`` that has imported strata once, so they start
    fast and inherit no threads or locks of the caller.
    """

    def __init__(self, workers: int | None = None) -> None:
        """Args:
        workers: how many layers are extracted at once (default: the number of CPUs).
        """
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["strata.images.rootfs"])
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        self._lock = threading.Lock()  # submit() from several threads races process spawning

    def submit(self, target: Path, source: Path, compression: Compression | None, *,
               overlay: bool) -> Future[LayerStats | _Failure]:
        """Extract the layer at ``source`` (blob file or FIFO) onto ``target`` in a worker."""
        with self._lock:
            return self._pool.submit(_extract, str(target), str(source),
                                     None if compression is None else str(compression), overlay)

    def close(self) -> None:
        """Stop the workers (after the layers submitted so far)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -- stale keys ----------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(b")")[2].split()[19].decode()


def _owner_token() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def _temp_key(chain: Digest) -> str:
    return f"{_KEY_PREFIX}{_owner_token()}-{secrets.token_hex(4)} {chain}"


def remove_abandoned(snapshotter: Snapshotter) -> list[str]:
    """Remove the ``extract-`` active snapshots whose process is gone; returns their keys."""
    removed: list[str] = []
    for info in list(snapshotter.walk()):
        if info.kind is not Kind.ACTIVE or not info.name.startswith(_KEY_PREFIX):
            continue
        parts = info.name[len(_KEY_PREFIX):].split(" ", 1)[0].split("-")
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        if _start_time(int(parts[0])) == parts[1]:
            continue  # its process is alive: work in progress
        with contextlib.suppress(NotFound):
            snapshotter.remove(info.name)
            removed.append(info.name)
    snapshotter.cleanup()
    return removed


def _target(mounts: Sequence[Mount]) -> Path:
    """The directory a layer is written into: the overlay upper dir or the bind source."""
    if len(mounts) == 1:
        mount = mounts[0]
        if mount.type == "overlay":
            upper = mount.option("upperdir")
            if upper:
                return Path(upper)
        elif mount.type == "bind":
            return Path(mount.source)
    raise InvalidArgument(f"cannot apply a layer to mounts {mounts!r}")


# -- streams -------------------------------------------------------------------------------


class LayerFeed:
    """The writing end of a streamed layer: ``write`` compressed bytes, then ``close``.

    Thread-safe with respect to :meth:`abort`; ``write`` and ``close`` are called by one
    thread (the download).
    """

    def __init__(self, fifo: Path) -> None:
        self.path = fifo
        # O_RDWR never blocks on a FIFO, so the worker may start later; non-blocking writes
        # let a full pipe be waited on while watching for failure and abort.
        self._fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self._lock = threading.Lock()
        self._future: Future[LayerStats | _Failure] | None = None
        self.aborted: BaseException | None = None
        self.closed = False
        self.written = 0

    def _attach(self, future: Future[LayerStats | _Failure]) -> None:
        self._future = future

    def write(self, data: bytes | memoryview) -> int:
        """Pass compressed bytes on to the extraction (blocks while the worker is behind).

        Raises:
            StrataError: the extraction has failed or the feed was aborted (stop feeding).
        """
        view = memoryview(data)
        total = len(view)
        while view:
            if self.aborted is not None:
                raise Unavailable(f"layer stream aborted: {self.aborted}", retryable=False)
            future = self._future
            if future is not None and future.done():
                result = future.result()
                if isinstance(result, _Failure):
                    raise result.rebuild()
                raise InvalidArgument("layer stream continues after the end of its tar")
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                select.select([], [self._fd], [], 0.2)
                continue
            except OSError as exc:
                raise Unavailable(f"layer stream broken: {exc.strerror}") from exc
            view = view[n:]
        self.written += total
        return total

    def close(self) -> None:
        """The bytes are complete (and their digest verified): let the extraction finish.

        Waits until the worker has opened the FIFO (the pipe's bytes would be lost if both
        ends were closed before), or until the extraction is over.
        """
        opened = Path(f"{self.path}{_OPENED}")
        while not opened.exists():
            future = self._future
            if future is not None and future.done():
                break
            time.sleep(0.005)
        self._release()

    def _release(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self._fd)

    def abort(self, reason: BaseException | None = None) -> None:
        """Discard this layer: its snapshot will not be committed."""
        self.aborted = reason or Unavailable("layer stream aborted", retryable=False)
        future = self._future
        if future is None or future.cancel():  # never started: nothing to unblock
            self._release()
            return
        self.close()


# -- one image -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Layer:
    index: int
    chain: Digest
    key: str | None = None
    future: Future[LayerStats | _Failure] | None = None
    feed: LayerFeed | None = None
    source: Path | None = None
    compression: Compression | None = None
    stats: LayerStats | None = None


class ImageUnpack:
    """Unpacks one image's layers into a snapshotter (see the module docstring).

    Use as a context manager: leaving it with an exception (or without :meth:`wait`) removes
    every temporary snapshot it made.
    """

    def __init__(self, snapshotter: Snapshotter, diff_ids: Sequence[Digest], *,
                 extractor: Extractor | None = None, progress: Progress = no_progress) -> None:
        """Args:
        snapshotter: where the snapshots go.
        diff_ids: the image config's ``rootfs.diff_ids``, bottom first.
        extractor: the worker pool (default: a private one, closed with this object).
        progress: receives EXTRACTING / PULL_COMPLETE events per layer (id: short diff_id).
        """
        self.snapshotter = snapshotter
        self.diff_ids = list(diff_ids)
        self.chain_ids = chain_ids(self.diff_ids)
        self._own_extractor = extractor is None
        self.extractor = extractor if extractor is not None else Extractor()
        self.progress = progress
        self.overlay = snapshotter.rebase
        self._tmp: Path | None = None  # made on the first stream(): where the FIFOs live
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        remove_abandoned(snapshotter)
        first_missing = len(self.diff_ids)
        for i in range(len(self.chain_ids) - 1, -1, -1):
            if self._exists(self.chain_ids[i]):
                break
            first_missing = i
        self.needed: list[int] = list(range(first_missing, len(self.diff_ids)))
        self._layers: dict[int, _Layer] = {}

    @property
    def top(self) -> Digest | None:
        """The chainID of the whole image (None for an image without layers)."""
        return self.chain_ids[-1] if self.chain_ids else None

    def _exists(self, chain: Digest) -> bool:
        try:
            return self.snapshotter.stat(str(chain)).kind is Kind.COMMITTED
        except NotFound:
            return False

    def _register(self, index: int, compression: Compression | None, source: Path | None,
                  feed: LayerFeed | None) -> None:
        if index not in self.needed:
            raise InvalidArgument(f"layer {index} is not needed (its snapshot exists)"
                                  if 0 <= index < len(self.diff_ids) else
                                  f"the image has no layer {index}")
        with self._lock:
            if index in self._layers:
                raise AlreadyExists(f"layer {index} is already being unpacked")
            layer = _Layer(index, self.chain_ids[index], source=source, feed=feed,
                           compression=compression)
            self._layers[index] = layer
            if self.overlay:
                self._start(layer, None)
            elif index == self.needed[0]:  # its parent is committed already
                self._start(layer, str(self.chain_ids[index - 1]) if index else None)
            self._ready.notify_all()

    def _start(self, layer: _Layer, parent: str | None) -> None:
        if layer.feed is not None and layer.feed.aborted is not None:
            raise layer.feed.aborted
        key = _temp_key(layer.chain)
        mounts = self.snapshotter.prepare(key, parent)
        layer.key = key
        source = layer.source if layer.source is not None else layer.feed.path if layer.feed \
            else None
        assert source is not None
        self.progress(ProgressEvent(self.diff_ids[layer.index].short(), Stage.EXTRACTING))
        layer.future = self.extractor.submit(_target(mounts), source, layer.compression,
                                             overlay=self.overlay)
        if layer.feed is not None:
            layer.feed._attach(layer.future)

    def blob(self, index: int, path: Path, compression: Compression | None = None) -> None:
        """Unpack layer ``index`` from a complete blob file (e.g. in the content store).

        Raises:
            InvalidArgument: the layer is not in :attr:`needed`.
            AlreadyExists: the layer was given already.
        """
        self._register(index, compression, path, None)

    def stream(self, index: int, compression: Compression | None = None) -> LayerFeed:
        """Unpack layer ``index`` from compressed bytes fed as they arrive.

        Args:
            index: the layer's position (in :attr:`needed`).
            compression: the blob's compression (None: sniffed from the first bytes).

        Returns:
            The feed to write the bytes to, then close (or abort).

        Raises:
            InvalidArgument: the layer is not in :attr:`needed`.
            AlreadyExists: the layer was given already.
        """
        with self._lock:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="strata-unpack-"))
            fifo = self._tmp / f"layer-{index}-{secrets.token_hex(4)}"
        os.mkfifo(fifo, 0o600)
        feed = LayerFeed(fifo)
        try:
            self._register(index, compression, None, feed)
        except BaseException:
            feed._release()
            raise
        return feed

    def _result(self, layer: _Layer) -> LayerStats:
        assert layer.future is not None
        if layer.feed is not None and layer.feed.aborted is not None:
            with contextlib.suppress(Exception):
                layer.future.result()  # the worker's end, whatever it made of the stump
            raise layer.feed.aborted
        result = layer.future.result()
        if layer.feed is not None and layer.feed.aborted is not None:
            raise layer.feed.aborted
        if isinstance(result, _Failure):
            raise result.rebuild()
        if layer.feed is not None and layer.feed.aborted is not None:
            raise layer.feed.aborted
        expected = self.diff_ids[layer.index]
        if result.diff_id != expected:
            raise DigestMismatch(
                f"layer {layer.index} has diff_id {result.diff_id}, the config says {expected}",
                expected=str(expected), actual=str(result.diff_id),
            )
        return result

    def wait(self, timeout: float | None = None) -> Digest | None:
        """Wait for every needed layer, committing each as its chainID in order.

        Every index of :attr:`needed` must be given (blob or stream) — from other threads
        while this waits, or before.

        Returns:
            The chainID of the top layer (None for an image without layers).

        Raises:
            DigestMismatch: a layer's tar does not match its diff_id.
            UnsafeArchive, InvalidContent: a layer is hostile or corrupt.
            Unavailable: a stream was aborted, or ``timeout`` passed waiting for a layer.
        """
        for index in self.needed:
            with self._lock:
                given = self._ready.wait_for(partial(operator.contains, self._layers, index),
                                             timeout)
                if not given:
                    raise Unavailable(f"layer {index} was never given to unpack")
                layer = self._layers[index]
            parent = str(self.chain_ids[index - 1]) if index else None
            try:
                if layer.future is None:
                    self._start(layer, parent)
                stats = self._result(layer)
            except BaseException:
                self._discard(layer)
                raise
            layer.stats = stats
            assert layer.key is not None
            try:
                self.snapshotter.commit(str(layer.chain), layer.key, parent=parent,
                                        rebase=self.overlay)
            except AlreadyExists:  # another unpack committed this chain meanwhile
                self._discard(layer)
            layer.key = None
            self.progress(ProgressEvent(self.diff_ids[index].short(), Stage.PULL_COMPLETE))
        return self.top

    def stats(self) -> dict[int, LayerStats]:
        """What each extracted layer's tar held (after :meth:`wait`)."""
        return {i: lay.stats for i, lay in self._layers.items() if lay.stats is not None}

    def _discard(self, layer: _Layer) -> None:
        if layer.feed is not None:
            layer.feed.abort()
        if layer.future is not None:
            with contextlib.suppress(Exception):
                layer.future.result()
        if layer.key is not None:
            with contextlib.suppress(StrataError):
                self.snapshotter.remove(layer.key)
            layer.key = None

    def close(self) -> None:
        """Remove every temporary snapshot not committed, and the FIFOs."""
        with self._lock:
            layers = list(self._layers.values())
        for layer in layers:
            self._discard(layer)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._own_extractor:
            self.extractor.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def apply_layers(
    snapshotter: Snapshotter,
    layers: Sequence[tuple[Digest, Path, Compression | None]],
    *,
    extractor: Extractor | None = None,
    progress: Progress = no_progress,
    on_layer: Callable[[int, LayerStats], None] | None = None,
) -> Digest | None:
    """Unpack complete layer blobs into ``snapshotter``; returns the top chainID.

    Args:
        snapshotter: where the snapshots go.
        layers: ``(diff_id, blob path, compression)`` per layer, bottom first.
        extractor: the worker pool to use (default: a private one).
        progress: per-layer events.
        on_layer: called with each newly extracted layer's index and stats.

    Raises:
        DigestMismatch: a layer does not match its diff_id; nothing of it is committed.
        UnsafeArchive, InvalidContent: a hostile or corrupt layer.
    """
    with ImageUnpack(snapshotter, [d for d, _, _ in layers], extractor=extractor,
                     progress=progress) as job:
        for index in job.needed:
            _, path, compression = layers[index]
            job.blob(index, path, compression)
        top = job.wait()
        if on_layer is not None:
            for index, stats in sorted(job.stats().items()):
                on_layer(index, stats)
        return top
