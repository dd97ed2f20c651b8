"""Base and test images made offline with peer tools, cached across test runs.

This module owns the images interop tests and benches compare strata against:

- :func:`busybox_oci`: ``localhost/busybox:latest`` from the host's static busybox, made
  with umoci (init, new, unpack, repack, config);
- :func:`debian_oci`: ``localhost/debian:bookworm`` from ``debootstrap --variant=minbase``
  against the Debian mirror apt uses here, device nodes in ``/dev`` kept;
- :func:`build_images`: multi-layer images built by buildah from
  ``tests/interop/dockerfiles/NAME/Dockerfile`` on those bases and exported with skopeo as
  an OCI layout and a docker-archive.

Everything lands in a cache directory (``$STRATA_TEST_CACHE``, default
``/var/cache/strata-tests``) under a name that includes a hash of its inputs, is built in a
temporary directory then renamed, and is guarded by a lock file, so parallel runs never see
half-made images and build each thing once. Nothing here touches the system container stores
or imports the rest of strata.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from strata.testing import tools

__all__ = [
    "BUSYBOX_APPLETS",
    "BUSYBOX_REF",
    "BuildahImage",
    "DEBIAN_REF",
    "apt_mirror",
    "build_images",
    "busybox_oci",
    "busybox_rootfs",
    "debian_oci",
    "default_cache_dir",
    "import_to_store",
    "stage_host_tools",
]

BUSYBOX_REF = "localhost/busybox:latest"
DEBIAN_REF = "localhost/debian:bookworm"

#: Applets linked into ``/bin`` of the busybox rootfs (those the host busybox has).
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh",
    "ash",
    "ls",
    "cat",
    "echo",
    "rm",
    "rmdir",
    "mkdir",
    "ln",
    "chmod",
    "chown",
    "chgrp",
    "touch",
    "cp",
    "mv",
    "sleep",
    "true",
    "false",
    "env",
    "id",
    "stat",
    "dd",
    "head",
    "tail",
    "grep",
    "sed",
    "awk",
    "find",
    "xargs",
    "wc",
    "sort",
    "uniq",
    "cut",
    "tr",
    "test",
    "[",
    "printf",
    "pwd",
    "readlink",
    "realpath",
    "dirname",
    "basename",
    "mkfifo",
    "mknod",
    "mktemp",
    "tar",
    "gzip",
    "gunzip",
    "sha256sum",
    "md5sum",
    "du",
    "df",
    "ps",
    "kill",
    "uname",
    "hostname",
    "whoami",
    "date",
    "seq",
    "yes",
    "truncate",
    "sync",
    "vi",
    "less",
    "more",
    "wget",
    "nc",
    "ping",
    "ip",
    "mount",
    "umount",
    "su",
    "adduser",
    "addgroup",
    "link",
    "unlink",
    "hexdump",
    "xxd",
    "od",
    "timeout",
    "watch",
    "which",
    "diff",
    "patch",
)

# Bumped when a recipe changes in a way its inputs' hashes do not show.
_RECIPE = "1"


def default_cache_dir() -> Path:
    """``$STRATA_TEST_CACHE`` or ``/var/cache/strata-tests``."""
    return Path(os.environ.get("STRATA_TEST_CACHE") or "/var/cache/strata-tests")


@contextlib.contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[None]:
    locks = cache_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(cache_dir: Path, name: str, make: Callable[[Path], None]) -> Path:
    """``cache_dir/name``, made by ``make(tmp)`` into a temporary sibling then renamed."""
    final = cache_dir / name
    if final.exists():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, name.split("-", maxsplit=1)[0]):
        if final.exists():
            return final
        for stale in cache_dir.glob(f".tmp-{name}-*"):  # left by a killed run
            _remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir))
        try:
            make(tmp)
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                _remove_tree(tmp)
    return final


def _remove_tree(path: Path) -> None:
    tools.unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _hash_tree(root: Path) -> str:
    """A digest of the names, modes, link targets and contents under ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            else:
                h.update(_sha256_file(path).encode())
            h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- busybox


def busybox_rootfs(dest: Path) -> None:
    """Populate ``dest`` (created if missing, may exist empty) with a busybox rootfs.

    ``bin/busybox`` is the host's static ``/bin/busybox``; ``bin/APPLET`` are symlinks to it
    for :data:`BUSYBOX_APPLETS`; there are ``etc/passwd``, ``etc/group``, ``tmp`` (1777),
    ``root`` (0700) and the usual empty directories.
    """
    busybox = Path(tools.require("busybox"))
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    for d, mode in (
        ("bin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o755),
        ("sys", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/spool", 0o755),
        ("var/spool/mail", 0o755),
        ("usr", 0o755),
        ("usr/sbin", 0o755),
    ):
        (dest / d).mkdir(exist_ok=True)
        os.chmod(dest / d, mode)
    shutil.copyfile(busybox, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    available = set(tools.run([str(busybox), "--list"]).stdout.split())
    for applet in BUSYBOX_APPLETS:
        if applet in available:
            (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
        "nobody:x:65534:65534:nobody:/home:/bin/false\n"
    )
    (dest / "etc" / "group").write_text(
        "root:x:0:\ndaemon:x:1:\ntty:x:5:\nstaff:x:50:\nnogroup:x:65534:\n"
    )
    (dest / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(dest / "etc" / "shadow", 0o640)
    (dest / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n")
    for path in dest.rglob("*"):
        os.lchown(path, 0, 0)


def _umoci_image(
    layout: Path,
    ref: str,
    populate: Callable[[Path], None],
    *,
    created_by: str,
    config: Sequence[str],
    config_created_by: str,
) -> None:
    """Make a one-layer image ``ref`` in a new layout at ``layout`` with umoci."""
    work = layout.parent / f"{layout.name}.work"
    bundle = work / "bundle"
    tools.run(["umoci", "init", "--layout", str(layout)])
    tools.run(["umoci", "new", "--image", f"{layout}:build"])
    tools.run(["umoci", "unpack", "--image", f"{layout}:build", str(bundle)])
    populate(bundle / "rootfs")
    tools.run(
        [
            "umoci", "repack", "--image", f"{layout}:build",
            "--history.created_by", created_by,
            "--history.comment", "strata test base image",
            str(bundle),
        ]
    )  # fmt: skip
    tools.run(
        [
            "umoci", "config", "--image", f"{layout}:build",
            "--os", "linux", "--architecture", "amd64",
            "--history.created_by", config_created_by,
            *config,
        ]
    )  # fmt: skip
    tools.run(["umoci", "tag", "--image", f"{layout}:build", ref])
    tools.run(["umoci", "rm", "--image", f"{layout}:build"])
    tools.run(["umoci", "gc", "--layout", str(layout)])
    _remove_tree(work)


def busybox_oci(cache_dir: Path | None = None) -> Path:
    """An OCI layout holding ``localhost/busybox:latest`` (cached).

    Args:
        cache_dir: where images are cached (default :func:`default_cache_dir`).

    Returns:
        The layout directory (do not modify it).
    """
    cache = cache_dir or default_cache_dir()
    key = hashlib.sha256(
        f"{_RECIPE}\0{_sha256_file(Path(tools.require('busybox')))}\0"
        f"{','.join(BUSYBOX_APPLETS)}".encode()
    ).hexdigest()[:16]

    def make(tmp: Path) -> None:
        _umoci_image(
            tmp / "layout",
            BUSYBOX_REF,
            busybox_rootfs,
            created_by="/bin/sh -c #(nop) ADD file:busybox-rootfs in / ",
            config=[
                "--config.cmd",
                "sh",
                "--config.env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ],
            config_created_by='/bin/sh -c #(nop)  CMD ["sh"]',
        )

    return _cached(cache, f"busybox-oci-{key}", make) / "layout"


# --------------------------------------------------------------------------- debian


def apt_mirror(suite: str = "bookworm") -> str:
    """The Debian mirror URI apt uses here for ``suite`` (main), from sources.list(.d).

    Both the one-line (``deb URI SUITE COMPONENTS``) and the deb822 (``.sources``) formats
    are read; security suites are skipped.

    Returns:
        The URI, ``http://deb.debian.org/debian`` if none is configured.
    """
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if suite in fields.get("suites", "").split():
                    uris = fields.get("uris", "").split()
                    if uris:
                        return uris[0].rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1].rstrip("/")
    return "http://deb.debian.org/debian"


def _debootstrap_into(rootfs: Path, suite: str, mirror: str) -> None:
    tools.run(["debootstrap", "--variant=minbase", suite, str(rootfs), mirror], timeout=3600)
    # As Docker's debian images: no package caches or lists, no host identity.
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / d).iterdir():
            if entry.is_file() and entry.name != "lock":
                entry.unlink()
    for name in ("etc/hostname", "etc/resolv.conf"):
        (rootfs / name).unlink(missing_ok=True)
    os.chmod(rootfs, 0o755)


def debian_oci(
    cache_dir: Path | None = None, *, suite: str = "bookworm", mirror: str | None = None
) -> Path:
    """An OCI layout holding ``localhost/debian:SUITE`` from debootstrap minbase (cached).

    The first call takes about a minute (debootstrap from the local mirror, then gzip);
    later calls return the cached layout. ``/dev`` keeps its device nodes.

    Args:
        cache_dir: where images are cached (default :func:`default_cache_dir`).
        suite: the Debian suite.
        mirror: the mirror URI (default :func:`apt_mirror`).

    Returns:
        The layout directory (do not modify it).
    """
    cache = cache_dir or default_cache_dir()
    uri = mirror or apt_mirror(suite)
    key = hashlib.sha256(f"{_RECIPE}\0{suite}\0{uri}".encode()).hexdigest()[:16]

    def make(tmp: Path) -> None:
        _umoci_image(
            tmp / "layout",
            f"localhost/debian:{suite}",
            lambda rootfs: _debootstrap_into(rootfs, suite, uri),
            created_by=f"/bin/sh -c #(nop) ADD file:debootstrap-minbase-{suite} in / ",
            config=[
                "--config.cmd",
                "bash",
                "--config.env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ],
            config_created_by='/bin/sh -c #(nop)  CMD ["bash"]',
        )

    return _cached(cache, f"debian-{suite}-oci-{key}", make) / "layout"


# --------------------------------------------------------------------------- test images


def import_to_store(layout: Path, ref: str, store: tools.ContainersStore) -> None:
    """Copy ``ref`` from an OCI layout into a containers-storage store under the same name,
    so that a Dockerfile there can say ``FROM ref``."""
    tools.skopeo_copy(f"oci:{layout}:{ref}", store.transport(ref), store=store)


_LDD_PATH = re.compile(r"(/\S+)")


def stage_host_tools(dest: Path, binaries: Sequence[str] = ("setfattr", "setcap")) -> None:
    """Copy host binaries and the shared libraries they need into ``dest`` so that an image
    without them (busybox, debian minbase) can run them in a ``RUN`` step.

    Layout: ``dest/bin/NAME`` (the binary), ``dest/lib/*`` (its libraries and loader) and
    ``dest/NAME``, a ``/bin/sh`` wrapper that runs the binary through the copied loader
    with ``--library-path`` (so the image's own libc is never replaced). Use it as
    ``COPY hosttools/ /opt/hosttools/`` then ``RUN /opt/hosttools/setfattr -n user.k -v v F``.
    """
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "lib").mkdir(exist_ok=True)
    for name in binaries:
        binary = Path(tools.require(name)).resolve()
        shutil.copyfile(binary, dest / "bin" / name)
        os.chmod(dest / "bin" / name, 0o755)
        loader = ""
        for line in tools.run(["ldd", str(binary)]).stdout.splitlines():
            m = _LDD_PATH.search(line.split("=>")[-1])
            if m is None:
                continue
            lib = Path(m.group(1))
            shutil.copyfile(lib.resolve(), dest / "lib" / lib.name)
            os.chmod(dest / "lib" / lib.name, 0o755)
            if "=>" not in line and lib.name.startswith("ld-"):
                loader = lib.name
        if not loader:
            raise tools.ToolError(
                f"no dynamic loader found for {binary}", cmd=["ldd", str(binary)], returncode=0
            )
        wrapper = dest / name
        wrapper.write_text(
            "#!/bin/sh\n"
            'd="${0%/*}"\n'
            f'exec "$d/lib/{loader}" --library-path "$d/lib" "$d/bin/{name}" "$@"\n'
        )
        os.chmod(wrapper, 0o755)


@dataclass(frozen=True, slots=True)
class BuildahImage:
    """A test image built by buildah and exported by skopeo.

    Attributes:
        name: the Dockerfile directory name.
        ref: ``localhost/NAME:latest``.
        oci_layout: OCI layout dir whose index names the image ``ref``.
        docker_archive: docker-archive tar (``docker save`` format) tagged ``ref``.
        image_id: ``sha256:`` digest of the config (docker's IMAGE ID).
        base_ref: the image it is built ``FROM``.
    """

    name: str
    ref: str
    oci_layout: Path
    docker_archive: Path
    image_id: str
    base_ref: str


_FROM = re.compile(r"^\s*FROM\s+(\S+)", re.IGNORECASE | re.MULTILINE)

BaseMaker = Callable[[Path], Path]
BASES: Mapping[str, BaseMaker] = {
    BUSYBOX_REF: busybox_oci,
    DEBIAN_REF: debian_oci,
}


def _digest_of_layout(layout: Path) -> str:
    return hashlib.sha256((layout / "index.json").read_bytes()).hexdigest()


def build_images(
    dockerfiles: Path, cache_dir: Path | None = None, *, names: Sequence[str] | None = None
) -> dict[str, BuildahImage]:
    """Build (or fetch from cache) every ``dockerfiles/NAME/Dockerfile``.

    Each image is cached under a key hashing its directory, its base image and the staged
    host tools, so editing one Dockerfile rebuilds only that image. A build uses a fresh
    private containers-storage store (overlay driver) into which the bases are copied;
    the build context is the Dockerfile's directory plus ``hosttools/`` from
    :func:`stage_host_tools`. The Dockerfile must start ``FROM`` one of :data:`BASES`.

    Args:
        dockerfiles: the directory of Dockerfile directories.
        cache_dir: the cache (default :func:`default_cache_dir`).
        names: build only these.

    Returns:
        name → :class:`BuildahImage`.

    Raises:
        tools.ToolError: a build or export failed (buildah's output is in the message).
    """
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    wanted = (
        sorted(names)
        if names is not None
        else sorted(p.parent.name for p in dockerfiles.glob("*/Dockerfile"))
    )
    result: dict[str, BuildahImage] = {}
    with tempfile.TemporaryDirectory(prefix="strata-hosttools-") as tmp:
        hosttools = Path(tmp) / "hosttools"
        stage_host_tools(hosttools)
        hosttools_key = _hash_tree(hosttools)
        for name in wanted:
            src = dockerfiles / name
            match = _FROM.search((src / "Dockerfile").read_text())
            base = match.group(1) if match else ""
            if base not in BASES:
                raise tools.ToolError(
                    f"{src}/Dockerfile must be FROM one of {sorted(BASES)}, not {base!r}",
                    cmd=[],
                    returncode=None,
                )
            base_layout = BASES[base](cache)
            key = hashlib.sha256(
                f"{_RECIPE}\0{_hash_tree(src)}\0{base}\0{_digest_of_layout(base_layout)}\0"
                f"{hosttools_key}".encode()
            ).hexdigest()[:16]
            ref = f"localhost/{name}:latest"

            def make(
                out: Path, src: Path = src, base: str = base, base_layout: Path = base_layout,
                ref: str = ref,
            ) -> None:  # fmt: skip
                _build_one(
                    out, src=src, ref=ref, base=base, base_layout=base_layout, hosttools=hosttools
                )

            d = _cached(cache, f"images-{name}-{key}", make)
            _prune_old_builds(cache, name, keep=d)
            meta = json.loads((d / "meta.json").read_text())
            result[name] = BuildahImage(
                name=name,
                ref=ref,
                oci_layout=d / "oci",
                docker_archive=d / "docker-archive.tar",
                image_id=meta["image_id"],
                base_ref=base,
            )
    return result


def _prune_old_builds(cache: Path, name: str, *, keep: Path) -> None:
    """Remove builds of ``name`` made from older Dockerfiles (they are never used again)."""
    pattern = re.compile(rf"images-{re.escape(name)}-[0-9a-f]{{16}}")
    with _locked(cache, "images"):
        for old in cache.iterdir():
            if old != keep and pattern.fullmatch(old.name):
                _remove_tree(old)


def _build_one(
    out: Path, *, src: Path, ref: str, base: str, base_layout: Path, hosttools: Path
) -> None:
    work = out / "work"
    context = work / "context"
    shutil.copytree(src, context, symlinks=True)
    shutil.copytree(hosttools, context / "hosttools", symlinks=True)
    store = tools.containers_store(work / "root", work / "run")
    try:
        import_to_store(base_layout, base, store)
        image_id = tools.buildah_bud(
            context, ref, storage_root=store.root, runroot=store.runroot, driver=store.driver
        )
        tools.buildah_push_oci(
            ref, out / "oci", ref,
            storage_root=store.root, runroot=store.runroot, driver=store.driver,
        )  # fmt: skip
        tools.skopeo_copy(
            store.transport(ref), f"docker-archive:{out / 'docker-archive.tar'}:{ref}",
            store=store,
        )  # fmt: skip
        (out / "meta.json").write_text(
            json.dumps({"ref": ref, "image_id": image_id, "base": base}, indent=2) + "\n"
        )
    finally:
        _remove_tree(work)
