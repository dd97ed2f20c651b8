"""strata ``load`` + ``unpack`` against ``umoci unpack`` on a large multi-layer image.

What it measures, on one image made once and cached (see :func:`large_image`):

- **strata**: ``strata --root NEWROOT load -i LAYOUT`` then ``strata --root NEWROOT unpack
  REF DEST`` (the sum, and each part);
- **umoci**: ``umoci unpack --image LAYOUT:REF BUNDLE`` straight from the layout;
- **skopeo+umoci**: ``skopeo copy oci:LAYOUT:REF oci:NEWLAYOUT:REF`` then ``umoci unpack
  --image NEWLAYOUT:REF BUNDLE``, the pipeline that does what strata's load+unpack does;
- optionally (``--snapshots``) **strata snapshots**: ``strata load`` then unpacking the image
  into the store's overlay snapshots (``Engine.unpack_snapshots``: layers extracted in
  parallel worker processes, one directory per layer, committed as chainIDs) — what a pull
  or a ``run`` needs, rather than a plain directory;
- optionally (``--raw-umoci``) **umoci raw**: ``umoci raw unpack``, which writes the rootfs
  without the runtime config and the mtree manifest ``umoci unpack`` hashes every file for;
- optionally (``--baseline-src DIR``) **strata-base**: the same as **strata** with another
  strata source tree first on ``PYTHONPATH`` (e.g. ``git archive main src``), for an A/B of a
  change in the same interleaved run.

The contenders run interleaved (A B C, B C A, C A B, ...: the order rotates so that none
always follows the same neighbour), ``--runs`` rounds, each into fresh directories on the
filesystem of the cache. Before every contender the bench runs ``sync``
(and with ``--drop-caches`` drops the page cache), then waits a little for the machine and
the disk to be quiet; a two-step contender is timed as one pipeline, with nothing between
its steps. Outputs are deleted outside the timed region: by default once, after the last
round, when the disk has room for all of them, because this disk is slow and erratic on
many small files for tens of seconds after a deletion (online discard); otherwise (or with
``--cleanup round``) after each round, synced. Interleaving and medians absorb the rest.

In the first round, untimed, strata's tree is compared with umoci's ``rootfs`` with
:func:`strata.testing.trees.assert_same_tree`.

The target (from the issue) is strata's load+unpack at most 0.5x ``umoci unpack``'s median
wall time. The bench exits 0 whether or not it is met, 1 if a tool failed.

Run from the checkout, as root::

    .venv/bin/python -m bench.unpack [--runs 5] [--json out.json] [--drop-caches]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import io
import json
import os
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from strata.testing import baseimages, trees

IMAGE_REF = "localhost/strata-bench:large"
TARGET_RATIO = 0.5

# Bumped whenever the image recipe below changes (the cache key does not hash the host dirs).
_RECIPE = "1"
_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
_WH = ".wh."
_OPAQUE = ".wh..wh..opq"


def default_cache_dir() -> Path:
    """``$STRATA_BENCH_CACHE`` or ``/var/cache/strata-bench``."""
    return Path(os.environ.get("STRATA_BENCH_CACHE") or "/var/cache/strata-bench")


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _rm_rf(path: Path) -> None:
    if path.exists() or path.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- the image


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One layer of the bench image, as built.

    Attributes:
        name: what the layer holds.
        created_by: its history line.
        digest: ``sha256:`` of the gzip blob.
        diff_id: ``sha256:`` of the tar.
        size: compressed bytes.
        uncompressed: tar bytes.
        entries: tar members.
        regular: regular-file members (hardlinks excluded).
        file_bytes: bytes of regular-file content.
        whiteouts: ``.wh.`` members (opaque markers included).
    """

    name: str
    created_by: str
    digest: str
    diff_id: str
    size: int
    uncompressed: int
    entries: int
    regular: int
    file_bytes: int
    whiteouts: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """The bench image: where it is and what it holds."""

    layout: Path
    ref: str
    manifest_digest: str
    layers: tuple[LayerInfo, ...]

    @property
    def compressed(self) -> int:
        """Sum of the layer blobs' sizes."""
        return sum(layer.size for layer in self.layers)

    @property
    def uncompressed(self) -> int:
        """Sum of the layer tars' sizes."""
        return sum(layer.uncompressed for layer in self.layers)

    @property
    def entries(self) -> int:
        """Tar members over all layers."""
        return sum(layer.entries for layer in self.layers)

    @property
    def regular(self) -> int:
        """Regular-file members over all layers."""
        return sum(layer.regular for layer in self.layers)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {
            "layout": str(self.layout),
            "ref": self.ref,
            "manifest_digest": self.manifest_digest,
            "layers": [asdict(layer) for layer in self.layers],
            "compressed_bytes": self.compressed,
            "uncompressed_bytes": self.uncompressed,
            "tar_entries": self.entries,
            "regular_file_entries": self.regular,
        }


@dataclass(slots=True)
class _Entry:
    """What the merged tree holds at a path after the layers built so far."""

    info: tarfile.TarInfo
    host: Path | None  # the host file whose content it has, for regular files from the host


class _Sink:
    """The write end tarfile streams into: hashes and counts the tar, feeds the compressor."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes, /) -> int:
        self.sha.update(b)
        self.size += len(b)
        self._out.write(b)
        return len(b)

    def read(self, size: int, /) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def tell(self) -> int:
        return self.size

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("not seekable")

    def close(self) -> None:
        pass


class _HashingReader:
    """The read end tarfile streams from: hashes and counts what passes."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int, /) -> bytes:
        data = self._raw.read(size)
        self.sha.update(data)
        self.size += len(data)
        return data

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("read-only")

    def tell(self) -> int:
        return self.size

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("not seekable")

    def close(self) -> None:
        pass


def _compressor() -> list[str]:
    pigz = shutil.which("pigz")
    if pigz:
        return [pigz, "-6", "-n", "-T", "-c"]
    return ["gzip", "-6", "-n", "-c"]


class _LayerWriter:
    """Streams one layer: tar → sha256 (diff_id) → pigz → a blob in the layout.

    It also keeps the merged tree (``state``) up to date, so later layers can pick real
    paths to overwrite, delete or retype.
    """

    def __init__(self, blobs: Path, state: dict[str, _Entry]) -> None:
        self._blobs = blobs
        self._tmp = blobs / f".layer-{os.getpid()}.tmp"
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in finish()
        self._proc = subprocess.Popen(_compressor(), stdin=subprocess.PIPE, stdout=self._file)
        assert self._proc.stdin is not None
        self._sink = _Sink(self._proc.stdin)
        # closed in finish()
        self.tar = tarfile.open(  # noqa: SIM115
            fileobj=self._sink, mode="w|", format=tarfile.PAX_FORMAT
        )
        self.state = state
        self.emitted: set[str] = set()
        self.entries = 0
        self.regular = 0
        self.file_bytes = 0
        self.whiteouts = 0

    # -- low level
    def _put(self, info: tarfile.TarInfo, data: IO[bytes] | None, host: Path | None) -> None:
        self.tar.addfile(info, data)
        self.entries += 1
        self.emitted.add(info.name)
        if info.isreg():
            self.regular += 1
            self.file_bytes += info.size
        self.state[info.name] = _Entry(copy.copy(info), host if info.isreg() else None)

    def parents(self, name: str) -> None:
        """Emit the directories above ``name`` not yet in this layer, with their metadata
        from the tree below (Docker's layers carry the parents of every changed path)."""
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent in self.emitted:
                continue
            below = self.state.get(parent)
            if below is not None and below.info.isdir():
                info = copy.copy(below.info)
            else:
                info = tarfile.TarInfo(parent)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = 1_700_000_000
            info.name = parent
            self._put(info, None, None)

    def host(self, path: Path, *, name: str | None = None) -> None:
        """Add the host file ``path`` (not recursively) as ``name`` (default: its path)."""
        arcname = name if name is not None else path.as_posix().lstrip("/")
        self.parents(arcname)
        info = self.tar.gettarinfo(str(path), arcname=arcname)
        if info is None:  # a socket
            return
        if info.isreg():
            with open(path, "rb") as f:
                self._put(info, f, path)
        else:
            self._put(info, None, None)

    def host_tree(self, top: Path, *, max_file_size: int | None = None) -> None:
        """Add ``top`` and everything under it, parents first, in sorted order."""
        self.parents(top.as_posix().lstrip("/"))

        def walk(path: Path) -> None:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and max_file_size and st.st_size > max_file_size:
                return
            self.host(path)
            if stat.S_ISDIR(st.st_mode):
                for child in sorted(os.listdir(path)):
                    walk(path / child)

        walk(top)

    def data(
        self, name: str, content: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        xattrs: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Add a regular file with ``content``."""
        self.parents(name)
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = 1_700_000_000
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        self._put(info, io.BytesIO(content), None)

    def special(self, name: str, kind: bytes, *, target: str = "", mode: int = 0o755) -> None:
        """Add a directory, symlink or hardlink (``kind`` is a tarfile type)."""
        self.parents(name)
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        info.mode = mode
        info.mtime = 1_700_000_000
        self._put(info, None, None)
        if kind == tarfile.LNKTYPE:
            src = self.state.get(target)
            if src is not None:
                self.state[name] = _Entry(copy.copy(src.info), src.host)
                self.state[name].info.name = name

    def _drop(self, name: str, *, children_only: bool = False) -> None:
        prefix = name + "/"
        for key in [k for k in self.state if k.startswith(prefix)]:
            del self.state[key]
        if not children_only:
            self.state.pop(name, None)

    def retype(self, name: str) -> None:
        """Forget what was at ``name`` (and under it): the next entry there replaces it."""
        self._drop(name)

    def whiteout(self, name: str) -> None:
        """Delete ``name`` (and everything under it) from the layers below."""
        parent, _, base = name.rpartition("/")
        wh = f"{parent}/{_WH}{base}" if parent else f"{_WH}{base}"
        self.parents(wh)
        info = tarfile.TarInfo(wh)
        info.mode = 0o644
        info.mtime = 1_700_000_000
        self.tar.addfile(info)
        self.entries += 1
        self.whiteouts += 1
        self._drop(name)

    def opaque(self, name: str) -> None:
        """Hide everything the layers below put under the directory ``name``."""
        self.parents(f"{name}/{_OPAQUE}")
        info = tarfile.TarInfo(f"{name}/{_OPAQUE}")
        info.mode = 0o644
        info.mtime = 1_700_000_000
        self.tar.addfile(info)
        self.entries += 1
        self.whiteouts += 1
        self._drop(name, children_only=True)

    def finish(self, name: str, created_by: str) -> LayerInfo:
        """Close the stream, move the blob to its digest, return what was written."""
        self.tar.close()
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        rc = self._proc.wait()
        self._file.close()
        if rc != 0:
            raise SystemExit(f"compressor failed with exit status {rc}")
        hexdigest = _sha256_file(self._tmp)
        size = self._tmp.stat().st_size
        os.chmod(self._tmp, 0o644)
        os.rename(self._tmp, self._blobs / hexdigest)
        return LayerInfo(
            name=name,
            created_by=created_by,
            digest=f"sha256:{hexdigest}",
            diff_id=f"sha256:{self._sink.sha.hexdigest()}",
            size=size,
            uncompressed=self._sink.size,
            entries=self.entries,
            regular=self.regular,
            file_bytes=self.file_bytes,
            whiteouts=self.whiteouts,
        )


def _norm(name: str) -> str:
    name = name.removeprefix("./").rstrip("/")
    return name or "."


def _base_layer(
    base_layout: Path, blobs: Path, state: dict[str, _Entry]
) -> tuple[LayerInfo, dict[str, Any]]:
    """Link debian's only layer into the new layout; read its members into ``state``."""
    index = json.loads((base_layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((base_layout / "blobs/sha256" / manifest_digest).read_text())
    config = json.loads(
        (base_layout / "blobs/sha256" / manifest["config"]["digest"].split(":", 1)[1]).read_text()
    )
    (layer,) = manifest["layers"]
    hexdigest = layer["digest"].split(":", 1)[1]
    src = base_layout / "blobs/sha256" / hexdigest
    try:
        os.link(src, blobs / hexdigest)
    except OSError:
        shutil.copyfile(src, blobs / hexdigest)
    entries = regular = file_bytes = whiteouts = 0
    proc = subprocess.Popen(["gzip", "-dc", str(src)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    reader = _HashingReader(proc.stdout)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            entries += 1
            name = _norm(member.name)
            if name.rpartition("/")[2].startswith(_WH):
                whiteouts += 1
                continue
            if member.isreg():
                regular += 1
                file_bytes += member.size
            member.name = name
            state[name] = _Entry(member, None)
    while reader.read(1 << 20):  # the padding after the end marker is part of the tar too
        pass
    if proc.wait() != 0:
        raise SystemExit(f"gzip -dc {src} failed")
    diff_id = f"sha256:{reader.sha.hexdigest()}"
    if diff_id != config["rootfs"]["diff_ids"][0]:
        raise SystemExit(f"base layer {src}: diff_id {diff_id} != config's")
    info = LayerInfo(
        name="debian bookworm minbase (debootstrap)",
        created_by=config["history"][0]["created_by"],
        digest=layer["digest"],
        diff_id=diff_id,
        size=int(layer["size"]),
        uncompressed=reader.size,
        entries=entries,
        regular=regular,
        file_bytes=file_bytes,
        whiteouts=whiteouts,
    )
    return info, config


def _small_file(i: int) -> bytes:
    """Deterministic, compressible, varied content (a few hundred bytes to a few KiB)."""
    seed = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
    lines = [f"// generated module {i} {seed}\n"]
    for j in range(int(seed[:2], 16) % 60 + 3):
        lines.append(f"export const v{j} = {seed[j % 60 : j % 60 + 4]!r}; // line {j}\n")
    return "".join(lines).encode()


def _regular_under(state: dict[str, _Entry], prefix: str) -> list[str]:
    return sorted(
        name for name, e in state.items()
        if name.startswith(prefix) and e.info.isreg() and e.host is not None
    )  # fmt: skip


_OPAQUE_DIRS = ("usr/lib/python3.11/email", "usr/share/i18n/charmaps")


def _update_layer(w: _LayerWriter) -> None:
    """An "apt-get upgrade && cleanup" layer: overwrites, chmods, whiteouts, opaque
    directories, type changes, hardlinks, an xattr and a few thousand new small files.

    Every path is picked from what the layers below really hold, and no two operations
    touch the same path or one under another's (so the layer has one meaning whatever
    order an extractor applies its whiteouts in).
    """
    state = w.state
    opaque = tuple(d for d in _OPAQUE_DIRS if d in state and state[d].info.isdir())
    taken: set[str] = set()

    def free(names: Sequence[str], limit: int | None = None) -> list[str]:
        """``names`` not under an opaque dir, not taken, not under nor above a taken path."""
        out: list[str] = []
        for name in names:
            if limit is not None and len(out) >= limit:
                break
            if name.startswith(tuple(f"{d}/" for d in opaque)) or name in opaque:
                continue
            if name in taken or any(name.startswith(f"{t}/") or t.startswith(f"{name}/")
                                    for t in taken):  # fmt: skip
                continue
            out.append(name)
        taken.update(out)
        return out

    def dirs_at(prefix: str, depth: int) -> list[str]:
        return sorted(
            n for n, e in state.items()
            if n.startswith(prefix) and n.count("/") == depth and e.info.isdir()
        )  # fmt: skip

    python = _regular_under(state, "usr/lib/python3.11/")
    binaries = _regular_under(state, "usr/bin/")
    # Directories first, so the file picks below keep out of them.
    dir_to_file = free(dirs_at("usr/share/doc/", 3)[7::300], 2)
    locales = free(dirs_at("usr/share/locale/", 3)[10::25], 6)
    dpkg_info = free(["var/lib/dpkg/info"] if "var/lib/dpkg/info" in state else [])
    # Taking a directory makes `free` skip what is under it (checked against every taken
    # path), so the long lists below are filtered against the few directories only.
    patched = free(python[::8] + binaries[::25])  # new content
    to_symlink = free(python[3::500])
    to_dir = free(python[5::700])
    links = sorted(n for n, e in state.items() if n.startswith("usr/bin/") and e.info.issym())
    link_to_file = free(links[::150], 2)
    chmodded = free(_regular_under(state, "usr/share/doc/")[::30])  # metadata only
    gone_man = free(_regular_under(state, "usr/share/man/")[::20])
    debian_only = free(sorted(
        n for n, e in state.items()
        if e.info.isreg() and e.host is None and n.startswith(("usr/share/", "usr/lib/"))
    )[::40])  # fmt: skip

    for name in opaque:  # the marker first: what this layer writes there stays
        w.special(name, tarfile.DIRTYPE, mode=0o755)
        w.opaque(name)
        w.data(f"{name}/only-this", b"the rest of this directory is hidden\n")
    for name in patched:
        entry = state[name]
        assert entry.host is not None
        content = entry.host.read_bytes() + b"\n# strata-bench: patched\n"
        w.data(name, content, mode=entry.info.mode, uid=entry.info.uid, gid=entry.info.gid)
    for name in chmodded:
        entry = state[name]
        assert entry.host is not None
        w.data(name, entry.host.read_bytes(), mode=0o600, uid=1000, gid=1000)
    for name in to_symlink:
        w.retype(name)
        w.special(name, tarfile.SYMTYPE, target="/usr/lib/python3.11/os.py", mode=0o777)
    for name in to_dir:
        w.retype(name)
        w.special(name, tarfile.DIRTYPE, mode=0o750)
        w.data(f"{name}/now-a-directory", b"was a file\n")
    for name in dir_to_file:
        w.retype(name)
        w.data(name, b"this directory became a file\n")
    for name in link_to_file:
        w.retype(name)
        w.data(name, b"#!/bin/sh\necho was a symlink\n", mode=0o755)
    for name in gone_man + locales + dpkg_info + debian_only:
        w.whiteout(name)
    # Hardlinks within the layer, one to a file this layer overwrote.
    tool = hashlib.shake_256(b"bench-tool").digest(1 << 20)
    w.data("usr/local/bin/bench-tool", tool, mode=0o755)
    for suffix in ("a", "b", "c"):
        w.special(f"usr/local/bin/bench-tool-{suffix}", tarfile.LNKTYPE,
                  target="usr/local/bin/bench-tool")  # fmt: skip
    if patched:
        w.special("usr/local/lib/patched-link", tarfile.LNKTYPE, target=patched[0])
    w.data("usr/local/share/bench/xattr-file", b"has a user xattr\n",
           xattrs={"user.strata-bench": "yes"})  # fmt: skip
    # A node_modules-like tree of small files.
    for i in range(3000):
        w.data(f"usr/local/share/bench/modules/m{i // 100:02d}/f{i:04d}.js", _small_file(i))


def _readd_layer(w: _LayerWriter, deleted_man: Sequence[str], deleted_locale: str | None) -> None:
    """A small last layer: brings back paths the update layer deleted, deletes one of its
    hardlinks and writes into an opaque directory again."""
    for name in deleted_man[::10]:
        host = Path("/") / name
        if host.is_file():
            w.host(host)
    if deleted_locale is not None:
        w.special(deleted_locale, tarfile.DIRTYPE)
        w.data(f"{deleted_locale}/LC_MESSAGES/back.mo", b"back again\n")
    w.whiteout("usr/local/bin/bench-tool-b")
    w.data("usr/lib/python3.11/email/second", b"another file in the opaque directory\n")
    w.data("etc/strata-bench-release", b"strata bench image\n")


_HOST_LAYERS: tuple[tuple[str, str, tuple[str, ...], int | None], ...] = (
    # (name, created_by, host paths, max file size)
    (
        "docs, locales and man pages (host /usr/share)",
        "/bin/sh -c apt-get install -y docs locales manpages",
        ("/usr/share/doc", "/usr/share/locale", "/usr/share/man", "/usr/share/i18n",
         "/usr/share/zoneinfo", "/usr/share/perl"),
        None,
    ),
    (
        "python 3.11 (host /usr/lib/python3.11, /usr/lib/python3)",
        "/bin/sh -c apt-get install -y python3",
        ("/usr/lib/python3.11", "/usr/lib/python3"),
        None,
    ),
    (
        "tools (host /usr/bin, files up to 8 MiB)",
        "/bin/sh -c apt-get install -y build-essential",
        ("/usr/bin",),
        8 << 20,
    ),
)  # fmt: skip


def _make_image(out: Path, base_layout: Path) -> None:
    layout = out / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    state: dict[str, _Entry] = {}
    base, config = _base_layer(base_layout, blobs, state)
    layers = [base]
    for name, created_by, paths, max_size in _HOST_LAYERS:
        w = _LayerWriter(blobs, state)
        for p in paths:
            if Path(p).is_dir():
                w.host_tree(Path(p), max_file_size=max_size)
        layers.append(w.finish(name, created_by))
        print(f"  layer {len(layers)}: {name}: {layers[-1].uncompressed >> 20} MiB", flush=True)

    before = set(state)
    w = _LayerWriter(blobs, state)
    _update_layer(w)
    layers.append(w.finish("upgrade and cleanup (overwrites, whiteouts, opaque dirs, retypes,"
                           " hardlinks, xattr, 3000 small files)",
                           "/bin/sh -c apt-get upgrade -y && apt-get clean"))  # fmt: skip
    deleted = sorted(before - set(state))
    deleted_man = [n for n in deleted if n.startswith("usr/share/man/")]
    deleted_locale = next(
        (n for n in deleted if n.startswith("usr/share/locale/") and n.count("/") == 3), None
    )
    w = _LayerWriter(blobs, state)
    _readd_layer(w, deleted_man, deleted_locale)
    layers.append(w.finish("re-adds (whited-out paths back, one hardlink removed)",
                           "/bin/sh -c ./configure-bench"))  # fmt: skip

    history: list[dict[str, Any]] = list(config.get("history", []))
    base_history = [h for h in history if not h.get("empty_layer")][:1]
    empty_tail = [h for h in history if h.get("empty_layer")]
    created = "2024-01-01T00:00:00Z"
    config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    config["history"] = (
        base_history
        + [{"created": created, "created_by": layer.created_by} for layer in layers[1:]]
        + empty_tail
    )
    config["created"] = created
    raw_config = json.dumps(config, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(raw_config).hexdigest()
    (blobs / config_hex).write_bytes(raw_config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": _MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": _CONFIG_MEDIA_TYPE,
            "digest": f"sha256:{config_hex}",
            "size": len(raw_config),
        },
        "layers": [
            {"mediaType": _LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    raw_manifest = json.dumps(manifest, separators=(",", ":")).encode()
    manifest_hex = hashlib.sha256(raw_manifest).hexdigest()
    (blobs / manifest_hex).write_bytes(raw_manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _MANIFEST_MEDIA_TYPE,
                "digest": f"sha256:{manifest_hex}",
                "size": len(raw_manifest),
                "annotations": {"org.opencontainers.image.ref.name": IMAGE_REF},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index) + "\n")
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}\n')

    # The peers must accept it.
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:{IMAGE_REF}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if inspect.returncode != 0:
        raise SystemExit(f"skopeo inspect rejected the bench image:\n{inspect.stderr}")
    found = json.loads(inspect.stdout)
    if found.get("Layers") != [layer.digest for layer in layers]:
        raise SystemExit(f"skopeo inspect shows other layers: {found.get('Layers')}")
    stats = {
        "ref": IMAGE_REF,
        "manifest_digest": f"sha256:{manifest_hex}",
        "layers": [asdict(layer) for layer in layers],
    }
    (out / "image.json").write_text(json.dumps(stats, indent=2) + "\n")


def large_image(cache_dir: Path, *, rebuild: bool = False) -> ImageInfo:
    """The bench image, built on first use into ``cache_dir`` (and reused afterwards).

    Layers: debian bookworm minbase (from :func:`strata.testing.baseimages.debian_oci`),
    host ``/usr/share`` docs, locales and man pages, host python 3.11, host ``/usr/bin``,
    an update layer (overwrites, metadata changes, whiteouts, opaque directories, type
    changes, hardlinks, an xattr, 3000 small files) and a small layer re-adding deleted paths.
    """
    base_layout = baseimages.debian_oci()
    key = hashlib.sha256(
        f"{_RECIPE}\0{_sha256_file(base_layout / 'index.json')}".encode()
    ).hexdigest()[:16]
    final = cache_dir / f"large-{key}"
    with _flock(cache_dir / "locks" / "image.lock"):
        if rebuild and final.exists():
            _rm_rf(final)
        if not final.exists():
            for stale in cache_dir.glob(".tmp-large-*"):
                _rm_rf(stale)
            print(f"building the bench image in {final} (once) ...", flush=True)
            started = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-large-{key}-", dir=cache_dir))
            try:
                _make_image(tmp, base_layout)
                os.chmod(tmp, 0o755)
                os.rename(tmp, final)
            finally:
                _rm_rf(tmp)
            print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    meta = json.loads((final / "image.json").read_text())
    return ImageInfo(
        layout=final / "layout",
        ref=meta["ref"],
        manifest_digest=meta["manifest_digest"],
        layers=tuple(LayerInfo(**layer) for layer in meta["layers"]),
    )


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a contender, timed on its own."""

    part: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # set on top of the bench's environment


@dataclass(frozen=True, slots=True)
class Contender:
    """A way of getting from the OCI layout to a rootfs, in one round."""

    key: str
    label: str
    steps: tuple[Step, ...]
    rootfs: Path


@dataclass(slots=True)
class Failure:
    """A command that exited non-zero."""

    round: int
    contender: str
    part: str
    returncode: int
    stderr: str


@dataclass(slots=True)
class Results:
    """Every timing, by contender key (total) and by part."""

    totals: dict[str, list[float]] = field(default_factory=dict)
    parts: dict[str, list[float]] = field(default_factory=dict)
    cpu_totals: dict[str, list[float]] = field(default_factory=dict)
    cpu_parts: dict[str, list[float]] = field(default_factory=dict)
    paired: dict[str, list[float]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    cleanup: list[float] = field(default_factory=list)
    other_cpu: float = 0.0  # CPU seconds others (not our children) used while we timed
    not_quiet: int = 0  # contenders started after waiting in vain for a quiet machine
    timed_wall: float = 0.0


def _contenders(image: ImageInfo, rnd: Path, policy: Path, *, raw_umoci: bool,
                snapshots: bool = False, baseline_src: Path | None = None) -> list[Contender]:
    strata = (sys.executable, "-m", "strata", "--root", str(rnd / "strata-root"))
    layout = f"{image.layout}:{image.ref}"
    copied = rnd / "skopeo-layout"
    out = [
        Contender(
            "strata",
            "strata load+unpack",
            (
                Step("strata load", (*strata, "load", "-i", str(image.layout))),
                Step("strata unpack", (*strata, "unpack", image.ref, str(rnd / "strata-rootfs"))),
            ),
            rnd / "strata-rootfs",
        ),
    ]
    if baseline_src is not None:
        base = (sys.executable, "-m", "strata", "--root", str(rnd / "strata-base-root"))
        env = (("PYTHONPATH", str(baseline_src)),)
        out.append(
            Contender(
                "strata-base",
                "strata-base load+unpack",
                (
                    Step("strata-base load", (*base, "load", "-i", str(image.layout)), env),
                    Step("strata-base unpack",
                         (*base, "unpack", image.ref, str(rnd / "strata-base-rootfs")), env),
                ),
                rnd / "strata-base-rootfs",
            )
        )
    out += [
        Contender(
            "umoci",
            "umoci unpack",
            (
                Step(
                    "umoci unpack",
                    ("umoci", "unpack", "--image", layout, str(rnd / "umoci-bundle")),
                ),
            ),
            rnd / "umoci-bundle" / "rootfs",
        ),
        Contender(
            "pipeline",
            "skopeo copy + umoci unpack",
            (
                Step(
                    "skopeo copy",
                    (
                        "skopeo",
                        "--policy",
                        str(policy),
                        "copy",
                        f"oci:{layout}",
                        f"oci:{copied}:{image.ref}",
                    ),
                ),
                Step(
                    "umoci unpack (copied layout)",
                    (
                        "umoci",
                        "unpack",
                        "--image",
                        f"{copied}:{image.ref}",
                        str(rnd / "pipeline-bundle"),
                    ),
                ),
            ),
            rnd / "pipeline-bundle" / "rootfs",
        ),
    ]
    if snapshots:
        snap_root = rnd / "strata-snap-root"
        code = ("import sys; from pathlib import Path; from strata.engine import Engine;"
                " Engine(Path(sys.argv[1])).unpack_snapshots(sys.argv[2])")
        out.append(
            Contender(
                "strata-snap",
                "strata load+snapshots",
                (
                    Step("strata load (snapshots)",
                         (sys.executable, "-m", "strata", "--root", str(snap_root), "load",
                          "-i", str(image.layout))),
                    Step("strata snapshot unpack",
                         (sys.executable, "-c", code, str(snap_root), image.ref)),
                ),
                snap_root,
            )
        )
    if raw_umoci:
        out.append(
            Contender(
                "umoci-raw",
                "umoci raw unpack",
                (
                    Step(
                        "umoci raw unpack",
                        ("umoci", "raw", "unpack", "--image", layout, str(rnd / "umoci-raw")),
                    ),
                ),
                rnd / "umoci-raw",
            )
        )
    return out


_QUIET_SHARE = 0.15  # of one core, used by others: "the machine is quiet"
_QUIET_WRITES = 20  # write requests a second the disk may complete and count as quiet
_QUIET_MAX_WAIT = 5.0  # seconds to wait for it before each contender


def _disk_activity(path: Path) -> tuple[int, int] | None:
    """(writes, discards) completed so far by the block device holding ``path``, from
    ``/sys/dev/block/MAJ:MIN/stat``; None if there is no such device (tmpfs, overlay)."""
    dev = path.stat().st_dev
    try:
        fields = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat").read_text().split()
    except OSError:
        return None
    return int(fields[4]), int(fields[11]) if len(fields) > 11 else 0


def _settle(drop_caches: bool, results: Results, scratch: Path) -> None:
    """Flush (and drop) the caches, then wait (a while) until the machine is quiet.

    The machine and its disk may be shared, and ext4's online discard goes on for tens of
    seconds after a big deletion has been synced. A contender that starts while another
    job burns a core, or while the disk is still busy discarding, is slowed down by it,
    whoever it is. So wait, up to :data:`_QUIET_MAX_WAIT` seconds, for one second in which
    others use less than :data:`_QUIET_SHARE` of a core and the scratch disk completes no
    discard and (nearly) no write. What others used while we timed is reported anyway.
    """
    os.sync()
    if drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    started = time.perf_counter()
    while True:
        busy0, disk0 = _busy_seconds(), _disk_activity(scratch)
        time.sleep(1.0)
        busy1, disk1 = _busy_seconds(), _disk_activity(scratch)
        cpu_quiet = busy1 - busy0 < _QUIET_SHARE
        disk_quiet = (
            disk0 is None or disk1 is None
            or (disk1[0] - disk0[0] <= _QUIET_WRITES and disk1[1] == disk0[1])
        )  # fmt: skip
        if cpu_quiet and disk_quiet:
            break
        if time.perf_counter() - started > _QUIET_MAX_WAIT:
            results.not_quiet += 1
            break


def _busy_seconds() -> float:
    """CPU time the whole machine has spent not idle, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_contender(
    c: Contender, rnd: int, results: Results, *, drop_caches: bool, scratch: Path
) -> tuple[float, float, str] | None:
    """Time ``c``'s steps back to back.

    Returns:
        (wall seconds, CPU seconds of the tools, their stdout), or None (and a recorded
        failure) if a step fails.
    """
    _settle(drop_caches, results, scratch)
    timings: list[tuple[str, float, float]] = []
    stdout = ""
    busy0 = _busy_seconds()
    for step in c.steps:
        cpu0 = _children_cpu()
        started = time.perf_counter()
        env = {**os.environ, **dict(step.env)} if step.env else None
        proc = subprocess.run(step.argv, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False, env=env)  # fmt: skip
        elapsed = time.perf_counter() - started
        cpu = _children_cpu() - cpu0
        if proc.returncode != 0:
            results.failures.append(
                Failure(rnd, c.key, step.part, proc.returncode, proc.stderr.strip()[-4000:])
            )
            print(f"  round {rnd}: {step.part} FAILED (exit {proc.returncode}):\n"
                  f"    {proc.stderr.strip()[-2000:]}", flush=True)  # fmt: skip
            return None
        stdout += proc.stdout
        timings.append((step.part, elapsed, cpu))
    wall = sum(t[1] for t in timings)
    cpu = sum(t[2] for t in timings)
    results.other_cpu += max(0.0, _busy_seconds() - busy0 - cpu)
    results.timed_wall += wall
    for part, elapsed, part_cpu in timings:
        results.parts.setdefault(part, []).append(elapsed)
        results.cpu_parts.setdefault(part, []).append(part_cpu)
    results.totals.setdefault(c.key, []).append(wall)
    results.cpu_totals.setdefault(c.key, []).append(cpu)
    return wall, cpu, stdout


@dataclass(frozen=True, slots=True)
class TreeStats:
    """What the unpacked rootfs holds."""

    entries: int
    regular: int
    directories: int
    symlinks: int
    hardlinked: int
    bytes: int


def _tree_stats(root: Path) -> TreeStats:
    entries = regular = directories = symlinks = hardlinked = size = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entries += 1
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISDIR(st.st_mode):
                directories += 1
            elif stat.S_ISLNK(st.st_mode):
                symlinks += 1
            elif stat.S_ISREG(st.st_mode):
                regular += 1
                if st.st_nlink > 1:
                    hardlinked += 1
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return TreeStats(entries, regular, directories, symlinks, hardlinked, size)


@dataclass(slots=True)
class Check:
    """The correctness check's outcome."""

    done: bool = False
    matched: bool = False
    report: str = ""


def _check(strata_rootfs: Path, umoci_rootfs: Path) -> Check:
    try:
        trees.assert_same_tree(umoci_rootfs, strata_rootfs, max_report=200)
    except AssertionError as exc:
        return Check(done=True, matched=False, report=str(exc))
    return Check(done=True, matched=True, report="identical (timestamps aside)")


def _version(argv: Sequence[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else "?"


def _strata_revision() -> str:
    here = Path(__file__).resolve().parent.parent
    rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return f"{rev}{'+dirty' if dirty else ''}" if rev else "?"


def _source_fingerprint() -> str:
    """A digest of the names, sizes and mtimes of strata's installed source files.

    Others may edit ``src/strata`` while the bench runs; a fingerprint that changes between
    rounds means the figures mix versions of the code.
    """
    import strata

    top = Path(strata.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(top.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(top)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:12]


def _warm(image: ImageInfo) -> None:
    """Read the layout and start every tool once, so round 1 is not the only cold one."""
    for blob in sorted((image.layout / "blobs" / "sha256").iterdir()):
        with open(blob, "rb") as f:
            while f.read(1 << 22):
                pass
    for argv in (
        [sys.executable, "-m", "strata", "--help"],
        ["umoci", "--version"],
        ["skopeo", "--version"],
    ):
        subprocess.run(argv, capture_output=True, check=False)


# --------------------------------------------------------------------------- report


def _summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
    }


def _ratio(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    if not a or not b:
        return None
    return statistics.median(a) / statistics.median(b)


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def _print_image(image: ImageInfo) -> None:
    print(f"image {image.ref} in {image.layout}")
    print(f"  manifest {image.manifest_digest}")
    header = f"  {'#':>2} {'tar':>10} {'gzip':>10} {'entries':>8} {'files':>7} {'wh':>5}  what"
    print(header)
    for i, layer in enumerate(image.layers, 1):
        print(
            f"  {i:>2} {_mib(layer.uncompressed):>10} {_mib(layer.size):>10}"
            f" {layer.entries:>8,} {layer.regular:>7,} {layer.whiteouts:>5,}  {layer.name}"
        )
    print(
        f"  {'=':>2} {_mib(image.uncompressed):>10} {_mib(image.compressed):>10}"
        f" {image.entries:>8,} {image.regular:>7,}"
        f" {sum(la.whiteouts for la in image.layers):>5,}  {len(image.layers)} layers"
    )


_ROWS: tuple[tuple[str, str, str], ...] = (
    # (kind, key, label)
    ("total", "strata", "strata load+unpack"),
    ("part", "strata load", "  strata load"),
    ("part", "strata unpack", "  strata unpack"),
    ("total", "strata-base", "strata-base load+unpack"),
    ("part", "strata-base load", "  strata-base load"),
    ("part", "strata-base unpack", "  strata-base unpack"),
    ("total", "umoci", "umoci unpack"),
    ("total", "pipeline", "skopeo copy + umoci unpack"),
    ("part", "skopeo copy", "  skopeo copy"),
    ("part", "umoci unpack (copied layout)", "  umoci unpack"),
    ("total", "umoci-raw", "umoci raw unpack (no mtree)"),
    ("total", "strata-snap", "strata load+snapshots"),
    ("part", "strata load (snapshots)", "  strata load"),
    ("part", "strata snapshot unpack", "  strata snapshot unpack"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (once) the image, time the contenders, print and optionally save the figures."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.unpack",
        description="strata load+unpack vs umoci unpack (and skopeo copy + umoci unpack).",
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="image cache and scratch space ($STRATA_BENCH_CACHE, default /var/cache/strata-bench)",
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before every contender (default: warm, sync only)",
    )
    parser.add_argument(
        "--cleanup",
        choices=("auto", "end", "round"),
        default="auto",
        help="delete the outputs once after the last round (end), after every round"
        " (round), or at the end if the disk has room for every round's (auto, default)",
    )
    parser.add_argument(
        "--raw-umoci",
        action="store_true",
        help="also time `umoci raw unpack` (rootfs only, no mtree)",
    )
    parser.add_argument(
        "--snapshots",
        action="store_true",
        help="also time strata load + unpack into overlay snapshots (Engine.unpack_snapshots)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="A/B: also time the strata of another source tree (its src/ directory, e.g."
        " from `git archive`), as 'strata-base'",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the tree comparison")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached image")
    parser.add_argument(
        "--keep", action="store_true", help="keep the outputs (prints where) instead of deleting"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for tool in ("umoci", "skopeo", "pigz" if shutil.which("pigz") else "gzip"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    if args.drop_caches and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        parser.error("--drop-caches needs root (write access to /proc/sys/vm/drop_caches)")

    cache: Path = args.cache or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    image = large_image(cache, rebuild=args.rebuild)
    _print_image(image)

    runs_dir = cache / "runs"
    results = Results()
    check = Check()
    tree: TreeStats | None = None
    fingerprints: list[str] = []
    mode = (
        "cold: sync + drop_caches before each contender"
        if args.drop_caches
        else ("warm: layout and tools in page cache, sync before each contender")
    )
    print(f"\n{args.runs} round(s), interleaved; cache {mode}")
    with _flock(runs_dir / ".lock"):
        for stale in runs_dir.glob("run-*"):  # left by a killed bench (we hold the lock)
            _rm_rf(stale)
        os.sync()
        # A round leaves two copies of the blobs (strata's store, skopeo's layout) and three
        # trees (strata's, umoci's, the pipeline's), each at most the layers' tar size.
        copies = 3 if args.baseline_src is not None else 2
        need = args.runs * (copies * image.compressed + (copies + 2) * image.uncompressed) + (4 << 30)
        per_round = args.cleanup == "round" or (
            args.cleanup == "auto" and shutil.disk_usage(runs_dir).free < need
        )
        print(
            f"scratch: {runs_dir}; outputs deleted "
            + ("after every round (untimed, synced)" if per_round else "after the last round")
            + (" (not enough free space to keep them all)" if per_round and args.cleanup == "auto"
               else ""),
            flush=True,
        )  # fmt: skip
        work = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
        policy = work / "policy.json"
        policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}\n')
        if not args.drop_caches:
            _warm(image)
        try:
            for rnd in range(1, args.runs + 1):
                rdir = work / f"round-{rnd}"
                rdir.mkdir()
                contenders = _contenders(image, rdir, policy, raw_umoci=args.raw_umoci,
                                         snapshots=args.snapshots,
                                         baseline_src=args.baseline_src)
                fingerprints.append(_source_fingerprint())
                got: dict[str, float] = {}
                line = []
                shift = (rnd - 1) % len(contenders)
                for c in contenders[shift:] + contenders[:shift]:
                    done = _run_contender(
                        c, rnd, results, drop_caches=args.drop_caches, scratch=rdir
                    )
                    if done is None:
                        line.append(f"{c.key} FAILED")
                        continue
                    got[c.key] = done[0]
                    line.append(f"{c.key} {done[0]:.2f}s (cpu {done[1]:.1f}s)")
                    if (
                        rnd == 1
                        and c.key == "strata"
                        and f"Loaded image: {image.ref}" not in (done[2].splitlines())
                    ):
                        print(f"  note: strata load did not print 'Loaded image: {image.ref}'"
                              f" (stdout: {done[2].strip()[:300]!r})")  # fmt: skip
                if "strata" in got:
                    for other in ("umoci", "pipeline", "strata-base"):
                        if other in got:
                            results.paired.setdefault(other, []).append(got["strata"] / got[other])
                if len(fingerprints) > 1 and fingerprints[-1] != fingerprints[-2]:
                    line.append("(strata's source changed since the last round)")
                print(f"  round {rnd}: " + ", ".join(line), flush=True)
                if rnd == 1:
                    ok = {c.key: c for c in contenders if c.key in got}
                    if "umoci" in ok:
                        tree = _tree_stats(ok["umoci"].rootfs)
                    elif "strata" in ok:
                        tree = _tree_stats(ok["strata"].rootfs)
                    if not args.no_check and "strata" in ok and "umoci" in ok:
                        print("  checking strata's tree against umoci's rootfs ...", flush=True)
                        started = time.perf_counter()
                        check = _check(ok["strata"].rootfs, ok["umoci"].rootfs)
                        print(
                            f"  tree check: {'MATCH' if check.matched else 'DIFFERENT'}"
                            f" ({time.perf_counter() - started:.0f} s)",
                            flush=True,
                        )
                if per_round and not args.keep:
                    started = time.perf_counter()
                    _rm_rf(rdir)
                    os.sync()
                    results.cleanup.append(time.perf_counter() - started)
        finally:
            if args.keep:
                print(f"  kept: {work}")
            else:
                started = time.perf_counter()
                _rm_rf(work)
                os.sync()
                results.cleanup.append(time.perf_counter() - started)

    fingerprints.append(_source_fingerprint())
    source_changed = len(set(fingerprints)) > 1

    # ---- report
    print()
    if source_changed:
        print(
            f"WARNING: strata's source changed while the bench ran (fingerprints before each"
            f" round and at the end: {' '.join(fingerprints)}): the figures mix versions\n"
        )
    if tree is not None:
        print(
            f"unpacked rootfs: {tree.entries:,} entries ({tree.regular:,} files,"
            f" {tree.directories:,} dirs, {tree.symlinks:,} symlinks,"
            f" {tree.hardlinked:,} hardlinked), {_mib(tree.bytes)} of file data"
        )
    print(
        f"\n{'contender':<30} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8}"
        "   (wall seconds; cpu = median user+sys of the tools)"
    )
    summary: dict[str, dict[str, float]] = {}
    for kind, key, label in _ROWS:
        samples = (results.totals if kind == "total" else results.parts).get(key)
        cpu = (results.cpu_totals if kind == "total" else results.cpu_parts).get(key)
        if not samples or not cpu:
            continue
        s = {**_summary(samples), "cpu_median": statistics.median(cpu), "n": len(samples)}
        summary[key] = s
        print(
            f"{label:<30} {s['median']:>8.2f} {s['min']:>8.2f} {s['max']:>8.2f}"
            f" {s['cpu_median']:>8.2f}   n={len(samples)}"
        )
    if results.timed_wall:
        share = results.other_cpu / results.timed_wall
        print(
            f"\nother processes (kernel threads included) used {results.other_cpu:.0f}"
            f" CPU-s during {results.timed_wall:.0f} s of timed runs ({share:.0%} of one of"
            f" {os.cpu_count()} cores)"
            + (": the machine was busy, expect noisy figures" if share > _QUIET_SHARE else "")
        )
    if results.not_quiet:
        print(
            f"{results.not_quiet} contender run(s) started on a busy machine (after"
            f" {_QUIET_MAX_WAIT:.0f} s, others still used more than {_QUIET_SHARE:.0%} of a"
            f" core, or the disk was still writing or discarding)"
        )

    strata_t = results.totals.get("strata")
    ratios = {
        "strata/umoci": _ratio(strata_t, results.totals.get("umoci")),
        "strata/(skopeo+umoci)": _ratio(strata_t, results.totals.get("pipeline")),
        "strata unpack/umoci": _ratio(results.parts.get("strata unpack"),
                                      results.totals.get("umoci")),
        "strata/umoci raw": _ratio(strata_t, results.totals.get("umoci-raw")),
    }  # fmt: skip
    cpu_ratios = {
        "strata/umoci": _ratio(results.cpu_totals.get("strata"), results.cpu_totals.get("umoci")),
        "strata/(skopeo+umoci)": _ratio(
            results.cpu_totals.get("strata"), results.cpu_totals.get("pipeline")
        ),
    }
    paired = {k: statistics.median(v) for k, v in results.paired.items() if v}
    print()
    print(
        f"ratio strata/(skopeo+umoci): {_fmt_ratio(ratios['strata/(skopeo+umoci)'])}"
        f" (median of per-round ratios {_fmt_ratio(paired.get('pipeline'))})"
    )
    print(f"ratio strata unpack only/umoci unpack: {_fmt_ratio(ratios['strata unpack/umoci'])}")
    print(
        f"cpu-time ratios (user+sys, less sensitive to a busy machine; umoci uses several"
        f" threads): strata/umoci {_fmt_ratio(cpu_ratios['strata/umoci'])},"
        f" strata/(skopeo+umoci) {_fmt_ratio(cpu_ratios['strata/(skopeo+umoci)'])}"
    )
    if args.raw_umoci:
        print(f"ratio strata/umoci raw unpack: {_fmt_ratio(ratios['strata/umoci raw'])}")
    if args.baseline_src is not None:
        base_t = results.totals.get("strata-base")
        ratios["strata/strata-base"] = _ratio(strata_t, base_t)
        ratios["strata-base/umoci"] = _ratio(base_t, results.totals.get("umoci"))
        cpu_ratios["strata/strata-base"] = _ratio(results.cpu_totals.get("strata"),
                                                  results.cpu_totals.get("strata-base"))
        print(f"A/B: strata/strata-base {_fmt_ratio(ratios['strata/strata-base'])} wall"
              f" (median of per-round ratios {_fmt_ratio(paired.get('strata-base'))}),"
              f" {_fmt_ratio(cpu_ratios['strata/strata-base'])} cpu;"
              f" strata-base/umoci {_fmt_ratio(ratios['strata-base/umoci'])}")
    if args.snapshots:
        umoci_times = results.totals.get("umoci")
        snap_total = _ratio(results.totals.get("strata-snap"), umoci_times)
        snap_only = _ratio(results.parts.get("strata snapshot unpack"), umoci_times)
        print(f"ratio strata load+snapshots/umoci unpack: {_fmt_ratio(snap_total)};"
              f" snapshot unpack only/umoci unpack: {_fmt_ratio(snap_only)}")
    if check.done:
        print(f"correctness: strata's tree vs umoci's rootfs: "
              f"{'MATCH' if check.matched else 'DIFFERENT'}")  # fmt: skip
        if not check.matched:
            print("  " + check.report.replace("\n", "\n  "))
    elif not args.no_check:
        print("correctness: NOT CHECKED (strata or umoci failed in round 1)")
    main_ratio = ratios["strata/umoci"]
    met = main_ratio is not None and main_ratio <= TARGET_RATIO
    print(
        f"ratio strata/umoci unpack: {_fmt_ratio(main_ratio)} (target <= {TARGET_RATIO})"
        f" (median of per-round ratios {_fmt_ratio(paired.get('umoci'))})"
        f" -> target {'MET' if met else 'NOT MET'}"
        + (" (strata's source changed during the run)" if source_changed else "")
    )
    if results.failures:
        print(f"\n{len(results.failures)} command(s) FAILED:")
        for f in results.failures:
            print(f"  round {f.round} {f.part}: exit {f.returncode}: {f.stderr[-500:]}")

    if args.json is not None:
        doc = {
            "bench": "unpack",
            "settings": {
                "runs": args.runs,
                "cache_mode": "cold" if args.drop_caches else "warm",
                "scratch": str(runs_dir),
                "raw_umoci": args.raw_umoci,
                "cleanup": "round" if per_round else "end",
            },
            "versions": {
                "strata": _strata_revision(),
                "strata_source_fingerprints": fingerprints,
                "strata_source_changed": source_changed,
                "umoci": _version(["umoci", "--version"]),
                "skopeo": _version(["skopeo", "--version"]),
                "python": sys.version.split()[0],
            },
            "image": image.to_json(),
            "rootfs": asdict(tree) if tree is not None else None,
            "samples": {
                "totals": results.totals,
                "parts": results.parts,
                "cpu_totals": results.cpu_totals,
                "cpu_parts": results.cpu_parts,
                "cleanup": results.cleanup,
            },
            "other_cpu_seconds": results.other_cpu,
            "runs_started_on_busy_machine": results.not_quiet,
            "timed_wall_seconds": results.timed_wall,
            "summary": summary,
            "ratios_of_medians": ratios,
            "cpu_ratios_of_medians": cpu_ratios,
            "medians_of_paired_ratios": paired,
            "target": {"ratio": "strata/umoci", "at_most": TARGET_RATIO, "met": met},
            "check": asdict(check),
            "failures": [asdict(f) for f in results.failures],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
