"""The build context: the files ``COPY``/``ADD`` may read, and their checksums for the cache.

This module owns a :class:`Context` over a directory (given, or extracted from a tar such as
``strata build - < context.tar``), the ``.dockerignore`` rules in force (``<Dockerfile>
.dockerignore`` next to the Dockerfile wins over the context's ``.dockerignore``, as BuildKit
does), reading the Dockerfile (``-f`` may point outside the context), resolving ``COPY``
sources (Go ``filepath.Match`` wildcards, ignored files invisible, paths outside the context
refused) and content checksums of what a ``COPY``/``ADD`` reads. Checksums cover what ends up
in the image (relative names, types, modes, owners, link targets, xattrs, contents) and never
timestamps, so touching a file does not invalidate the cache and changing an ignored file
changes nothing.

It must not copy into images (the executor does, from :meth:`Context.host_path`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from strata.errors import InvalidArgument, InvalidContent, NotFound
from strata.layers import ApplyOptions, apply, open_decompressed
from strata.oci import Digest

from .ignore import IgnoreRules, go_clean

__all__ = [
    "Context",
    "ContextEntry",
    "has_wildcards",
    "match_component",
]

_WILDCARD_CHARS = frozenset("*?[\\")
_HASH_CHUNK = 1 << 20


def has_wildcards(path: str) -> bool:
    """Whether ``path`` holds ``filepath.Match`` metacharacters (``*``, ``?``, ``[``, ``\\``)."""
    return any(ch in _WILDCARD_CHARS for ch in path)


def match_component(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` for one path component (no ``/`` in either).

    ``*`` matches any run (a leading ``.`` too), ``?`` one character, ``[a-z]``/``[^a-z]``
    a class, ``\\`` escapes the next character.

    Raises:
        InvalidArgument: a malformed pattern (unterminated class).
    """
    return _match(pattern, 0, name, 0)


def _match(pattern: str, pi: int, name: str, ni: int) -> bool:
    while pi < len(pattern):
        ch = pattern[pi]
        if ch == "*":
            while pi < len(pattern) and pattern[pi] == "*":
                pi += 1
            if pi == len(pattern):
                return True
            return any(_match(pattern, pi, name, k) for k in range(ni, len(name) + 1))
        if ni >= len(name):
            if ch == "[":
                _class_end(pattern, pi)
            return False
        if ch == "?":
            pi += 1
            ni += 1
            continue
        if ch == "[":
            end, matched = _class_match(pattern, pi, name[ni])
            if not matched:
                return False
            pi = end
            ni += 1
            continue
        if ch == "\\":
            pi += 1
            if pi >= len(pattern):
                raise InvalidArgument(f"syntax error in pattern {pattern!r}")
            ch = pattern[pi]
        if ch != name[ni]:
            return False
        pi += 1
        ni += 1
    return ni == len(name)


def _class_end(pattern: str, start: int) -> int:
    return _class_match(pattern, start, "\0")[0]


def _class_match(pattern: str, start: int, ch: str) -> tuple[int, bool]:
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    matched = False
    first = True
    while True:
        if i >= len(pattern):
            raise InvalidArgument(f"syntax error in pattern {pattern!r}: unterminated [")
        c = pattern[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if c == "\\":
            i += 1
            if i >= len(pattern):
                raise InvalidArgument(f"syntax error in pattern {pattern!r}")
            c = pattern[i]
        lo = c
        hi = c
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            hi = pattern[i + 2]
            if hi == "\\":
                i += 1
                hi = pattern[i + 2]
            i += 2
            if lo > hi:
                raise InvalidArgument(f"syntax error in pattern {pattern!r}: bad range")
        if lo <= ch <= hi:
            matched = True
        i += 1
    return i, matched != negate


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One path of the context that ``COPY``/``ADD`` can see.

    Attributes:
        path: slash-separated, relative to the context root.
        mode: ``st_mode`` (type and permission bits).
        uid: owner.
        gid: group.
        size: bytes for a regular file, else 0.
        target: the link text for a symlink.
    """

    path: str
    mode: int
    uid: int
    gid: int
    size: int
    target: str | None = None


class Context:
    """A build context rooted at a directory, seen through ``.dockerignore`` rules.

    Use :meth:`from_directory` (with the Dockerfile's path to pick the right ignore file) or
    :meth:`from_tar`; a context made from a tar owns its temporary directory until
    :meth:`close` (or the end of a ``with`` block).
    """

    def __init__(
        self,
        root: Path,
        rules: IgnoreRules | None = None,
        *,
        owned: bool = False,
        digest_memo: MutableMapping[str, str] | None = None,
    ) -> None:
        """A context over ``root`` with ``rules`` (None: no ``.dockerignore``).

        ``digest_memo`` remembers file digests by device, inode, size, mtime and ctime (a
        dict, or a persistent mapping the caller keeps across builds, as BuildKit keeps its
        content-hash cache); by default digests are remembered for this context only.

        Raises:
            NotFound: ``root`` is not a directory.
        """
        if not root.is_dir():
            raise NotFound(f"build context {root} is not a directory")
        self.root = root.resolve()
        self.rules = rules or IgnoreRules()
        self._owned = owned
        self._digests: MutableMapping[str, str] = {} if digest_memo is None else digest_memo

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_directory(
        cls,
        root: Path,
        *,
        dockerfile: Path | None = None,
        digest_memo: MutableMapping[str, str] | None = None,
    ) -> Context:
        """The context at ``root``; ``dockerfile`` (if given) picks ``<name>.dockerignore``.

        Raises:
            NotFound: ``root`` is not a directory.
            InvalidArgument: a malformed ignore pattern.
        """
        return cls(root, _rules_for(root, dockerfile), digest_memo=digest_memo)

    @classmethod
    def from_tar(
        cls, stream: BinaryIO, *, workdir: Path | None = None, dockerfile: str | None = None
    ) -> Context:
        """Extract a context tar (plain, gzip, zstd...) into a private directory.

        Members are written by :func:`strata.layers.apply` (names resolved inside the root;
        absolute, ``..`` and escaping-link members refused) with their modes and owners.

        Args:
            stream: the tar (read to its end).
            workdir: where to make the temporary directory (default: the system's).
            dockerfile: the Dockerfile's path inside the tar, to pick its ignore file.

        Raises:
            UnsafeArchive: a member would escape the context.
            InvalidContent: not a (compressed) tar.
        """
        tmp = Path(tempfile.mkdtemp(prefix="strata-context-", dir=workdir))
        root = tmp / "context"
        root.mkdir()
        try:
            apply(root, open_decompressed(stream), ApplyOptions(allow_devices=False))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        df = root / dockerfile if dockerfile else None
        context = cls(root, _rules_for(root, df), owned=True)
        return context

    @classmethod
    def from_stdin(
        cls, stream: BinaryIO, *, workdir: Path | None = None
    ) -> tuple[Context, str | None]:
        """``strata build -``: a context tar, or a lone Dockerfile and an empty context.

        Returns:
            The context, and the Dockerfile text when stdin held a Dockerfile (not a tar).

        Raises:
            UnsafeArchive: a tar member would escape the context.
            InvalidContent: a truncated or malformed tar.
        """
        head = _read_up_to(stream, 512)
        if _looks_like_archive(head):
            return cls.from_tar(io.BufferedReader(_Prefixed(head, stream)), workdir=workdir), None
        data = head + stream.read()
        tmp = Path(tempfile.mkdtemp(prefix="strata-context-", dir=workdir))
        (tmp / "context").mkdir()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InvalidContent("stdin is neither a tar nor a UTF-8 Dockerfile") from exc
        return cls(tmp / "context", owned=True), text

    def close(self) -> None:
        """Remove the temporary directory of a context extracted from a tar (else nothing)."""
        if self._owned:
            shutil.rmtree(self.root.parent, ignore_errors=True)
            self._owned = False

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- Dockerfile

    def read_dockerfile(self, dockerfile: Path | str | None = None) -> tuple[str, str]:
        """The Dockerfile's text and its display name.

        ``None`` reads ``Dockerfile`` at the root; a relative path is taken from the current
        directory, like ``docker build -f`` (it may lie outside the context); ignore rules do
        not apply to it.

        Raises:
            NotFound: there is no such file.
        """
        path = self.root / "Dockerfile" if dockerfile is None else Path(dockerfile)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"failed to read dockerfile: open {path}: no such file or directory") from None
        except IsADirectoryError:
            raise NotFound(f"failed to read dockerfile: {path} is a directory") from None
        try:
            return data.decode("utf-8"), path.name
        except UnicodeDecodeError as exc:
            raise InvalidContent(f"{path} is not UTF-8 text", path=str(path)) from exc

    # ----------------------------------------------------------------- listing

    def ignored(self, rel: str) -> bool:
        """Whether ``rel`` (relative to the root) is hidden by ``.dockerignore``."""
        rel = go_clean(rel.lstrip("/"))
        if rel == ".":
            return False
        return self.rules.ignored(rel)

    def included(self, rel: str) -> bool:
        """Whether ``rel`` is part of the context for ``COPY``/``ADD`` (the executor's question).

        A file is included unless ignored; an ignored directory still is when a path below it
        is re-included by an exception (it is then the parent of what is sent).
        """
        rel = go_clean(rel.lstrip("/"))
        if rel == ".":
            return True
        if not os.path.lexists(self.host_path(rel)):
            return not self.ignored(rel)
        return not self._hidden(rel)

    def walk(self, below: str = ".") -> Iterator[ContextEntry]:
        """The visible entries under ``below`` (itself first when it is a directory), sorted.

        A directory that is ignored but holds a re-included path (``!`` exception) is listed
        so that the re-included path has a parent, as docker sends it.
        """
        for rel, host, st in self._walk_stats(below):
            yield _entry(rel, host, st)

    def _walk_stats(self, below: str) -> Iterator[tuple[str, str, os.stat_result]]:
        start = go_clean(below.lstrip("/"))
        host = self.host_path(start)
        st = os.lstat(host)
        if not stat.S_ISDIR(st.st_mode):
            if start == "." or not self._ignored_clean(start):
                yield start, host, st
            return
        out: list[tuple[str, str, os.stat_result]] = []
        self._walk_dir(start, host, st, out)
        yield from out

    def _ignored_clean(self, rel: str) -> bool:
        return bool(self.rules) and self.rules.ignored(rel)

    def _walk_dir(
        self, rel: str, host: str, st: os.stat_result, out: list[tuple[str, str, os.stat_result]]
    ) -> None:
        """Append ``rel`` (when visible or a needed parent) and its visible content to ``out``."""
        ignored = rel != "." and self._ignored_clean(rel)
        if ignored and not self.rules.may_include_below(rel):
            return
        mark = len(out)
        out.append((rel, host, st))
        for name in sorted(os.listdir(host)):
            child_rel = name if rel == "." else f"{rel}/{name}"
            child_host = f"{host}/{name}"
            child_st = os.lstat(child_host)
            if stat.S_ISDIR(child_st.st_mode):
                self._walk_dir(child_rel, child_host, child_st, out)
            elif not self._ignored_clean(child_rel):
                out.append((child_rel, child_host, child_st))
        if ignored and len(out) == mark + 1:
            del out[mark]  # an ignored directory with nothing re-included below it

    def files(self) -> list[str]:
        """Every visible path, sorted (directories included, the root excluded)."""
        return [e.path for e in self.walk() if e.path != "."]

    # ----------------------------------------------------------------- sources

    def host_path(self, rel: str) -> str:
        """The host path of context-relative ``rel`` (not resolved through symlinks)."""
        rel = go_clean(rel.lstrip("/"))
        return str(self.root) if rel == "." else os.path.join(self.root, rel)

    def resolve_sources(self, source: str) -> list[str]:
        """The context paths a ``COPY``/``ADD`` source names (already expanded, quotes removed).

        The source is cleaned relative to the context root. Wildcards in any component match
        visible entries with ``filepath.Match`` semantics; a path without wildcards must
        exist and be visible.

        Args:
            source: as written after expansion (``src/*.txt``, ``./a``, ``/a``, ``.``).

        Returns:
            Context-relative paths, sorted (``"."`` for the root).

        Raises:
            InvalidArgument: the source lies outside the context (``../x``).
            NotFound: nothing matches, or the file is missing or ignored.
        """
        if go_clean(source).startswith("../") or go_clean(source) == "..":
            raise InvalidArgument(
                f"forbidden path outside the build context: {source} ({go_clean(source)})"
            )
        rel = go_clean(source.lstrip("/"))
        if not has_wildcards(rel):
            if rel != "." and (not os.path.lexists(self.host_path(rel)) or self._hidden(rel)):
                raise NotFound(f'failed to compute cache key: "/{rel}" not found: not found')
            self._check_inside(rel)
            return [rel]
        parts = rel.split("/")
        found = ["."]
        for part in parts:
            nxt: list[str] = []
            for base in found:
                base_host = self.host_path(base)
                if not os.path.isdir(base_host):
                    continue
                if not has_wildcards(part):
                    cand = part if base == "." else f"{base}/{part}"
                    if os.path.lexists(self.host_path(cand)):
                        nxt.append(cand)
                    continue
                for name in sorted(os.listdir(base_host)):
                    if match_component(part, name):
                        nxt.append(name if base == "." else f"{base}/{name}")
            found = nxt
        visible = sorted(p for p in found if not self._hidden(p))
        if not visible:
            raise NotFound(f"no source files were specified: {source!r} matches nothing in the build context")
        for path in visible:
            self._check_inside(path)
        return visible

    def _hidden(self, rel: str) -> bool:
        """Ignored, and (for a directory) nothing below it re-included."""
        if not self.ignored(rel):
            return False
        if os.path.isdir(self.host_path(rel)) and self.rules.may_include_below(rel):
            return not any(True for _ in self.walk(rel))
        return True

    def _check_inside(self, rel: str) -> None:
        """Refuse a source whose parents are symlinks leading out of the context."""
        if rel == ".":
            return
        parent = os.path.dirname(self.host_path(rel))
        real = os.path.realpath(parent)
        if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
            raise InvalidArgument(f"forbidden path outside the build context: {rel}")

    # ----------------------------------------------------------------- checksums

    def file_digest(self, rel: str) -> str:
        """The sha256 hex of a regular file's content (memoised by inode, size and times)."""
        host = self.host_path(rel)
        return self._content_digest(host, os.stat(host))

    def checksum(self, sources: Sequence[str], *, follow_top_symlink: bool = True) -> Digest:
        """A content checksum of what ``COPY``/``ADD`` of ``sources`` reads, for cache keys.

        Each source contributes its visible entries relative to itself (so ``COPY a b`` and
        ``COPY b a`` differ, renaming the context's parent does not): type, permission bits,
        owner, link target, xattrs and the content of regular files; never timestamps.

        Args:
            sources: context paths as :meth:`resolve_sources` returned them.
            follow_top_symlink: a source that is itself a symlink is hashed as its target
                (``COPY`` copies what it points to).

        Raises:
            NotFound: a source vanished.
        """
        h = hashlib.sha256()
        for source in sources:
            h.update(b"source\0" + source.encode() + b"\0")
            host = self.host_path(source)
            try:
                st = os.stat(host) if follow_top_symlink else os.lstat(host)
            except FileNotFoundError:
                raise NotFound(f'failed to compute cache key: "/{source}" not found: not found') from None
            if not stat.S_ISDIR(st.st_mode):
                self._hash_entry(h, ".", host, st)
                continue
            prefix = "" if source == "." else source + "/"
            for path, entry_host, entry_st in self._walk_stats(source):
                rel = "." if path == source else path[len(prefix) :]
                self._hash_entry(h, rel, entry_host, st if rel == "." else entry_st)
        return Digest("sha256", h.hexdigest())

    def _hash_entry(self, h: hashlib._Hash, rel: str, host: str, st: os.stat_result) -> None:
        fields = [rel, oct(st.st_mode), str(st.st_uid), str(st.st_gid)]
        if stat.S_ISLNK(st.st_mode):
            fields.append(os.readlink(host))
        elif stat.S_ISREG(st.st_mode):
            fields.append(str(st.st_size))
            fields.append(self._content_digest(host, st))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            fields.append(f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}")
        for name, value in _xattrs(host):
            fields.append(f"xattr:{name}={value.hex()}")
        h.update("\0".join(fields).encode("utf-8", "surrogateescape") + b"\n")

    def _content_digest(self, host: str, st: os.stat_result) -> str:
        key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        cached = self._digests.get(key)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        with open(host, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        self._digests[key] = digest
        return digest


def _entry(rel: str, host: str, st: os.stat_result) -> ContextEntry:
    target = os.readlink(host) if stat.S_ISLNK(st.st_mode) else None
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    return ContextEntry(rel, st.st_mode, st.st_uid, st.st_gid, size, target)


def _xattrs(host: str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(host, follow_symlinks=False)
    except OSError:
        return []
    out: list[tuple[str, bytes]] = []
    for name in sorted(names):
        if name.startswith(("security.selinux", "system.")):
            continue
        try:
            out.append((name, os.getxattr(host, name, follow_symlinks=False)))
        except OSError:
            continue
    return out


def _rules_for(root: Path, dockerfile: Path | None) -> IgnoreRules:
    """``<Dockerfile>.dockerignore`` beside the Dockerfile if present, else ``root/.dockerignore``."""
    candidates: list[Path] = []
    if dockerfile is not None:
        candidates.append(dockerfile.with_name(dockerfile.name + ".dockerignore"))
    candidates.append(root / ".dockerignore")
    for candidate in candidates:
        try:
            text = candidate.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except UnicodeDecodeError as exc:
            raise InvalidContent(f"{candidate} is not UTF-8 text", path=str(candidate)) from exc
        return IgnoreRules.parse(text)
    return IgnoreRules()


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the stream), however a pipe splits them."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``stream``: a sniffed stream read from its start, unbuffered."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)


def _looks_like_archive(data: bytes) -> bool:
    if data[:2] == b"\x1f\x8b" or data[:4] == b"\x28\xb5\x2f\xfd" or data[:3] == b"BZh":
        return True
    if data[:6] == b"\xfd7zXZ\x00":
        return True
    return len(data) >= 512 and data[257:262] == b"ustar"
