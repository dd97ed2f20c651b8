"""A container's writable layer: what changed (``diff``), its size (``SizeRw``) and ``commit``.

Owns reading a container's changes from its snapshot with the rules docker's graph driver
applies on this kernel (docker 20.10's overlay2 uses its "naive" diff — the container's tree
against its parent's, ``archive.ChangesDirs`` — where the kernel has ``redirect_dir``):

* an entry missing below is an addition (``A``; a new directory's whole tree too), one that
  differs from the one below (type, mode, owner, device, and size and mtime of
  non-directories, link target) a modification (``C``), a deleted one a deletion (``D``);
  a directory holding a change is modified; the container's root is never listed;
* overlay: computed from the upper directory and the lowers without mounting anything — a
  character device 0/0 is a deletion, an opaque directory deletes the entries below it
  that it does not hold again; "below" is the lowers' merged view, looked up without ever
  following a symlink of a lower (a hostile image cannot make strata read host paths);
* native (full copies): the tree is compared with its init layer's tree.

The init layer is what the container is compared with, so its files are never reported.
:func:`size_rw` is docker's ``SizeRw`` (the apparent sizes of the added and modified
non-directories, each inode once), :func:`commit_image` turns the writable layer into a new
image layer (through :func:`strata.layers.diff`: every entry of the upper directory, with
OCI whiteouts for deletions and opaque markers) on top of the container's image.
Nothing here changes the container's trees.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, cast

from strata.content import LocalStore
from strata.errors import FailedPrecondition, InvalidArgument, StrataError
from strata.images import ImageRecord, ImageStore, LayerFacts, LocalImage
from strata.layers import CompressedWriter, diff
from strata.layers.whiteout import OVERLAY_OPAQUE_XATTR, is_overlay_whiteout
from strata.oci import (
    Compression,
    ContainerConfig,
    Descriptor,
    Digest,
    History,
    ImageConfig,
    Manifest,
    Platform,
    Reference,
    RootFS,
    format_time,
    mediatypes,
)
from strata.runtime.container import upper_key
from strata.snapshots import NativeSnapshotter, OverlaySnapshotter, Snapshotter

__all__ = [
    "Change",
    "CommitOptions",
    "CommitResult",
    "WritableLayer",
    "changes",
    "check_reference",
    "commit_image",
    "image_layers_size",
    "size_rw",
    "writable_layer",
]

#: docker's change kinds (``archive.ChangeType``), as ``docker diff`` prints them.
ADD = "A"
MODIFY = "C"
DELETE = "D"


@dataclass(frozen=True, slots=True)
class Change:
    """One line of ``docker diff``: ``kind`` (A, C or D) and an absolute path."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass(frozen=True, slots=True)
class WritableLayer:
    """Where a container's writable layer lives on the host.

    Attributes:
        upper: overlay: the upper directory (only the changes); native: the full tree.
        lowers: overlay: the lower directories, nearest first (the init layer first);
            native: the init layer's full tree (what the container started from).
        overlay: which of the two it is.
    """

    upper: Path
    lowers: tuple[Path, ...]
    overlay: bool

    @property
    def image_lowers(self) -> tuple[Path, ...]:
        """The image's layer directories (overlay: the lowers without the init layer)."""
        return self.lowers[1:] if self.overlay else ()


def _init_of(snapshotter: Snapshotter, container_id: str) -> str:
    """The container's init layer: the parent of its writable layer (shared by the image's
    containers, or its own for containers made before init layers were shared)."""
    return snapshotter.stat(upper_key(container_id)).parent or ""


def writable_layer(snapshotter: Snapshotter, container_id: str) -> WritableLayer:
    """Find the container's writable layer in the snapshotter.

    Raises:
        NotFound: the container has no snapshot (removed meanwhile).
        NotSupported: a snapshotter whose trees strata cannot read.
    """
    from strata.errors import NotSupported

    if isinstance(snapshotter, OverlaySnapshotter):
        (mount,) = snapshotter.mounts(upper_key(container_id))
        upper = mount.option("upperdir")
        if mount.type != "overlay" or upper is None:
            return WritableLayer(Path(mount.source), (), True)
        lowers = tuple(Path(p) for p in (mount.option("lowerdir") or "").split(":") if p)
        return WritableLayer(Path(upper), lowers, True)
    if isinstance(snapshotter, NativeSnapshotter):
        return WritableLayer(snapshotter.fs_path(upper_key(container_id)),
                             (snapshotter.fs_path(_init_of(snapshotter, container_id)),), False)
    raise NotSupported(f"the {snapshotter.driver} snapshotter keeps no readable writable layer")


# -- listing changes -------------------------------------------------------------------------


def _walk(top: str, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``top/rel`` (not itself), pre-order with siblings by name, as Go's
    ``filepath.Walk``; paths relative to ``top``.  Iterative: depth is not bounded by
    Python's recursion limit."""
    stack: list[Iterator[str]] = [iter(_names(top, rel))]
    prefixes = [rel]
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            prefixes.pop()
            continue
        child = f"{prefixes[-1]}/{name}" if prefixes[-1] else name
        try:
            st = os.lstat(f"{top}/{child}")
        except FileNotFoundError:
            continue
        yield child, st
        if stat.S_ISDIR(st.st_mode):
            stack.append(iter(_names(top, child)))
            prefixes.append(child)


def _names(top: str, rel: str) -> list[str]:
    try:
        return sorted(os.listdir(f"{top}/{rel}" if rel else top))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _same_time(a: int, b: int) -> bool:
    """docker's sameFsTime: equal, or equal seconds where one side lost the nanoseconds."""
    if a == b:
        return True
    sa, na = divmod(a, 1_000_000_000)
    sb, nb = divmod(b, 1_000_000_000)
    return sa == sb and (na == 0 or nb == 0)


class _Below:
    """lstat of a path in a lower directory, never through a symlink of that lower (a
    hostile image's ``/x -> /`` must not make strata look at the host's files)."""

    def __init__(self) -> None:
        self._dirs: dict[str, bool] = {}

    def _real_dir(self, path: str) -> bool:
        known = self._dirs.get(path)
        if known is None:
            st = _lstat(path)
            known = self._dirs[path] = st is not None and stat.S_ISDIR(st.st_mode)
        return known

    def lstat(self, lower: str, rel: str) -> os.stat_result | None:
        parts = rel.split("/")
        current = lower
        for part in parts[:-1]:
            current = f"{current}/{part}"
            if not self._real_dir(current):
                return None
        return _lstat(f"{lower}/{rel}")


class _Lowers:
    """The merged view of an overlay's lower directories (top first), as the kernel shows
    it: the first layer holding a path wins, whiteouts delete, opaque directories and
    non-directories hide what is below them."""

    def __init__(self, lowers: Sequence[Path]) -> None:
        self.lowers = [str(p) for p in lowers]
        self.below = _Below()

    def _hidden_here(self, lower: str, parts: Sequence[str]) -> bool:
        """Whether an ancestor of the path in ``lower`` ends the search (whiteout, opaque
        directory or non-directory)."""
        current = lower
        for part in parts[:-1]:
            current = f"{current}/{part}"
            st = _lstat(current)
            if st is None:
                return False
            if not stat.S_ISDIR(st.st_mode) or _opaque(current):
                return True
        return False

    def find(self, rel: str) -> tuple[str, os.stat_result] | None:
        """(host path, stat) of ``rel`` in the merged lowers, or None."""
        parts = rel.split("/")
        for lower in self.lowers:
            st = self.below.lstat(lower, rel)
            if st is not None:
                return None if is_overlay_whiteout(st) else (f"{lower}/{rel}", st)
            if self._hidden_here(lower, parts):
                return None
        return None

    def names(self, rel: str) -> set[str]:
        """The entries of directory ``rel`` in the merged lowers."""
        found: set[str] = set()
        gone: set[str] = set()
        parts = rel.split("/")
        for lower in self.lowers:
            st = self.below.lstat(lower, rel)
            if st is None:
                if self._hidden_here(lower, parts):
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            for name in _names(lower, rel):
                if name in found or name in gone:
                    continue
                child = _lstat(f"{lower}/{rel}/{name}")
                if child is not None and is_overlay_whiteout(child):
                    gone.add(name)
                else:
                    found.add(name)
            if _opaque(f"{lower}/{rel}"):
                break
        return found


def _overlay_changes(layer: WritableLayer) -> list[Change]:
    """docker's changes of a container on overlay, as its graph driver computes them on
    this kernel (the "naive" diff of the container's tree against its parent's, which
    docker 20.10's overlay2 uses where the kernel has ``redirect_dir``): a whiteout is a
    deletion, an entry missing below an addition (a new directory's whole tree too), one
    that differs from the one below (type, mode, owner, device, size and mtime of
    non-directories, link target) a modification, an opaque directory deletes the entries
    below it that it does not hold again, and a directory holding a change is modified.
    Computed from the upper directory and the lowers, without mounting anything."""
    upper = str(layer.upper)
    lowers = _Lowers(layer.lowers)
    out: list[Change] = []
    # Frames of directories being walked: rel, entries to visit, where the directory's own
    # line goes, whether it changed itself.
    stack: list[tuple[str, Iterator[tuple[str, bool]], int, bool]] = [
        ("", iter([(n, True) for n in _names(upper, "")]), 0, False)]
    while stack:
        rel, entries, at, changed = stack[-1]
        step = next(entries, None)
        if step is None:
            stack.pop()
            if rel and (changed or len(out) > at):
                out.insert(at, Change(MODIFY, f"/{rel}"))
            if rel and stack and (changed or len(out) > at):
                parent = stack[-1]
                stack[-1] = (parent[0], parent[1], parent[2], True)
            continue
        name, in_upper = step
        child = f"{rel}/{name}" if rel else name
        if not in_upper:  # below an opaque directory, not there again: deleted
            out.append(Change(DELETE, f"/{child}"))
            continue
        st = _lstat(f"{upper}/{child}")
        if st is None:
            continue
        old = lowers.find(child)
        if is_overlay_whiteout(st):
            if old is not None:
                out.append(Change(DELETE, f"/{child}"))
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if old is None or (is_dir and not stat.S_ISDIR(old[1].st_mode)):
            out.append(Change(ADD if old is None else MODIFY, f"/{child}"))
            if is_dir:
                out.extend(Change(ADD, f"/{sub}") for sub, sub_st in _walk(upper, child)
                           if not is_overlay_whiteout(sub_st))
            continue
        if not is_dir:
            if _differs(old[0], f"{upper}/{child}", old[1], st):
                out.append(Change(MODIFY, f"/{child}"))
            continue
        names = {n: True for n in _names(upper, child)}
        if _opaque(f"{upper}/{child}"):
            for gone in lowers.names(child):
                names.setdefault(gone, False)
        own = _differs(old[0], f"{upper}/{child}", old[1], st)
        stack.append((child, iter(sorted(names.items())), len(out), own))
    return out


def _differs(old_path: str, new_path: str, old: os.stat_result, new: os.stat_result) -> bool:
    """docker's statDifferent (and link targets)."""
    if (old.st_mode != new.st_mode or old.st_uid != new.st_uid or old.st_gid != new.st_gid
            or old.st_rdev != new.st_rdev):
        return True
    if not stat.S_ISDIR(new.st_mode) and (
            old.st_size != new.st_size or not _same_time(old.st_mtime_ns, new.st_mtime_ns)):
        return True
    return stat.S_ISLNK(new.st_mode) and os.readlink(old_path) != os.readlink(new_path)


def _tree_changes(layer: WritableLayer) -> list[Change]:
    new_top, old_top = str(layer.upper), str(layer.lowers[0])

    def compare(rel: str) -> list[Change]:
        out: list[Change] = []
        new_names = sorted(os.listdir(f"{new_top}/{rel}" if rel else new_top))
        old_dir = f"{old_top}/{rel}" if rel else old_top
        old_names = set(os.listdir(old_dir)) if os.path.isdir(old_dir) else set()
        for name in sorted(set(new_names) | old_names):
            child = f"{rel}/{name}" if rel else name
            new_st = _lstat(f"{new_top}/{child}")
            old_st = _lstat(f"{old_top}/{child}") if name in old_names else None
            if new_st is None:
                if old_st is not None:
                    out.append(Change(DELETE, f"/{child}"))
                continue
            if old_st is None:
                out.append(Change(ADD, f"/{child}"))
                if stat.S_ISDIR(new_st.st_mode):
                    out.extend(Change(ADD, f"/{sub}") for sub, _ in
                               _walk(new_top, child))
                continue
            own = _differs(f"{old_top}/{child}", f"{new_top}/{child}", old_st, new_st)
            below: list[Change] = []
            if stat.S_ISDIR(new_st.st_mode) and stat.S_ISDIR(old_st.st_mode):
                below = compare(child)
            elif stat.S_ISDIR(new_st.st_mode):
                below = [Change(ADD, f"/{sub}") for sub, _ in _walk(new_top, child)]
            if own or below:
                out.append(Change(MODIFY, f"/{child}"))
            out.extend(below)
        return out

    return compare("")


def changes(layer: WritableLayer) -> list[Change]:
    """``docker diff``: the container's changes, in docker's order (a pre-order walk).

    Raises:
        FailedPrecondition: a tree could not be read.
    """
    try:
        return _overlay_changes(layer) if layer.overlay else _tree_changes(layer)
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the writable layer: {exc}") from exc
    except RecursionError as exc:
        raise FailedPrecondition("the writable layer's directories nest too deeply") from exc


def _size_of(top: Path) -> int:
    """docker's ``directory.Size``: apparent sizes of non-directories, each inode once."""
    seen: set[int] = set()
    total = 0
    for _, st in _walk(str(top)):
        if stat.S_ISDIR(st.st_mode) or st.st_size == 0 or st.st_ino in seen:
            continue
        seen.add(st.st_ino)
        total += st.st_size
    return total


def size_rw(layer: WritableLayer, found: Sequence[Change] | None = None) -> int:
    """docker's ``SizeRw``: the bytes of the files in the writable layer, as its naive
    diff counts them (``archive.ChangesSize``): the apparent sizes of the added and modified
    non-directories (a symlink's target length), each inode once; a whiteout holds none.
    """
    try:
        seen: set[int] = set()
        total = 0
        for change in found if found is not None else changes(layer):
            if change.kind == DELETE:
                continue
            st = _lstat(f"{layer.upper}{change.path}")
            if st is None or stat.S_ISDIR(st.st_mode) or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_size
        return total
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the writable layer: {exc}") from exc


def image_layers_size(layer: WritableLayer) -> int:
    """The image's layers, measured as docker measures a layer (overlay only; 0 otherwise)."""
    return sum(_size_of(p) for p in layer.image_lowers)


# -- commit ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommitOptions:
    """What ``commit`` records besides the layer.

    Attributes:
        reference: ``REPO[:TAG]`` to name the image (None: dangling, as docker).
        comment: ``-m``.
        author: ``-a``.
        config: the new image's container config (the container's, ``--change`` applied).
        container_config: the container's own config (docker's ``container_config``).
        container_id: the container's ID (docker's ``container``).
        created_by: the history entry's ``created_by`` (docker: the container's Cmd).
        created: the creation time (default now).
    """

    reference: Reference | None = None
    comment: str = ""
    author: str = ""
    config: ContainerConfig | None = None
    container_config: ContainerConfig | None = None
    container_id: str = ""
    created_by: str = ""
    created: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The committed image: its ID, manifest, and the new layer's diff_id (None: empty)."""

    image_id: Digest
    manifest: Descriptor
    diff_id: Digest | None


def _layer_types(base_manifest_type: str) -> tuple[str, str, str]:
    """(manifest, config, gzip layer) media types of the base image's family."""
    if base_manifest_type == mediatypes.DOCKER_MANIFEST:
        return mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_CONFIG, mediatypes.DOCKER_LAYER
    return mediatypes.OCI_MANIFEST, mediatypes.OCI_CONFIG, mediatypes.OCI_LAYER_GZIP


def commit_image(content: LocalStore, images: ImageStore, base: LocalImage | None,
                 layer: WritableLayer, options: CommitOptions) -> CommitResult:
    """Make a new image: ``base``'s layers plus the writable layer as one gzip layer.

    The layer is :func:`strata.layers.diff` of the writable layer (overlay whiteouts become
    ``.wh.`` entries, opaque directories ``.wh..wh..opq``); an empty change set adds no layer
    and an ``empty_layer`` history entry, as docker.  Blobs are written under a lease and the
    image record is put last, so a failure leaves no image.

    Raises:
        FailedPrecondition: the writable layer could not be read.
        Unavailable: the store could not be written.
    """
    created = format_time(options.created or dt.datetime.now(dt.UTC))
    if base is not None:
        base_manifest = base.manifest()
        base_config = base.config()
        manifest_type, config_type, layer_type = _layer_types(base_manifest.media_type)
        base_layers = tuple(base_manifest.layers)
    else:
        plat = Platform.host()
        base_config = ImageConfig(architecture=plat.architecture, os=plat.os,
                                  variant=plat.variant, rootfs=RootFS(()))
        manifest_type, config_type, layer_type = _layer_types(mediatypes.OCI_MANIFEST)
        base_layers = ()
    with content.lease(label="commit"):
        ref = f"commit-{options.container_id or id(layer)}-{threading.get_ident()}"
        writer = content.writer(ref)
        if writer.offset:
            writer.abort()
            writer = content.writer(ref)
        try:
            sink = CompressedWriter(cast(BinaryIO, writer), Compression.GZIP)
            stats = diff(list(layer.lowers), layer.upper, cast(BinaryIO, sink),
                         upper_is_overlay=layer.overlay)
            sink.finish()
            if stats.entries == 0:
                writer.abort()
                blob: Descriptor | None = None
            else:
                blob = writer.commit()
        except BaseException:
            writer.abort()
            raise
        empty = blob is None
        history = History(created=created, created_by=options.created_by or None,
                          author=options.author or None, comment=options.comment or None,
                          empty_layer=empty)
        diff_ids = tuple(base_config.rootfs.diff_ids)
        layers = base_layers
        facts: list[LayerFacts] = []
        if blob is not None:
            diff_ids = (*diff_ids, stats.diff_id)
            layers = (*layers, Descriptor(layer_type, blob.digest, blob.size))
            facts.append(LayerFacts(stats.diff_id, stats.size, stats.disk_size, stats.entries))
        # docker's "container" and "container_config" (ImageConfig.to_json writes only the
        # OCI fields and ``extra``).
        extra = dict(base_config.extra)
        if options.container_id:
            extra["container"] = options.container_id
        if options.container_config is not None:
            extra["container_config"] = options.container_config.to_docker_json()
        config = replace(
            base_config, rootfs=RootFS(diff_ids), created=created,
            author=options.author or None, comment=options.comment or None,
            config=options.config if options.config is not None else base_config.config,
            container=options.container_id or None,
            container_config=options.container_config,
            history=(*base_config.history, history), extra=extra)
        config_desc = content.put(config.to_bytes(), config_type)
        manifest = Manifest(manifest_type, config_desc, layers)
        manifest_desc = content.put(manifest.to_bytes(), manifest_type)
        name = (str(options.reference) if options.reference is not None
                else ImageRecord.dangling_name(manifest_desc.digest))
        images.put_many([ImageRecord(name, manifest_desc)], layers=facts)
    return CommitResult(config_desc.digest, manifest_desc, None if empty else stats.diff_id)


def check_reference(text: str) -> Reference:
    """``commit``'s REPO[:TAG] (no digest).

    Raises:
        InvalidArgument: not a reference, or one with a digest.
    """
    try:
        ref = Reference.parse(text)
    except StrataError as exc:
        raise InvalidArgument(f"invalid reference format: {text}") from exc
    if ref.digest is not None:
        raise InvalidArgument("invalid reference format: commit needs a tag, not a digest")
    return ref
