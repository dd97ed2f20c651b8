"""The build executor: runs one stage's instructions into snapshots, layers and a config.

Owns a stage's *state* — the top snapshot (chainID), the layers and diff_ids, the container
config, the history, the ARGs in scope, the shell — and what each instruction does to it:

* ``RUN`` runs in a container made from the current chain: an active snapshot is prepared
  on it and mounted, the process runs through ``strata.runtime`` (the spec from
  ``spec.generate``, the built-in runtime's ``run_bundle``) with its output captured, the
  mount targets the run needed are removed again, and the overlay upper directory's
  changeset becomes a gzip layer in the content store (``strata.layers.diff``,
  deterministic headers); the snapshot is committed under the new chainID.
* ``COPY`` / ``ADD`` write straight into an active snapshot (no container), then the same
  changeset → layer → commit path follows.  ``WORKDIR`` creates its directory that way.
* Config instructions edit the config and record ``empty_layer`` history.

Steps that read or make files are looked up in the :class:`~strata.build.cache.BuildCache`
first; a hit reuses the committed snapshot and the layer blob without running anything.
Nothing here prints: progress goes to a callback as :class:`BuildEvent` values.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime as dt
import fnmatch
import json
import lzma
import os
import secrets
import shutil
import stat
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from strata.build.cache import BuildCache, CacheRecord, step_key
from strata.build.dockerfile import Instruction, Stage, parse_duration, parse_instruction
from strata.build.expand import expand, expand_pairs
from strata.content import Lease, LocalStore
from strata.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotSupported,
    StrataError,
    Unavailable,
)
from strata.images import ImageStore, LayerFacts
from strata.layers import ApplyOptions, CompressedWriter, apply, diff, open_decompressed
from strata.oci import (
    Compression,
    ContainerConfig,
    Descriptor,
    Digest,
    Healthcheck,
    History,
    ImageConfig,
    Platform,
    RootFS,
    chain_ids,
    format_time,
    mediatypes,
)
from strata.runtime import RunOptions
from strata.runtime import spec as runspec
from strata.runtime.builtin import run_bundle, secure_join
from strata.snapshots import Mount, Snapshotter, mount_all, unmount

__all__ = [
    "BaseImage",
    "BuildEvent",
    "BuildProgress",
    "BuildSettings",
    "BuildStepFailed",
    "ContextFiles",
    "ImageSource",
    "StageResult",
    "StageBuilder",
    "Workspace",
]

#: How many lines of a failing step's output the error keeps.
TAIL_LINES = 20
_DEFAULT_SHELL = ("/bin/sh", "-c")
_CHUNK = 1 << 20
_SKIP_XATTRS = ("security.selinux", "trusted.overlay.")


class BuildStepFailed(FailedPrecondition):
    """A build step failed: its name, command, exit code and the tail of its output."""

    def __init__(self, step: str, message: str, *, exit_code_of_step: int | None = None,
                 tail: Sequence[str] = ()) -> None:
        text = f"{step}: {message}"
        if tail:
            text += "\n" + "\n".join(f"  > {line}" for line in tail)
        super().__init__(text)
        self.step = step
        self.exit_code_of_step = exit_code_of_step
        self.tail = tuple(tail)


@dataclass(frozen=True, slots=True)
class BuildEvent:
    """One progress event of a build (BuildKit's vertex updates).

    Attributes:
        step: the vertex number (``#N``).
        name: what the step is (``[stage 2/5] RUN make``).
        kind: ``start``, ``log`` (``text`` is an output line), ``cached``, ``done``,
            ``error`` (``text`` is the message).
        text: the log line or error.
        elapsed: seconds since the step started (``done``, ``log``, ``error``).
    """

    step: int
    name: str
    kind: str
    text: str = ""
    elapsed: float = 0.0


BuildProgress = Callable[[BuildEvent], None]


@dataclass(frozen=True, slots=True)
class BaseImage:
    """An image a stage starts from or copies from, with its layers in snapshots."""

    id: Digest
    config: ImageConfig
    layers: tuple[Descriptor, ...]
    top_chain: Digest | None


class ImageSource(Protocol):
    """Finds images for FROM and ``COPY --from`` (the engine: local store, pull if missing)."""

    def base_image(self, name: str, *, platform: Platform | None, pull: bool) -> BaseImage:
        """The image ``name`` unpacked into snapshots.

        Raises:
            NotFound: no such image, locally or in its registry.
        """
        ...


class ContextFiles(Protocol):
    """The build context as the executor reads it."""

    @property
    def root(self) -> Path:
        """A directory holding the context's files."""
        ...

    def included(self, rel: str) -> bool:
        """Whether ``rel`` (``/``-separated, relative to the root) is part of the context
        (not excluded by ``.dockerignore``)."""
        ...

    def resolve_sources(self, source: str) -> list[str]:
        """The context paths a COPY source (expanded, wildcards allowed) names; ``.`` for
        the root.

        Raises:
            NotFound: nothing matches.
            InvalidArgument: the source lies outside the context.
        """
        ...

    def checksum(self, sources: Sequence[str], *, follow_top_symlink: bool = True) -> Digest:
        """A content checksum (never mtimes) of what copying ``sources`` reads."""
        ...


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """What a build was asked for, beyond the Dockerfile and the context.

    Attributes:
        build_args: ``--build-arg`` values.
        no_cache: do not look steps up in the cache (results are still recorded).
        pull: always look for a newer base image in its registry.
        platform: the target platform (None: the host's).
        source_date_epoch: clamp times to this (reproducible builds).
        secrets: ``--secret id=ID,src=PATH``: id → file.
        network: the default network for RUN (``default``, ``host``, ``none``).
    """

    build_args: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False
    platform: Platform | None = None
    source_date_epoch: int | None = None
    secrets: Mapping[str, Path] = field(default_factory=dict)
    network: str = "default"


class Workspace:
    """What every stage of one build shares: the stores, the cache, the lease, progress."""

    def __init__(self, *, content: LocalStore, images: ImageStore, snapshotter: Snapshotter,
                 cache: BuildCache, workdir: Path, lease: Lease, source: ImageSource,
                 context: ContextFiles | None, settings: BuildSettings,
                 progress: BuildProgress) -> None:
        self.content = content
        self.images = images
        self.snapshotter = snapshotter
        self.cache = cache
        self.workdir = workdir
        self.lease = lease
        self.source = source
        self.context = context
        self.settings = settings
        self.progress = progress
        #: where ``RUN --mount=type=cache`` directories live (kept across builds)
        self.cache_mounts = cache.path.parent / "cache-mounts"
        self._lock = threading.Lock()
        self._counter = 0
        self.used_args: set[str] = set()
        #: active snapshot keys not yet committed or removed (removed if the build fails)
        self.active: set[str] = set()

    def next_step(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def now(self) -> str:
        epoch = self.settings.source_date_epoch
        when = dt.datetime.fromtimestamp(epoch, dt.UTC) if epoch is not None else dt.datetime.now(
            dt.UTC)
        return format_time(when)

    def platform(self) -> Platform:
        return self.settings.platform or Platform.host()

    def prepare(self, parent: Digest | None) -> tuple[str, list[Mount]]:
        key = f"build-{secrets.token_hex(12)}"
        with self._lock:
            self.active.add(key)
        self.lease.add(f"snapshot:{key}")
        return key, self.snapshotter.prepare(key, str(parent) if parent else None)

    def committed(self, key: str) -> None:
        """``key`` was committed: no longer an active snapshot to clean up."""
        with self._lock:
            self.active.discard(key)

    def drop(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            self.snapshotter.remove(key)
        with self._lock:
            self.active.discard(key)

    def release_all(self) -> None:
        """Remove active snapshots a failed build left."""
        for key in list(self.active):
            self.drop(key)

    @contextlib.contextmanager
    def view(self, chain: Digest | None) -> Iterator[Path]:
        """A read-only tree of ``chain`` mounted for the duration (empty for None)."""
        tmp = self.workdir / f"view-{secrets.token_hex(8)}"
        tmp.mkdir(parents=True)
        if chain is None:
            try:
                yield tmp
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        key = f"build-view-{secrets.token_hex(8)}"
        mounts = self.snapshotter.view(key, str(chain))
        try:
            mount_all(mounts, tmp)
            try:
                yield tmp
            finally:
                unmount(tmp, detach=True)
        finally:
            with contextlib.suppress(NotFound):
                self.snapshotter.remove(key)
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class StageResult:
    """What a built stage is: the image it would be, and its last cache key."""

    index: int
    name: str | None
    key: str
    chain: Digest | None
    diff_ids: tuple[Digest, ...]
    layers: tuple[Descriptor, ...]
    config: ImageConfig
    created: str | None = None
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Layer:
    chain: Digest | None
    diff_id: Digest | None
    layer: Descriptor | None


# ---------------------------------------------------------------------------- helpers


def _words(ins: Instruction, env: Mapping[str, str], escape: str) -> list[str]:
    """An instruction's words, each expanded on its own (BuildKit); empty ones dropped."""
    source = ins.args if ins.json_form else ins.words
    out = [expand(w, env, escape=escape) for w in source]
    return [w for w in out if w] if not ins.json_form else out


def _raw(ins: Instruction) -> str:
    return " ".join(ins.args)


def _flag(ins: Instruction, name: str) -> str | None:
    values = ins.flags.get(name)
    return values[-1] if values else None


def _clean_rel(path: str) -> str:
    """A path made relative to a root: leading ``/`` dropped, ``..`` clamped at the top."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _env_dict(config: ContainerConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in config.env or ():
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _set_env(config: ContainerConfig, pairs: Sequence[tuple[str, str]]) -> ContainerConfig:
    env = list(config.env or ())
    for key, value in pairs:
        entry = f"{key}={value}"
        for i, item in enumerate(env):
            if item.partition("=")[0] == key:
                env[i] = entry
                break
        else:
            env.append(entry)
    return replace(config, env=tuple(env))


def _pairs(words: Sequence[str], what: str) -> list[tuple[str, str]]:
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what}: {word!r} is not KEY=VALUE")
        out.append((key, value))
    return out


def _tail(lines: Sequence[str]) -> list[str]:
    return list(lines[-TAIL_LINES:])


# ------------------------------------------------------------- running in a container


def run_captured(bundle: Path, on_line: Callable[[str], None],
                 stdin: Path | None = None) -> int:
    """Run a bundle with the built-in runtime, its stdout and stderr captured line by line.

    The runtime is called in a forked child whose stdio are pipes (the build's own stdio
    and signal handlers stay untouched, which also lets stages run in threads).

    Raises:
        CommandNotFound, CannotExecute, StrataError: the process could not start.
    """
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 125
        try:
            os.close(out_r)
            os.close(err_r)
            fd = os.open(stdin or os.devnull, os.O_RDONLY)
            os.dup2(fd, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            # other stages' pipes (threads) must not stay open in this process tree
            os.closerange(3, err_w)
            os.closerange(err_w + 1, 65536)
            code = run_bundle(bundle)
        except StrataError as exc:
            os.write(err_w, json.dumps({"kind": type(exc).__name__, "message": str(exc)}).encode())
        except BaseException:
            os.write(err_w, json.dumps({"kind": "StrataError",
                                        "message": traceback.format_exc(limit=3)}).encode())
        os._exit(code)
    os.close(out_w)
    os.close(err_w)
    pending = b""
    with os.fdopen(out_r, "rb", buffering=0) as stream:
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_line(line.decode(errors="replace"))
    if pending:
        on_line(pending.decode(errors="replace"))
    with os.fdopen(err_r, "rb") as errs:
        report = errs.read()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if report:
        from strata import errors as errmod

        info = json.loads(report)
        cls = getattr(errmod, str(info.get("kind")), StrataError)
        if not (isinstance(cls, type) and issubclass(cls, StrataError)):
            cls = StrataError
        raise cls(str(info.get("message")))
    return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else (
        128 + os.WTERMSIG(status))


def _mount_targets(document: Mapping[str, object]) -> list[str]:
    mounts = cast(list[dict[str, object]], document.get("mounts") or [])
    return [str(m["destination"]) for m in mounts]


def _missing(root: Path, paths: Sequence[str]) -> list[str]:
    """The paths (and their parents) that do not exist in ``root``, deepest first."""
    out: set[str] = set()
    for path in paths:
        rel = _clean_rel(path)
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if not os.path.lexists(secure_join(str(root), sub)):
                out.add(sub)
    return sorted(out, key=lambda p: (-p.count("/"), p))


def _prune_copied_up(mount: Mount, dirs: set[str]) -> None:
    """Drop directories from an overlay upper dir that are there only because a mount stub
    was created in them: empty, not opaque, and with the lower directory's mode and owner
    (BuildKit's differ skips such unchanged directories too)."""
    upper = mount.option("upperdir")
    lowers = (mount.option("lowerdir") or "").split(":")
    if mount.type != "overlay" or upper is None:
        return
    for rel in sorted(dirs, key=lambda p: (-p.count("/"), p)):
        path = os.path.join(upper, rel)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or os.listdir(path):
                continue
            with contextlib.suppress(OSError):
                if os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                    continue
        except OSError:
            continue
        for lower in lowers:
            try:
                low = os.lstat(os.path.join(lower, rel))
            except OSError:
                continue
            if (stat.S_ISDIR(low.st_mode) and low.st_mode == st.st_mode
                    and low.st_uid == st.st_uid and low.st_gid == st.st_gid):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            break


def _remove_stubs(root: Path, created: Sequence[str]) -> None:
    """Remove mount targets the run created, when they are still empty (BuildKit's stubs)."""
    for rel in created:
        path = secure_join(str(root), rel)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)  # only when empty
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(path)


# -------------------------------------------------------------------------- copying


@dataclass(frozen=True, slots=True)
class _CopyOptions:
    owner: tuple[int, int] | None  # --chown; None: context 0:0, else preserve
    preserve_owner: bool
    chmod: int | None
    included: Callable[[str], bool] | None  # the context's .dockerignore
    exclude: tuple[str, ...] = ()  # --exclude patterns, relative to each source


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(_SKIP_XATTRS):
            continue
        with contextlib.suppress(OSError):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)


def _make_parents(root: Path, rel: str, owner: tuple[int, int]) -> str:
    """Create the directories of ``rel`` inside ``root`` (0755, ``owner``); its host path."""
    parts = [p for p in rel.split("/") if p]
    for i in range(1, len(parts) + 1):
        host = secure_join(str(root), "/".join(parts[:i]))
        if not os.path.lexists(host):
            os.mkdir(host, 0o755)
            os.chmod(host, 0o755)
            os.lchown(host, *owner)
        elif not os.path.isdir(host):
            raise BuildStepFailed(f"/{rel}", f"cannot copy to /{rel}: /{'/'.join(parts[:i])}"
                                  " is not a directory")
    return secure_join(str(root), rel)


def _clear(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _copy_entry(src: str, st: os.stat_result, root: Path, dest_rel: str,
                opts: _CopyOptions, links: dict[tuple[int, int], str]) -> None:
    """Copy one non-directory entry ``src`` to ``dest_rel`` in ``root``."""
    parent_rel, _, name = dest_rel.rpartition("/")
    parent = _make_parents(root, parent_rel, opts.owner or (0, 0))
    dst = os.path.join(parent, name)
    if os.path.isdir(dst) and not os.path.islink(dst):
        raise BuildStepFailed(f"/{dest_rel}", f"cannot replace directory /{dest_rel} by a file")
    _clear(dst)
    uid, gid = opts.owner if opts.owner else ((st.st_uid, st.st_gid) if opts.preserve_owner
                                              else (0, 0))
    mode = stat.S_IMODE(st.st_mode) if opts.chmod is None else opts.chmod
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st.st_mode):
        known = links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if known is not None:
            os.link(known, dst)
            return
        with open(src, "rb") as fin:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
        if st.st_nlink > 1:
            links[(st.st_dev, st.st_ino)] = dst
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dst, 0o600)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        os.mknod(dst, st.st_mode, st.st_rdev)
    else:
        return  # sockets are not copied
    os.lchown(dst, uid, gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, mode)
        _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_dir_meta(src_st: os.stat_result, dst: str, opts: _CopyOptions) -> None:
    uid, gid = opts.owner if opts.owner else ((src_st.st_uid, src_st.st_gid)
                                              if opts.preserve_owner else (0, 0))
    os.lchown(dst, uid, gid)
    os.chmod(dst, stat.S_IMODE(src_st.st_mode) if opts.chmod is None else opts.chmod)


def _copy_tree(src_root: Path, src_rel: str, root: Path, dest_rel: str,
               opts: _CopyOptions, *, contents: bool) -> int:
    """Copy ``src_rel`` (a directory) into ``root`` at ``dest_rel``; its contents only when
    ``contents``.  Returns how many entries were copied."""
    count = 0
    links: dict[tuple[int, int], str] = {}
    base = str(src_root / src_rel) if src_rel else str(src_root)
    dirs_meta: list[tuple[os.stat_result, str]] = []
    dest_top = _make_parents(root, dest_rel, opts.owner or (0, 0))
    if not contents:
        dirs_meta.append((os.stat(base), dest_top))
    for current, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(current, base)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep_dirs = []
        for d in sorted(dirnames):
            path = os.path.join(current, d)
            st = os.lstat(path)
            sub = f"{rel_dir}/{d}" if rel_dir else d
            ctx_rel = f"{src_rel}/{sub}" if src_rel else sub
            target_rel = f"{dest_rel}/{sub}" if dest_rel else sub
            if stat.S_ISLNK(st.st_mode):
                if opts.included is None or opts.included(ctx_rel):
                    _copy_entry(path, st, root, target_rel, opts, links)
                    count += 1
                continue
            keep_dirs.append(d)
            if opts.included is None or opts.included(ctx_rel):
                dst = _make_parents(root, target_rel, opts.owner or (0, 0))
                dirs_meta.append((st, dst))
                count += 1
        dirnames[:] = keep_dirs
        for f in sorted(filenames):
            path = os.path.join(current, f)
            sub = f"{rel_dir}/{f}" if rel_dir else f
            ctx_rel = f"{src_rel}/{sub}" if src_rel else sub
            if opts.included is not None and not opts.included(ctx_rel):
                continue
            st = os.lstat(path)
            _copy_entry(path, st, root, f"{dest_rel}/{sub}" if dest_rel else sub, opts, links)
            count += 1
    for st, dst in reversed(dirs_meta):  # deepest first, so parents' times are final
        _copy_dir_meta(st, dst, opts)
        os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
    return count


# ---------------------------------------------------------------------------- stages


class StageBuilder:
    """Builds one stage of a Dockerfile in a workspace.

    Args:
        ws: the build's workspace.
        stage: the stage (from :func:`strata.build.dockerfile.parse`).
        count: how many stages the Dockerfile has (for step names).
        deps: the results of the earlier stages this one uses, by index and name.
        meta_args: the values of the ARGs declared before the first FROM.
        escape: the Dockerfile's escape character.
    """

    def __init__(self, ws: Workspace, stage: Stage, *, deps: Mapping[str, StageResult],
                 meta_args: Mapping[str, str], escape: str = "\\") -> None:
        self.ws = ws
        self.stage = stage
        self.deps = deps
        self.meta_args = dict(meta_args)
        self.escape = escape
        self.args: dict[str, str] = {}
        self.key = ""
        self.chain: Digest | None = None
        self.diff_ids: list[Digest] = []
        self.layers: list[Descriptor] = []
        self.history: list[History] = []
        self.config = ContainerConfig()
        self.image = ImageConfig(architecture="amd64", os="linux", rootfs=_empty_rootfs())
        self.shell: tuple[str, ...] = _DEFAULT_SHELL
        self.cmd_set = False
        self.new_history = 0
        #: directories that held mount stubs of the current RUN (pruned from its upper dir)
        self.stub_parents: set[str] = set()
        self.total = 1 + len(stage.instructions)
        self.position = 0
        self.label = f"stage-{stage.index}" if stage.name is None else stage.name

    # -- the environment -----------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Variables visible to expansion: ARGs in scope, then ENV (which wins)."""
        out = dict(self.args)
        out.update(_env_dict(self.config))
        return out

    def _step_name(self, text: str) -> str:
        self.position += 1
        return f"[{self.label} {self.position}/{self.total}] {text}"

    # -- running ----------------------------------------------------------------------------
    def build(self) -> StageResult:
        """Run FROM and every instruction; the stage's result.

        Raises:
            BuildStepFailed: a step failed.
            InvalidArgument: a bad instruction.
            NotFound: a base image or a source file does not exist.
        """
        self._from()
        triggers = list(self.config.on_build or ())
        if triggers:
            self.config = replace(self.config, on_build=None)
            for text in triggers:
                self.total += 1
                self._dispatch(parse_instruction(text, escape=self.escape, path="ONBUILD"))
        for ins in self.stage.instructions:
            self._dispatch(ins)
        image = replace(
            self.image, config=self.config, history=tuple(self.history),
            rootfs=replace(self.image.rootfs, diff_ids=tuple(self.diff_ids)),
        )
        created = self.history[-1].created if self.new_history and self.history else None
        return StageResult(self.stage.index, self.stage.name, self.key, self.chain,
                           tuple(self.diff_ids), tuple(self.layers), image, created,
                           dict(self.args))

    def _from(self) -> None:
        ws = self.ws
        base = expand(self.stage.base, self.meta_args, escape=self.escape)
        number = ws.next_step()
        name = self._step_name(f"FROM {base}")
        started = time.monotonic()
        ws.progress(BuildEvent(number, name, "start"))
        platform = Platform.parse(self.stage.platform) if self.stage.platform else None
        dep = self.deps.get(base.lower())
        if dep is not None:
            self.key = step_key(dep.key, "FROM stage")
            self.chain = dep.chain
            self.diff_ids = list(dep.diff_ids)
            self.layers = list(dep.layers)
            self.history = list(dep.config.history)
            self.config = dep.config.config or ContainerConfig()
            self.image = dep.config
            self.args = dict(dep.args)  # a stage built FROM another inherits its ARGs
            self.shell = tuple(self.config.shell or _DEFAULT_SHELL)
        elif base == "scratch":
            plat = ws.platform()
            self.key = step_key("", "FROM scratch", str(plat))
            self.image = ImageConfig(architecture=plat.architecture, os=plat.os,
                                     variant=plat.variant, rootfs=_empty_rootfs())
            # BuildKit's empty image: PATH set, working directory "/"
            self.config = ContainerConfig(env=(f"PATH={runspec.DEFAULT_PATH}",), working_dir="/")
        else:
            try:
                found = ws.source.base_image(base, platform=platform or ws.settings.platform,
                                             pull=ws.settings.pull)
            except StrataError as exc:
                ws.progress(BuildEvent(number, name, "error", str(exc),
                                       time.monotonic() - started))
                raise
            self.key = step_key("", "FROM", str(found.id))
            self.chain = found.top_chain
            self.diff_ids = list(found.config.rootfs.diff_ids)
            self.layers = list(found.layers)
            self.history = list(found.config.history)
            self.config = found.config.config or ContainerConfig()
            self.image = found.config
            self.shell = tuple(self.config.shell or _DEFAULT_SHELL)
        self.image = replace(self.image, created=None, author=self.image.author,
                             container=None, container_config=None, docker_version=None,
                             comment=None)
        ws.progress(BuildEvent(number, name, "done", elapsed=time.monotonic() - started))

    def _dispatch(self, ins: Instruction) -> None:
        handler = getattr(self, f"_do_{ins.keyword.lower()}", None)
        if handler is None:
            raise InvalidArgument(f"line {ins.line}: unknown instruction {ins.keyword}")
        handler(ins)

    # -- config-only instructions ----------------------------------------------------------
    def _config_step(self, ins: Instruction, text: str) -> None:
        """Record a config-only step: no layer, ``empty_layer`` history (its time cached,
        so that a fully cached rebuild gives the same image ID, as BuildKit's does)."""
        ws = self.ws
        number = ws.next_step()
        name = self._step_name(text)
        ws.progress(BuildEvent(number, name, "start"))
        key = step_key(self.key, "config", text)
        record = None if ws.settings.no_cache else ws.cache.get(key)
        if record is None or not self._usable(record):
            history = History(created=ws.now(), created_by=f"/bin/sh -c #(nop)  {text}",
                              empty_layer=True)
            record = CacheRecord(key, self.chain, None, None, history)
            ws.cache.put(record)
        self._adopt(record)
        self.key = key
        ws.progress(BuildEvent(number, name, "done"))

    def _do_arg(self, ins: Instruction) -> None:
        shown = []
        words = [w for w in ins.words]
        for key, default in expand_pairs(ins.pairs(), self.env(), escape=self.escape):
            sep = default is not None
            if not key:
                raise InvalidArgument(f"line {ins.line}: ARG needs a name")
            if key in self.ws.settings.build_args:
                value: str | None = self.ws.settings.build_args[key]
                self.ws.used_args.add(key)
            elif sep:
                value = default
            elif key in self.args:  # inherited from the stage this one is built FROM
                value = self.args[key]
            elif key in self.meta_args:
                value = self.meta_args[key]
            elif key in _PREDEFINED:
                value = _PREDEFINED[key](self.ws)
            else:
                value = None
            if value is not None:
                self.args[key] = value
            else:
                self.args.pop(key, None)
            shown.append(f"{key}={value}" if value is not None else key)
        # docker records no history for ARG; the key includes the values in use
        self.key = step_key(self.key, "ARG " + " ".join(shown))
        number = self.ws.next_step()
        name = self._step_name(f"ARG {' '.join(words)}")
        self.ws.progress(BuildEvent(number, name, "start"))
        self.ws.progress(BuildEvent(number, name, "done"))

    def _expanded_pairs(self, ins: Instruction) -> list[tuple[str, str]]:
        pairs = expand_pairs(ins.pairs(), self.env(), escape=self.escape)
        out = []
        for key, value in pairs:
            if not key:
                raise InvalidArgument(f"line {ins.line}: {ins.keyword} names can not be blank")
            out.append((key, value or ""))
        return out

    def _do_env(self, ins: Instruction) -> None:
        pairs = self._expanded_pairs(ins)
        self.config = _set_env(self.config, pairs)
        self._config_step(ins, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))

    def _do_label(self, ins: Instruction) -> None:
        pairs = self._expanded_pairs(ins)
        labels = dict(self.config.labels or {})
        labels.update(pairs)
        self.config = replace(self.config, labels=labels)
        self._config_step(ins, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs))

    def _do_maintainer(self, ins: Instruction) -> None:
        author = expand(_raw(ins).strip(), self.env(), escape=self.escape)
        self.image = replace(self.image, author=author)
        self._config_step(ins, f"MAINTAINER {author}")

    def _do_expose(self, ins: Instruction) -> None:
        ports: list[str] = []
        for word in _words(ins, self.env(), self.escape):
            port, _, proto = word.partition("/")
            proto = (proto or "tcp").lower()
            lo, dash, hi = port.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise InvalidArgument(f"line {ins.line}: invalid port {word!r}")
            for p in range(int(lo), int(hi if dash else lo) + 1):
                ports.append(f"{p}/{proto}")
        merged = sorted({*(self.config.exposed_ports or ()), *ports})
        self.config = replace(self.config, exposed_ports=tuple(merged))
        self._config_step(ins, "EXPOSE " + " ".join(ports))

    def _do_volume(self, ins: Instruction) -> None:
        vols = _words(ins, self.env(), self.escape)
        if not vols or any(not v for v in vols):
            raise InvalidArgument(f"line {ins.line}: VOLUME specified can not be an empty string")
        merged = sorted({*(self.config.volumes or ()), *vols})
        self.config = replace(self.config, volumes=tuple(merged))
        self._config_step(ins, f"VOLUME {json.dumps(vols)}")

    def _do_user(self, ins: Instruction) -> None:
        user = expand(_raw(ins).strip(), self.env(), escape=self.escape)
        self.config = replace(self.config, user=user)
        self._config_step(ins, f"USER {user}")

    def _do_stopsignal(self, ins: Instruction) -> None:
        sig = expand(_raw(ins).strip(), self.env(), escape=self.escape)
        self.config = replace(self.config, stop_signal=sig)
        self._config_step(ins, f"STOPSIGNAL {sig}")

    def _command(self, ins: Instruction) -> tuple[str, ...]:
        if ins.json_form:
            return tuple(ins.args)
        return (*self.shell, _raw(ins))

    def _do_cmd(self, ins: Instruction) -> None:
        cmd = self._command(ins)
        self.config = replace(self.config, cmd=cmd)
        self.cmd_set = True
        self._config_step(ins, f"CMD {json.dumps(list(cmd))}")

    def _do_entrypoint(self, ins: Instruction) -> None:
        entry = self._command(ins)
        if ins.json_form and not ins.args:
            entry = ()
        self.config = replace(self.config, entrypoint=entry or None,
                              cmd=self.config.cmd if self.cmd_set else None)
        self._config_step(ins, f"ENTRYPOINT {json.dumps(list(entry))}")

    def _do_shell(self, ins: Instruction) -> None:
        if not ins.json_form or not ins.args:
            raise InvalidArgument(f"line {ins.line}: SHELL requires the arguments to be in JSON"
                                  " form")
        self.shell = tuple(ins.args)
        self.config = replace(self.config, shell=self.shell)
        self._config_step(ins, f"SHELL {json.dumps(list(self.shell))}")

    def _do_onbuild(self, ins: Instruction) -> None:
        text = _raw(ins).strip()
        self.config = replace(self.config, on_build=(*(self.config.on_build or ()), text))
        self._config_step(ins, f"ONBUILD {text}")

    def _do_healthcheck(self, ins: Instruction) -> None:
        test = tuple(ins.args)
        if test == ("NONE",):
            check = Healthcheck(test=test)
        else:
            def dur(name: str) -> int | None:
                value = ins.flag(name)
                return parse_duration(value) if value else None

            retries = ins.flag("retries")
            check = Healthcheck(test=test, interval=dur("interval"), timeout=dur("timeout"),
                                start_period=dur("start-period"),
                                retries=int(retries) if retries else None)
        self.config = replace(self.config, healthcheck=check)
        self._config_step(ins, f"HEALTHCHECK {json.dumps(list(test))}")

    # -- steps that make layers ----------------------------------------------------------
    def _cached_or(self, key: str, name: str, make: Callable[[int, float], _Layer],
                   created_by: str) -> None:
        """Look ``key`` up; on a miss run ``make``; record the result and the history."""
        ws = self.ws
        number = ws.next_step()
        ws.progress(BuildEvent(number, name, "start"))
        started = time.monotonic()
        record = None if ws.settings.no_cache else ws.cache.get(key)
        if record is not None and self._usable(record):
            ws.progress(BuildEvent(number, name, "cached"))
            self._adopt(record)
            self.key = key
            return
        try:
            result = make(number, started)
        except StrataError as exc:
            ws.progress(BuildEvent(number, name, "error", str(exc), time.monotonic() - started))
            raise
        history = History(created=ws.now(), created_by=created_by,
                          empty_layer=result.layer is None)
        record = CacheRecord(key, result.chain, result.diff_id, result.layer, history)
        ws.cache.put(record)
        self._adopt(record)
        self.key = key
        ws.progress(BuildEvent(number, name, "done", elapsed=time.monotonic() - started))

    def _usable(self, record: CacheRecord) -> bool:
        if record.layer is None:
            return record.chain == self.chain
        if not self.ws.content.exists(record.layer.digest):
            return False
        if record.chain is None:
            return False
        try:
            self.ws.snapshotter.stat(str(record.chain))
        except NotFound:
            return False
        expected = chain_ids([*self.diff_ids, record.diff_id]) if record.diff_id else []
        return bool(expected) and expected[-1] == record.chain

    def _adopt(self, record: CacheRecord) -> None:
        history = record.history
        if self.ws.settings.source_date_epoch is not None or history.created is None:
            history = replace(history, created=self.ws.now())
        self.history.append(history)
        self.new_history += 1
        if record.layer is not None and record.diff_id is not None:
            self.ws.lease.add(str(record.layer.digest))
            self.diff_ids.append(record.diff_id)
            self.layers.append(record.layer)
            self.chain = record.chain

    def _changeset(self, fill: Callable[[Path], None], *, keep_empty: bool = False) -> _Layer:
        """Prepare a snapshot on the current chain, ``fill`` its mounted tree, and turn what
        changed into a layer; returns the new top (the old one when nothing changed)."""
        ws = self.ws
        key, mounts = ws.prepare(self.chain)
        self.stub_parents = set()
        try:
            merged = ws.workdir / f"rootfs-{key}"
            merged.mkdir(parents=True)
            try:
                mount_all(mounts, merged)
                try:
                    fill(merged)
                finally:
                    unmount(merged)
            finally:
                with contextlib.suppress(OSError):
                    merged.rmdir()
            _prune_copied_up(mounts[0], self.stub_parents)
            return self._commit(key, mounts, keep_empty=keep_empty)
        except BaseException:
            ws.drop(key)
            raise

    def _commit(self, key: str, mounts: Sequence[Mount], *, keep_empty: bool = False
                ) -> _Layer:
        ws = self.ws
        ref = f"build-layer-{key}"
        writer = ws.content.writer(ref)
        try:
            sink = CompressedWriter(cast(BinaryIO, writer), Compression.GZIP)
            first = mounts[0]
            upper = first.option("upperdir")
            epoch = ws.settings.source_date_epoch
            if first.type == "overlay" and upper is not None:
                stats = diff([], Path(upper), cast(BinaryIO, sink), source_date_epoch=epoch)
            elif self.chain is None or ws.snapshotter.driver != "native":
                stats = diff([], Path(first.source), cast(BinaryIO, sink),
                             source_date_epoch=epoch)
            else:
                with ws.view(self.chain) as lower:
                    stats = diff([lower], Path(first.source), cast(BinaryIO, sink),
                                 upper_is_overlay=False, source_date_epoch=epoch)
            digest, size = sink.finish()
            if stats.entries == 0 and not keep_empty:
                writer.abort()
                ws.drop(key)
                return _Layer(self.chain, None, None)
            blob = writer.commit(size=size, digest=digest)
        except BaseException:
            with contextlib.suppress(StrataError, OSError):
                writer.abort()
            raise
        ws.lease.add(str(blob.digest))
        ws.images.put_layer(LayerFacts(stats.diff_id, stats.size, stats.disk_size,
                                       stats.entries))
        chain = chain_ids([*self.diff_ids, stats.diff_id])[-1]
        try:
            ws.snapshotter.stat(str(chain))
        except NotFound:
            try:
                ws.snapshotter.commit(str(chain), key)
                ws.committed(key)
            except AlreadyExists:
                ws.drop(key)
        else:
            ws.drop(key)
        ws.lease.add(f"snapshot:{chain}")
        desc = Descriptor(mediatypes.OCI_LAYER_GZIP, blob.digest, blob.size)
        return _Layer(chain, stats.diff_id, desc)

    # -- RUN --------------------------------------------------------------------------------
    def _do_run(self, ins: Instruction) -> None:
        env = self.env()
        args = self._run_args(ins)
        mounts = [self._parse_mount(m, env) for m in ins.flags.get("mount", ())]
        network = (_flag(ins, "network") or self.ws.settings.network).lower()
        if network not in ("default", "host", "none"):
            raise InvalidArgument(f"line {ins.line}: unknown network mode {network!r}")
        in_use = sorted(k for k in self.args if k not in _env_dict(self.config))
        prefix = f"|{len(in_use)} " + " ".join(f"{k}={self.args[k]}" for k in in_use) + " " \
            if in_use else ""
        created_by = f"RUN {prefix}{' '.join(args)} # buildkit"
        mount_keys = [self._mount_key(m) for m in mounts]
        key = step_key(self.key, "RUN", json.dumps(args), json.dumps(in_use),
                       json.dumps([f"{k}={self.args[k]}" for k in in_use]), network,
                       *mount_keys)
        text = " ".join(args[len(self.shell):]) if not ins.json_form else json.dumps(args)
        name = self._step_name(f"RUN {text if not ins.heredocs else _raw(ins)}")

        def make(number: int, started: float) -> _Layer:
            lines: list[str] = []

            def on_line(line: str) -> None:
                lines.append(line)
                if len(lines) > 4 * TAIL_LINES:
                    del lines[: len(lines) - TAIL_LINES]
                self.ws.progress(BuildEvent(number, name, "log", line,
                                            time.monotonic() - started))

            def fill(root: Path) -> None:
                code = self._run_in(root, args, mounts, network, on_line, ins)
                if code != 0:
                    raise BuildStepFailed(
                        name, f"process \"{' '.join(args)}\" did not complete successfully:"
                        f" exit code: {code}", exit_code_of_step=code, tail=_tail(lines))

            return self._changeset(fill)

        self._cached_or(key, name, make, created_by)

    def _run_args(self, ins: Instruction) -> list[str]:
        if ins.json_form:
            return list(ins.args)
        text = _raw(ins)
        if ins.heredocs:
            only = text.strip()
            doc = ins.heredocs[0]
            if len(ins.heredocs) == 1 and only.startswith("<<") and only.lstrip("<-").strip(
                    "'\"") == doc.name:
                content = doc.content
                if content.startswith("#!"):
                    # run the script itself (BuildKit writes it to a file); a read-only bind
                    return ["__heredoc__", content]
                return [*self.shell, content]
            body = text + "\n" + "".join(
                h.content + ("" if not h.content or h.content.endswith("\n") else "\n")
                + h.name + "\n" for h in ins.heredocs)
            return [*self.shell, body]
        return [*self.shell, text]

    def _parse_mount(self, text: str, env: Mapping[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in text.split(","):
            k, sep, v = part.partition("=")
            k = k.strip().lower()
            out[k] = expand(v, env, escape=self.escape) if sep else "true"
        kind = out.setdefault("type", "bind")
        if kind not in ("bind", "cache", "tmpfs", "secret"):
            raise NotSupported(f"RUN --mount type={kind} is not supported (bind, cache, tmpfs,"
                               " secret)")
        target = out.get("target") or out.get("dst") or out.get("destination")
        if kind == "secret" and not target:
            target = f"/run/secrets/{out.get('id') or out.get('source', '')}"
        if not target:
            raise InvalidArgument(f"RUN --mount {text!r}: a target is required")
        out["target"] = target
        return out

    def _mount_key(self, m: Mapping[str, str]) -> str:
        kind = m["type"]
        if kind == "bind":
            source = _clean_rel(m.get("source") or m.get("src") or "")
            frm = m.get("from")
            if frm:
                dep = self.deps.get(frm.lower())
                base = dep.key if dep else frm
                return f"bind from={base} source={source} target={m['target']}"
            return f"bind ctx:{self._context_digest([source or '.'])} target={m['target']}"
        if kind == "secret":
            return f"secret id={m.get('id')} target={m['target']}"  # contents never hashed in
        return json.dumps(sorted(m.items()))

    def _run_in(self, root: Path, args: list[str], mounts: Sequence[Mapping[str, str]],
                network: str, on_line: Callable[[str], None], ins: Instruction) -> int:
        ws = self.ws
        run_dir = ws.workdir / f"run-{secrets.token_hex(8)}"
        bundle = run_dir / "bundle"
        (bundle / "rootfs").mkdir(parents=True)
        try:
            hosts = run_dir / "hosts"
            hosts.write_text("127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost "
                             "ip6-localhost ip6-loopback\n")
            resolv = run_dir / "resolv.conf"
            try:
                resolv.write_text(Path("/etc/resolv.conf").read_text())
            except OSError:
                resolv.write_text("")
            extra: list[dict[str, object]] = []
            with contextlib.ExitStack() as stack:
                if args and args[0] == "__heredoc__":
                    pipes = run_dir / "pipes"
                    pipes.mkdir()
                    script = pipes / (ins.heredocs[0].name or "script")
                    script.write_text(args[1])
                    script.chmod(0o755)
                    extra.append({"destination": "/dev/pipes", "type": "bind",
                                  "source": str(pipes), "options": ["rbind", "ro"]})
                    args = [f"/dev/pipes/{script.name}"]
                for m in mounts:
                    extra.append(self._mount_spec(m, run_dir, stack))
                config = replace(self.config, env=tuple(
                    f"{k}={v}" for k, v in {**self.args, **_env_dict(self.config)}.items()))
                user = runspec.resolve_user(root, self.config.user or None)
                options = RunOptions(command=tuple(args), entrypoint="",
                                     workdir=self.config.working_dir or "/",
                                     hostname="buildkitsandbox")
                document = runspec.generate(
                    config, options, user=user, hostname="buildkitsandbox",
                    etc_files={"/etc/hosts": hosts, "/etc/resolv.conf": resolv})
                document["mounts"].extend(extra)
                env_list = [e for e in document["process"]["env"]
                                if not e.startswith("HOSTNAME=")]
                if not any(e.startswith("HOME=") for e in env_list):
                    env_list.append(f"HOME={_home_of(root, user.uid)}")  # as docker sets it
                document["process"]["env"] = env_list
                if network in ("host", "default"):
                    document["linux"]["namespaces"] = [
                        n for n in document["linux"]["namespaces"] if n["type"] != "network"]
                    document["mounts"] = [m for m in document["mounts"]
                                          if m["destination"] != "/etc/hosts"] + [
                        {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts",
                         "options": ["rbind", "ro"]}]
                cwd = str(document["process"]["cwd"])
                created = _missing(root, [*_mount_targets(document)])
                cwd_missing = _missing(root, [cwd])
                (bundle / "config.json").write_text(json.dumps(document))
                os.rmdir(bundle / "rootfs")
                os.symlink(root, bundle / "rootfs")
                stubs = [p for p in created if p not in cwd_missing]
                for rel in stubs:
                    parts = rel.split("/")
                    self.stub_parents.update("/".join(parts[:i]) for i in range(1, len(parts))
                                             if "/".join(parts[:i]) not in created)
                try:
                    code = run_captured(bundle, on_line)
                finally:
                    _remove_stubs(root, stubs)
                return code
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _mount_spec(self, m: Mapping[str, str], run_dir: Path,
                    stack: contextlib.ExitStack) -> dict[str, object]:
        ws = self.ws
        kind = m["type"]
        target = m["target"]
        if not target.startswith("/"):
            target = "/" + _clean_rel(f"{self.config.working_dir or '/'}/{target}")
        readonly = m.get("readonly", m.get("ro", "false")) == "true" or (
            kind == "bind" and m.get("rw", m.get("readwrite", "false")) != "true")
        if kind == "tmpfs":
            size = m.get("size")
            return {"destination": target, "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "nodev", *( [f"size={size}"] if size else [])]}
        if kind == "secret":
            sid = m.get("id") or os.path.basename(target)
            src = ws.settings.secrets.get(sid)
            if src is None:
                if m.get("required", "false") == "true":
                    raise InvalidArgument(f"secret {sid} is required but was not given"
                                          " (--secret id=ID,src=PATH)")
                return {"destination": target, "type": "tmpfs", "source": "tmpfs",
                        "options": ["ro", "size=1k"]}
            copy = run_dir / f"secret-{secrets.token_hex(4)}"
            shutil.copyfile(src, copy)
            copy.chmod(int(m.get("mode", "0400"), 8))
            return {"destination": target, "type": "bind", "source": str(copy),
                    "options": ["rbind", "ro"]}
        if kind == "cache":
            cid = m.get("id") or target
            safe = Digest.of(cid.encode()).hex[:32]
            path = ws.cache_mounts / safe
            if not path.exists():
                path.mkdir(parents=True, exist_ok=True)
                mode = m.get("mode")
                path.chmod(int(mode, 8) if mode else 0o755)
                os.chown(path, int(m.get("uid", "0")), int(m.get("gid", "0")))
            return {"destination": target, "type": "bind", "source": str(path),
                    "options": ["rbind", "ro" if readonly and m.get("readonly") else "rw"]}
        # bind: from the context, a stage or an image
        source = _clean_rel(m.get("source") or m.get("src") or "")
        frm = m.get("from")
        if frm:
            tree = stack.enter_context(ws.view(self._from_chain(frm)))
            host = secure_join(str(tree), source)
        else:
            if ws.context is None:
                raise InvalidArgument("RUN --mount type=bind needs a build context")
            host = secure_join(str(ws.context.root), source)
        if not os.path.lexists(host):
            raise NotFound(f"RUN --mount: source {source or '/'} not found")
        if not readonly:
            # writes to a read-write bind mount are discarded (BuildKit): copy first
            scratch = run_dir / f"bind-{secrets.token_hex(4)}"
            if os.path.isdir(host):
                shutil.copytree(host, scratch, symlinks=True)
            else:
                shutil.copy2(host, scratch)
            host = str(scratch)
        return {"destination": target, "type": "bind", "source": host,
                "options": ["rbind", "ro" if readonly else "rw"]}

    def _from_chain(self, frm: str) -> Digest | None:
        dep = self.deps.get(frm.lower())
        if dep is not None:
            return dep.chain
        found = self.ws.source.base_image(frm, platform=self.ws.settings.platform,
                                          pull=self.ws.settings.pull)
        return found.top_chain

    # -- COPY / ADD ------------------------------------------------------------------------
    def _context_digest(self, sources: Sequence[str]) -> str:
        ctx = self.ws.context
        if ctx is None:
            return "no-context"
        resolved = [p for s in sources for p in _resolve(ctx, s)]
        return str(ctx.checksum(resolved))

    def _do_copy(self, ins: Instruction) -> None:
        self._copy(ins, add=False)

    def _do_add(self, ins: Instruction) -> None:
        self._copy(ins, add=True)

    def _copy(self, ins: Instruction, *, add: bool) -> None:
        ws = self.ws
        env = self.env()
        words = _words(ins, env, self.escape)
        heredoc_names = {h.name: h for h in ins.heredocs}
        if len(words) < 2:
            raise InvalidArgument(f"line {ins.line}: {ins.keyword} requires at least two"
                                  " arguments, but only one was provided. Destination could"
                                  " not be determined")
        *srcs, dest = words
        frm = _flag(ins, "from")
        frm = expand(frm, env, escape=self.escape) if frm else None
        chown = _flag(ins, "chown")
        chown = expand(chown, env, escape=self.escape) if chown else None
        chmod_text = _flag(ins, "chmod")
        chmod: int | None = None
        if chmod_text:
            try:
                chmod = int(chmod_text, 8)
            except ValueError as exc:
                raise InvalidArgument(f"line {ins.line}: invalid --chmod {chmod_text!r}"
                                      " (octal only)") from exc
        workdir = self.config.working_dir or "/"
        dest_abs = dest if dest.startswith("/") else (
            workdir.rstrip("/") + "/" + dest if dest not in (".", "./") else workdir + "/")
        dest_is_dir = dest.endswith("/") or dest in (".", "./") or len(srcs) > 1
        kinds: list[str] = []
        for src in srcs:
            marker = src.removeprefix("<<").lstrip("-").strip("'\"")
            if src.startswith("<<") and marker in heredoc_names:
                kinds.append("heredoc")
            elif add and urllib.parse.urlsplit(src).scheme in ("http", "https"):
                if frm:
                    raise InvalidArgument(f"line {ins.line}: ADD --from cannot fetch URLs")
                kinds.append("url")
            else:
                kinds.append("file")
        # the cache key: the sources' content, not their mtimes
        if frm:
            dep = self.deps.get(frm.lower())
            source_key = f"from={dep.key if dep else frm}"
            if dep is None:
                found = ws.source.base_image(frm, platform=ws.settings.platform,
                                             pull=ws.settings.pull)
                source_key = f"from-image={found.id}"
        else:
            files = [s for s, k in zip(srcs, kinds, strict=True) if k == "file"]
            source_key = "ctx=" + (self._context_digest(files) if files else "")
        fetched = {src: self._fetch(src, ins.flag("checksum"))
                   for src, kind in zip(srcs, kinds, strict=True) if kind == "url"}
        source_key += "".join(f" {u}={f[2]}" for u, f in sorted(fetched.items()))
        docs = [(h.name, h.content, h.expand) for h in ins.heredocs]
        shown = " ".join(words)
        flags_text = " ".join(f"--{k}={v}" for k, vs in sorted(ins.flags.items()) for v in vs)
        key = step_key(self.key, ins.keyword, flags_text, json.dumps(words), source_key,
                       json.dumps(docs), json.dumps(sorted(env.items())) if docs else "")
        name = self._step_name(f"{ins.keyword} {(flags_text + ' ') if flags_text else ''}{shown}")
        created_by = f"{ins.keyword} {shown} # buildkit"

        def fill(root: Path) -> None:
            owner = runspec.resolve_user(root, chown) if chown else None
            uidgid = (owner.uid, owner.gid) if owner else None
            if (owner is not None and chown is not None and ":" not in chown
                    and chown.isdigit() and _home_of(root, owner.uid, "") == ""):
                uidgid = (owner.uid, owner.uid)  # a UID alone, unknown to passwd: GID = UID
            dest_rel = _clean_rel(dest_abs)
            dest_host = secure_join(str(root), dest_rel)
            into_dir = dest_is_dir or dest_abs.endswith("/") or os.path.isdir(dest_host)
            with contextlib.ExitStack() as stack:
                if frm:
                    src_root = stack.enter_context(ws.view(self._from_chain(frm)))
                    included: Callable[[str], bool] | None = None
                    preserve = True
                else:
                    if ws.context is None and "file" in kinds:
                        raise InvalidArgument(f"line {ins.line}: {ins.keyword} needs a build"
                                              " context")
                    src_root = ws.context.root if ws.context is not None else root
                    included = ws.context.included if ws.context is not None else None
                    preserve = False
                opts = _CopyOptions(owner=uidgid, preserve_owner=preserve, chmod=chmod,
                                    included=included, exclude=tuple(
                                        expand(x, env, escape=self.escape)
                                        for x in ins.flags.get("exclude", ())))
                expanded: list[tuple[str, str]] = []
                for src, kind in zip(srcs, kinds, strict=True):
                    if kind != "file":
                        expanded.append((kind, src))
                        continue
                    if frm or ws.context is None:
                        found = _glob(src_root, src, included)
                    else:
                        found = ["" if p == "." else p for p in _resolve(ws.context, src)]
                    if not found:
                        raise BuildStepFailed(name, "failed to compute cache key:"
                                              f" \"/{_clean_rel(src)}\" not found")
                    expanded.extend(("file", f) for f in found)
                multi = len(expanded) > 1
                if multi and not (dest.endswith("/") or dest in (".", "./")) and not (
                        os.path.isdir(dest_host)):
                    raise BuildStepFailed(name, f"When using {ins.keyword} with more than one"
                                          " source file, the destination must be a directory"
                                          " and end with a /")
                into_dir = into_dir or multi
                for kind, item in expanded:
                    if kind == "heredoc":
                        doc = heredoc_names[item.removeprefix("<<").lstrip("-").strip("'\"")]
                        data = expand(doc.content, env, escape=self.escape) if doc.expand else \
                            doc.content
                        target = f"{dest_rel}/{doc.name}" if into_dir else dest_rel
                        _write_file(root, target, data.encode(), 0o644 if chmod is None else chmod,
                                    uidgid or (0, 0), ws.settings.source_date_epoch)
                    elif kind == "url":
                        self._add_url(root, item, fetched[item], dest_rel, into_dir, uidgid,
                                      chmod)
                    else:
                        self._copy_one(src_root, item, root, dest_rel, into_dir, opts, add)

        self._cached_or(key, name, lambda _n, _s: self._changeset(fill), created_by)

    def _copy_one(self, src_root: Path, rel: str, root: Path, dest_rel: str, into_dir: bool,
                  opts: _CopyOptions, add: bool) -> None:
        host = secure_join(str(src_root), rel) if rel else str(src_root)
        st = os.stat(host) if os.path.exists(host) else os.lstat(host)
        if stat.S_ISDIR(st.st_mode):
            _make_parents(root, dest_rel, opts.owner or (0, 0))
            inner = _sub_filter(opts.included, rel)
            if opts.exclude:
                inner = _excluding(inner, opts.exclude)
            _copy_tree(Path(host), "", root, dest_rel, replace(opts, included=inner),
                       contents=True)
            return
        if opts.exclude and _excluded(rel.rsplit("/", 1)[-1], opts.exclude):
            return
        if add and stat.S_ISREG(st.st_mode) and _is_archive(host):
            target = _make_parents(root, dest_rel, opts.owner or (0, 0))
            with open(host, "rb") as raw, _decompressed(raw) as tar:
                apply(Path(target), tar, ApplyOptions())
            return
        name = rel.rsplit("/", 1)[-1] if rel else "file"
        target_rel = f"{dest_rel}/{name}" if into_dir else dest_rel
        _copy_entry(host, st, root, target_rel, opts, {})

    def _fetch(self, url: str, checksum: str | None) -> tuple[Path, int | None, str]:
        """Download ``url`` into the build's work directory (before the cache lookup: its
        content is part of the key); returns the file, its Last-Modified time, its sha256.

        Raises:
            Unavailable: the download failed.
            InvalidArgument: ``--checksum`` does not match.
        """
        import email.utils
        import hashlib

        import urllib3

        path = self.ws.workdir / f"url-{secrets.token_hex(8)}"
        h = hashlib.sha256()
        try:
            resp = urllib3.request("GET", url, preload_content=False, timeout=60)
            if resp.status != 200:
                raise Unavailable(f"ADD {url}: HTTP {resp.status}", retryable=resp.status >= 500)
            with open(path, "wb") as out:
                for chunk in resp.stream(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            resp.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(f"ADD {url}: {exc}") from exc
        digest = "sha256:" + h.hexdigest()
        if checksum and checksum != digest:
            raise InvalidArgument(f"ADD {url}: digest mismatch {digest}: expected {checksum}")
        mtime: int | None = None
        modified = resp.headers.get("Last-Modified")
        if modified:
            with contextlib.suppress(TypeError, ValueError):
                mtime = int(email.utils.parsedate_to_datetime(modified).timestamp())
        return path, mtime, digest

    @staticmethod
    def _add_url(root: Path, url: str, fetched: tuple[Path, int | None, str], dest_rel: str,
                 into_dir: bool, owner: tuple[int, int] | None, chmod: int | None) -> None:
        name = os.path.basename(urllib.parse.urlsplit(url).path) or "index.html"
        target = f"{dest_rel}/{name}" if into_dir else dest_rel
        path, mtime, _ = fetched
        _write_file(root, target, path.read_bytes(), 0o600 if chmod is None else chmod,
                    owner or (0, 0), mtime)

    # -- WORKDIR ----------------------------------------------------------------------------
    def _do_workdir(self, ins: Instruction) -> None:
        path = expand(_raw(ins).strip(), self.env(), escape=self.escape)
        if not path.startswith("/"):
            path = (self.config.working_dir or "/").rstrip("/") + "/" + path
        path = "/" + _clean_rel(path)
        self.config = replace(self.config, working_dir=path)
        user = self.config.user
        key = step_key(self.key, "WORKDIR", path, user or "")
        name = self._step_name(f"WORKDIR {path}")

        def fill(root: Path) -> None:
            owner = runspec.resolve_user(root, user) if user else None
            _make_parents(root, _clean_rel(path), (owner.uid, owner.gid) if owner else (0, 0))

        # BuildKit (docker 20.10) commits WORKDIR as a layer, empty when the directory exists
        self._cached_or(key, name,
                        lambda _n, _s: self._changeset(fill, keep_empty=path != "/"),
                        f"WORKDIR {path}")


# ----------------------------------------------------------------------- small helpers


def _empty_rootfs() -> RootFS:
    return RootFS(())


_PREDEFINED: dict[str, Callable[[Workspace], str | None]] = {
    "TARGETPLATFORM": lambda ws: str(ws.platform()),
    "TARGETOS": lambda ws: ws.platform().os,
    "TARGETARCH": lambda ws: ws.platform().architecture,
    "TARGETVARIANT": lambda ws: ws.platform().variant or "",
    "BUILDPLATFORM": lambda ws: str(Platform.host()),
    "BUILDOS": lambda ws: Platform.host().os,
    "BUILDARCH": lambda ws: Platform.host().architecture,
    "BUILDVARIANT": lambda ws: Platform.host().variant or "",
}


def _home_of(root: Path, uid: int, default: str = "/") -> str:
    """The home directory of ``uid`` in the rootfs's ``/etc/passwd`` (``default`` if the
    uid is not listed)."""
    path = secure_join(str(root), "etc/passwd")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return default


def _resolve(ctx: ContextFiles, source: str) -> list[str]:
    """The context paths ``source`` names (the whole context for ``.``)."""
    if not _clean_rel(source) and not source.startswith(".."):
        return ["."]
    return ctx.resolve_sources(source)


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    """Whether ``rel`` or one of its parents matches an ``--exclude`` pattern."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if any(fnmatch.fnmatchcase(sub, p.strip("/")) for p in patterns):
            return True
    return False


def _excluding(included: Callable[[str], bool] | None, patterns: Sequence[str]
               ) -> Callable[[str], bool]:
    def check(rel: str) -> bool:
        return not _excluded(rel, patterns) and (included is None or included(rel))

    return check


def _sub_filter(included: Callable[[str], bool] | None, prefix: str
                ) -> Callable[[str], bool] | None:
    if included is None:
        return None
    if not prefix:
        return included
    return lambda rel: included(f"{prefix}/{rel}")


def _glob(root: Path, pattern: str, included: Callable[[str], bool] | None) -> list[str]:
    """The paths under ``root`` that ``pattern`` names (relative, sorted); a pattern without
    wildcards names itself if it exists."""
    rel = _clean_rel(pattern)
    if not _has_glob(rel):
        host = secure_join(str(root), rel) if rel else str(root)
        if not os.path.lexists(host):
            return []
        if included is not None and rel and not included(rel) and not os.path.isdir(host):
            return []
        return [rel]
    parts = rel.split("/")
    current = [""]
    for part in parts:
        nxt: list[str] = []
        for base in current:
            host = secure_join(str(root), base) if base else str(root)
            if not os.path.isdir(host):
                continue
            if _has_glob(part):
                for name in sorted(os.listdir(host)):
                    if fnmatch.fnmatchcase(name, part):
                        nxt.append(f"{base}/{name}" if base else name)
            else:
                cand = f"{base}/{part}" if base else part
                if os.path.lexists(secure_join(str(root), cand)):
                    nxt.append(cand)
        current = nxt
    if included is not None:
        current = [c for c in current if included(c)]
    return current


def _write_file(root: Path, rel: str, data: bytes, mode: int, owner: tuple[int, int],
                mtime: int | None) -> None:
    parent_rel, _, name = rel.rpartition("/")
    parent = _make_parents(root, parent_rel, owner)
    dst = os.path.join(parent, name)
    _clear(dst)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.lchown(dst, *owner)
    os.chmod(dst, mode)
    if mtime is not None:
        os.utime(dst, (mtime, mtime))


def _is_archive(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")):
        return True
    with open(path, "rb") as f:
        block = f.read(512)
    return len(block) == 512 and block[257:262] == b"ustar"


@contextlib.contextmanager
def _decompressed(raw: BinaryIO) -> Iterator[BinaryIO]:
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"BZh"):
        with bz2.open(raw, "rb") as f:
            yield cast(BinaryIO, f)
    elif head.startswith(b"\xfd7zXZ"):
        with lzma.open(raw, "rb") as f:
            yield cast(BinaryIO, f)
    else:
        with open_decompressed(raw) as f:
            yield f

