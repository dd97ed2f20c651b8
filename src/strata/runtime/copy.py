"""``cp``: copy files between a container's root filesystem and the host (or a tar stream).

Owns docker's path rules (``pkg/archive/copy.go``) and the safety of the container side:

* a path in the container is resolved inside the container's root only: symlinks met on
  the way are followed *inside* it (an absolute target restarts at the container's root,
  ``..`` stops there), with :class:`strata.layers.safepath.RootResolver`'s ``SecureJoin``;
  the last component is followed only for ``-L``, a trailing ``/`` or ``/.`` (source) or as
  a destination (docker follows a destination symlink, inside the root);
* what is written into the container goes through :func:`strata.layers.apply` rooted at the
  resolved destination directory, which never writes outside it whatever the stream holds;
* a running container is reached through ``/proc/PID/root`` with every process of it
  stopped for the duration (as docker pauses a container for ``cp``), so nothing in it can
  swap a directory for a symlink while strata walks; a stopped one through its snapshot,
  mounted for the duration.  The kernel filesystems of a running container (``/proc``,
  ``/sys``) are refused as destinations.

Rules (SRC → DEST): a file onto a missing DEST creates it (its parent must exist; a DEST
ending in ``/`` must be an existing directory), onto a file overwrites it, onto a directory
goes into it; a directory onto a missing DEST creates DEST with the directory's contents,
onto a directory goes into it (``SRC/.``: its contents do), onto a file is an error.  Owners:
files copied into a container belong to root, files copied out to the caller; ``-a`` keeps
the source's owners.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from strata.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StrataError,
)
from strata.layers import ApplyOptions, apply
from strata.layers.safepath import RootResolver

__all__ = ["ContainerRoot", "copy_from_container", "copy_to_container", "split_copy_arg"]

_KERNEL_FS = ("proc", "sys")


@dataclass(frozen=True, slots=True)
class ContainerRoot:
    """Where a container's root filesystem is reachable from the host right now.

    Attributes:
        path: the host path of the container's ``/``.
        running: reached through ``/proc/PID/root`` of a running container (its kernel
            filesystems are mounted there).
    """

    path: Path
    running: bool = False


def split_copy_arg(arg: str) -> tuple[str | None, str]:
    """docker's ``splitCpArg``: ``CONTAINER:PATH`` → (container, path); a local path (one
    starting with ``/`` or ``.``, or without ``:``) → (None, path)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    container, _, path = arg.partition(":")
    return container, path


def _trailing(path: str) -> tuple[bool, bool]:
    """(ends with ``/`` or ``/.``, ends with ``/.``)."""
    dot = path == "." or path.endswith("/.")
    return dot or path.endswith("/"), dot


class _InRoot:
    """Resolution of container paths in one root."""

    def __init__(self, root: ContainerRoot) -> None:
        self.root = root
        # /proc/PID/root is a (magic) symlink: "/." makes lstat of the root see the
        # directory it leads to; paths are only ever joined as strings, never realpath'd.
        self.res = RootResolver(f"{root.path}/." if root.running else str(root.path))

    def host(self, rel: str) -> str:
        return self.res.host(rel)

    def resolve(self, path: str, *, follow: bool) -> str:
        """The symlink-free path (relative to the root, ``""`` = ``/``) of container ``path``."""
        if not path:
            raise InvalidArgument("a container path must not be empty")
        clean = posixpath.normpath("/" + path)
        if clean in ("/", "//"):
            return ""
        parent, _, base = clean.rpartition("/")
        parent_rel = self.res.secure_join("", parent or "/", path)
        if follow:
            return self.res.secure_join(parent_rel, base, path)
        return f"{parent_rel}/{base}" if parent_rel else base


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_tar(source: str, arcname: str, out: BinaryIO, *, contents_only: bool,
               skip_below: tuple[str, ...] = ()) -> None:
    """A tar of ``source`` (never following symlinks in it) named ``arcname``; with
    ``contents_only`` the directory's entries at the top instead.  ``skip_below``: entries of
    ``source`` whose contents are left out (the kernel filesystems of a running container)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if not contents_only and not skip_below:
            tar.add(source, arcname=arcname, recursive=True)
            return
        prefix = ""
        if not contents_only:
            tar.add(source, arcname=arcname, recursive=False)
            prefix = f"{arcname}/"
        for name in sorted(os.listdir(source)):
            tar.add(f"{source}/{name}", arcname=f"{prefix}{name}",
                    recursive=name not in skip_below)


def _os_error(what: str, exc: OSError) -> StrataError:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what}: {exc.strerror}")
    return FailedPrecondition(f"{what}: {exc.strerror or exc}")


def _pipe(produce: Callable[[BinaryIO], None], consume: Callable[[BinaryIO], None]) -> None:
    """Run ``produce`` (writing a stream) in a thread while ``consume`` reads it here."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    failed: list[BaseException] = []

    def writer() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                produce(out)
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    consumed: BaseException | None = None
    try:
        with os.fdopen(read_fd, "rb") as stream:
            try:
                consume(stream)
                while stream.read(1 << 16):
                    pass
            except BaseException as exc:
                consumed = exc
    finally:
        thread.join()
    if failed and not isinstance(failed[0], BrokenPipeError):
        error = failed[0]
        if isinstance(error, StrataError):
            raise error
        if isinstance(error, OSError):
            raise _os_error(f"cannot read {error.filename or 'the source'}", error) from error
        raise error
    if consumed is not None:
        raise consumed


@dataclass(frozen=True, slots=True)
class _Source:
    host: str  # the host path to archive
    is_dir: bool
    contents: bool  # SRC/. : the directory's contents
    name: str  # the base name


def _plan(src: _Source, dest_host: str, dest_shown: str, dest_trailing: bool,
          ) -> tuple[str, str, bool]:
    """Where to extract: (directory, top name in the tar, contents only) by docker's rules.

    Raises:
        NotFound: DEST's parent (or, with a trailing ``/``, DEST itself) does not exist.
        InvalidArgument: a directory onto a file.
    """
    st = None
    with contextlib.suppress(OSError):
        st = os.stat(dest_host)  # the host side follows symlinks like docker's client
    if st is not None and stat.S_ISDIR(st.st_mode):
        if src.is_dir and src.contents:
            return dest_host, "", True
        return dest_host, src.name, False
    if st is not None:
        if src.is_dir:
            raise InvalidArgument(f"cannot copy a directory to a file: {dest_shown}")
        if dest_trailing:
            raise InvalidArgument(f"{dest_shown} is not a directory")
        return posixpath.dirname(dest_host), posixpath.basename(dest_host), False
    if dest_trailing and not src.is_dir:
        raise NotFound(f"destination directory {dest_shown} does not exist")
    parent = posixpath.dirname(dest_host.rstrip("/")) or "/"
    if not os.path.isdir(parent):
        raise NotFound(f"destination directory of {dest_shown} does not exist")
    return parent, posixpath.basename(dest_host.rstrip("/")), False


def _extract(directory: str, stream: BinaryIO, *, archive: bool) -> None:
    try:
        apply(Path(directory), stream, ApplyOptions(same_owner=archive))
    except OSError as exc:
        raise _os_error(f"cannot write into {directory}", exc) from exc


def copy_from_container(root: ContainerRoot, src: str, dest: str | BinaryIO, *,
                        follow_link: bool = False, archive: bool = False,
                        shown: str = "") -> None:
    """``cp CONTAINER:SRC DEST``: DEST a host path, or a stream for a tar (``-``).

    Args:
        root: the container's root (see :class:`ContainerRoot`).
        src: the path in the container.
        dest: the host path, or a binary stream the tar goes to.
        follow_link: ``-L``: follow SRC if it is a symlink (inside the container).
        archive: ``-a``: keep the owners of the container's files.
        shown: how to name SRC in errors (``CONTAINER:SRC``).

    Raises:
        NotFound: SRC does not exist, or DEST's parent does not.
        InvalidArgument: a directory onto a file, and the other path rules.
    """
    resolver = _InRoot(root)
    trailing, dot = _trailing(src)
    rel = resolver.resolve(src, follow=follow_link or trailing)
    if root.running and rel.split("/")[0] in _KERNEL_FS:
        raise InvalidArgument(f"{shown or src}: copying from /{rel.split('/')[0]} of a running"
                              " container is not allowed")
    host_src = resolver.host(rel)
    st = _lstat(host_src)
    if st is None:
        raise NotFound(f"No such container:path: {shown or src}")
    is_dir = stat.S_ISDIR(st.st_mode)
    if trailing and not is_dir:
        raise InvalidArgument(f"{shown or src}: not a directory")
    # The container's / has no name: its contents are copied, as for "/.".
    source = _Source(host_src, is_dir, (dot or not rel) and is_dir,
                     posixpath.basename(rel) or ".")
    skip = _KERNEL_FS if root.running and not rel else ()
    if not isinstance(dest, str):
        arcname = "." if source.contents else source.name
        try:
            _write_tar(host_src, arcname, dest, contents_only=False, skip_below=skip)
        except OSError as exc:
            raise _os_error(f"cannot read {shown or src}", exc) from exc
        return
    dest_trailing, _ = _trailing(dest)
    directory, top, contents = _plan(source, os.path.abspath(dest), dest, dest_trailing)
    _pipe(lambda out: _write_tar(host_src, top, out, contents_only=contents, skip_below=skip),
          lambda stream: _extract(directory, stream, archive=archive))


def copy_to_container(root: ContainerRoot, src: str | BinaryIO, dest: str, *,
                      follow_link: bool = False, archive: bool = False,
                      shown: str = "") -> None:
    """``cp SRC CONTAINER:DEST``: SRC a host path, or a stream holding a tar (``-``).

    Args:
        root: the container's root (see :class:`ContainerRoot`).
        src: the host path, or a binary stream with a tar to extract into DEST (a directory).
        dest: the path in the container.
        follow_link: ``-L``: follow SRC if it is a symlink (on the host).
        archive: ``-a``: keep the source's owners (default: root's).
        shown: how to name DEST in errors (``CONTAINER:DEST``).

    Raises:
        NotFound: SRC does not exist, or DEST's parent does not.
        InvalidArgument: the path rules; a kernel filesystem of a running container.
        UnsafeArchive: the tar stream holds a member that would leave DEST.
    """
    resolver = _InRoot(root)
    dest_rel = resolver.resolve(dest, follow=True)
    if root.running and dest_rel.split("/")[0] in _KERNEL_FS:
        raise InvalidArgument(f"{shown or dest}: copying into /{dest_rel.split('/')[0]} of a"
                              " running container is not allowed")
    dest_host = resolver.host(dest_rel)
    dest_trailing, _ = _trailing(dest)
    if not isinstance(src, str):
        st = _lstat(dest_host)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f'destination "{shown or dest}" must be a directory')
        _extract(dest_host, src, archive=archive)
        return
    trailing, dot = _trailing(src)
    host_src = os.path.abspath(src)
    if follow_link or trailing:
        host_src = os.path.realpath(host_src)
    st = _lstat(host_src)
    if st is None:
        raise NotFound(f"lstat {host_src}: no such file or directory")
    is_dir = stat.S_ISDIR(st.st_mode)
    if trailing and not is_dir:
        raise InvalidArgument(f"{src}: not a directory")
    source = _Source(host_src, is_dir, dot and is_dir, posixpath.basename(host_src) or "/")
    if dest_trailing and _lstat(dest_host) is None and not is_dir:
        raise NotFound(f"destination directory {shown or dest} does not exist")
    # The parent check and the plan use the resolved (symlink-free) host path; the last
    # component, if missing, is created by apply inside the resolved parent.
    directory, top, contents = _plan(source, dest_host, shown or dest, dest_trailing)
    _pipe(lambda out: _write_tar(host_src, top, out, contents_only=contents),
          lambda stream: _extract(directory, stream, archive=archive))

