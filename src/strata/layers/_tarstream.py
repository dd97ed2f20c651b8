"""The tar wire format, read and written as streams (private to :mod:`strata.layers`).

Owns parsing and producing tar headers the way Go's ``archive/tar`` does (which is what
docker, containerd and umoci use): ustar, GNU and PAX headers, GNU long names, base-256
numbers, ``SCHILY.xattr.*`` records.  :class:`TarReader` hashes every byte it reads so that the
layer's diff_id is computed over exactly the stream; :class:`TarWriter` writes deterministic
PAX-format archives and hashes what it writes.

This module does no filesystem I/O of its own (it writes member data to a file descriptor the
caller opened) and never reads more than a few buffers of the stream into memory.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from dataclasses import dataclass
from typing import BinaryIO, Final

from strata.errors import InvalidContent, Unavailable
from strata.oci import SHA256, Digest

__all__ = [
    "BLOCK",
    "BLOCKDEV",
    "CHARDEV",
    "DIR",
    "FIFO",
    "HARDLINK",
    "REG",
    "SYMLINK",
    "Member",
    "TarReader",
    "TarWriter",
]

BLOCK: Final = 512
REG: Final = "0"
HARDLINK: Final = "1"
SYMLINK: Final = "2"
CHARDEV: Final = "3"
BLOCKDEV: Final = "4"
DIR: Final = "5"
FIFO: Final = "6"

_CHUNK: Final = 1 << 20
# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname
# devmajor devminor prefix (ustar; GNU keeps atime/ctime where ustar has its prefix)
_HEADER: Final = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
_MAX_SPECIAL: Final = 1 << 20  # Go's maxSpecialFileSize for PAX records and GNU long names
_ZERO_BLOCK: Final = bytes(BLOCK)
_NS: Final = 1_000_000_000
_SPECIAL: Final = frozenset({b"x", b"g", b"L", b"K"})
_TYPES: Final = {
    b"0": REG,
    b"7": REG,  # contiguous file: a regular file everywhere that matters
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHARDEV,
    b"4": BLOCKDEV,
    b"5": DIR,
    b"6": FIFO,
}


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member, with PAX and GNU extensions already merged in.

    Attributes:
        name: the member name as stored (not normalised), bytes decoded as UTF-8 with
            ``surrogateescape`` so ``os`` functions re-encode it to the same bytes.
        type: one of REG, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIR, FIFO.
        mode: permission bits including setuid/setgid/sticky (``& 0o7777``).
        size: data bytes that follow the header (0 for header-only types).
        mtime_ns: modification time in nanoseconds since the epoch.
        atime_ns: access time when the archive carries one (PAX ``atime`` or GNU), else None.
        xattrs: extended attributes from ``SCHILY.xattr.*`` records, or None.
        offset: the offset of the member's first header in the stream.
    """

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int | None
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] | None
    offset: int


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstring(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def _number(field: bytes, what: str, offset: int) -> int:
    """Parse a numeric header field: octal text, or GNU base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        inv = 0xFF if field[0] & 0x40 else 0
        value = 0
        for i, byte in enumerate(field):
            byte ^= inv
            if i == 0:
                byte &= 0x7F
            value = (value << 8) | byte
        if value >= 1 << 63:
            raise InvalidContent(f"invalid tar header at offset {offset}: {what} overflows")
        return ~value if inv else value
    text = _cstring(field).strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise InvalidContent(f"invalid tar header at offset {offset}: {what} is not a number: {field!r}")
    return int(text, 8)


def _octal(field: bytes, what: str, offset: int) -> int:
    """:func:`_number`, with a fast path for the usual zero-padded octal text."""
    try:
        value = int(field.strip(b" \x00") or b"0", 8)
    except ValueError:
        return _number(field, what, offset)
    return value if value >= 0 else _number(field, what, offset)


def _pax_time(text: bytes, offset: int) -> int:
    """Parse a PAX time (``-?\\d+(\\.\\d+)?``) to nanoseconds."""
    try:
        raw = text.decode("ascii")
        negative = raw.startswith("-")
        whole, _, frac = raw.lstrip("-").partition(".")
        if not whole.isdigit() or (frac and not frac.isdigit()):
            raise ValueError(raw)
        ns = int(whole) * _NS + int((frac + "000000000")[:9])
    except (UnicodeDecodeError, ValueError):
        raise InvalidContent(f"invalid PAX time {text!r} at offset {offset}") from None
    return -ns if negative else ns


def _parse_pax(data: bytes, offset: int) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        space = data.find(b" ", pos, pos + 24)
        try:
            length = int(data[pos:space]) if space > pos else -1
        except ValueError:
            length = -1
        stop = pos + length
        if length <= space - pos or stop > end or data[stop - 1] != 0x0A:
            raise InvalidContent(f"invalid PAX extended header at offset {offset}")
        key, eq, value = data[space + 1 : stop - 1].partition(b"=")
        if not eq or not key:
            raise InvalidContent(f"invalid PAX record {key!r} at offset {offset}")
        records[key] = value
        pos = stop
    return records


class _Prefetch:
    """Reads a stream ahead in a thread, hashing what it reads, a few chunks at most.

    Reading the (decompressing) stream and hashing its bytes release the GIL, so they run
    beside the tar parsing and the file writes of the thread that consumes the chunks.  A
    failure of the stream is raised by :meth:`read` where it happened in the stream.
    """

    __slots__ = ("_ended", "_queue", "_stop", "_stream", "_thread", "hash")

    def __init__(self, stream: BinaryIO, depth: int) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = False
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="strata-tar-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream = self._stream
        update = self.hash.update
        try:
            while not self._stop:
                try:
                    data = stream.read(_CHUNK)
                except OSError as exc:
                    raise Unavailable(f"reading layer stream failed: {exc}", retryable=False) from exc
                if data:
                    update(data)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the consuming thread
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self) -> bytes:
        """The next chunk (b"" at the end of the stream)."""
        if self._ended:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if not item:
            self._ended = True
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (it ends once a pending read of the stream returns)."""
        self._stop = True
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(0.05)


class TarReader:
    """Reads members from an uncompressed tar stream, hashing every byte read.

    Tolerates what Go's reader tolerates: a stream that ends right after a member's data
    (without padding or the end-of-archive blocks) or at a header boundary ends the archive.
    Everything else that is short or malformed raises :class:`InvalidContent`.

    Usage: call :meth:`next` until it returns None, consuming each regular member's data with
    :meth:`copy_to_fd` or :meth:`skip` (an unconsumed remainder is skipped by :meth:`next`), then
    :meth:`finish` to hash the rest of the stream.  With ``prefetch``, a thread reads (and so
    decompresses) and hashes the stream ahead of the parsing: :meth:`close` stops it, so use
    the reader as a context manager.
    """

    __slots__ = (
        "_buf",
        "_done",
        "_hash",
        "_pad",
        "_pending",
        "_pending_name",
        "_pos",
        "_prefetch",
        "_stream",
        "size",
    )

    def __init__(self, stream: BinaryIO, *, prefetch: bool = False) -> None:
        """Args:
        stream: the uncompressed tar stream, read once, sequentially.
        prefetch: read and hash it in a thread, at most 8 chunks (8 MiB) ahead.
        """
        self._stream = stream
        self._hash = hashlib.sha256()
        self._prefetch = _Prefetch(stream, 8) if prefetch else None
        self.size = 0
        self._buf = b""
        self._pos = 0
        self._pending = 0
        self._pad = 0
        self._pending_name = ""
        self._done = False

    def close(self) -> None:
        """Stop reading ahead (idempotent; the reader is unusable afterwards)."""
        if self._prefetch is not None:
            self._prefetch.close()

    def __enter__(self) -> TarReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw stream -------------------------------------------------------------------------

    def _read_stream(self, n: int) -> bytes:
        prefetch = self._prefetch
        if prefetch is not None:
            data = prefetch.read()
            self.size += len(data)
            return data
        try:
            data = self._stream.read(n)
        except OSError as exc:
            raise Unavailable(f"reading layer stream failed: {exc}", retryable=False) from exc
        if data:
            self._hash.update(data)
            self.size += len(data)
        return data

    def _take(self, n: int) -> bytes:
        """Return the next ``n`` bytes, or fewer only at the end of the stream."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        head = self._buf[pos:]
        have = len(head)
        data = self._read_stream(_CHUNK)
        if have + len(data) >= n:  # the usual case: copy only what is asked for
            need = n - have
            self._buf = data
            self._pos = need
            return head + data[:need] if have else data[:need]
        parts = [head, data]
        have += len(data)
        while data and have < n:
            data = self._read_stream(_CHUNK)
            if not data:
                break
            parts.append(data)
            have += len(data)
        buf = b"".join(parts)
        self._buf = buf
        self._pos = min(n, len(buf))
        return buf[:n]

    def _offset(self) -> int:
        return self.size - (len(self._buf) - self._pos)

    def _consume(self, n: int, fd: int | None) -> int:
        """Pass ``n`` data bytes to ``fd`` (or drop them); returns how many were available."""
        remaining = n
        while remaining:
            avail = len(self._buf) - self._pos
            if avail:
                take = min(avail, remaining)
                if fd is not None:
                    view = memoryview(self._buf)[self._pos : self._pos + take]
                    while view:
                        view = view[os.write(fd, view) :]
                self._pos += take
                remaining -= take
                continue
            self._buf = b""
            self._pos = 0
            if remaining >= _CHUNK:
                data = self._read_stream(_CHUNK)
                if not data:
                    break
                if fd is not None:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                remaining -= len(data)
            else:
                data = self._read_stream(_CHUNK)
                if not data:
                    break
                self._buf = data
        return n - remaining

    # -- members ----------------------------------------------------------------------------

    def copy_to_fd(self, fd: int) -> None:
        """Write the current member's remaining data to ``fd``.

        Raises:
            InvalidContent: the stream ends before the member's declared size.
        """
        self._data(fd)

    def skip(self) -> None:
        """Discard the current member's remaining data.

        Raises:
            InvalidContent: the stream ends before the member's declared size.
        """
        self._data(None)

    def _data(self, fd: int | None) -> None:
        want = self._pending
        if not want:
            return
        self._pending = 0
        got = self._consume(want, fd)
        if got != want:
            raise InvalidContent(
                f"unexpected end of data in member {self._pending_name!r} ({got} of {want} bytes)",
                path=self._pending_name,
            )

    def _read_special(self, size: int, what: str, offset: int) -> bytes:
        if size > _MAX_SPECIAL:
            raise InvalidContent(f"{what} at offset {offset} is too large ({size} bytes)")
        data = self._take(size)
        if len(data) != size:
            raise InvalidContent(f"unexpected end of data in {what} at offset {offset}")
        self._skip_padding(size, what)
        return data

    def _skip_padding(self, size: int, name: str) -> None:
        pad = -size % BLOCK
        if pad:
            got = len(self._take(pad))
            if got == 0:
                self._done = True  # Go: EOF right after the data ends the archive
            elif got != pad:
                raise InvalidContent(
                    f"unexpected end of tar stream in the padding after member {name!r}",
                    path=name,
                )

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive.

        Raises:
            InvalidContent: a truncated or malformed header, an unsupported member type
                (sparse files, volume labels), or truncated data of the previous member.
        """
        if self._done:
            return None
        if self._pending:
            self.skip()
        if self._pad:
            pad, self._pad = self._pad, 0
            got = len(self._take(pad))
            if got == 0:
                self._done = True
                return None
            if got != pad:
                raise InvalidContent(
                    f"unexpected end of tar stream in the padding after member {self._pending_name!r}",
                    path=self._pending_name,
                )
        pax: dict[bytes, bytes] | None = None
        long_name: bytes | None = None
        long_link: bytes | None = None
        first_offset = -1
        while True:
            offset = self._offset()
            if first_offset < 0:
                first_offset = offset
            block = self._take(BLOCK)
            if len(block) < BLOCK:
                if not block:
                    self._done = True
                    return None
                raise InvalidContent(f"truncated tar header at offset {offset}")
            if block == _ZERO_BLOCK:
                after = self._take(BLOCK)
                if not after or after == _ZERO_BLOCK:
                    self._done = True
                    return None
                raise InvalidContent(
                    f"invalid tar header at offset {offset + BLOCK}: data after a zero block"
                )
            member = self._parse(
                block, offset, first=first_offset, pax=pax, long_name=long_name, long_link=long_link
            )
            if isinstance(member, Member):
                return member
            kind, size = member
            if kind == b"x":
                pax = _parse_pax(self._read_special(size, "PAX header", offset), offset)
            elif kind == b"g":
                self._read_special(size, "PAX global header", offset)
            elif kind == b"L":
                long_name = _cstring(self._read_special(size, "GNU long name", offset))
            else:  # b"K"
                long_link = _cstring(self._read_special(size, "GNU long link", offset))
            if self._done:
                return None

    def _parse(
        self,
        block: bytes,
        offset: int,
        *,
        first: int,
        pax: dict[bytes, bytes] | None,
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> Member | tuple[bytes, int]:
        (
            name_f,
            mode_f,
            uid_f,
            gid_f,
            size_f,
            mtime_f,
            chksum_f,
            flag,
            link_f,
            magic,
            _,
            _,
            devmajor_f,
            devminor_f,
            prefix_f,
        ) = _HEADER.unpack(block)
        try:
            chksum = _octal(chksum_f, "checksum", offset)
        except InvalidContent:
            chksum = -1
        unsigned = sum(block) - sum(chksum_f) + 256
        if chksum != unsigned:
            signed = sum(b - 256 if b > 127 else b for b in block)
            signed -= sum(b - 256 if b > 127 else b for b in chksum_f) - 256
            if chksum != signed:
                raise InvalidContent(f"invalid tar header at offset {offset}: bad checksum")
        size = _octal(size_f, "size", offset)
        if size < 0:
            raise InvalidContent(f"invalid tar header at offset {offset}: negative size")
        if flag in _SPECIAL:
            return flag, size

        atime_ns: int | None = None
        raw_name = name_f.partition(b"\x00")[0]
        if magic == b"ustar\x0000":
            if block[508:512] == b"tar\x00":  # star
                prefix = prefix_f[:131].partition(b"\x00")[0]
            else:
                prefix = prefix_f.partition(b"\x00")[0]
            if prefix:
                raw_name = prefix + b"/" + raw_name
        elif magic == b"ustar  \x00" and prefix_f[0] != 0:  # GNU, with an atime
            atime_ns = _octal(prefix_f[:12], "atime", offset) * _NS
        mtime_ns = _octal(mtime_f, "mtime", offset) * _NS
        uid = _octal(uid_f, "uid", offset)
        gid = _octal(gid_f, "gid", offset)
        raw_link = link_f.partition(b"\x00")[0]
        xattrs: dict[str, bytes] | None = None
        if pax:
            for key, value in pax.items():
                if not value:
                    # Go's archive/tar (docker, umoci, containers/storage) skips empty PAX
                    # values: an empty xattr record sets no xattr, an empty path keeps ustar's.
                    continue
                if key.startswith(b"SCHILY.xattr."):
                    if xattrs is None:
                        xattrs = {}
                    xattrs[_decode(key[13:])] = value
                elif key == b"path":
                    raw_name = value
                elif key == b"linkpath":
                    raw_link = value
                elif key == b"size":
                    size = _pax_int(value, "size", offset)
                elif key == b"uid":
                    uid = _pax_int(value, "uid", offset)
                elif key == b"gid":
                    gid = _pax_int(value, "gid", offset)
                elif key == b"mtime":
                    mtime_ns = _pax_time(value, offset)
                elif key == b"atime":
                    atime_ns = _pax_time(value, offset)
                elif key.startswith(b"GNU.sparse."):
                    raise InvalidContent(
                        f"sparse member {_decode(raw_name)!r} at offset {offset} is not supported",
                        path=_decode(raw_name),
                    )
        if long_name is not None:
            raw_name = long_name
        if long_link is not None:
            raw_link = long_link
        name = _decode(raw_name)

        if flag == b"\x00":
            kind = DIR if raw_name.endswith(b"/") else REG
        else:
            mapped = _TYPES.get(flag)
            if mapped is None:
                what = "sparse member" if flag == b"S" else f"member type {flag!r}"
                raise InvalidContent(f"unsupported {what} {name!r} at offset {offset}", path=name)
            kind = mapped
        if kind != REG:
            size = 0
        devmajor = devminor = 0
        if kind in (CHARDEV, BLOCKDEV):
            devmajor = _octal(devmajor_f, "devmajor", offset)
            devminor = _octal(devminor_f, "devminor", offset)
        self._pending = size
        self._pad = -size % BLOCK
        self._pending_name = name
        return Member(
            name,
            kind,
            _octal(mode_f, "mode", offset) & 0o7777,
            uid,
            gid,
            size,
            mtime_ns,
            atime_ns,
            _decode(raw_link),
            devmajor,
            devminor,
            xattrs,
            first,
        )

    def finish(self) -> tuple[Digest, int]:
        """Hash the rest of the stream (end-of-archive blocks, record padding, anything else).

        Returns:
            The sha256 of every byte of the stream and the number of bytes.

        Raises:
            InvalidContent: the stream is corrupt (raised by a decompressing stream).
        """
        self._pending = 0
        self._buf = b""
        self._pos = 0
        while self._read_stream(_CHUNK):
            pass
        digest = self._hash
        if self._prefetch is not None:
            self._prefetch.close()  # it has read to the end: the thread is done
            digest = self._prefetch.hash
        return Digest(SHA256, digest.hexdigest()), self.size


def _pax_int(value: bytes, what: str, offset: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidContent(f"invalid PAX {what} {value!r} at offset {offset}") from None
    if number < 0:
        raise InvalidContent(f"invalid PAX {what} {value!r} at offset {offset}")
    return number


# -- writing ---------------------------------------------------------------------------------


def _put_octal(block: bytearray, start: int, width: int, value: int) -> bool:
    """Go's formatOctal: zero-padded digits and a NUL; False when the value does not fit."""
    if value < 0 or value >= 8 ** (width - 1):
        block[start : start + width] = b"0" * (width - 1) + b"\x00"
        return False
    block[start : start + width] = b"%0*o\x00" % (width - 1, value)
    return True


def _put_string(block: bytearray, start: int, width: int, value: bytes) -> None:
    value = value[:width]
    block[start : start + len(value)] = value


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """Go's splitUSTARPath: a prefix/name split for names over 100 bytes, if one exists."""
    length = len(name)
    if length <= 100:
        return None
    if length > 156:
        length = 156
    elif name[length - 1 : length] == b"/":
        length -= 1
    i = name.rfind(b"/", 0, length)
    suffix_len = len(name) - i - 1
    if i <= 0 or suffix_len > 100 or suffix_len == 0 or i > 155:
        return None
    return name[:i], name[i + 1 :]


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    size = len(body) + len(str(len(body)))
    if len(str(size)) + len(body) != size:
        size = len(str(size)) + len(body)
    return str(size).encode() + body


def _ascii(raw: bytes) -> bytes:
    return bytes(b for b in raw if b < 0x80) if not raw.isascii() else raw


class TarWriter:
    """Writes a deterministic tar stream the way Go's writer does with ``Format = PAX``.

    A member is a plain ustar header (names over 100 bytes split into prefix/name when they
    can be) unless something only PAX can say is needed — a long or non-ASCII name or link,
    a large number, xattrs — in which case a ``PaxHeaders.0/NAME`` extended header comes first.
    uname/gname are empty, times are whole seconds, there are no atime/ctime records.  The
    archive ends with two zero blocks and no record padding.
    """

    __slots__ = ("_closed", "_hash", "_out", "entries", "size")

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0
        self.entries = 0
        self._closed = False

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)
        self._out.write(data)

    def add(
        self,
        name: str,
        kind: str,
        *,
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime: int = 0,
        linkname: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: dict[str, bytes] | None = None,
    ) -> None:
        """Write one member's header(s); regular files then need exactly ``size`` data bytes.

        ``name`` is written as given (directories should end in ``/``).
        """
        raw_name = os.fsencode(name)
        raw_link = os.fsencode(linkname)
        records: dict[bytes, bytes] = {}
        prefix = b""
        short_name = raw_name
        if len(raw_name) > 100 or not raw_name.isascii():
            split = _split_ustar(raw_name) if raw_name.isascii() else None
            if split is None:
                records[b"path"] = raw_name
                short_name = _ascii(raw_name)
            else:
                prefix, short_name = split
        if len(raw_link) > 100 or not raw_link.isascii():
            records[b"linkpath"] = raw_link
            raw_link = _ascii(raw_link)
        block = bytearray(BLOCK)
        _put_string(block, 0, 100, short_name)
        _put_octal(block, 100, 8, mode)
        if not _put_octal(block, 108, 8, uid):
            records[b"uid"] = b"%d" % uid
        if not _put_octal(block, 116, 8, gid):
            records[b"gid"] = b"%d" % gid
        if not _put_octal(block, 124, 12, size):
            records[b"size"] = b"%d" % size
        if not _put_octal(block, 136, 12, mtime):
            records[b"mtime"] = b"%d" % mtime
        block[156:157] = kind.encode()
        _put_string(block, 157, 100, raw_link)
        _put_octal(block, 329, 8, devmajor)
        _put_octal(block, 337, 8, devminor)
        _put_string(block, 345, 155, prefix)
        if xattrs:
            for key, value in xattrs.items():
                records[b"SCHILY.xattr." + os.fsencode(key)] = value
        if records:
            data = b"".join(_pax_record(k, records[k]) for k in sorted(records))
            head, _, tail = raw_name.rstrip(b"/").rpartition(b"/")
            pax_name = (head + b"/" if head else b"") + b"PaxHeaders.0/" + tail
            pax = bytearray(BLOCK)
            _put_string(pax, 0, 100, _ascii(pax_name))
            for start, width in ((100, 8), (108, 8), (116, 8), (136, 12), (329, 8), (337, 8)):
                _put_octal(pax, start, width, 0)
            _put_octal(pax, 124, 12, len(data))
            pax[156:157] = b"x"
            self._seal(pax)
            self._emit(pax)
            self._emit(data)
            self._pad(len(data))
        self._seal(block)
        self._emit(block)
        self.entries += 1

    @staticmethod
    def _seal(block: bytearray) -> None:
        block[257:265] = b"ustar\x0000"
        block[148:156] = b"        "
        block[148:156] = b"%06o\x00 " % sum(block)

    def write_data(self, data: bytes | memoryview) -> None:
        """Write member data (call :meth:`end_data` once the member's bytes are all written)."""
        self._emit(data)

    def end_data(self, size: int) -> None:
        """Pad the data of a member of ``size`` bytes to the block size."""
        self._pad(size)

    def _pad(self, size: int) -> None:
        pad = -size % BLOCK
        if pad:
            self._emit(bytes(pad))

    def close(self) -> tuple[Digest, int]:
        """Write the end-of-archive blocks; returns the sha256 and size of everything written."""
        if not self._closed:
            self._emit(bytes(2 * BLOCK))
            self._closed = True
        return Digest(SHA256, self._hash.hexdigest()), self.size
