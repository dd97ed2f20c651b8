"""Safe paths for layer members: lexical rules for names and links, and resolution inside a root.

Owns two things:

* the *lexical* rules every member must pass before anything touches the filesystem
  (:func:`clean_name`, :func:`clean_hardlink_target`, :func:`check_symlink_target`): no absolute
  names, no ``..`` that climbs out, no symlink whose relative target escapes the root (docker's
  "invalid symlink"), no NUL bytes or over-long names;
* :class:`RootResolver`, which turns a member's parent directory into a real directory inside
  the root with umoci's ``SecureJoin`` semantics: symlinks met on the way (from this layer or
  earlier ones) are followed *inside* the root — an absolute target restarts at the root and
  ``..`` never climbs above it — so a write through them lands inside the root.

It never follows the final component of a member's path; that is the caller's job to refuse
(``O_NOFOLLOW``, ``follow_symlinks=False``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from strata.errors import UnsafeArchive

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "RootResolver",
    "check_symlink_target",
    "clean_hardlink_target",
    "clean_name",
]

MAX_NAME_BYTES = 255
"""Longest path component Linux accepts (NAME_MAX)."""
MAX_PATH_BYTES = 4095
"""Longest member path accepted (PATH_MAX less the terminating NUL)."""
_MAX_SYMLINKS = 255  # filepath-securejoin's limit


def _normalise(path: str, member: str, escape_reason: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeArchive(member, escape_reason)
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _check_length(path: str, member: str) -> None:
    raw = os.fsencode(path)
    if len(raw) > MAX_PATH_BYTES:
        raise UnsafeArchive(member, f"name too long ({len(raw)} bytes)")
    for part in raw.split(b"/"):
        if len(part) > MAX_NAME_BYTES:
            raise UnsafeArchive(member, f"path component too long ({len(part)} bytes)")


def clean_name(name: str) -> str:
    """Normalise a member name to a relative path inside the root.

    Strips leading ``./`` and trailing ``/``, drops ``.`` and empty components and applies
    ``..`` lexically.  The root itself is ``""``.

    Raises:
        UnsafeArchive: the name is absolute, climbs out of the root, contains a NUL byte or
            is longer than Linux allows.
    """
    if "\x00" in name:
        raise UnsafeArchive(name, "NUL byte in name")
    if name.startswith("/"):
        raise UnsafeArchive(name, "absolute path")
    path = name
    while path.startswith("./"):
        path = path[2:]
    path = path.rstrip("/")
    if path.startswith(".") or "/." in path or "//" in path:
        path = _normalise(path, name, "path escapes the root with '..'")
    if len(path) > MAX_NAME_BYTES:
        _check_length(path, name)
    return path


def clean_hardlink_target(linkname: str, member: str) -> str:
    """Normalise a hardlink's target to a path inside the root (``""`` is the root).

    An absolute target is taken relative to the root, as docker and umoci do.

    Raises:
        UnsafeArchive: the target climbs out of the root or contains a NUL byte.
    """
    if "\x00" in linkname:
        raise UnsafeArchive(member, "NUL byte in hardlink target")
    target = _normalise(linkname, member, f"hardlink target {linkname!r} escapes root")
    if len(target) > MAX_NAME_BYTES:
        _check_length(target, member)
    return target


def check_symlink_target(name: str, target: str, member: str) -> None:
    """Refuse a symlink whose relative target, from the link's directory, leaves the root.

    ``name`` is the link's cleaned path.  Absolute targets are accepted: they are resolved
    against the container's root when used (docker's pkg/archive rule).

    Raises:
        UnsafeArchive: the target escapes, is empty or contains a NUL byte.
    """
    if not target:
        raise UnsafeArchive(member, "empty symlink target")
    if "\x00" in target:
        raise UnsafeArchive(member, "NUL byte in symlink target")
    if target.startswith("/") or ".." not in target:
        return
    depth = name.count("/")  # components in the link's directory
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise UnsafeArchive(member, f"invalid symlink: target {target!r} escapes root")
        elif part and part != ".":
            depth += 1


class RootResolver:
    """Resolves member directories to real directories inside ``root``, with a cache.

    Paths handed in and out are relative to the root, ``/``-separated, ``""`` for the root.
    A resolved path contains no symlinks and names an existing directory.  The cache maps
    a lexical directory to its resolution; call :meth:`invalidate` whenever a directory or a
    symlink under the root is removed or replaced.

    Not thread-safe: one resolver per apply.
    """

    __slots__ = ("_cache", "_mkdir_owner", "_on_mkdir", "root")

    def __init__(
        self,
        root: str,
        *,
        mkdir_owner: tuple[int, int] | None = None,
        on_mkdir: Callable[[str], None] | None = None,
    ) -> None:
        """Args:
        root: the host path of the root directory.
        mkdir_owner: uid/gid for directories created on the way (None: leave as created).
        on_mkdir: called with the resolved path of the directory a new directory was
            created in (whose mtime that changed).
        """
        self.root = root.rstrip("/") or "/"
        self._mkdir_owner = mkdir_owner
        self._on_mkdir = on_mkdir
        self._cache: dict[str, str] = {"": ""}

    def invalidate(self) -> None:
        """Forget every resolution (after a directory or symlink was removed or replaced)."""
        self._cache = {"": ""}

    def remember(self, lexical: str, resolved: str) -> None:
        """Record that ``lexical`` resolves to the real directory ``resolved``."""
        self._cache[lexical] = resolved
        self._cache[resolved] = resolved

    def host(self, rel: str) -> str:
        """The host path of a resolved relative path."""
        return f"{self.root}/{rel}" if rel else self.root

    def resolve(self, rel: str, member: str, *, create: bool) -> str | None:
        """Resolve the directory ``rel`` (a cleaned lexical path) inside the root.

        Args:
            rel: the directory, as a cleaned member path.
            member: the member being applied, for error messages.
            create: create missing directories (0755, ``mkdir_owner``); when False a missing
                or non-directory component makes the result None.

        Returns:
            The resolved path of an existing directory, or None (only when ``create`` is False).

        Raises:
            UnsafeArchive: a component is not a directory (when creating), or symlinks loop.
        """
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        current = ""
        key = ""
        for part in rel.split("/"):
            key = f"{key}/{part}" if key else part
            hit = self._cache.get(key)
            if hit is not None:
                current = hit
                continue
            step = self._step(current, part, member, create)
            if step is None:
                return None
            current = step
            self._cache[key] = current
            self._cache[current] = current
        return current

    def _step(self, current: str, part: str, member: str, create: bool) -> str | None:
        candidate = f"{current}/{part}" if current else part
        path = self.host(candidate)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return None
            self._mkdir(path, candidate, member)
            return candidate
        if stat.S_ISDIR(st.st_mode):
            return candidate
        if stat.S_ISLNK(st.st_mode):
            resolved = self.secure_join(current, os.readlink(path), member)
            return self._ensure_dir(resolved, member, create)
        if not create:
            return None
        raise UnsafeArchive(member, f"parent path {candidate!r} is not a directory")

    def secure_join(self, start: str, unsafe: str, member: str) -> str:
        """SecureJoin: resolve ``unsafe`` from the resolved directory ``start``, in the root.

        Every existing symlink met is expanded (absolute targets restart at the root), ``..``
        stops at the root; missing components are taken as they are.  The result contains no
        symlinks but need not exist.

        Raises:
            UnsafeArchive: more than 255 symlinks were followed.
        """
        current = "" if unsafe.startswith("/") else start
        remaining = unsafe
        links = 0
        while remaining:
            part, _, remaining = remaining.partition("/")
            if part in ("", "."):
                continue
            if part == "..":
                current = current.rpartition("/")[0]
                continue
            candidate = f"{current}/{part}" if current else part
            try:
                st = os.lstat(self.host(candidate))
            except (FileNotFoundError, NotADirectoryError):
                current = candidate
                continue
            if not stat.S_ISLNK(st.st_mode):
                current = candidate
                continue
            links += 1
            if links > _MAX_SYMLINKS:
                raise UnsafeArchive(member, "too many levels of symbolic links")
            target = os.readlink(self.host(candidate))
            remaining = f"{target}/{remaining}" if remaining else target
            if target.startswith("/"):
                current = ""
        return current

    def _ensure_dir(self, resolved: str, member: str, create: bool) -> str | None:
        """Check (and create) each component of a symlink-free path as a directory."""
        if not resolved:
            return ""
        current = ""
        for part in resolved.split("/"):
            current = f"{current}/{part}" if current else part
            path = self.host(current)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                if not create:
                    return None
                self._mkdir(path, current, member)
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if not create:
                return None
            raise UnsafeArchive(member, f"parent path {current!r} is not a directory")
        return resolved

    def _mkdir(self, path: str, rel: str, member: str) -> None:
        try:
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
            if self._mkdir_owner is not None:
                os.lchown(path, *self._mkdir_owner)
        except OSError as exc:
            raise UnsafeArchive(member, f"cannot create parent directory {rel!r}: {exc.strerror}") from exc
        if self._on_mkdir is not None:
            self._on_mkdir(rel.rpartition("/")[0])
