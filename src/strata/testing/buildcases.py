"""The Dockerfile case corpus: load cases, build them with reference tools and with strata, compare.

A case is a directory ``NAME/`` holding a ``Dockerfile`` (outside the context, so every case
also exercises ``-f`` outside the context, unless ``case.toml`` names one inside), an optional
``context/`` directory and a ``case.toml``::

    description = "what the case shows"
    build_args = { NAME = "value" }       # --build-arg
    target = "stage"                      # --target
    dockerfile = "context/Dockerfile"     # default: "Dockerfile" beside case.toml
    expect_failure = true                 # every builder must fail ...
    message = "unknown instruction"       # ... and strata's error must contain this
    xfail = "executor lacks X"            # strata side is a strict xfail until it works
    references = ["buildah", "docker"]    # the default; [] with [expect] only
    compare_layers = true                 # compare the number of layers
    ignore_paths = ["data"]               # paths left out of every tree comparison
    secrets = { token = "token.txt" }     # --secret id=token,src=<case>/token.txt
    stdin_tar = true                      # strata reads the context as a tar (build -)

    [tools.buildah]                        # where one reference diverges from BuildKit's
    ignore_paths = ["data"]               # documented behaviour: left out for it only,
    compare_layers = false                # with the reason
    ignore_config = ["WorkingDir"]
    compare_xattrs = false
    notes = "buildah creates VOLUME directories"

    [prepare]                              # what git cannot hold, made before building
    modes = { "secret" = 0o600 }           # chmod inside the context
    owners = { "f" = "1000:1000" }        # chown inside the context
    mkdirs = ["empty/dir"]                 # empty directories
    xattrs = { "f" = { "user.k" = "v" } }  # extended attributes
    hosttools = true                       # context/hosttools/setfattr (see stage_host_tools)
    [prepare.archives."files.tar.gz"]     # a tar made from a context directory
    source = "tarsrc"                     # (removed from the context afterwards if drop)
    compression = "gzip"                  # none | gzip
    drop = true

References:

- ``buildah``: ``buildah bud --isolation chroot --layers --format docker`` in a private store
  (bases imported, never pulling).
- ``docker``: Debian's dockerd 20.10 (BuildKit v0.8 inside) with ``DOCKER_BUILDKIT=1 docker
  build --network none``, on a private daemon (bases loaded from docker-archives).

Each reference's image is exported to an OCI layout and unpacked by umoci; its tree, config
and layer count are cached on disk keyed by the case's files, the bases and the tool's
version, so the tools run only when a case changes. For what neither tool here can build
(heredocs, ``--link``: Dockerfile syntax newer than both), ``[expect]`` lists facts from the
Dockerfile reference that the strata result must show::

    [expect]
    layers = 3                             # rootfs.diff_ids of the image
    absent = ["tmp/x"]
    [expect.files."etc/motd"]
    type = "file"                          # file | dir | symlink
    content = "hello\\n"
    mode = 0o644
    owner = "0:0"
    target = "..."                         # symlink text
    [expect.config]
    Cmd = ["sh"]                           # compared exactly

strata builds the same prepared context through :meth:`strata.engine.Engine.build`, saves the
image as an OCI layout and umoci unpacks it: every side is read by the same neutral tool.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strata.testing import baseimages, tools, trees

__all__ = [
    "BUILDAH_RUN_PLACEHOLDERS",
    "CONFIG_FIELDS",
    "REFERENCES",
    "Case",
    "DockerdFactory",
    "Outcome",
    "Prepared",
    "check_expected",
    "compare",
    "describe",
    "load_case",
    "load_cases",
    "prepare",
    "reference_build",
    "strata_build",
    "tool_version",
]

#: The config fields the issue asks to be identical.
CONFIG_FIELDS: tuple[str, ...] = (
    "Env",
    "Entrypoint",
    "Cmd",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
)

#: What ``buildah bud --isolation chroot`` leaves behind after a RUN as mount points for the
#: files it bind-mounts (empty files and directories); not part of what the Dockerfile made.
BUILDAH_RUN_PLACEHOLDERS: frozenset[str] = frozenset(
    {"etc/hostname", "etc/resolv.conf", "etc/hosts", "run", "run/.containerenv"}
)

#: The reference tools, in the order they are run.
REFERENCES: tuple[str, ...] = ("buildah", "docker")

# Bumped when the reference recipe changes in a way the inputs' hashes do not show.
_RECIPE = "buildcases-2"


@dataclass(frozen=True, slots=True)
class Case:
    """One corpus case (see the module docstring for ``case.toml``)."""

    name: str
    directory: Path
    description: str
    dockerfile: Path
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    expect_failure: bool = False
    message: str | None = None
    xfail: str | None = None
    references: tuple[str, ...] = REFERENCES
    compare_layers: bool = True
    ignore_paths: tuple[str, ...] = ()
    tools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    stdin_tar: bool = False
    prepare: Mapping[str, Any] = field(default_factory=dict)
    expect: Mapping[str, Any] = field(default_factory=dict)

    def ignored_paths(self, tool: str) -> set[str]:
        """Paths left out of the comparison with ``tool``."""
        extra = self.tools.get(tool, {}).get("ignore_paths", ())
        return {p.strip("/") for p in (*self.ignore_paths, *extra)}

    def ignored_config(self, tool: str) -> set[str]:
        """Config fields left out of the comparison with ``tool``."""
        return set(self.tools.get(tool, {}).get("ignore_config", ()))

    def secret_files(self) -> dict[str, Path]:
        """``--secret id=ID,src=FILE``: id -> file (beside case.toml, outside the context)."""
        return {str(k): self.directory / str(v) for k, v in self.secrets.items()}

    def xattrs_compared(self, tool: str) -> bool:
        """Whether extended attributes are compared with ``tool``."""
        return bool(self.tools.get(tool, {}).get("compare_xattrs", True))

    def layers_compared(self, tool: str) -> bool:
        """Whether the layer count is compared with ``tool``."""
        return self.compare_layers and bool(self.tools.get(tool, {}).get("compare_layers", True))

    @property
    def context(self) -> Path:
        """The case's context directory (may not exist: an empty context)."""
        return self.directory / "context"

    def bases(self) -> list[str]:
        """The base images the Dockerfile names that :data:`baseimages.BASES` provides."""
        text = self.dockerfile.read_text() if self.dockerfile.exists() else ""
        return [ref for ref in baseimages.BASES if ref in text]


def load_case(directory: Path) -> Case:
    """Read ``directory/case.toml``.

    Raises:
        ValueError: an unknown key or a bad value (a corpus bug, not user input).
    """
    data = tomllib.loads((directory / "case.toml").read_text())
    known = {
        "description", "build_args", "target", "dockerfile", "expect_failure", "message",
        "xfail", "references", "compare_layers", "ignore_paths", "tools", "prepare", "expect",
        "notes", "secrets", "stdin_tar",
    }  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{directory}/case.toml: unknown keys {sorted(unknown)}")
    references = tuple(str(r) for r in data.get("references", REFERENCES))
    if set(references) - set(REFERENCES):
        raise ValueError(f"{directory}/case.toml: references must be among {REFERENCES}")
    if not references and not data.get("expect") and not data.get("expect_failure"):
        raise ValueError(f"{directory}/case.toml: no reference and no [expect]")
    if set(data.get("tools", {})) - set(references):
        raise ValueError(f"{directory}/case.toml: [tools.X] for a tool not in references")
    return Case(
        name=directory.name,
        directory=directory,
        description=str(data.get("description", "")),
        dockerfile=directory / str(data.get("dockerfile", "Dockerfile")),
        build_args={str(k): str(v) for k, v in data.get("build_args", {}).items()},
        target=data.get("target"),
        expect_failure=bool(data.get("expect_failure", False)),
        message=data.get("message"),
        xfail=data.get("xfail"),
        references=references,
        compare_layers=bool(data.get("compare_layers", True)),
        ignore_paths=tuple(data.get("ignore_paths", ())),
        tools=data.get("tools", {}),
        secrets=data.get("secrets", {}),
        stdin_tar=bool(data.get("stdin_tar", False)),
        prepare=data.get("prepare", {}),
        expect=data.get("expect", {}),
    )


def load_cases(root: Path) -> list[Case]:
    """Every case under ``root`` (directories holding a ``case.toml``), sorted by name."""
    return [load_case(p.parent) for p in sorted(root.glob("*/case.toml"))]


# --------------------------------------------------------------------------- preparing


@dataclass(frozen=True, slots=True)
class Prepared:
    """A case ready to build: its context copied and completed, the Dockerfile's path."""

    case: Case
    context: Path
    dockerfile: Path


def _tar_of(source: Path, compression: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted([source, *source.rglob("*")]):
            rel = path.relative_to(source).as_posix()
            info = tar.gettarinfo(str(path), arcname="." if rel == "." else f"./{rel}")
            info.mtime = 1_600_000_000
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression != "none":
        raise ValueError(f"unknown compression {compression!r}")
    return raw


def prepare(case: Case, workdir: Path) -> Prepared:
    """Copy the case's context into ``workdir/context`` and apply ``[prepare]``."""
    context = workdir / "context"
    if context.exists():
        shutil.rmtree(context)
    if case.context.is_dir():
        shutil.copytree(case.context, context, symlinks=True)
    else:
        context.mkdir(parents=True)
    spec = case.prepare
    for rel in spec.get("mkdirs", ()):
        (context / rel).mkdir(parents=True, exist_ok=True)
    for name, archive in spec.get("archives", {}).items():
        source = context / str(archive["source"])
        (context / name).write_bytes(_tar_of(source, str(archive.get("compression", "none"))))
        if archive.get("drop", True):
            shutil.rmtree(source)
    for rel, mode in spec.get("modes", {}).items():
        os.chmod(context / rel, int(mode), follow_symlinks=False)
    for rel, owner in spec.get("owners", {}).items():
        uid, gid = (int(x) for x in str(owner).split(":"))
        os.chown(context / rel, uid, gid, follow_symlinks=False)
    for rel, attrs in spec.get("xattrs", {}).items():
        for name, value in attrs.items():
            os.setxattr(context / rel, name, str(value).encode(), follow_symlinks=False)
    if spec.get("hosttools", False):
        baseimages.stage_host_tools(context / "hosttools")
    dockerfile = case.dockerfile
    if case.dockerfile.is_relative_to(case.context):
        dockerfile = context / case.dockerfile.relative_to(case.context)
    return Prepared(case, context, dockerfile)


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one builder made of a case.

    Attributes:
        ok: the build succeeded.
        output: the error (or the tool's output) when it failed.
        config: the image config's ``config`` object (docker's ``ContainerConfig`` shape).
        layers: the number of layers (``rootfs.diff_ids``).
        tree: the unpacked rootfs.
        leaked_mounts: mounts left under the builder's root and work directory afterwards
            (strata's side only; a build must leave none, failed or not).
    """

    ok: bool
    output: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    layers: int = 0
    tree: Mapping[str, trees.Node] = field(default_factory=dict)
    leaked_mounts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "output": self.output,
            "config": dict(self.config),
            "layers": self.layers,
            "tree": {path: _node_to_json(node) for path, node in self.tree.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(
            ok=bool(data["ok"]),
            output=str(data["output"]),
            config=data["config"],
            layers=int(data["layers"]),
            tree={path: _node_from_json(node) for path, node in data["tree"].items()},
        )


def _node_to_json(node: trees.Node) -> dict[str, Any]:
    return {
        "type": node.type.value,
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "size": node.size,
        "sha256": node.sha256,
        "target": node.target,
        "rdev": list(node.rdev) if node.rdev else None,
        "xattrs": [[k, v.hex()] for k, v in node.xattrs],
        "link_group": node.link_group,
    }


def _node_from_json(data: Mapping[str, Any]) -> trees.Node:
    rdev = data["rdev"]
    return trees.Node(
        type=trees.NodeType(data["type"]),
        mode=int(data["mode"]),
        uid=int(data["uid"]),
        gid=int(data["gid"]),
        size=data["size"],
        sha256=data["sha256"],
        target=data["target"],
        rdev=(int(rdev[0]), int(rdev[1])) if rdev else None,
        xattrs=tuple((str(k), bytes.fromhex(v)) for k, v in data["xattrs"]),
        link_group=data["link_group"],
    )


def _read_layout(layout: Path) -> tuple[dict[str, Any], int]:
    """The image config JSON and layer count of the only image in an OCI layout."""
    blobs = layout / "blobs"
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    manifest = json.loads((blobs / desc["digest"].replace(":", "/")).read_text())
    if "manifests" in manifest:  # an index: take its first manifest
        manifest = json.loads((blobs / manifest["manifests"][0]["digest"].replace(":", "/")).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].replace(":", "/")).read_text())
    return config, len(manifest["layers"])


def _unpacked_tree(layout: Path, dest: Path) -> dict[str, trees.Node]:
    """umoci-unpack the (only) image of ``layout`` under the name its index gives it."""
    index = json.loads((layout / "index.json").read_text())
    tag = index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name", "")
    rootfs = tools.umoci_unpack(layout, tag, dest)
    try:
        return trees.snapshot(rootfs)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _hash_case(case: Case) -> str:
    h = hashlib.sha256()
    for path in sorted([case.directory, *case.directory.rglob("*")]):
        st = path.lstat()
        h.update(path.relative_to(case.directory).as_posix().encode() + b"\0")
        h.update(f"{st.st_mode & 0o170111}".encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


DockerdFactory = Callable[[], tools.Dockerd]


def _secret_flags(case: Case) -> list[str]:
    out: list[str] = []
    for secret_id, path in case.secret_files().items():
        out += ["--secret", f"id={secret_id},src={path}"]
    return out


@functools.cache
def tool_version(tool: str) -> str:
    """The version line of a reference tool (part of the cache key)."""
    if tool == "buildah":
        return tools.run(["buildah", "--version"]).stdout.strip()
    return tools.run(["dockerd", "--version"]).stdout.strip()


def reference_build(
    case: Case,
    tool: str,
    cache_dir: Path,
    workdir: Path,
    *,
    dockerd: DockerdFactory | None = None,
) -> Outcome:
    """The result of building ``case`` with reference ``tool``, from the cache or built now.

    Args:
        case: the case.
        tool: ``buildah`` or ``docker``.
        cache_dir: where results are cached (the test image cache).
        workdir: scratch space (removed contents are not needed afterwards).
        dockerd: gives a running private dockerd (called only on a cache miss).

    Raises:
        tools.ToolError: exporting or unpacking failed (a failed *build* is an Outcome).
        ValueError: ``docker`` without ``dockerd``.
    """
    bases = case.bases()
    base_layouts = {ref: baseimages.BASES[ref](cache_dir) for ref in bases}
    key_src = [_RECIPE, tool, tool_version(tool), _hash_case(case)]
    if case.prepare.get("hosttools", False):
        for binary in ("setfattr", "setcap"):
            key_src.append(hashlib.sha256(Path(tools.require(binary)).read_bytes()).hexdigest())
    for base_ref, layout in base_layouts.items():
        key_src.append(f"{base_ref}={hashlib.sha256((layout / 'index.json').read_bytes()).hexdigest()}")
    key = hashlib.sha256("\0".join(key_src).encode()).hexdigest()[:16]
    cached = cache_dir / "buildcases" / f"{case.name}.{tool}-{key}.json"
    if cached.exists():
        return Outcome.from_json(json.loads(cached.read_text()))
    if tool == "buildah":
        outcome = _buildah(case, base_layouts, workdir)
    elif dockerd is None:
        raise ValueError("the docker reference needs a dockerd")
    else:
        outcome = _docker(case, base_layouts, workdir, dockerd(), cache_dir)
    cached.parent.mkdir(parents=True, exist_ok=True)
    for old in cached.parent.glob(f"{case.name}.{tool}-*.json"):
        old.unlink()
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(outcome.to_json(), sort_keys=True))
    os.replace(tmp, cached)
    return outcome


def _docker(
    case: Case, base_layouts: Mapping[str, Path], workdir: Path, daemon: tools.Dockerd, cache_dir: Path
) -> Outcome:
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(case, workdir)
    ref = f"localhost/case-{case.name}:latest"
    for base_ref, layout in base_layouts.items():
        if daemon.docker("image", "inspect", base_ref, check=False).returncode == 0:
            continue
        layout_key = hashlib.sha256((layout / "index.json").read_bytes()).hexdigest()[:12]
        archive = cache_dir / "buildcases" / f"base-{layout_key}.tar"
        if not archive.exists():
            tmp = archive.with_suffix(f".{os.getpid()}.tmp")
            tools.skopeo_copy(f"oci:{layout}:{base_ref}", f"docker-archive:{tmp}:{base_ref}")
            os.replace(tmp, archive)
        daemon.docker("load", "-i", archive)
    cmd: list[str | os.PathLike[str]] = ["build", "--network", "none", "-f", prepared.dockerfile, "-t", ref]
    cmd += _secret_flags(case)
    for name, value in case.build_args.items():
        cmd += ["--build-arg", f"{name}={value}"]
    if case.target is not None:
        cmd += ["--target", case.target]
    cmd.append(prepared.context)
    try:
        built = daemon.docker(*cmd, check=False, env={"DOCKER_BUILDKIT": "1"})
        if built.returncode != 0:
            return Outcome(ok=False, output=f"{built.stdout}\n{built.stderr}")
        config = json.loads(daemon.docker("image", "inspect", "-f", "{{json .Config}}", ref).stdout)
        archive = workdir / "image.tar"
        daemon.docker("save", "-o", archive, ref)
        layout = workdir / "layout"
        shutil.rmtree(layout, ignore_errors=True)
        tools.skopeo_copy(f"docker-archive:{archive}", f"oci:{layout}:{ref}")
        _, layers = _read_layout(layout)
        tree = _unpacked_tree(layout, workdir / "unpacked")
        return Outcome(ok=True, config=config or {}, layers=layers, tree=tree)
    finally:
        daemon.docker("rmi", "-f", ref, check=False)
        shutil.rmtree(workdir / "context", ignore_errors=True)
        shutil.rmtree(workdir / "layout", ignore_errors=True)
        (workdir / "image.tar").unlink(missing_ok=True)


def _buildah(case: Case, base_layouts: Mapping[str, Path], workdir: Path) -> Outcome:
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(case, workdir)
    store = tools.containers_store(workdir / "store" / "root", workdir / "store" / "run")
    ref = f"localhost/case-{case.name}:latest"
    try:
        for base_ref, layout in base_layouts.items():
            baseimages.import_to_store(layout, base_ref, store)
        try:
            tools.buildah_bud(
                prepared.context,
                ref,
                storage_root=store.root,
                runroot=store.runroot,
                driver=store.driver,
                dockerfile=prepared.dockerfile,
                build_args=case.build_args,
                target=case.target,
                image_format="docker",
                extra=["--identity-label=false", *_secret_flags(case)],
            )
        except tools.ToolError as exc:
            return Outcome(ok=False, output=f"{exc.stdout}\n{exc.stderr}")
        raw = tools.run(
            ["skopeo", "inspect", "--config", "--raw", store.transport(ref)], env=store.env()
        ).stdout
        config = json.loads(raw)
        layout = workdir / "layout"
        shutil.rmtree(layout, ignore_errors=True)
        tools.skopeo_copy(store.transport(ref), f"oci:{layout}:{ref}", store=store)
        _, layers = _read_layout(layout)
        tree = _unpacked_tree(layout, workdir / "unpacked")
        return Outcome(ok=True, config=config.get("config") or {}, layers=layers, tree=tree)
    finally:
        tools.run(["buildah", *store.flags(), "rm", "--all"], env=store.env(), check=False)
        tools.unmount_under(workdir)
        shutil.rmtree(workdir / "store", ignore_errors=True)
        shutil.rmtree(workdir / "context", ignore_errors=True)


def strata_build(case: Case, root: Path, workdir: Path, cache_dir: Path) -> Outcome:
    """Build the case with strata (a fresh store at ``root``), export and unpack the image.

    A :class:`strata.errors.StrataError` from the build is a failed Outcome (its message is
    the output); anything else propagates.
    """
    from strata.build import BuildRequest, BuildSettings
    from strata.build.context import Context
    from strata.engine import Engine
    from strata.errors import StrataError
    from strata.oci import Reference

    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(case, workdir)
    engine = Engine(root)
    for base_ref in case.bases():
        engine.load(baseimages.BASES[base_ref](cache_dir))
    ref = f"localhost/case-{case.name}:latest"
    try:
        if case.stdin_tar:
            stream = io.BytesIO(_tar_of(prepared.context, "gzip"))
            context = Context.from_tar(stream, workdir=workdir)
        else:
            context = Context.from_directory(prepared.context, dockerfile=prepared.dockerfile)
        text, name = context.read_dockerfile(prepared.dockerfile)
        request = BuildRequest(
            dockerfile=text,
            dockerfile_path=name,
            context=context,
            tags=(Reference.parse(ref),),
            target=case.target,
            settings=BuildSettings(build_args=dict(case.build_args), secrets=case.secret_files()),
        )
        try:
            engine.build(request)
        finally:
            context.close()
    except StrataError as exc:
        return Outcome(ok=False, output=str(exc), leaked_mounts=_mounts_under(root, workdir))
    leaked = _mounts_under(root, workdir)
    layout = workdir / "layout"
    engine.save([ref], layout, format="oci")
    config, layers = _read_layout(layout)
    tree = _unpacked_tree(layout, workdir / "unpacked")
    return Outcome(
        ok=True, config=config.get("config") or {}, layers=layers, tree=tree, leaked_mounts=leaked
    )


def _mounts_under(*paths: Path) -> tuple[str, ...]:
    """Mount points at or below ``paths`` (from /proc/self/mountinfo)."""
    prefixes = [str(p.resolve()) for p in paths]
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                found.append(point)
    return tuple(sorted(found))


# --------------------------------------------------------------------------- comparing


def _normal(value: Any) -> Any:
    """Empty and missing are the same (``null``, ``[]``, ``{}``, ``""``)."""
    if value in (None, [], {}, ""):
        return None
    return value


def compare(case: Case, tool: str, reference: Outcome, strata: Outcome) -> list[str]:
    """The differences between reference ``tool``'s result and strata's (empty: identical).

    Failures: both must fail, and strata's message must contain ``message``. Successes:
    identical trees (minus the case's ignored paths for this tool, and buildah's RUN mount
    points), identical :data:`CONFIG_FIELDS`, the same number of layers (unless not compared).
    """
    out: list[str] = []
    if case.expect_failure:
        if reference.ok:
            out.append(f"{tool}'s build succeeded but the case expects a failure")
        if strata.ok:
            out.append("strata's build succeeded but the case expects a failure")
        elif case.message and case.message not in strata.output:
            out.append(f"strata failed without {case.message!r}: {strata.output}")
        return out
    if not reference.ok:
        return [f"{tool}'s build failed: {reference.output[-3000:]}"]
    if not strata.ok:
        return [f"strata's build failed: {strata.output}"]
    ignored = case.ignored_paths(tool)

    def keep(path: str) -> bool:
        return not any(path == p or path.startswith(p + "/") for p in ignored)

    def placeholder(path: str, node: trees.Node) -> bool:
        if tool != "buildah" or path not in BUILDAH_RUN_PLACEHOLDERS or path in strata.tree:
            return False
        if node.type is trees.NodeType.FILE:
            return node.size == 0
        return node.type is trees.NodeType.DIR and not any(
            p.startswith(path + "/") for p in reference.tree
        )

    ref_tree = {p: n for p, n in reference.tree.items() if keep(p) and not placeholder(p, n)}
    got_tree = {p: n for p, n in strata.tree.items() if keep(p)}
    if not case.xattrs_compared(tool):
        ref_tree = {p: dataclasses.replace(n, xattrs=()) for p, n in ref_tree.items()}
        got_tree = {p: dataclasses.replace(n, xattrs=()) for p, n in got_tree.items()}
    out += trees.diff(ref_tree, got_tree, labels=(tool, "strata"))
    for name in CONFIG_FIELDS:
        if name in case.ignored_config(tool):
            continue
        want = _normal(reference.config.get(name))
        got = _normal(strata.config.get(name))
        if want != got:
            out.append(f"config {name}: {want!r} in {tool} != {got!r} in strata")
    if case.layers_compared(tool) and reference.layers != strata.layers:
        out.append(f"layers: {reference.layers} in {tool} != {strata.layers} in strata")
    return out


def check_expected(case: Case, strata: Outcome) -> list[str]:
    """The ways strata's result misses the case's ``[expect]`` (or its expected failure)."""
    if case.expect_failure:
        if strata.ok:
            return ["strata's build succeeded but the case expects a failure"]
        if case.message and case.message not in strata.output:
            return [f"strata failed without {case.message!r}: {strata.output}"]
        return []
    if not strata.ok:
        return [f"strata's build failed: {strata.output}"]
    out: list[str] = []
    expect = case.expect
    if "layers" in expect and int(expect["layers"]) != strata.layers:
        out.append(f"layers: expected {expect['layers']}, strata made {strata.layers}")
    for path in expect.get("absent", ()):
        if path.strip("/") in strata.tree:
            out.append(f"{path}: expected absent, strata has {strata.tree[path.strip('/')].describe()}")
    for path, want in expect.get("files", {}).items():
        node = strata.tree.get(path.strip("/"))
        if node is None:
            out.append(f"{path}: expected, missing in strata's image")
            continue
        out += _check_node(path, node, want)
    for name, want in expect.get("config", {}).items():
        got = strata.config.get(name)
        if _normal(got) != _normal(want):
            out.append(f"config {name}: expected {want!r}, strata has {got!r}")
    return out


def _check_node(path: str, node: trees.Node, want: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if "type" in want and node.type.value != want["type"]:
        out.append(f"{path}: type {node.type.value}, expected {want['type']}")
    if "mode" in want and node.mode != int(want["mode"]):
        out.append(f"{path}: mode {node.mode:04o}, expected {int(want['mode']):04o}")
    if "owner" in want and f"{node.uid}:{node.gid}" != want["owner"]:
        out.append(f"{path}: owner {node.uid}:{node.gid}, expected {want['owner']}")
    if "target" in want and node.target != want["target"]:
        out.append(f"{path}: link {node.target!r}, expected {want['target']!r}")
    if "content" in want:
        expected = hashlib.sha256(str(want["content"]).encode()).hexdigest()
        if node.sha256 != expected:
            out.append(f"{path}: content differs from {want['content']!r}")
    return out


def describe(case: Case) -> str:
    """A one-line label for reports."""
    return f"{case.name}: {case.description}"
