"""The snapshotter interface and its values (containerd's ``core/snapshots``).

Owns what a snapshot *is* to its users: a key, a kind (active, view, committed), a parent, a
few labels, the mounts that present it as a filesystem, and what it uses on disk.  It knows
nothing of images, layers or tar: callers fill an active snapshot through its mounts (or the
upper directory the mounts name) and commit it under a name — for image layers, the chainID.

Lifecycle (containerd's, which this follows):

* ``prepare(key, parent)`` makes an *active* snapshot: a writable tree that starts as the
  committed ``parent`` (or empty).  ``view(key, parent)`` makes a *view*: a read-only one.
* ``mounts(key)`` tells how to mount an active snapshot or a view (:func:`mount_all`).
* ``commit(name, key)`` turns the active snapshot ``key`` into the committed snapshot
  ``name``; ``key`` no longer exists afterwards.  Committed snapshots are immutable and are
  only parents of others.  A snapshotter that can *rebase* (``rebase`` is True) may commit
  an active snapshot on a parent other than the one it was prepared on: its active snapshots
  hold only their own changes (an overlay upper directory), so layers can be extracted
  independently and stacked afterwards.
* ``remove(key)`` removes any snapshot without children; one with children raises
  :class:`~strata.errors.FailedPrecondition`.

Every call is atomic: metadata lives in SQLite and directories are renamed into place only
in step with it, so a process killed at any moment leaves at worst directories without a
record (or a record of an active snapshot nobody will commit); :meth:`Snapshotter.cleanup`
removes the former, and callers remove abandoned active keys they recognise (see
``strata.images.rootfs``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = ["Kind", "Mount", "SnapshotInfo", "Snapshotter", "Usage"]


class Kind(StrEnum):
    """What a snapshot is: writable (ACTIVE), read-only (VIEW) or immutable (COMMITTED)."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot's metadata.

    Attributes:
        name: the key of an active snapshot or view, the name of a committed one.
        kind: active, view or committed.
        parent: the committed snapshot this one stacks on, or None.
        labels: free-form string labels given at prepare/view time.
        created: creation time, seconds since the epoch.
        updated: last change (commit), seconds since the epoch.
    """

    name: str
    kind: Kind
    parent: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    """Disk use of one snapshot's own changes (not its parents').

    Attributes:
        size: bytes allocated (each hardlinked inode counted once).
        inodes: distinct inodes.
    """

    size: int = 0
    inodes: int = 0


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount(2) call: ``mount -t TYPE SOURCE TARGET -o OPTIONS``.

    ``type`` is ``overlay`` or ``bind``; options are the comma-separated mount options split
    into a tuple (``ro``, ``rbind``, ``lowerdir=...``, ``upperdir=...``, ``workdir=...``).
    """

    type: str
    source: str
    options: tuple[str, ...] = ()

    def option(self, key: str) -> str | None:
        """The value of a ``key=value`` option, or None."""
        prefix = f"{key}="
        for opt in self.options:
            if opt.startswith(prefix):
                return opt[len(prefix) :]
        return None


class Snapshotter(Protocol):
    """Stacks of filesystem snapshots, keyed by strings (containerd ``snapshots.Snapshotter``).

    Implementations are thread-safe and safe to use from several processes on one root.
    Keys and names share one namespace: a key in use as an active snapshot or view cannot be
    a committed name and vice versa.

    Attributes:
        driver: the implementation's name (``overlay``, ``native``).
        rebase: True when :meth:`commit` accepts a ``parent`` other than the prepared one.
    """

    driver: str
    rebase: bool

    def stat(self, key: str) -> SnapshotInfo:
        """The metadata of snapshot ``key``.

        Raises:
            NotFound: no such snapshot.
        """
        ...

    def prepare(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create the active snapshot ``key`` on the committed ``parent``; returns its mounts.

        Raises:
            AlreadyExists: ``key`` exists.
            NotFound: ``parent`` does not exist.
            FailedPrecondition: ``parent`` is not committed.
            InvalidArgument: ``key`` is empty.
        """
        ...

    def view(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create the read-only view ``key`` of the committed ``parent``; returns its mounts.

        Raises:
            AlreadyExists, NotFound, FailedPrecondition, InvalidArgument: as :meth:`prepare`.
        """
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active snapshot or view.

        Raises:
            NotFound: no such snapshot.
            FailedPrecondition: ``key`` is committed (committed snapshots are not mounted;
                view them).
        """
        ...

    def commit(self, name: str, key: str, *, parent: str | None = None, rebase: bool = False,
               labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``.

        Args:
            name: the committed name (a chainID for image layers).
            key: the active snapshot; it stops existing.
            parent: with ``rebase``, the committed snapshot ``name`` stacks on instead of the
                one ``key`` was prepared on (None: no parent).
            rebase: re-parent as ``parent`` says (only when :attr:`rebase` is True).
            labels: replace the labels (None keeps those given at prepare).

        Raises:
            NotFound: ``key`` or the rebase ``parent`` does not exist.
            AlreadyExists: ``name`` exists.
            FailedPrecondition: ``key`` is not active, or the rebase parent is not committed.
            NotSupported: ``rebase`` on a snapshotter that cannot rebase.
        """
        ...

    def remove(self, key: str) -> None:
        """Remove a snapshot of any kind and its directory.

        Raises:
            NotFound: no such snapshot.
            FailedPrecondition: other snapshots have it as their parent.
        """
        ...

    def usage(self, key: str) -> Usage:
        """What the snapshot's own changes use on disk (measured now for active ones).

        Raises:
            NotFound: no such snapshot.
        """
        ...

    def walk(self) -> Iterator[SnapshotInfo]:
        """Every snapshot, in no particular order."""
        ...

    def cleanup(self) -> int:
        """Remove directories no record refers to (left by a killed process); returns how many."""
        ...
