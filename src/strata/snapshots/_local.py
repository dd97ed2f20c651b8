"""What the overlay and native snapshotters share: directories beside an SQLite table.

Layout of a snapshotter root (``STRATA_ROOT/snapshots/<driver>/``)::

    metadata.db              the records (:mod:`strata.snapshots.metadata`)
    snapshots/<id>/fs        a snapshot's tree (overlay: only its own changes)
    snapshots/<id>/work      overlay's work directory (active snapshots)
    tmp/new-<pid>-<rand>     a directory being made, renamed into snapshots/ on success

Crash safety: a directory is made under ``tmp/`` and renamed to ``snapshots/<id>`` inside the
transaction that inserts the record, so a killed process leaves either a ``tmp/`` directory or
a ``snapshots/<id>`` without a record; removal deletes the record first, then the directory.
:meth:`LocalSnapshotter.cleanup` removes both kinds of leftovers.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from strata.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotSupported,
    StrataError,
    Unavailable,
)
from strata.snapshots.base import Kind, Mount, SnapshotInfo, Usage
from strata.snapshots.metadata import MetaStore, Row

__all__ = ["LocalSnapshotter", "disk_usage", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_usage(path: Path) -> Usage:
    """Blocks and distinct inodes under ``path`` (containerd ``fs.DiskUsage``)."""
    try:
        top_st = os.lstat(path)
    except FileNotFoundError:
        return Usage()
    seen: set[int] = {top_st.st_ino}
    size = top_st.st_blocks * 512
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            entries = os.scandir(top)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    size += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return Usage(size, len(seen))


def _rmtree(path: Path | str) -> None:
    """Remove a tree that a dying process (a killed strata's ``cp``) may still write into."""
    for _ in range(50):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.02)


def _os_error(what: str, exc: OSError) -> StrataError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Unavailable(f"{what}: {exc.strerror}", retryable=False)
    return Unavailable(f"{what}: {exc.strerror or exc}", retryable=False)


class LocalSnapshotter:
    """A snapshotter storing each snapshot as a directory; subclasses say how it is mounted."""

    driver = "local"
    rebase = False

    def __init__(self, root: Path) -> None:
        """Open (creating) the snapshotter rooted at ``root``.

        Raises:
            Unavailable: the root cannot be created or its database opened.
        """
        self.root = Path(root)
        try:
            (self.root / "snapshots").mkdir(parents=True, exist_ok=True)
            (self.root / "tmp").mkdir(exist_ok=True)
        except OSError as exc:
            raise _os_error(f"cannot create snapshotter root {self.root}", exc) from exc
        self._meta = MetaStore(self.root / "metadata.db")
        self._lock = threading.Lock()

    # -- paths ------------------------------------------------------------------------------

    def _dir(self, id_: int) -> Path:
        return self.root / "snapshots" / str(id_)

    def fs_path(self, key: str) -> Path:
        """The directory holding snapshot ``key``'s tree (overlay: its own changes only).

        Raises:
            NotFound: no such snapshot.
        """
        return self._dir(self._meta.get(key).id) / "fs"

    # -- hooks for subclasses ---------------------------------------------------------------

    def _populate(self, new: Path, parents: list[Row], kind: Kind) -> None:
        """Fill the new directory ``new`` (holding an empty ``fs``) from ``parents``."""
        raise NotImplementedError

    def _mounts(self, row: Row, parents: list[Row]) -> list[Mount]:
        raise NotImplementedError

    def _usage(self, row: Row) -> Usage:
        return disk_usage(self._dir(row.id) / "fs")

    # -- the interface ----------------------------------------------------------------------

    def stat(self, key: str) -> SnapshotInfo:
        return self._meta.get(key).info

    def prepare(self, key: str, parent: str | None = None,
                labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(key, parent, labels, Kind.ACTIVE)

    def view(self, key: str, parent: str | None = None,
             labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(key, parent, labels, Kind.VIEW)

    def _create(self, key: str, parent: str | None, labels: Mapping[str, str] | None,
                kind: Kind) -> list[Mount]:
        if not key:
            raise InvalidArgument("a snapshot key must not be empty")
        parents = self._meta.chain(parent)
        if parents and parents[0].info.kind is not Kind.COMMITTED:
            raise FailedPrecondition(f"parent snapshot {parent!r} is not committed")
        try:
            self._meta.get(key)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        tmp = self.root / "tmp" / f"new-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            tmp.mkdir()
            (tmp / "fs").mkdir(mode=0o755)
            self._populate(tmp, parents, kind)
            with self._meta.write() as conn:
                id_ = self._meta.create(conn, key, kind, parent, labels)
                final = self._dir(id_)
                if final.exists():  # left by a killed process whose record was rolled back
                    shutil.rmtree(final)
                os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _os_error(f"cannot create snapshot {key!r}", exc) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        row = self._meta.get(key)
        return self._mounts(row, self._meta.chain(parent))

    def mounts(self, key: str) -> list[Mount]:
        row = self._meta.get(key)
        if row.info.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed: view it to mount it")
        return self._mounts(row, self._meta.chain(row.info.parent))

    def commit(self, name: str, key: str, *, parent: str | None = None, rebase: bool = False,
               labels: Mapping[str, str] | None = None) -> None:
        if not name:
            raise InvalidArgument("a snapshot name must not be empty")
        if rebase and not self.rebase:
            raise NotSupported(f"the {self.driver} snapshotter cannot rebase a snapshot")
        row = self._meta.get(key)
        if row.info.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {row.info.kind}, not active")
        usage = self._usage(row)
        with self._meta.write() as conn:
            row = self._meta.get(key, conn)
            if row.info.kind is not Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is {row.info.kind}, not active")
            try:
                self._meta.get(name, conn)
            except NotFound:
                pass
            else:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            new_parent = parent if rebase else row.info.parent
            if rebase and parent is not None:
                prow = self._meta.get(parent, conn)
                if prow.info.kind is not Kind.COMMITTED:
                    raise FailedPrecondition(f"parent snapshot {parent!r} is not committed")
            self._meta.commit(conn, key, name, new_parent, labels, usage)
        shutil.rmtree(self._dir(row.id) / "work", ignore_errors=True)

    def remove(self, key: str) -> None:
        with self._meta.write() as conn:
            row = self._meta.get(key, conn)
            if self._meta.has_children(conn, key):
                raise FailedPrecondition(
                    f"snapshot {key!r} has children: remove them first"
                )
            self._meta.delete(conn, key)
        self._remove_dir(self._dir(row.id))

    def remove_deferred(self, key: str) -> Path | None:
        """:meth:`remove`, leaving the deletion of the directory to the caller.

        The snapshot is forgotten at once and its directory moved into this snapshotter's
        ``tmp``, named for this process so that :meth:`cleanup` deletes it once the process
        is gone if nobody did.  Returns where it went (None: it had no directory).
        ``strata run --rm`` deletes it after returning (a container's files, thousands
        of them, must not delay its exit code).

        Raises:
            NotFound: no such snapshot.
            FailedPrecondition: it has children.
        """
        with self._meta.write() as conn:
            row = self._meta.get(key, conn)
            if self._meta.has_children(conn, key):
                raise FailedPrecondition(
                    f"snapshot {key!r} has children: remove them first"
                )
            self._meta.delete(conn, key)
        return self._move_aside(self._dir(row.id))

    def _move_aside(self, path: Path) -> Path | None:
        trash = self.root / "tmp" / f"rm-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(f"cannot remove snapshot directory {path}", exc) from exc
        return trash

    def _remove_dir(self, path: Path) -> None:
        trash = self._move_aside(path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def usage(self, key: str) -> Usage:
        row = self._meta.get(key)
        if row.info.kind is Kind.COMMITTED:
            return row.usage
        return self._usage(row)

    def walk(self) -> Iterator[SnapshotInfo]:
        for row in self._meta.rows():
            yield row.info

    def cleanup(self) -> int:
        removed = 0
        trash: list[Path] = []
        with self._meta.write() as conn:
            # Moved aside while holding the write lock: a prepare reusing a rolled-back id
            # cannot have its new directory taken for the orphan it replaces.
            ids = self._meta.ids(conn)
            for entry in os.scandir(self.root / "snapshots"):
                if not entry.name.isdigit() or int(entry.name) not in ids:
                    aside = self.root / "tmp" / f"rm-{os.getpid()}-{secrets.token_hex(6)}"
                    try:
                        os.rename(entry.path, aside)
                    except FileNotFoundError:
                        continue
                    trash.append(aside)
        for path in trash:
            _rmtree(path)
            removed += 1
        for entry in os.scandir(self.root / "tmp"):
            owner = entry.name.split("-")[1:2]
            if owner and owner[0].isdigit() and pid_alive(int(owner[0])):
                continue  # a live process (maybe this one) is making or removing it
            _rmtree(entry.path)
            removed += 1
        return removed
