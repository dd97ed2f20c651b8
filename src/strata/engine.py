"""``Engine(root)``: one method per CLI verb, returning data (go-containerregistry ``crane``).

The engine wires the stores under one root directory::

    <root>/content/     blobs, ingests, leases (strata.content)
    <root>/images.db    image records and layer facts (strata.images)
    <root>/tmp/         scratch space on the same filesystem
    <root>/containers/  one directory per container; records in <root>/containers.db
                        (strata.runtime)

The CLI parses arguments, calls one method, and renders what it returns; everything here is
usable from Python.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from strata import content as content_pkg
from strata import images as images_pkg
from strata._deferred import deferred_module
from strata.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    InvalidContent,
    NotFound,
    StrataError,
)
from strata.images import ImageFacts, ImageRecord, ImageStore, LocalImage
from strata.oci import (
    ContainerConfig,
    Digest,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    Reference,
    chain_id,
    chain_ids,
    mediatypes,
    parse_any,
)
from strata.oci._json import JSONObject
from strata.progress import Progress, no_progress
from strata.runtime import (
    ContainerRecord,
    Containers,
    ContainerStore,
    ExecOptions,
    ImageForRun,
    LogEntry,
    RunOptions,
    parse_signal,
)
from strata.runtime import network as runtime_network
from strata.runtime import volumes as runtime_volumes
from strata.snapshots import Kind, Snapshotter, open_snapshotter

if TYPE_CHECKING:
    from strata.images import DiskUsage, ImageSummary
    from strata.registry import client as regclient
    from strata.runtime import changes as runtime_changes_t
    from strata.runtime import copy as runtime_copy_t
    from strata.runtime import top as runtime_top_t
else:
    # Imported on first use: ``run``, ``ps``, ``rm`` never need the registry client.
    regclient = deferred_module("strata.registry.client")

if TYPE_CHECKING:  # the builder is imported when a build runs (CLI start-up time)
    from strata import build as build_pkg

__all__ = [
    "Engine",
    "FsckReport",
    "HistoryItem",
    "ImageInspect",
    "PruneReport",
    "RemoveEvent",
    "default_root",
]


def default_root() -> Path:
    """``$STRATA_ROOT``, else ``/var/lib/strata`` as root and ``~/.local/share/strata`` otherwise."""
    env = os.environ.get("STRATA_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/strata")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "strata"


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One row of ``history`` (docker's ``HistoryResponseItem``): newest first."""

    id: str  # the image ID for the top row, "<missing>" below (docker, for loaded images)
    created: dt.datetime | None
    created_by: str
    size: int
    comment: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveEvent:
    """``Untagged: name`` or ``Deleted: digest``, as docker prints while removing."""

    action: str
    what: str


@dataclass(frozen=True, slots=True)
class PruneReport:
    events: tuple[RemoveEvent, ...]
    reclaimed: int


@dataclass(frozen=True, slots=True)
class FsckReport:
    """What ``system fsck`` checked and the problems it found (empty: consistent)."""

    blobs: int
    images: int
    problems: tuple[str, ...]
    ingests: int
    unreferenced: int

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class ImageInspect:
    """``image inspect`` for one image, in docker's JSON shape (``to_json``)."""

    summary: ImageSummary
    config: ImageConfig
    manifest: Manifest
    manifest_digest: Digest
    last_tag_time: dt.datetime | None

    def to_json(self) -> JSONObject:
        cfg = self.config
        created = cfg.created or ""
        # moby daemon/images/image_inspect: the config's comment, else the last history entry's.
        comment = cfg.comment or (cfg.history[-1].comment if cfg.history else None) or ""
        out: JSONObject = {
            "Id": str(self.summary.id),
            "RepoTags": list(self.summary.repo_tags),
            "RepoDigests": list(self.summary.repo_digests),
            "Parent": "",
            "Comment": comment,
            "Created": created,
            "Container": cfg.container or "",
            "ContainerConfig": (cfg.container_config or ContainerConfig()).to_docker_json(),
            "DockerVersion": cfg.docker_version or "",
            "Author": cfg.author or "",
            "Config": cfg.config.to_docker_json() if cfg.config is not None else None,
            "Architecture": cfg.architecture,
        }
        if cfg.variant:
            out["Variant"] = cfg.variant
        out["Os"] = cfg.os
        if cfg.os_version:
            out["OsVersion"] = cfg.os_version
        out.update({
            "Size": self.summary.size,
            "VirtualSize": self.summary.size,
            "GraphDriver": {"Data": None, "Name": "strata"},
            "RootFS": {"Type": cfg.rootfs.type,
                       "Layers": [str(d) for d in cfg.rootfs.diff_ids]},
            "Metadata": {"LastTagTime": _go_time(self.last_tag_time)},
            "Descriptor": {"mediaType": self.manifest.media_type,
                           "digest": str(self.manifest_digest)},
        })
        return out


def _go_time(when: dt.datetime | None) -> str:
    if when is None:
        return "0001-01-01T00:00:00Z"
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class _Resolved:
    image: LocalImage
    records: list[ImageRecord] = field(default_factory=list)
    by_id: bool = False


class Engine:
    """All of strata's verbs over one store root."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.tmp = self.root / "tmp"
            self.tmp.mkdir(exist_ok=True)
        except OSError as exc:
            raise FailedPrecondition(f"cannot use store root {self.root}: {exc.strerror}") from exc
        self.content = content_pkg.LocalStore(self.root / "content")
        self.images = ImageStore(self.root / "images.db")

    # -- lookup ----------------------------------------------------------------------
    def _all(self) -> list[ImageFacts]:
        out: list[ImageFacts] = []
        for record in self.images.walk():
            try:
                image = LocalImage(self.content, record.target)
                out.append(ImageFacts(record, image.id, image.config()))
            except StrataError:
                continue
        return out

    def resolve(self, name: str) -> _Resolved:
        """Find an image by name, ``name@digest``, image ID, or unique ID prefix (docker).

        Raises:
            NotFound: ``No such image: NAME``.
        """
        records = list(self.images.walk())
        # 1. A reference (tagged or by digest).
        ref: Reference | None = None
        with contextlib.suppress(InvalidArgument):
            ref = Reference.parse(name)
        if ref is not None:
            if ref.digest is not None:
                for record in records:
                    rr = record.reference
                    if record.target.digest == ref.digest and (rr is None or rr.name == ref.name):
                        image = LocalImage(self.content, record.target)
                        return _Resolved(image, [r for r in records
                                                 if r.target.digest == record.target.digest])
            else:
                found = self.images.find(str(ref))
                if found is not None:
                    image = LocalImage(self.content, found.target)
                    return _Resolved(image, [found])
        # 2. An image ID or a unique prefix of one.
        hexpart = name.removeprefix("sha256:")
        if hexpart and all(c in "0123456789abcdef" for c in hexpart):
            matches: dict[Digest, list[ImageRecord]] = {}
            for record in records:
                try:
                    image = LocalImage(self.content, record.target)
                except StrataError:
                    continue
                if image.id.hex.startswith(hexpart):
                    matches.setdefault(image.id, []).append(record)
            if len(matches) == 1:
                (group,) = matches.values()
                return _Resolved(LocalImage(self.content, group[0].target), group, by_id=True)
            if len(matches) > 1:
                raise InvalidArgument(f"ambiguous image ID prefix {name!r}: matches"
                                      f" {len(matches)} images")
        raise NotFound(f"No such image: {name}")

    # -- listing ---------------------------------------------------------------------
    def disk_usage(self) -> DiskUsage:
        """Images grouped by ID with docker's sizes, and the size of all layers."""
        return images_pkg.summarize(self._all(), self.images.layers())

    def images_list(self, reference: str | None = None) -> list[ImageSummary]:
        """``images [REPOSITORY[:TAG]]``: summaries, newest first."""
        summaries = list(self.disk_usage().images)
        if reference is None:
            return summaries
        ref = Reference.parse(reference, default_tag=False)
        out = []
        for s in summaries:
            for record in s.records:
                rr = record.reference
                if rr is not None and rr.name == ref.name and (ref.tag is None or rr.tag == ref.tag):
                    out.append(s)
                    break
        return out

    def inspect(self, name: str) -> ImageInspect:
        resolved = self.resolve(name)
        image_id = resolved.image.id
        summary = next(s for s in self.disk_usage().images if s.id == image_id)
        last = max((r.updated_at for r in summary.records), default=0.0)
        return ImageInspect(
            summary=summary,
            config=resolved.image.config(),
            manifest=resolved.image.manifest(),
            manifest_digest=resolved.image.manifest_digest,
            last_tag_time=dt.datetime.fromtimestamp(last, dt.UTC) if last else None,
        )

    def history(self, name: str) -> list[HistoryItem]:
        """docker's ``ImageHistory``: config history newest first, layer sizes by chainID.

        The top row carries the image ID; rows below are ``<missing>`` since strata keeps no
        parent-image chain for loaded images (docker does the same after ``docker load``).
        """
        resolved = self.resolve(name)
        config = resolved.image.config()
        layers = self.images.layers()
        rows: list[HistoryItem] = []
        diff_ids = config.rootfs.diff_ids
        counter = 0
        for entry in config.history:
            size = 0
            if not entry.empty_layer:
                if counter >= len(diff_ids):
                    raise InvalidContent(f"image {resolved.image.id.short()}: too many non-empty"
                                         " layers in History section")
                facts = layers.get(diff_ids[counter])
                size = facts.disk_size if facts else 0
                counter += 1
            rows.insert(0, HistoryItem("<missing>", entry.created_at, entry.created_by or "",
                                       size, entry.comment or ""))
        if rows:
            summary_tags = sorted({r.reference.familiar() for r in resolved.records
                                   if r.reference is not None and r.reference.tag})
            top = rows[0]
            rows[0] = HistoryItem(str(resolved.image.id), top.created, top.created_by, top.size,
                                  top.comment, tuple(summary_tags))
        return rows

    # -- naming ----------------------------------------------------------------------
    def tag(self, source: str, target: str) -> Reference:
        resolved = self.resolve(source)
        ref = Reference.parse(target)
        if ref.digest is not None:
            raise InvalidArgument(f"refusing to create a tag with a digest reference: {target}")
        self.images.put(ImageRecord(str(ref), resolved.image.target))
        return ref

    def remove(self, names: Sequence[str], *, force: bool = False) -> list[RemoveEvent]:
        """``rmi``: untag, and delete the image once no name is left (docker's rules).

        Raises:
            NotFound: an image does not exist.
            FailedPrecondition: an image ID with several names, without ``force``.
        """
        events: list[RemoveEvent] = []
        for name in names:
            resolved = self.resolve(name)
            image = resolved.image
            all_records = self._records_by_id().get(image.id, [])
            if resolved.by_id:
                named = [r for r in all_records if not r.dangling]
                if len({r.name for r in named}) > 1 and not force:
                    raise FailedPrecondition(
                        f"conflict: unable to delete {image.id.short()} (must be forced) - image"
                        " is referenced in multiple repositories"
                    )
                targets = all_records
            else:
                targets = resolved.records
            users = self._image_users(image.id)
            if users and self._untag_only(name, image, resolved.by_id, targets, all_records,
                                          users, force=force, events=events):
                continue
            events.extend(self._drop(image.id, targets, all_records, ("Untagged", "Deleted")))
        if events:
            self.collect_garbage()
        return events

    def _untag_only(self, name: str, image: LocalImage, by_id: bool,
                    targets: Sequence[ImageRecord], group: Sequence[ImageRecord],
                    users: Sequence[ContainerRecord], *, force: bool,
                    events: list[RemoveEvent]) -> bool:
        """docker's conflicts for an image containers use: by ID, refused while one runs
        (even forced) and, unforced, while a stopped one exists; by its last name, refused
        unforced, and forced only untagged (the image stays, dangling, for its containers).
        True when the untagging was done here."""
        running = [u for u in users if self._live_pid(u) is not None]
        if by_id:
            if running:
                raise FailedPrecondition(
                    f"conflict: unable to delete {image.id.short()} (cannot be forced) - image"
                    f" is being used by running container {running[0].id[:12]}")
            if not force:
                raise FailedPrecondition(
                    f"conflict: unable to delete {image.id.short()} (must be forced) - image"
                    f" is being used by stopped container {users[0].id[:12]}")
            return False
        dropped = {r.name for r in targets}
        if any(r.name not in dropped and not r.dangling for r in group):
            return False  # other names remain: a plain untag
        if not force:
            raise FailedPrecondition(
                f'conflict: unable to remove repository reference "{name}" (must force) -'
                f" container {users[0].id[:12]} is using its referenced image"
                f" {image.id.short()}")
        for record in targets:
            self.images.delete(record.name)
            if not record.dangling and record.reference is not None:
                events.append(RemoveEvent("Untagged", record.reference.familiar()))
        self.images.put(ImageRecord(ImageRecord.dangling_name(image.target.digest),
                                    image.target))
        return True

    def _records_by_id(self) -> dict[Digest, list[ImageRecord]]:
        """Every record, grouped by the image ID its manifest names."""
        out: dict[Digest, list[ImageRecord]] = {}
        for record in self.images.walk():
            image_id = _image_id(self.content, record)
            if image_id is not None:
                out.setdefault(image_id, []).append(record)
        return out

    def _drop(self, image_id: Digest, records: Sequence[ImageRecord],
              group: Sequence[ImageRecord], words: tuple[str, str]) -> list[RemoveEvent]:
        """Delete ``records`` of one image (``group`` is all of its records) and say so as
        docker does: untagged per name, deleted once no record is left."""
        events: list[RemoveEvent] = []
        for record in records:
            self.images.delete(record.name)
            if not record.dangling and record.reference is not None:
                events.append(RemoveEvent(words[0], record.reference.familiar()))
        if {r.name for r in records} >= {r.name for r in group}:
            events.append(RemoveEvent(words[1], str(image_id)))
        return events

    def prune(self, *, all_images: bool = False) -> PruneReport:
        """``image prune``: remove dangling images (``all_images``: every image)."""
        events: list[RemoveEvent] = []
        before = sum(b.size for b in self.content.walk())
        for image_id, group in self._records_by_id().items():
            chosen = group if all_images else [r for r in group if r.dangling]
            if chosen and self._image_users(image_id):
                continue  # docker keeps images containers use
            if chosen:
                events.extend(self._drop(image_id, chosen, group, ("untagged", "deleted")))
        self.collect_garbage()
        after = sum(b.size for b in self.content.walk())
        return PruneReport(tuple(events), max(0, before - after))

    def collect_garbage(self, *, dry_run: bool = False) -> content_pkg.GCResult:
        """Remove blobs and layer facts no image record reaches."""
        roots = [r.target.digest for r in self.images.walk()]

        def refs(digest: Digest) -> list[Digest]:
            try:
                raw = self.content.read(digest)
            except StrataError:
                return []
            if not raw.startswith(b"{"):
                return []  # a layer: references nothing
            try:
                parsed = parse_any(raw)
            except StrataError:
                return []  # a config or another JSON blob
            if isinstance(parsed, Index):
                return [d.digest for d in parsed.manifests]
            return [parsed.config.digest, *(layer.digest for layer in parsed.layers)]

        if (self.root / "build" / "cache.db").exists():
            roots.extend(self.build_cache.roots()[0])  # the build cache's layers (builder prune)
        result = content_pkg.collect(self.content, roots, refs, dry_run=dry_run)
        if not dry_run:
            self.images.forget_layers(images_pkg.used_diff_ids(self._all()))
            if (self.root / "snapshots").exists():
                self._collect_snapshots()
        return result

    def _collect_snapshots(self) -> int:
        """Remove committed snapshots nothing stands on: docker deletes an image's layers
        with the image. Kept: every image's layer chain, the build cache's chains, the init
        layer of a kept image, and anything a container or another snapshot stacks on (the
        snapshotter refuses to remove a parent). Skipped entirely while another process
        holds a content lease: a pull or load commits snapshots before it records the image.

        Returns:
            How many snapshots were removed.
        """
        if self.content.leases.protected():
            return 0
        keep: set[str] = set()
        for facts in self._all():
            keep.update(str(c) for c in chain_ids(facts.config.rootfs.diff_ids))
        if (self.root / "build" / "cache.db").exists():
            keep.update(self.build_cache.roots()[1])
        candidates = [info for info in self.snapshotter.walk()
                      if info.kind is Kind.COMMITTED and info.name not in keep
                      and not (info.parent in keep and info.name.startswith("init-v"))]
        removed = 0
        while candidates:  # children before parents: repeat while something goes
            progress = False
            for info in list(candidates):
                try:
                    self.snapshotter.remove(info.name)
                except NotFound:
                    candidates.remove(info)
                except FailedPrecondition:
                    continue  # a container or another snapshot stands on it
                else:
                    candidates.remove(info)
                    removed += 1
                    progress = True
            if not progress:
                break
        return removed

    # -- moving images in and out -------------------------------------------------------
    def load(self, source: Path | BinaryIO, *, platform: Platform | None = None,
             progress: Progress = no_progress) -> list[images_pkg.LoadedImage]:
        """``load -i``: an OCI layout (dir or tar) or a docker-archive; format detected."""
        return images_pkg.load(self.content, self.images, source, platform=platform,
                               progress=progress)

    def save(self, names: Sequence[str], output: Path | None, *,
             format: str = "docker-archive") -> None:  # images.SaveFormat.DOCKER_ARCHIVE
        """``save``: ``docker-archive`` (default, as docker), ``oci-archive``, or ``oci`` (a dir).

        With ``output`` None the archive goes to stdout.

        Raises:
            InvalidArgument: unknown format, or ``oci`` without an output directory.
        """
        if format not in images_pkg.SaveFormat.ALL:
            raise InvalidArgument(f"unknown save format {format!r} (use one of"
                                  f" {', '.join(images_pkg.SaveFormat.ALL)})")
        items: list[images_pkg.SaveItem] = []
        for name in names:
            resolved = self.resolve(name)
            chosen: list[Reference] = []
            with contextlib.suppress(InvalidArgument):
                asked = Reference.parse(name)
                if not asked.digest and any(r.name == str(asked) for r in resolved.records):
                    chosen = [asked]
            if not chosen:
                chosen = [r.reference for r in resolved.records
                          if r.reference is not None and r.reference.tag]
            items.append(images_pkg.SaveItem(resolved.image, tuple(chosen)))
        if format == images_pkg.SaveFormat.OCI_DIR:
            if output is None:
                raise InvalidArgument("--format oci writes a directory: give it with -o")
            images_pkg.write_oci_dir(self.content, items, output)
            return
        with self._output(output) as out:
            if format == images_pkg.SaveFormat.OCI_ARCHIVE:
                images_pkg.write_oci_archive(self.content, items, out)
            else:
                images_pkg.write_docker_archive(self.content, self.images, items, out,
                                                tmpdir=self.tmp)

    @contextlib.contextmanager
    def _output(self, output: Path | None) -> Iterator[BinaryIO]:
        if output is None:
            yield sys.stdout.buffer
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def import_rootfs(self, source: BinaryIO, *, reference: str | None = None,
                      message: str = "", changes: Sequence[str] = (),
                      platform: Platform | None = None) -> images_pkg.ImportResult:
        """``import``: a rootfs tarball becomes a one-layer image."""
        ref = Reference.parse(reference) if reference else None
        config = _apply_changes(ContainerConfig(), changes) if changes else None
        return images_pkg.import_rootfs(
            self.content, self.images, source,
            images_pkg.ImportOptions(reference=ref, message=message, config=config,
                                     platform=platform),
        )

    def unpack(self, name: str, dest: Path) -> list[Digest]:
        """``unpack IMAGE DIR``: the image's rootfs written into DIR (as ``umoci unpack``).

        Raises:
            AlreadyExists: DIR exists and is not empty.
        """
        if dest.exists() and any(dest.iterdir()):
            raise AlreadyExists(f"unpack target {dest} exists and is not empty")
        from strata import layers as layers_pkg  # the layer code, for this command only

        resolved = self.resolve(name)
        created = not dest.exists()
        try:
            stats = images_pkg.unpack(resolved.image, dest, options=layers_pkg.ApplyOptions())
        except BaseException:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            raise
        for layer_stats in stats:
            if self.images.layer(layer_stats.diff_id) is None:
                self.images.put_layer(images_pkg.LayerFacts(
                    layer_stats.diff_id, layer_stats.size, layer_stats.disk_size,
                    layer_stats.entries))
        return [s.diff_id for s in stats]

    @functools.cached_property
    def snapshotter(self) -> Snapshotter:
        """The store's snapshotter under ``ROOT/snapshots``: ``$STRATA_SNAPSHOTTER``
        (``overlay``, ``native``) or, by default, overlay where the kernel allows it."""
        return open_snapshotter(self.root / "snapshots",
                                os.environ.get("STRATA_SNAPSHOTTER", "auto"))

    def unpack_snapshots(self, name: str, *, progress: Progress = no_progress) -> Digest | None:
        """Unpack an image's layers into the snapshotter; returns the top layer's chainID.

        Layers whose chainID is already committed are skipped; the others are extracted in
        worker processes (in parallel on overlay) and committed as their chainIDs.
        """
        image = self.resolve(name).image
        layers = [(layer.diff_id, self.content.blob_path(layer.descriptor.digest),
                   mediatypes.layer_compression(layer.descriptor.media_type))
                  for layer in image.layers()]
        return images_pkg.apply_layers(self.snapshotter, layers, progress=progress)

    # -- building (strata.build) ------------------------------------------------------------
    @functools.cached_property
    def build_cache(self) -> build_pkg.BuildCache:
        """The build cache under ``ROOT/build/cache.db``."""
        from strata import build as build_pkg

        return build_pkg.BuildCache(self.root / "build" / "cache.db")

    def build(self, options: build_pkg.BuildOptions | build_pkg.BuildRequest, *,
              progress: build_pkg.BuildProgress | None = None) -> build_pkg.BuildResult:
        """``build [OPTIONS] CONTEXT|-``: the context (a directory, or a tar or a lone
        Dockerfile on stdin) and the Dockerfile are read, the build runs into the image store
        and the ``--output`` destinations; ``--iidfile`` gets the image ID.  A prepared
        :class:`~strata.build.BuildRequest` (context and Dockerfile already read) is run as
        it is.

        Raises:
            DockerfileError: the Dockerfile does not parse or the target does not exist.
            BuildStepFailed: a step failed.
            NotFound: the context, the Dockerfile, a base image or a source file is missing.
            InvalidArgument: a bad option.
        """
        from strata import build as build_pkg
        from strata.build.context import Context

        if isinstance(options, build_pkg.BuildRequest):
            return self.build_request(options, progress=progress)
        tags = tuple(Reference.parse(t) for t in options.tags)
        outputs = tuple(build_pkg.OutputSpec.parse(o) for o in options.outputs)
        secrets_map = dict(build_pkg.parse_secret(s) for s in options.secrets)
        platform = Platform.parse(options.platform) if options.platform else None
        if options.network not in ("default", "host", "none"):
            raise InvalidArgument(f"--network {options.network!r}: use default, host or none")
        text: str | None = None
        memo: dict[str, str] = {}
        if options.context_stream is not None:
            context, text = Context.from_stdin(options.context_stream, workdir=self.tmp)
        elif options.context is not None:
            # content digests of context files from earlier builds: unchanged files are
            # not read again to compute the cache keys
            memo = self.build_cache.file_digests()
            known = set(memo)
            context = Context.from_directory(options.context, dockerfile=options.dockerfile,
                                             digest_memo=memo)
        else:
            raise InvalidArgument("build needs a context directory or - for stdin")
        with context:
            if text is None:
                text, name = context.read_dockerfile(options.dockerfile)
            else:
                name = "Dockerfile"
            settings = build_pkg.BuildSettings(
                build_args=dict(options.build_args), no_cache=options.no_cache,
                pull=options.pull, platform=platform,
                source_date_epoch=options.source_date_epoch, secrets=secrets_map,
                network=options.network)
            request = build_pkg.BuildRequest(
                dockerfile=text, dockerfile_path=name, context=context, tags=tags,
                target=options.target, outputs=outputs, settings=settings)
            try:
                result = self.build_request(request, progress=progress)
            finally:
                if options.context is not None and memo.keys() - known:
                    self.build_cache.remember_file_digests(
                        {k: v for k, v in memo.items() if k not in known})
        if options.iidfile is not None:
            options.iidfile.write_text(str(result.image.image_id))
        return result

    def build_request(self, request: build_pkg.BuildRequest, *,
                      progress: build_pkg.BuildProgress | None = None) -> build_pkg.BuildResult:
        """Run a prepared :class:`~strata.build.BuildRequest` (``type=registry`` outputs
        push the tags afterwards)."""
        from strata import build as build_pkg

        source = _EngineImages(self)
        result = build_pkg.build(
            request, content=self.content, images=self.images, snapshotter=self.snapshotter,
            cache=self.build_cache, workdir=self.root / "build" / "work", source=source,
            progress=progress or (lambda _e: None))
        for spec in request.outputs:
            if spec.type == "registry":
                names = [spec.name] if spec.name else [str(t) for t in request.tags]
                if not names:
                    raise InvalidArgument("--output type=registry needs -t NAME or name=NAME")
                for name in names:
                    if spec.name:
                        self.images.put(images_pkg.ImageRecord(
                            str(Reference.parse(name)), result.image.manifest))
                    self.push(name)
        return result

    def builder_prune(self) -> PruneReport:
        """``builder prune``: forget the build cache, then collect what nothing else uses
        (layer blobs; snapshots no image stands on)."""
        before = sum(b.size for b in self.content.walk())
        gone = self.build_cache.prune()
        kept: set[str] = set()
        for facts in self._all():
            kept.update(str(c) for c in chain_ids(facts.config.rootfs.diff_ids))
        chains = [str(r.chain) for r in gone if r.chain is not None and r.layer is not None]
        still = {str(r.chain) for r in self.build_cache.walk() if r.chain is not None}
        for _ in range(len(chains)):  # children first: repeat while something goes
            removed = False
            for chain in list(chains):
                if chain in kept or chain in still:
                    chains.remove(chain)
                    continue
                try:
                    self.snapshotter.remove(chain)
                except NotFound:
                    chains.remove(chain)
                except FailedPrecondition:
                    continue
                else:
                    chains.remove(chain)
                    removed = True
            if not removed:
                break
        self.collect_garbage()
        after = sum(b.size for b in self.content.walk())
        events = tuple(RemoveEvent("Deleted build cache", r.key) for r in gone)
        return PruneReport(events, max(0, before - after))

    # -- containers (strata.runtime) --------------------------------------------------------
    @functools.cached_property
    def containers(self) -> Containers:
        """The store's containers under ``ROOT/containers`` (records in ``containers.db``)."""
        return Containers(self.root / "containers", ContainerStore(self.root / "containers.db"),
                          self.snapshotter)

    def container_create(self, image: str, options: RunOptions) -> ContainerRecord:
        """``create``: a container of ``image`` (unpacked into snapshots first), not started.

        Raises:
            NotFound: no such image, or the ``-u`` user is not in the image.
            InvalidArgument: bad options (name, working directory, environment, no command).
            AlreadyExists: the name is in use.
        """
        resolved = self.resolve(image)
        config = resolved.image.config()
        chain = self._committed_top(config)
        if chain is None and config.rootfs.diff_ids:
            chain = self.unpack_snapshots(image)
        record = self.containers.create(
            ImageForRun(name=image, id=str(resolved.image.id),
                        top_chain=str(chain) if chain is not None else None,
                        config=config.config), options)
        self._save_create_config(record, config.config, options)
        return record

    def _save_create_config(self, record: ContainerRecord, image_config: ContainerConfig | None,
                            options: RunOptions) -> None:
        """Keep the container's docker ``Config`` / ``HostConfig`` for ``inspect`` and
        ``commit`` (R4); a failure removes the container, as any failed create."""
        from strata.runtime.inspect import save_create_config

        try:
            save_create_config(self.containers.root / record.id, image_config, options,
                               hostname=options.hostname or record.id[:12],
                               image_name=record.image, runtime_name=record.runtime)
        except OSError as exc:
            with contextlib.suppress(StrataError):
                self.containers.remove(record.id, force=True)
            raise FailedPrecondition(f"cannot write the container's config: {exc}") from exc

    def _committed_top(self, config: ImageConfig) -> Digest | None:
        """The image's top chainID if its snapshot is committed already (the usual case for
        ``run``: no need to load the layer extraction code), else None."""
        chains = chain_ids(config.rootfs.diff_ids)
        if not chains:
            return None
        try:
            info = self.snapshotter.stat(str(chains[-1]))
        except NotFound:
            return None
        return chains[-1] if info.kind is Kind.COMMITTED else None

    def container_start(self, ref: str) -> int:
        """Run a container in the foreground with this process's stdio; its exit code.

        Raises:
            CommandNotFound: the command does not exist (127).
            CannotExecute: the command cannot be executed (126).
            StrataError: the container could not be started.
        """
        return self.containers.start(ref)

    def run(self, image: str, options: RunOptions) -> int:
        """``run``: create a container of ``image`` and run it in the foreground (``--rm``:
        removed afterwards); the container's exit code."""
        record = self.container_create(image, options)
        return self.container_start(record.id)

    def containers_list(self, *, all_containers: bool = False) -> list[ContainerRecord]:
        """``ps [-a]``: running containers (all with ``all_containers``), newest first."""
        records = self.containers.reconcile()
        return records if all_containers else [r for r in records if r.state == "running"]

    def container_remove(self, refs: Sequence[str], *, force: bool = False,
                         volumes: bool = False) -> list[ContainerRecord]:
        """``rm [-f] [-v]``: remove containers (their snapshots, files and records);
        ``volumes``: their anonymous volumes too (named ones stay, as docker's)."""
        if not volumes:
            return [self.containers.remove(ref, force=force) for ref in refs]
        removed = []
        for ref in refs:
            record = self.containers.store.find(ref)
            names = runtime_volumes.container_volumes(self.containers.root / record.id)
            removed.append(self.containers.remove(record.id, force=force))
            for name in names:
                with contextlib.suppress(NotFound, FailedPrecondition):
                    if self.containers.volume_store.get(name).anonymous:
                        self.containers.volume_store.remove(name)
        return removed

    def container_run_detached(self, image: str, options: RunOptions) -> ContainerRecord:
        """``run -d``: create a container of ``image`` and start it under its supervisor;
        the record once its process runs.

        Raises:
            CommandNotFound, CannotExecute, StrataError: as :meth:`run`.
        """
        record = self.container_create(image, options)
        return self.containers.start_detached(record.id)

    def container_start_detached(self, ref: str) -> ContainerRecord:
        """``start``: start a container under its supervisor (a running one is left alone).

        Raises:
            NotFound: no such container.
            CommandNotFound, CannotExecute, StrataError: it could not start.
        """
        return self.containers.start_detached(ref)

    def container_stop(self, ref: str, *, timeout: float | None = None) -> ContainerRecord:
        """``stop [-t N]``: StopSignal (SIGTERM), ``timeout`` seconds (10), then SIGKILL."""
        return self.containers.stop(ref, timeout=timeout)

    def container_kill(self, ref: str, *, signal: str = "KILL") -> ContainerRecord:
        """``kill [-s SIG]``: send a signal (docker's names or numbers) to the container.

        Raises:
            NotFound: no such container.
            InvalidArgument: an unknown signal.
            FailedPrecondition: it is not running.
        """
        return self.containers.kill(ref, signum=parse_signal(signal))

    def container_wait(self, ref: str) -> int:
        """``wait``: block until the container stops; its exit code."""
        return self.containers.wait(ref)

    def container_restart(self, ref: str, *, timeout: float | None = None) -> ContainerRecord:
        """``restart [-t N]``: stop then start detached."""
        return self.containers.restart(ref, timeout=timeout)

    def container_logs(self, ref: str, *, follow: bool = False, tail: int | None = None
                       ) -> Iterator[LogEntry]:
        """``logs [-f] [--tail N]``: the container's log records, oldest first."""
        return self.containers.logs(ref, follow=follow, tail=tail)

    def container_exec(self, ref: str, options: ExecOptions) -> int:
        """``exec``: run a command in a running container; its exit code."""
        return self.containers.exec(ref, options)

    # -- container filesystem: inspect, diff, commit, cp, top, prune (strata.runtime) -------
    def _live_pid(self, record: ContainerRecord) -> int | None:
        from strata.runtime.top import live_pid

        return live_pid(record.state, record.pid, getattr(record, "pid_start", 0))

    def container_inspect(self, ref: str, *, size: bool = False) -> JSONObject:
        """``inspect CONTAINER`` (``-s``: with SizeRw and SizeRootFs), in docker's shape.

        Raises:
            NotFound: no such container.
        """
        from strata.runtime import changes as rt_changes
        from strata.runtime import inspect as rt_inspect

        record = self.containers.store.find(ref)
        cdir = self.containers.root / record.id
        layer = rt_changes.writable_layer(self.snapshotter, record.id)
        if layer.overlay:
            graph = {"LowerDir": ":".join(str(p) for p in layer.lowers),
                     "MergedDir": str(cdir / "bundle" / "rootfs"),
                     "UpperDir": str(layer.upper), "WorkDir": str(layer.upper.parent / "work")}
        else:
            graph = {"Dir": str(layer.upper), "MergedDir": str(cdir / "bundle" / "rootfs")}
        sizes = None
        if size:
            rw = rt_changes.size_rw(layer)
            image_size = None
            with contextlib.suppress(StrataError, StopIteration):
                image_size = next(s.size for s in self.disk_usage().images
                                  if str(s.id) == record.image_id)
            if image_size is None:
                image_size = rt_changes.image_layers_size(layer)
            sizes = (rw, image_size + rw)
        return rt_inspect.container_json(record, cdir, driver=self.snapshotter.driver,
                                         graph_data=graph, sizes=sizes)

    def inspect_any(self, name: str, *, kind: str | None = None, size: bool = False
                    ) -> JSONObject:
        """``inspect NAME``: a container if one is called so, else an image (docker tries
        both); ``kind`` (``container`` or ``image``) restricts the lookup.

        Raises:
            NotFound: ``No such object: NAME`` (or ``No such container``/``image``).
            InvalidArgument: an unknown ``kind``.
        """
        if kind not in (None, "container", "image"):
            raise InvalidArgument(f'"{kind}" is not a valid value for --type')
        if kind == "container" or (kind is None and (self.root / "containers.db").exists()):
            try:
                return self.container_inspect(name, size=size)
            except NotFound:
                if kind == "container":
                    raise
        try:
            return self.inspect(name).to_json()
        except NotFound:
            if kind == "image":
                raise
            raise NotFound(f"No such object: {name}") from None

    def container_diff(self, ref: str) -> list[runtime_changes_t.Change]:
        """``diff CONTAINER``: the changes of its writable layer (A / C / D), docker's order.

        Raises:
            NotFound: no such container.
        """
        from strata.runtime import changes as rt_changes

        record = self.containers.store.find(ref)
        return rt_changes.changes(rt_changes.writable_layer(self.snapshotter, record.id))

    def container_commit(self, ref: str, reference: str | None = None, *, message: str = "",
                         author: str = "", changes: Sequence[str] = (), pause: bool = True
                         ) -> runtime_changes_t.CommitResult:
        """``commit CONTAINER [REPO[:TAG]]``: its writable layer becomes a new image layer on
        its image, with the container's config (``--change`` applied); the new image's ID.

        Raises:
            NotFound: no such container.
            FailedPrecondition: the container's image was removed meanwhile.
            InvalidArgument: a bad reference or ``--change``.
        """
        from strata.runtime import changes as rt_changes
        from strata.runtime import inspect as rt_inspect
        from strata.runtime.top import frozen

        target = rt_changes.check_reference(reference) if reference else None
        record = self.containers.store.find(ref)
        cdir = self.containers.root / record.id
        saved, _ = rt_inspect.load_create_config(cdir)
        container_config = (ContainerConfig.from_json(saved, "container config") if saved
                            else ContainerConfig(cmd=record.command))
        config = _apply_changes(container_config, changes) if changes else container_config
        base: LocalImage | None = None
        group = self._records_by_id().get(Digest.parse(record.image_id), [])
        if group:
            base = LocalImage(self.content, group[0].target)
        elif record.image_id:
            raise FailedPrecondition(f"the image {record.image_id} of container"
                                     f" {record.id[:12]} was removed: cannot commit on it")
        layer = rt_changes.writable_layer(self.snapshotter, record.id)
        options = rt_changes.CommitOptions(
            reference=target, comment=message, author=author, config=config,
            container_config=container_config, container_id=record.id,
            created_by=" ".join(container_config.cmd or ()))
        with frozen(self._live_pid(record) if pause else None):
            return rt_changes.commit_image(self.content, self.images, base, layer, options)

    def container_copy(self, source: str, destination: str, *, follow_link: bool = False,
                       archive: bool = False, stdin: BinaryIO | None = None,
                       stdout: BinaryIO | None = None) -> None:
        """``cp CONTAINER:SRC DEST`` / ``cp SRC CONTAINER:DEST``; ``-`` as DEST writes a tar
        to ``stdout``, as SRC reads one from ``stdin``.

        Raises:
            NotFound: no such container or path.
            InvalidArgument: neither or both sides in a container, and docker's path rules.
        """
        from strata.runtime import copy as rt_copy

        src_ctr, src_path = rt_copy.split_copy_arg(source)
        dst_ctr, dst_path = rt_copy.split_copy_arg(destination)
        if (src_ctr is None) == (dst_ctr is None):
            raise InvalidArgument("copying between containers is not supported" if src_ctr
                                  else "must specify at least one container source")
        record = self.containers.store.find(src_ctr or dst_ctr or "")
        with self._container_root(record) as root:
            if src_ctr is not None:
                out: str | BinaryIO = dst_path
                if dst_path == "-":
                    out = stdout if stdout is not None else sys.stdout.buffer
                rt_copy.copy_from_container(root, src_path, out, follow_link=follow_link,
                                            archive=archive, shown=source)
            else:
                src: str | BinaryIO = src_path
                if src_path == "-":
                    src = stdin if stdin is not None else sys.stdin.buffer
                rt_copy.copy_to_container(root, src, dst_path, follow_link=follow_link,
                                          archive=archive, shown=destination)

    @contextlib.contextmanager
    def _container_root(self, record: ContainerRecord) -> Iterator[runtime_copy_t.ContainerRoot]:
        """The container's root: ``/proc/PID/root`` with its processes stopped while it runs,
        else its snapshot mounted for the duration."""
        from strata.runtime.copy import ContainerRoot
        from strata.runtime.top import frozen

        pid = self._live_pid(record)
        if pid is not None:
            with frozen(pid):
                yield ContainerRoot(Path(f"/proc/{pid}/root"), running=True)
            return
        with self.containers.mounted(record.id) as rootfs:
            yield ContainerRoot(rootfs)

    def container_top(self, ref: str, ps_args: Sequence[str] = ()) -> runtime_top_t.Top:
        """``top CONTAINER [ps OPTIONS]``: the container's processes as host ``ps`` shows them.

        Raises:
            NotFound: no such container.
            FailedPrecondition: it is not running (docker's message).
        """
        from strata.runtime.top import top

        record = self.containers.store.find(ref)
        pid = self._live_pid(record)
        if pid is None:
            raise FailedPrecondition(f"Container {record.id} is not running")
        return top(pid, ps_args)

    def container_prune(self) -> tuple[list[str], int]:
        """``container prune``: remove every container that is not running; their IDs and
        the bytes reclaimed (their SizeRw, as docker counts)."""
        from strata.runtime import changes as rt_changes

        deleted: list[str] = []
        reclaimed = 0
        for record in self.containers_list(all_containers=True):
            if self._live_pid(record) is not None:
                continue
            size = 0
            with contextlib.suppress(StrataError):
                size = rt_changes.size_rw(rt_changes.writable_layer(self.snapshotter,
                                                                    record.id))
            try:
                self.containers.remove(record.id)
            except NotFound:
                continue
            deleted.append(record.id)
            reclaimed += size
        return deleted, reclaimed

    def _image_users(self, image_id: Digest) -> list[ContainerRecord]:
        """The containers made from image ``image_id`` (``rmi``'s conflict check)."""
        if not (self.root / "containers.db").exists():
            return []
        return [r for r in self.containers.store.walk() if r.image_id == str(image_id)]

    # -- networks and volumes (strata.runtime.network / .volumes) --------------------------
    def container_ports(self, ref: str) -> tuple[runtime_network.PortMapping, ...]:
        """``port``: the published ports of a running container (host ports as bound).

        Raises:
            NotFound: no such container.
        """
        record = self.containers.store.find(ref)
        attachment = runtime_network.attachment_of(self.containers.root / record.id)
        return attachment.ports if attachment is not None else ()

    def containers_ports(self) -> dict[str, tuple[runtime_network.PortMapping, ...]]:
        """Container ID → published ports, for every container attached now (``ps``)."""
        out = {}
        root = self.containers.root
        for cid in os.listdir(root) if root.is_dir() else ():
            attachment = runtime_network.attachment_of(root / cid)
            if attachment is not None and attachment.ports:
                out[cid] = attachment.ports
        return out

    def volume_create(self, name: str | None = None, *,
                      labels: Mapping[str, str] | None = None) -> runtime_volumes.VolumeInfo:
        """``volume create [NAME]``: a new volume, or the existing one of that name.

        Raises:
            InvalidArgument: an invalid name.
        """
        return self.containers.volume_store.create(name, labels=labels)[0]

    def volumes_list(self) -> list[runtime_volumes.VolumeInfo]:
        """``volume ls``: every volume, by name."""
        return self.containers.volume_store.walk()

    def volume_inspect(self, name: str) -> runtime_volumes.VolumeInfo:
        """``volume inspect NAME``.

        Raises:
            NotFound: no such volume.
        """
        return self.containers.volume_store.get(name)

    def volume_remove(self, name: str, *, force: bool = False) -> None:
        """``volume rm [-f] NAME``.

        Raises:
            NotFound: no such volume (not with ``force``).
            FailedPrecondition: a container uses it.
        """
        self.containers.volume_store.remove(name, force=force)

    def volume_prune(self, *, all_volumes: bool = False) -> tuple[list[str], int]:
        """``volume prune [-a]``: unused anonymous (``-a``: all unused) volumes removed;
        their names and the bytes reclaimed."""
        return self.containers.volume_store.prune(all_volumes=all_volumes)

    # -- registries (strata.registry.client) ---------------------------------------------
    def configure_registries(self, *, insecure: Sequence[str] = (), ca_file: Path | None = None,
                             docker_config: Path | None = None, workers: int | None = None,
                             chunk_size: int | None = None) -> None:
        """Registry options beyond ``ROOT/registries.toml``: ``--insecure-registry`` hosts
        (plain HTTP), a CA bundle, the docker ``config.json`` holding credentials."""
        base = regclient.RegistryOptions()
        self._registry_options = regclient.RegistryOptions(
            insecure=frozenset(insecure), ca_file=ca_file, docker_config=docker_config,
            workers=workers or base.workers, chunk_size=chunk_size,
        ).with_config_file(self.root / "registries.toml")
        self.__dict__.pop("registry_client", None)

    @functools.cached_property
    def registry_client(self) -> regclient.RegistryClient:
        """The registry client (connection pools, tokens) under this engine's options."""
        options = getattr(self, "_registry_options", None)
        if options is None:
            options = regclient.RegistryOptions().with_config_file(
                self.root / "registries.toml")
        return regclient.RegistryClient(options)

    @functools.cached_property
    def blob_sources(self) -> regclient.BlobSources:
        """Which repositories each blob was pulled from or pushed to (for mounts)."""
        return regclient.BlobSources(self.root / "blob-sources.db")

    def pull(self, name: str, *, platform: Platform | None = None,
             progress: Progress = no_progress, unpack: bool = True) -> regclient.PullResult:
        """``pull NAME``: fetch an image (layers in parallel, verified, resumable), unpack
        its layers into snapshots while they stream in, and record it under NAME."""
        ref = Reference.parse(name)
        client = self.registry_client
        options = regclient.PullOptions(
            platform=platform, workers=client.options.workers,
            snapshotter=self.snapshotter if unpack else None)
        return regclient.pull(client, self.content, self.images, ref, options=options,
                                    progress=progress, sources=self.blob_sources)

    def push(self, name: str, *, destination: str | None = None,
             progress: Progress = no_progress) -> regclient.PushResult:
        """``push NAME``: send a local image to the registry its name (or ``destination``)
        points at; blobs the registry has are skipped, known ones are mounted."""
        resolved = self.resolve(name)
        ref = Reference.parse(destination or name)
        client = self.registry_client
        options = regclient.PushOptions(workers=client.options.workers,
                                              chunk_size=client.options.chunk_size)
        return regclient.push(client, self.content, resolved.image, ref, options=options,
                                    sources=self.blob_sources, progress=progress)

    def login(self, registry: str, username: str, password: str) -> str:
        """``login``: verify credentials with the registry and store them in docker's
        config.json; returns the key they are stored under."""
        return regclient.login(self.registry_client, registry or "docker.io", username,
                                     password)

    def logout(self, registry: str) -> str:
        """``logout``: forget a registry's stored credentials."""
        return regclient.logout(self.registry_client, registry or "docker.io")

    def copy(self, source: str, destination: str, *, platform: Platform | None = None,
             progress: Progress = no_progress) -> regclient.CopyResult:
        """``copy SRC DST`` between ``docker://``, ``oci:``, ``oci-archive:`` and
        ``docker-archive:`` locations (skopeo's names)."""
        src = regclient.ImageLocation.parse(source)
        dst = regclient.ImageLocation.parse(destination)
        client = self.registry_client
        return regclient.copy_image(client, self.content, self.tmp, src, dst,
                                          platform=platform, sources=self.blob_sources,
                                          progress=progress, workers=client.options.workers)

    def manifest_inspect(self, name: str) -> regclient.FetchedManifest:
        """``manifest inspect NAME``: the manifest or index as the registry serves it."""
        return regclient.manifest_inspect(self.registry_client, Reference.parse(name))

    def inspect_remote(self, name: str, *, platform: Platform | None = None,
                       ) -> regclient.RemoteInspect:
        """``inspect --remote NAME``: the image's config summary, read from its registry."""
        return regclient.inspect_remote(self.registry_client, Reference.parse(name),
                                              platform=platform)

    def referrers(self, name: str, *, artifact_type: str | None = None) -> Index:
        """The manifests in NAME's repository whose subject is NAME's manifest (OCI 1.1)."""
        ref = Reference.parse(name)
        client = self.registry_client
        repo = client.repository(ref)
        digest = ref.digest or regclient.manifest_inspect(client, ref).digest
        return repo.referrers(digest, artifact_type=artifact_type)

    # -- consistency -----------------------------------------------------------------
    def fsck(self) -> FsckReport:
        """Verify every blob's digest and that every image record's graph is complete."""
        problems: list[str] = []
        blobs = 0
        present: dict[Digest, int] = {}
        for info in self.content.walk():
            blobs += 1
            present[info.digest] = info.size
            actual = self.content.verify(info.digest)
            if actual != info.digest:
                problems.append(f"blob {info.digest}: content has digest {actual} (corrupt)")
        reachable: set[Digest] = set()
        records = list(self.images.walk())
        for record in records:
            problems.extend(self._check_record(record, present, reachable))
        ingests = sum(1 for _ in self.content.ingests())
        unreferenced = sum(1 for d in present if d not in reachable)
        return FsckReport(blobs, len(records), tuple(problems), ingests, unreferenced)

    def _check_record(self, record: ImageRecord, present: dict[Digest, int],
                      reachable: set[Digest]) -> list[str]:
        problems: list[str] = []
        label = f"image {record.name}"

        def check(desc_digest: Digest, size: int, what: str) -> bool:
            reachable.add(desc_digest)
            if desc_digest not in present:
                problems.append(f"{label}: {what} {desc_digest} is missing")
                return False
            if present[desc_digest] != size:
                problems.append(f"{label}: {what} {desc_digest} has {present[desc_digest]} bytes,"
                                f" the descriptor says {size}")
                return False
            return True

        target = record.target
        if not check(target.digest, target.size, "manifest"):
            return problems
        try:
            if mediatypes.is_index(target.media_type):
                index = Index.parse(self.content.read(target.digest))
                for entry in index.manifests:
                    check(entry.digest, entry.size, "manifest")
                target = images_pkg.resolve_manifest(self.content, target)
            manifest = Manifest.parse(self.content.read(target.digest))
            if check(manifest.config.digest, manifest.config.size, "config"):
                config = ImageConfig.parse(self.content.read(manifest.config.digest))
                if len(config.rootfs.diff_ids) != len(manifest.layers):
                    problems.append(f"{label}: manifest and config disagree on the layer count")
            for layer in manifest.layers:
                check(layer.digest, layer.size, "layer")
        except StrataError as exc:
            problems.append(f"{label}: {exc}")
        return problems


class _EngineImages:
    """Base images for builds: the local store first, pulled when missing or with --pull,
    unpacked into snapshots (one at a time: stages may ask concurrently)."""

    def __init__(self, engine: Engine) -> None:
        import threading

        self.engine = engine
        self.lock = threading.Lock()

    def base_image(self, name: str, *, platform: Platform | None,
                   pull: bool) -> build_pkg.BaseImage:
        from strata import build as build_pkg

        engine = self.engine
        with self.lock:
            if pull:
                engine.pull(name, platform=platform)
            try:
                resolved = engine.resolve(name)
            except NotFound:
                engine.pull(name, platform=platform)
                resolved = engine.resolve(name)
            image = resolved.image
            config = image.config()
            chain = chain_id(config.rootfs.diff_ids)
            try:
                if chain is not None:
                    engine.snapshotter.stat(str(chain))  # unpacked already: nothing to do
            except NotFound:
                chain = engine.unpack_snapshots(str(image.id))
            return build_pkg.BaseImage(image.id, config, tuple(image.manifest().layers), chain)


def _image_id(store: content_pkg.LocalStore, record: ImageRecord) -> Digest | None:
    try:
        return LocalImage(store, record.target).id
    except StrataError:
        return None


def _apply_changes(config: ContainerConfig, changes: Sequence[str]) -> ContainerConfig:
    """Apply ``--change`` Dockerfile instructions (CMD, ENTRYPOINT, ENV, ...) to a config."""
    from dataclasses import replace

    for change in changes:
        keyword, _, rest = change.strip().partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()

        def words(text: str, change: str = change) -> tuple[str, ...]:
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    raise InvalidArgument(f"--change {change!r}: bad JSON array") from exc
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise InvalidArgument(f"--change {change!r}: expected an array of strings")
                return tuple(value)
            return ("/bin/sh", "-c", text)

        if keyword == "CMD":
            config = replace(config, cmd=words(rest))
        elif keyword == "ENTRYPOINT":
            config = replace(config, entrypoint=words(rest))
        elif keyword == "ENV":
            key, sep, value = rest.partition("=")
            if not sep:
                key, _, value = rest.partition(" ")
            config = replace(config, env=(*(config.env or ()), f"{key}={value.strip()}"))
        elif keyword == "WORKDIR":
            config = replace(config, working_dir=rest)
        elif keyword == "USER":
            config = replace(config, user=rest)
        elif keyword == "EXPOSE":
            ports = tuple(p if "/" in p else f"{p}/tcp" for p in rest.split())
            config = replace(config, exposed_ports=tuple(sorted({*(config.exposed_ports or ()),
                                                                  *ports})))
        elif keyword == "LABEL":
            key, _, value = rest.partition("=")
            config = replace(config, labels={**(config.labels or {}), key: value.strip('"')})
        elif keyword == "VOLUME":
            vols = tuple(json.loads(rest)) if rest.startswith("[") else tuple(rest.split())
            config = replace(config, volumes=tuple(sorted({*(config.volumes or ()), *vols})))
        elif keyword == "STOPSIGNAL":
            config = replace(config, stop_signal=rest)
        else:
            raise InvalidArgument(f"--change: {keyword} is not supported (CMD, ENTRYPOINT, ENV,"
                                  " EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR)")
    return config
