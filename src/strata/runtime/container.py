"""Containers on one store root: rootfs from snapshots, bundle, records, run and remove.

A container's root filesystem is three kinds of snapshot stacked by the snapshotter (overlay:
one kernel overlay mount):

* the image's committed layer snapshots (keyed by chainID) as the read-only lowers;
* the *init layer* ``ctr-ID-init``, committed on the image's top chainID, holding what
  every container needs to exist as mount targets (``/etc/hosts``, ``/etc/hostname``,
  ``/etc/resolv.conf``, ``/proc``, ``/sys``, ``/dev``...), as docker's ``-init`` layer;
* the container's active snapshot ``ctr-ID`` on the init layer: the writable upper dir.

Per container, ``ROOT/containers/ID/`` holds ``hosts``, ``hostname`` and ``resolv.conf``
(bind-mounted over the init layer's files) and ``bundle/`` (``config.json`` and ``rootfs``,
where the snapshot is mounted while the container runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from strata.errors import FailedPrecondition, InvalidArgument, NotFound, StrataError
from strata.oci import ContainerConfig
from strata.runtime import builtin, oci, spec
from strata.runtime.store import ContainerRecord, ContainerStore, State, valid_name
from strata.snapshots import Snapshotter, mount_all, unmount

__all__ = ["Containers", "ImageForRun", "init_key", "upper_key"]

_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "nifty", "quiet",
               "sharp", "tender", "vivid", "witty", "zen", "bold", "crisp")
_NOUNS = ("curie", "darwin", "euler", "gauss", "hopper", "kepler", "lovelace", "newton",
          "noether", "pascal", "ritchie", "turing", "volta", "wright", "yalow", "fermi")

#: Directories and files the init layer provides (docker's ``setupInitLayer``).
_INIT_DIRS = ("dev", "dev/pts", "dev/shm", "proc", "sys", "etc")
_INIT_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")

_HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
          "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
          "ff02::2\tip6-allrouters\n")


def upper_key(container_id: str) -> str:
    """The snapshot key of a container's writable layer."""
    return f"ctr-{container_id}"


def init_key(container_id: str) -> str:
    """The committed snapshot name of a container's init layer."""
    return f"ctr-{container_id}-init"


@dataclass(frozen=True, slots=True)
class ImageForRun:
    """What a container needs from its image."""

    name: str
    id: str
    top_chain: str | None
    config: ContainerConfig | None


def _write_init(merged: Path) -> None:
    """Create the init layer's mount targets in the mounted init snapshot ``merged``.

    Works through directory file descriptors with ``O_NOFOLLOW``: an image whose ``/etc``
    (or ``/etc/hosts``...) is a symlink gets a real directory (file) in the init layer, never
    a write through the link.
    """
    root_fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for rel in _INIT_DIRS:
            parent_fd = _open_parent(root_fd, rel)
            try:
                name = rel.rsplit("/", 1)[-1]
                try:
                    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                except FileNotFoundError:
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=parent_fd)
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
            finally:
                os.close(parent_fd)
        for rel in _INIT_FILES:
            parent_fd = _open_parent(root_fd, rel)
            try:
                name = rel.rsplit("/", 1)[-1]
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        if stat.S_ISDIR(st.st_mode):
                            shutil.rmtree(f"/proc/self/fd/{parent_fd}/{name}")
                        else:
                            os.unlink(name, dir_fd=parent_fd)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644, dir_fd=parent_fd)
                os.close(fd)
            finally:
                os.close(parent_fd)
    finally:
        os.close(root_fd)


def _open_parent(root_fd: int, rel: str) -> int:
    """An fd of ``rel``'s parent directory, opened component by component without links."""
    fd = os.dup(root_fd)
    for part in rel.split("/")[:-1]:
        try:
            new = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
        except OSError:
            os.close(fd)
            raise
        os.close(fd)
        fd = new
    return fd


def _resolv_conf() -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from the container)."""
    try:
        text = Path("/etc/resolv.conf").read_text(errors="replace")
    except OSError:
        return ""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and (
                words[1].startswith("127.") or words[1] == "::1"):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


class Containers:
    """The containers of one store root.

    Args:
        root: ``ROOT/containers`` (per-container directories).
        store: the container records.
        snapshotter: the store's snapshotter (layers, init layers, writable layers).
    """

    def __init__(self, root: Path, store: ContainerStore, snapshotter: Snapshotter) -> None:
        self.root = root
        self.store = store
        self.snapshotter = snapshotter
        root.mkdir(parents=True, exist_ok=True)

    def _unique_name(self) -> str:
        taken = {r.name for r in self.store.walk()}
        while True:
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
            if name not in taken:
                return name
            name = f"{name}{secrets.randbelow(10)}"
            if name not in taken:
                return name

    def create(self, image: ImageForRun, options: spec.RunOptions) -> ContainerRecord:
        """Make a container: its snapshots, its files, its bundle and its record.

        Raises:
            InvalidArgument: a bad name, working directory, environment, no command, or a
                runtime that is not installed.
            AlreadyExists: the name is taken.
            NotFound: the ``-u`` user or group does not exist in the image.
        """
        args = spec.command_of(image.config, options)
        if options.runtime != "builtin" and shutil.which(options.runtime) is None:
            raise InvalidArgument(f"unknown or invalid runtime name: {options.runtime}")
        name = valid_name(options.name) if options.name else self._unique_name()
        cid = secrets.token_hex(32)
        record = ContainerRecord(id=cid, name=name, image=image.name, image_id=image.id,
                                 command=tuple(args), runtime=options.runtime,
                                 created=time.time(), auto_remove=options.remove)
        self.store.add(record)
        try:
            self._make(record, image, options)
        except BaseException:
            with contextlib.suppress(StrataError, OSError):
                self._destroy(cid)
            raise
        return record

    def _make(self, record: ContainerRecord, image: ImageForRun, options: spec.RunOptions) -> None:
        cid = record.id
        cdir = self.root / cid
        bundle = cdir / "bundle"
        (bundle / "rootfs").mkdir(parents=True)
        hostname = options.hostname or cid[:12]
        (cdir / "hostname").write_text(hostname + "\n")
        (cdir / "hosts").write_text(_HOSTS)
        (cdir / "resolv.conf").write_text(_resolv_conf())
        # The init layer: prepared on the image's top layer, filled, committed.
        active = f"{init_key(cid)}-active"
        mounts = self.snapshotter.prepare(active, image.top_chain)
        with tempfile.TemporaryDirectory(dir=cdir) as tmp:
            mount_all(mounts, Path(tmp))
            try:
                _write_init(Path(tmp))
                # The init layer leaves /etc/passwd and /etc/group as the image has them.
                user = spec.resolve_user(Path(tmp), options.user if options.user is not None
                                         else (image.config.user if image.config else None))
            finally:
                unmount(Path(tmp), detach=True)
        self.snapshotter.commit(init_key(cid), active)
        self.snapshotter.prepare(upper_key(cid), init_key(cid))
        document = spec.generate(
            image.config, options, user=user, hostname=hostname,
            etc_files={"/etc/hosts": cdir / "hosts", "/etc/hostname": cdir / "hostname",
                       "/etc/resolv.conf": cdir / "resolv.conf"})
        (bundle / "config.json").write_text(json.dumps(document, indent=2))

    @contextlib.contextmanager
    def mounted(self, container_id: str) -> Iterator[Path]:
        """The container's rootfs mounted at ``bundle/rootfs`` for the duration."""
        rootfs = self.root / container_id / "bundle" / "rootfs"
        mount_all(self.snapshotter.mounts(upper_key(container_id)), rootfs)
        try:
            yield rootfs
        finally:
            if _is_mounted(rootfs):  # `rm -f` may have unmounted it meanwhile
                unmount(rootfs, detach=True)

    def start(self, ref: str, *, on_start: Callable[[ContainerRecord], None] | None = None
              ) -> int:
        """Run a created or exited container in the foreground; the process's exit code.

        Raises:
            NotFound: no such container.
            FailedPrecondition: it is running.
            CommandNotFound, CannotExecute, StrataError: it could not start.
        """
        record = self.store.find(ref)
        if record.state == State.RUNNING and record.pid and _alive(record.pid):
            raise FailedPrecondition(f"container {record.id[:12]} is already running")
        bundle = self.root / record.id / "bundle"

        def started(pid: int) -> None:
            nonlocal record
            record = self.store.started(record, pid)
            if on_start is not None:
                on_start(record)

        code = 125
        try:
            if record.runtime == "builtin":
                # Mounted inside the container's own mount namespace: gone with it.
                code = builtin.run_bundle(
                    bundle, rootfs_mounts=self.snapshotter.mounts(upper_key(record.id)),
                    on_start=started)
            else:
                with self.mounted(record.id):
                    code = oci.run_with(record.runtime, bundle, record.id,
                                        self.root.parent / "runtime" / record.runtime,
                                        on_start=started)
        except StrataError as exc:
            code = exc.exit_code if exc.exit_code in (126, 127) else 125
            raise
        finally:
            with contextlib.suppress(NotFound):
                self.store.exited(record, code)
            if record.auto_remove:
                with contextlib.suppress(StrataError, OSError):
                    self._destroy(record.id)
        return code

    def reconcile(self) -> list[ContainerRecord]:
        """Every record, with those marked running whose process is gone (strata was killed
        while running them) marked exited with code 255 first; newest first."""
        out = []
        for record in self.store.walk():
            if record.state == State.RUNNING and not (record.pid and _alive(record.pid)):
                with contextlib.suppress(NotFound):
                    record = self.store.exited(record, 255)
            out.append(record)
        return out

    def remove(self, ref: str, *, force: bool = False) -> ContainerRecord:
        """Remove a container: its record, snapshots and directory.

        Raises:
            NotFound: no such container.
            FailedPrecondition: it is running and ``force`` is not given (docker's message).
        """
        record = self.store.find(ref)
        if record.state == State.RUNNING and record.pid and _alive(record.pid):
            if not force:
                raise FailedPrecondition(
                    f"You cannot remove a running container {record.id}. Stop the container"
                    " before attempting removal or force remove")
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, 9)
        self._destroy(record.id)
        return record

    def _destroy(self, cid: str) -> None:
        rootfs = self.root / cid / "bundle" / "rootfs"
        if _is_mounted(rootfs):
            unmount(rootfs, detach=True)
        for key in (upper_key(cid), init_key(cid), f"{init_key(cid)}-active"):
            with contextlib.suppress(NotFound):
                self.snapshotter.remove(key)
        shutil.rmtree(self.root / cid, ignore_errors=True)
        self.store.delete(cid)


def _is_mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (a bind mount from the same filesystem too,
    which ``os.path.ismount`` cannot tell)."""
    target = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space...) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
