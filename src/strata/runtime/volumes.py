"""Volumes and container mounts: ``-v``, ``--mount``, named and anonymous volumes.

* ``-v HOST:CONTAINER[:OPTS]`` bind-mounts an absolute host path (created as a directory when
  missing, as docker does for ``-v``); ``-v NAME:CONTAINER`` mounts the named volume
  ``ROOT/volumes/NAME/_data`` (created on first use); ``-v CONTAINER`` and the image's
  ``VOLUME`` paths get anonymous volumes (64 hex digits).  OPTS: ``ro``/``rw``, ``nocopy``,
  ``z``/``Z`` (accepted, no SELinux here) and a propagation mode.
* ``--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,...]``: the same with
  docker's stricter rules (a missing bind source is an error).
* A new (empty) volume is seeded with what the image has at the mount path, owner and mode
  included, as docker does (unless ``nocopy``).
* ``strata volume create|ls|inspect|rm|prune``: :class:`Volumes`.

Each container keeps the volumes it uses in ``ROOT/containers/ID/mounts.json`` so that a
volume in use cannot be removed; anonymous volumes of a ``--rm`` container go with it.
Paths inside the container are resolved inside its rootfs (symlinks cannot point a mount or
a seed copy outside it): the runtime does it for mounts, :func:`seed` for copies.

What it must not do: mount anything (the runtime does), or know about images beyond the
paths it is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strata.errors import FailedPrecondition, InvalidArgument, NotFound, StrataError
from strata.runtime.builtin import secure_join

__all__ = [
    "MountRequest",
    "VolumeInfo",
    "Volumes",
    "container_volumes",
    "inspect_mounts",
    "parse_mount",
    "parse_volume",
    "prepare",
    "release",
    "requests_of",
]

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_PROPAGATION = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
_MOUNTS_FILE = "mounts.json"


@dataclass(frozen=True, slots=True)
class MountRequest:
    """One mount a container asked for.

    Attributes:
        type: ``bind``, ``volume`` or ``tmpfs``.
        target: the absolute path inside the container.
        source: the host path (bind) or the volume name (``""``: anonymous volume).
        read_only: mounted read-only.
        propagation: the bind propagation (docker's default ``rprivate``).
        nocopy: do not seed a new volume with the image's content.
        create_source: create a missing bind source (``-v``), else it is an error.
        tmpfs_options: ``size=...``/``mode=...`` for tmpfs.
    """

    type: str
    target: str
    source: str = ""
    read_only: bool = False
    propagation: str = "rprivate"
    nocopy: bool = False
    create_source: bool = False
    tmpfs_options: tuple[str, ...] = ()


def _check_target(spec: str, kind: str, target: str, *, flag: str = "volume") -> None:
    prefix = f"invalid volume specification: '{spec}': " if flag == "volume" else ""
    if not target.startswith("/"):
        raise InvalidArgument(f"{prefix}invalid mount config for type \"{kind}\": invalid mount"
                              f" path: '{target}' mount path must be absolute")
    if os.path.normpath(target) == "/":
        raise InvalidArgument(f"{prefix}invalid mount config for type \"{kind}\": invalid "
                              "specification: destination can't be '/'")


def parse_volume(spec: str) -> MountRequest:
    """One ``-v`` word as docker reads it.

    Raises:
        InvalidArgument: docker's messages: a relative host path that is not a valid volume
            name, a relative container path, a bad mode.
    """
    parts = spec.split(":")
    if not spec or len(parts) > 3 or any(p == "" for p in parts):
        raise InvalidArgument(f"invalid volume specification: '{spec}'")
    mode = parts[2] if len(parts) == 3 else ""
    if len(parts) == 1:
        source, target = "", parts[0]
    else:
        source, target = parts[0], parts[1]
    kind = "bind" if source.startswith("/") else "volume"
    if source and kind == "volume" and not _NAME.match(source):
        raise InvalidArgument(
            f'create {source}: "{source}" includes invalid characters for a local volume name,'
            ' only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
            "directory, use absolute path")
    _check_target(spec, kind, target)
    read_only, nocopy, propagation = False, False, "rprivate"
    for opt in (o for o in mode.split(",") if o):
        if opt in ("ro", "rw"):
            read_only = opt == "ro"
        elif opt == "nocopy" and kind == "volume":
            nocopy = True
        elif opt in ("z", "Z"):
            continue
        elif opt in _PROPAGATION and kind == "bind":
            propagation = opt
        else:
            raise InvalidArgument(f"invalid volume specification: '{spec}': invalid mode: "
                                  f"{mode}")
    return MountRequest(type=kind, target=os.path.normpath(target),
                        source=os.path.normpath(source) if kind == "bind" else source,
                        read_only=read_only, propagation=propagation, nocopy=nocopy,
                        create_source=True)


_TRUE = ("", "1", "true")
_FALSE = ("0", "false")


def _bool(spec: str, key: str, value: str | None) -> bool:
    text = (value or "").lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument(f"invalid argument \"{spec}\" for \"--mount\" flag: invalid value "
                          f"for {key}: {value}")


def parse_mount(spec: str) -> MountRequest:
    """One ``--mount`` word (comma-separated ``key=value``) as docker reads it.

    Raises:
        InvalidArgument: an unknown key or type, a missing or relative target, a bind
            without a source.
    """
    fields: dict[str, str | None] = {}
    for item in spec.split(","):
        if not item:
            continue
        name, sep, text = item.partition("=")
        fields[name.strip().lower()] = text if sep else None
    kind = fields.pop("type", None) or "volume"
    if kind not in ("bind", "volume", "tmpfs"):
        raise InvalidArgument(f"invalid argument \"{spec}\" for \"--mount\" flag: type '{kind}'"
                              " is not valid")
    source = target = ""
    read_only = nocopy = False
    propagation = "rprivate"
    tmpfs: list[str] = []
    for key, value in fields.items():
        if key in ("source", "src"):
            source = value or ""
        elif key in ("target", "destination", "dst"):
            target = value or ""
        elif key in ("readonly", "ro"):
            read_only = _bool(spec, key, value)
        elif key == "volume-nocopy":
            nocopy = _bool(spec, key, value)
        elif key == "bind-propagation" and value in _PROPAGATION:
            propagation = str(value)
        elif key == "tmpfs-size" and value:
            tmpfs.append(f"size={value}")
        elif key == "tmpfs-mode" and value:
            try:
                tmpfs.append(f"mode={int(value, 8):o}")
            except ValueError:
                raise InvalidArgument(f"invalid argument \"{spec}\" for \"--mount\" flag: "
                                      f"invalid value for tmpfs-mode: {value}") from None
        elif key in ("consistency", "bind-nonrecursive"):
            continue
        else:
            raise InvalidArgument(f"invalid argument \"{spec}\" for \"--mount\" flag: "
                                  f"unexpected key '{key}' in '{item_of(spec, key)}'")
    if not target:
        raise InvalidArgument(f"invalid argument \"{spec}\" for \"--mount\" flag: target is "
                              "required")
    _check_target(spec, kind, target, flag="mount")
    if kind == "bind":
        if not source:
            raise InvalidArgument("invalid mount config for type \"bind\": field Source must "
                                  "not be empty")
        if not source.startswith("/"):
            raise InvalidArgument(f"invalid mount config for type \"bind\": invalid mount "
                                  f"path: '{source}' mount path must be absolute")
        source = os.path.normpath(source)
    elif kind == "volume" and source and not _NAME.match(source):
        raise InvalidArgument(
            f'create {source}: "{source}" includes invalid characters for a local volume name,'
            ' only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
            "directory, use absolute path")
    elif kind == "tmpfs" and source:
        raise InvalidArgument("invalid mount config for type \"tmpfs\": field Source must be "
                              "empty")
    return MountRequest(type=kind, target=os.path.normpath(target), source=source,
                        read_only=read_only, propagation=propagation, nocopy=nocopy,
                        tmpfs_options=tuple(tmpfs))


def item_of(spec: str, key: str) -> str:
    """The ``key=value`` item of a ``--mount`` word (for messages)."""
    for item in spec.split(","):
        if item.partition("=")[0].strip().lower() == key:
            return item
    return key


def requests_of(volumes: Sequence[str], mounts: Sequence[str],
                tmpfs_targets: Iterable[str] = ()) -> list[MountRequest]:
    """Every ``-v`` and ``--mount`` request, checked for duplicate targets.

    Raises:
        InvalidArgument: a bad word, or two mounts on one path (docker's ``Duplicate mount
            point``).
    """
    out = [parse_volume(v) for v in volumes] + [parse_mount(m) for m in mounts]
    seen = {os.path.normpath(t) for t in tmpfs_targets}
    for r in out:
        if r.target in seen:
            raise InvalidArgument(f"Duplicate mount point: {r.target}")
        seen.add(r.target)
    return out


# --------------------------------------------------------------------------- volume store


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A volume as ``volume inspect`` shows it.

    Attributes:
        name: the name (64 hex digits for an anonymous volume).
        mountpoint: ``ROOT/volumes/NAME/_data``.
        created: creation time (seconds since the epoch).
        anonymous: made for a ``-v /path`` or an image ``VOLUME``.
        labels: ``--label`` values.
    """

    name: str
    mountpoint: Path
    created: float
    anonymous: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_docker_json(self) -> dict[str, Any]:
        """docker's ``volume inspect`` object."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        return {"CreatedAt": created, "Driver": "local", "Labels": dict(self.labels) or None,
                "Mountpoint": str(self.mountpoint), "Name": self.name, "Options": None,
                "Scope": "local"}


class Volumes:
    """The volumes of one store root (``ROOT/volumes``).

    Args:
        root: ``ROOT/volumes``.
        containers: ``ROOT/containers`` (to tell which volumes are in use).
    """

    def __init__(self, root: Path, containers: Path) -> None:
        self.root = root
        self.containers = containers

    def path(self, name: str) -> Path:
        """The directory a volume's content lives in."""
        return self.root / name / "_data"

    def _meta(self, name: str) -> Path:
        return self.root / name / "volume.json"

    def create(self, name: str | None = None, *, labels: Mapping[str, str] | None = None,
               anonymous: bool = False) -> tuple[VolumeInfo, bool]:
        """Make a volume (an existing one is returned as it is, as docker does).

        Args:
            name: the name (None: an anonymous volume, 64 hex digits).
            labels: labels to record.
            anonymous: record the volume as anonymous.

        Returns:
            The volume and whether it was created now.

        Raises:
            InvalidArgument: an invalid name (docker's message).
        """
        if name is None:
            name, anonymous = secrets.token_hex(32), True
        elif not _NAME.match(name):
            raise InvalidArgument(
                f'create {name}: "{name}" includes invalid characters for a local volume '
                'name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a'
                " host directory, use absolute path")
        with contextlib.suppress(NotFound):
            return self.get(name), False
        vdir = self.root / name
        vdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(vdir / "_data", 0o755)
        info = VolumeInfo(name=name, mountpoint=self.path(name), created=time.time(),
                          anonymous=anonymous, labels=dict(labels or {}))
        tmp = vdir / "volume.json.tmp"
        tmp.write_text(json.dumps({"created": info.created, "anonymous": anonymous,
                                   "labels": dict(info.labels)}))
        tmp.replace(self._meta(name))
        return info, True

    def get(self, name: str) -> VolumeInfo:
        """A volume by name.

        Raises:
            NotFound: docker's ``get NAME: no such volume``.
        """
        if not _NAME.match(name) or "/" in name:
            raise NotFound(f"get {name}: no such volume")
        try:
            meta = json.loads(self._meta(name).read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFound(f"get {name}: no such volume") from None
        return VolumeInfo(name=name, mountpoint=self.path(name), created=float(meta["created"]),
                          anonymous=bool(meta.get("anonymous")),
                          labels=dict(meta.get("labels") or {}))

    def walk(self) -> list[VolumeInfo]:
        """Every volume, by name."""
        out = []
        if self.root.is_dir():
            for entry in sorted(os.listdir(self.root)):
                with contextlib.suppress(NotFound):
                    out.append(self.get(entry))
        return out

    def users(self) -> dict[str, list[str]]:
        """Volume name → IDs of the containers that use it."""
        out: dict[str, list[str]] = {}
        if not self.containers.is_dir():
            return out
        for cid in os.listdir(self.containers):
            for name in container_volumes(self.containers / cid):
                out.setdefault(name, []).append(cid)
        return out

    def remove(self, name: str, *, force: bool = False) -> None:
        """Remove a volume and its content.

        Raises:
            NotFound: no such volume (not with ``force``).
            FailedPrecondition: a container uses it (docker's message).
        """
        try:
            self.get(name)
        except NotFound:
            if force:
                return
            raise
        users = self.users().get(name)
        if users:
            raise FailedPrecondition(f"remove {name}: volume is in use - "
                                     f"[{', '.join(users)}]")
        self._delete(name)

    def _delete(self, name: str) -> None:
        vdir = self.root / name
        trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
        try:
            os.rename(vdir, trash)  # gone at once even if the delete below is slow
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self, *, all_volumes: bool = False) -> tuple[list[str], int]:
        """Remove unused volumes (anonymous ones only unless ``all_volumes``, as docker 23+).

        Returns:
            The removed names and the bytes reclaimed.
        """
        users = self.users()
        removed, size = [], 0
        for info in self.walk():
            if info.name in users or not (info.anonymous or all_volumes):
                continue
            size += _du(info.mountpoint)
            self._delete(info.name)
            removed.append(info.name)
        return removed, size


def _du(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if not stat.S_ISDIR(st.st_mode):
                    total += st.st_blocks * 512
    return total


# --------------------------------------------------------------------------- containers


def container_volumes(container_dir: Path) -> list[str]:
    """The volume names a container uses (from its ``mounts.json``)."""
    try:
        data = json.loads((container_dir / _MOUNTS_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return []
    return [str(v["name"]) for v in data.get("volumes") or ()]


def seed(volume_dir: Path, rootfs: Path, target: str) -> None:
    """Copy what the image has at ``target`` into an empty volume (owner, mode, links kept).

    ``target`` is resolved inside ``rootfs``: a symlink in the image cannot make the copy
    read host files.  Nothing is copied when the path is missing or not a directory.
    """
    source = secure_join(str(rootfs), target)
    try:
        st = os.lstat(source)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode) or os.listdir(volume_dir):
        return
    os.chown(volume_dir, st.st_uid, st.st_gid)
    os.chmod(volume_dir, stat.S_IMODE(st.st_mode))
    if os.listdir(source):
        proc = subprocess.run(["cp", "-a", "--", f"{source}/.", str(volume_dir)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StrataError(f"copy the image's {target} into the volume: "
                              f"{proc.stderr.strip()}")


def prepare(container_dir: Path, requests: Sequence[MountRequest], volumes: Volumes, *,
            image_volumes: Iterable[str] = (), rootfs: Path | None = None,
            remove_anonymous: bool = False) -> list[dict[str, Any]]:
    """The runtime-spec mounts for a container's requests, volumes created and seeded.

    Anonymous volumes are made for the image's ``VOLUME`` paths no request covers.  What
    the container uses is written to ``container_dir/mounts.json``.

    Args:
        container_dir: ``ROOT/containers/ID``.
        requests: from :func:`requests_of`.
        volumes: the store's volumes.
        image_volumes: the image config's ``Volumes``.
        rootfs: the image's filesystem mounted somewhere (to seed new volumes), or None.
        remove_anonymous: the container's anonymous volumes go with it (``--rm``).

    Returns:
        Runtime-spec mount objects.

    Raises:
        InvalidArgument: a ``--mount`` bind source that does not exist (docker's message).
        StrataError: a bind source could not be created, or seeding failed.
    """
    covered = {r.target for r in requests}
    all_requests = list(requests)
    for path in sorted(image_volumes):
        normal = os.path.normpath(path) if path.startswith("/") else "/" + path
        if normal not in covered and normal != "/":
            all_requests.append(MountRequest(type="volume", target=normal))
            covered.add(normal)
    out: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    shown: list[dict[str, Any]] = []  # docker's inspect "Mounts"
    try:
        for r in all_requests:
            if r.type == "tmpfs":
                opts = ["nosuid", "nodev", "noexec", *r.tmpfs_options]
                if r.read_only:
                    opts.append("ro")
                out.append({"destination": r.target, "type": "tmpfs", "source": "tmpfs",
                            "options": opts})
                shown.append({"Type": "tmpfs", "Source": "", "Destination": r.target,
                              "Mode": "", "RW": not r.read_only, "Propagation": ""})
                continue
            if r.type == "bind":
                source = Path(r.source)
                if not source.exists():
                    if not r.create_source:
                        raise InvalidArgument(f"invalid mount config for type \"bind\": bind "
                                              f"source path does not exist: {r.source}")
                    try:
                        source.mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise StrataError(f"error while creating mount source path "
                                          f"'{r.source}': mkdir {exc.filename}: "
                                          f"{(exc.strerror or '').lower()}") from exc
            else:
                info, created = volumes.create(r.source or None)
                used.append({"name": info.name, "anonymous": info.anonymous})
                _write_used(container_dir, used, remove_anonymous, shown)
                if created and not r.nocopy and rootfs is not None:
                    seed(info.mountpoint, rootfs, r.target)
                source = info.mountpoint
            opts = ["rbind", r.propagation]
            if r.read_only:
                opts.append("ro")
            out.append({"destination": r.target, "type": "bind", "source": str(source),
                        "options": opts})
            if r.type == "bind":
                shown.append({"Type": "bind", "Source": str(source), "Destination": r.target,
                              "Mode": "", "RW": not r.read_only,
                              "Propagation": r.propagation})
            else:
                shown.append({"Type": "volume", "Name": used[-1]["name"],
                              "Source": str(source), "Destination": r.target,
                              "Driver": "local", "Mode": "", "RW": not r.read_only,
                              "Propagation": ""})
    finally:
        _write_used(container_dir, used, remove_anonymous, shown)
    return out


def _write_used(container_dir: Path, used: list[dict[str, Any]], remove_anonymous: bool,
                shown: list[dict[str, Any]]) -> None:
    tmp = container_dir / f"{_MOUNTS_FILE}.tmp"
    tmp.write_text(json.dumps({"volumes": used, "remove_anonymous": remove_anonymous,
                               "mounts": shown}))
    tmp.replace(container_dir / _MOUNTS_FILE)


def inspect_mounts(container_dir: Path) -> list[dict[str, Any]]:
    """docker's ``inspect`` ``Mounts`` list of a container (its ``-v``/``--mount``/image
    volumes; empty when it has none)."""
    try:
        data = json.loads((container_dir / _MOUNTS_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return []
    return list(data.get("mounts") or ())


def release(container_dir: Path, volumes: Volumes) -> list[str]:
    """A container is being removed: drop its anonymous volumes if it was ``--rm``, as
    docker does; the volumes removed."""
    try:
        data = json.loads((container_dir / _MOUNTS_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return []
    (container_dir / _MOUNTS_FILE).unlink(missing_ok=True)
    if not data.get("remove_anonymous"):
        return []
    removed = []
    users = volumes.users()
    for v in data.get("volumes") or ():
        name = str(v["name"])
        if v.get("anonymous") and not users.get(name):
            with contextlib.suppress(StrataError, OSError):
                volumes.remove(name)
                removed.append(name)
    return removed
