"""Load images from an OCI image layout (directory or tar) or a docker-archive into the store.

``load`` tells the formats apart itself (``oci-layout`` / ``index.json`` vs ``manifest.json``).
Every blob is streamed into the content store with its size and digest verified; every
manifest, config and layer is checked (layers are read once: their names must stay inside
the root and their diff_ids must match the config) before any image record is written, in one
transaction at the end.  On failure the blobs this load added are removed again, so a failed
load changes nothing; a load killed mid-way leaves only unreferenced blobs and resumable
ingests, and running it again finishes it.

The layer checks overlap with the copying: as soon as a layer blob of an OCI layout is in the
store, a thread starts reading it (decompression, hashing and file syscalls release the GIL),
while the next blobs are copied.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from strata.content import LocalStore
from strata.errors import (
    DigestMismatch,
    InvalidArgument,
    InvalidContent,
    NotFound,
    StrataError,
)
from strata.images.store import ImageRecord, ImageStore, LayerFacts
from strata.layers import LayerStats, open_decompressed, scan, sniff_compression
from strata.oci import (
    Descriptor,
    Digest,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    Reference,
    mediatypes,
)
from strata.oci._json import JSONValue, loads_object
from strata.progress import Progress, ProgressEvent, Stage, no_progress

__all__ = ["LoadedImage", "ImageToStore", "detect_format", "load", "name_from_annotations",
           "store_images"]

log = logging.getLogger(__name__)

_SMALL = 16 << 20
_CHUNK = 1 << 20
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """One image a load stored: its name (None if untagged), manifest and image ID."""

    name: Reference | None
    manifest: Descriptor
    image_id: Digest


@dataclass(slots=True)
class ImageToStore:
    """An image whose blobs are in the content store, waiting to be validated and named."""

    names: list[Reference | None]
    manifest: Descriptor
    raw_manifest: bytes | None = None  # set when synthesized (not yet a blob)


def name_from_annotations(annotations: dict[str, str] | None) -> Reference | None:
    """The image name an OCI index entry carries, as containerd and docker read it.

    ``io.containerd.image.name`` first, then ``org.opencontainers.image.ref.name`` when it is a
    whole reference (a bare tag such as ``latest`` names no repository: untagged).
    """
    if not annotations:
        return None
    full = annotations.get(ANNOTATION_IMAGE_NAME)
    if full:
        return Reference.parse(full)
    ref = annotations.get(ANNOTATION_REF_NAME)
    if ref and ("/" in ref or ":" in ref):
        try:
            return Reference.parse(ref)
        except InvalidArgument:
            return None
    return None


def detect_format(path: Path) -> str:
    """``oci-dir``, ``oci-archive``, ``docker-archive`` (tars may hold both: OCI wins).

    Raises:
        InvalidContent: neither format.
        NotFound: the path does not exist.
    """
    if path.is_dir():
        if (path / "index.json").exists():
            return "oci-dir"
        raise InvalidContent(f"{path} is a directory without index.json: not an OCI layout",
                             path=str(path))
    if not path.exists():
        raise NotFound(f"open {path}: no such file or directory")
    return "archive"


class _Session:
    """One load: ingests under a lease, remembers what it added, rolls back on failure."""

    def __init__(self, content: LocalStore, progress: Progress,
                 scanner: ThreadPoolExecutor | None = None) -> None:
        self.content = content
        self.progress = progress
        self.added: list[Digest] = []
        self.scanner = scanner
        self.scans: dict[Digest, Future[LayerStats]] = {}

    def prescan(self, desc: Descriptor) -> None:
        """Start checking a layer blob this load added, while the load goes on."""
        if self.scanner is None or desc.digest in self.scans or desc.digest not in self.added:
            return
        self.scans[desc.digest] = self.scanner.submit(_scan_blob, self.content, desc,
                                                      self.progress)

    def ingest(self, stream: BinaryIO, expected: Descriptor | None, what: str, *,
               resumable: bool = False) -> Descriptor:
        """Stream into the store; verify against ``expected`` when given.

        Args:
            resumable: ``stream`` is a seekable file: an ingest left by an interrupted load
                continues where it stopped instead of starting over.
        """
        if expected is not None and self.content.exists(expected.digest):
            self.content.leases.add_current(expected.digest)
            self.progress(ProgressEvent(expected.digest.short(), Stage.EXISTS, expected.size,
                                        expected.size))
            return expected
        ref = f"load-{expected.digest}" if expected else f"load-member-{what}"
        writer = self.content.writer(ref, expected)
        try:
            if writer.offset:
                # Resume: a blob from a seekable source continues where the ingest stopped.
                if resumable:
                    stream.seek(writer.offset)
                else:
                    writer.abort()
                    writer = self.content.writer(ref, expected)
            total = expected.size if expected else None
            short = expected.digest.short() if expected else what
            while chunk := stream.read(_CHUNK):
                writer.write(chunk)
                if total and total > _CHUNK * 8:
                    self.progress(ProgressEvent(short, Stage.LOADING, writer.offset, total))
            existed = expected is not None and self.content.exists(expected.digest)
            desc = writer.commit()
        except StrataError:
            writer.abort()
            raise
        except BaseException:
            writer.close()
            raise
        if not existed:
            self.added.append(desc.digest)
        media_type = expected.media_type if expected else desc.media_type
        return Descriptor(media_type, desc.digest, desc.size)

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        """Store small bytes made during the load (remembered for rollback)."""
        existed = self.content.exists(Digest.of(data))
        desc = self.content.put(data, media_type)
        if not existed:
            self.added.append(desc.digest)
        return desc

    def rollback(self, lease_id: str) -> None:
        others = self.content.leases.protected(exclude=lease_id)
        for digest in self.added:
            if str(digest) in others:
                continue
            try:
                self.content.delete(digest)
            except NotFound:
                continue


# -- sources ---------------------------------------------------------------------------


def _layout_blob_path(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.hex


def _load_oci_dir(session: _Session, root: Path, platform: Platform | None) -> list[ImageToStore]:
    layout_file = root / "oci-layout"
    if layout_file.exists():
        version = loads_object(layout_file.read_bytes(), "oci-layout").get("imageLayoutVersion")
        if version != mediatypes.OCI_LAYOUT_VERSION:
            raise InvalidContent(f"{layout_file}: unsupported imageLayoutVersion {version!r}",
                                 path=str(layout_file))

    def fetch(desc: Descriptor) -> None:
        path = _layout_blob_path(root, desc.digest)
        try:
            with open(path, "rb") as f:
                session.ingest(f, desc, desc.digest.short(), resumable=True)
        except FileNotFoundError as exc:
            raise NotFound(f"the layout names blob {desc.digest} but {path} does not exist") from exc
        if mediatypes.is_layer(desc.media_type):
            session.prescan(desc)

    index_raw = (root / "index.json").read_bytes()
    return _walk_index(session, index_raw, fetch, platform, "index.json")


def _walk_index(
    session: _Session,
    index_raw: bytes,
    fetch: Callable[[Descriptor], None],
    platform: Platform | None,
    what: str,
) -> list[ImageToStore]:
    """Resolve every entry of a layout's index.json to a platform manifest, fetching its blobs."""
    index = Index.parse(index_raw, what)
    out: list[ImageToStore] = []
    for i, entry in enumerate(index.manifests):
        name = name_from_annotations(dict(entry.annotations))
        desc = entry
        depth = 0
        while True:
            fetch(desc)
            if mediatypes.is_index(desc.media_type):
                depth += 1
                if depth > 4:
                    raise InvalidContent(f"{what}: manifests[{i}] nests indexes too deeply")
                nested = Index.parse(session.content.read(desc.digest), f"index {desc.digest}")
                desc = nested.select(platform or Platform.host())
                continue
            break
        if not mediatypes.is_manifest(desc.media_type):
            log.debug("skipping %s entry of media type %s", desc.digest, desc.media_type)
            continue
        manifest = Manifest.parse(session.content.read(desc.digest), f"manifest {desc.digest}")
        if not manifest.is_image:
            continue
        fetch(manifest.config)
        for layer in manifest.layers:
            if mediatypes.is_non_distributable(layer.media_type) and layer.urls:
                # Foreign layers are not shipped in layouts; they must be present already.
                if not session.content.exists(layer.digest):
                    raise NotFound(f"foreign layer {layer.digest} is not in the store (urls: "
                                   f"{', '.join(layer.urls)})")
                continue
            fetch(layer)
        merged = next((o for o in out if o.manifest.digest == desc.digest), None)
        target = Descriptor(desc.media_type, desc.digest, desc.size)
        if merged is None:
            out.append(ImageToStore([name], target))
        else:
            merged.names.append(name)
    return out


@dataclass(slots=True)
class _TarContents:
    """What streaming an archive left: small files in memory, big ones as blobs, aliases."""

    small: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        name = posixpath.normpath(name.lstrip("/"))
        for _ in range(16):
            if name in self.links:
                name = self.links[name]
            else:
                break
        return name


def _stream_archive(session: _Session, stream: BinaryIO) -> _TarContents:
    out = _TarContents()
    try:
        tf = tarfile.open(fileobj=stream, mode="r|*", bufsize=_CHUNK)  # noqa: SIM115
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidContent(f"not a tar archive: {exc}") from exc
    with tf:
        try:
            for member in tf:
                name = posixpath.normpath(member.name.lstrip("/"))
                if member.issym() or member.islnk():
                    base = posixpath.dirname(name) if member.issym() else ""
                    out.links[name] = posixpath.normpath(posixpath.join(base, member.linkname))
                    continue
                if not member.isfile():
                    continue
                data = tf.extractfile(member)
                if data is None:
                    continue
                parts = name.split("/")
                expected: Descriptor | None = None
                if len(parts) == 3 and parts[0] == "blobs":
                    try:
                        digest = Digest.parse(f"{parts[1]}:{parts[2]}")
                    except InvalidArgument as exc:
                        raise InvalidContent(f"archive member {name}: {exc}", path=name) from exc
                    expected = Descriptor("application/octet-stream", digest, member.size)
                elif member.size <= _SMALL and (name.endswith(".json") or "/" not in name):
                    out.small[name] = data.read()
                    if len(out.small[name]) != member.size:
                        raise InvalidContent(f"archive member {name} is truncated", path=name)
                    continue
                desc = session.ingest(cast(BinaryIO, data), expected, name.replace("/", "_"))
                if desc.size != member.size:
                    raise InvalidContent(f"archive member {name} is truncated", path=name)
                out.blobs[name] = desc
        except tarfile.TarError as exc:
            raise InvalidContent(f"corrupt archive: {exc}") from exc
        except (EOFError, OSError) as exc:
            raise InvalidContent(f"archive is truncated or unreadable: {exc}") from exc
    return out


def _archive_images(session: _Session, contents: _TarContents,
                    platform: Platform | None) -> list[ImageToStore]:
    if "index.json" in contents.small:
        def fetch(desc: Descriptor) -> None:
            if not session.content.exists(desc.digest):
                raise NotFound(f"the archive's index names blob {desc.digest}, which it does"
                               " not contain")
            session.content.leases.add_current(desc.digest)
        return _walk_index(session, contents.small["index.json"], fetch, platform, "index.json")
    if "manifest.json" in contents.small:
        return _docker_archive_images(session, contents)
    raise InvalidContent("the archive is neither an OCI layout (no index.json) nor a"
                         " docker-archive (no manifest.json)")


def _member_bytes(session: _Session, contents: _TarContents, name: str) -> bytes:
    real = contents.resolve(name)
    if real in contents.small:
        return contents.small[real]
    if real in contents.blobs:
        return session.content.read(contents.blobs[real].digest)
    raise NotFound(f"manifest.json names {name}, which the archive does not contain")


def _docker_archive_images(session: _Session, contents: _TarContents) -> list[ImageToStore]:
    try:
        entries = json.loads(contents.small["manifest.json"])
    except ValueError as exc:
        raise InvalidContent(f"malformed manifest.json: {exc}", path="manifest.json") from exc
    if not isinstance(entries, list):
        raise InvalidContent("malformed manifest.json: expected an array", path="manifest.json")
    out: list[ImageToStore] = []
    for i, raw_entry in enumerate(entries):
        what = f"manifest.json[{i}]"
        if not isinstance(raw_entry, dict):
            raise InvalidContent(f"malformed {what}: expected an object", path="manifest.json")
        entry: dict[str, JSONValue] = raw_entry
        config_name = entry.get("Config")
        layer_names = entry.get("Layers") or []
        tags = entry.get("RepoTags") or []
        if not isinstance(config_name, str) or not isinstance(layer_names, list) or not all(
            isinstance(x, str) for x in layer_names
        ) or not isinstance(tags, list):
            raise InvalidContent(f"malformed {what}: Config/Layers/RepoTags", path="manifest.json")
        raw_config = _member_bytes(session, contents, config_name)
        config_desc = session.put(raw_config, mediatypes.OCI_CONFIG)
        ImageConfig.parse(raw_config, f"{what} config {config_name}")
        layers: list[Descriptor] = []
        for name in layer_names:
            assert isinstance(name, str)
            real = contents.resolve(name)
            if real in contents.small:
                desc = session.put(contents.small[real])
            elif real in contents.blobs:
                desc = contents.blobs[real]
            else:
                raise NotFound(f"{what} names layer {name}, which the archive does not contain")
            with session.content.open(desc.digest) as f:
                compression = sniff_compression(f.read(8))
            layers.append(Descriptor(mediatypes.layer_media_type(compression), desc.digest,
                                     desc.size))
        manifest = Manifest(mediatypes.OCI_MANIFEST, config_desc, tuple(layers))
        raw_manifest = manifest.to_bytes()
        target = Descriptor(mediatypes.OCI_MANIFEST, Digest.of(raw_manifest), len(raw_manifest))
        names: list[Reference | None] = []
        for tag in tags:
            if not isinstance(tag, str):
                raise InvalidContent(f"malformed {what}: RepoTags", path="manifest.json")
            names.append(Reference.parse(tag))
        out.append(ImageToStore(names or [None], target, raw_manifest))
    return out


# -- validation and commit ---------------------------------------------------------------


def _scan_blob(content: LocalStore, desc: Descriptor, progress: Progress) -> LayerStats:
    progress(ProgressEvent(desc.digest.short(), Stage.VERIFYING, 0, desc.size))
    compression = mediatypes.layer_compression(desc.media_type)
    with content.open(desc.digest) as blob, open_decompressed(blob, compression) as stream:
        stats = scan(stream)
    progress(ProgressEvent(desc.digest.short(), Stage.DONE, desc.size, desc.size))
    return stats


def _check_layer(desc: Descriptor, diff_id: Digest, stats: LayerStats) -> LayerFacts:
    if stats.diff_id != diff_id:
        raise DigestMismatch(
            f"layer {desc.digest}: its content has diff_id {stats.diff_id}, the config says"
            f" {diff_id}",
            expected=str(diff_id),
            actual=str(stats.diff_id),
        )
    return LayerFacts(diff_id, stats.size, stats.disk_size, stats.entries)


def store_images(
    content: LocalStore,
    images: ImageStore,
    pending: list[ImageToStore],
    *,
    progress: Progress = no_progress,
    workers: int = 2,
    scans: dict[Digest, Future[LayerStats]] | None = None,
) -> list[LoadedImage]:
    """Validate images whose blobs are in ``content`` and write their records at once.

    Args:
        content: the blob store holding every blob of ``pending``.
        images: the image store the records go to.
        pending: the images to validate and name.
        progress: per-layer VERIFYING / DONE events.
        workers: layers scanned at once.
        scans: layer scans already started, by blob digest (their results are checked
            against the config like the others).

    Raises:
        InvalidContent: a manifest or config is malformed, a layer is unsafe or does not
            match its diff_id.
        NotFound: a referenced blob is missing.
    """
    facts: dict[Digest, LayerFacts] = {}
    jobs: list[tuple[Descriptor, Digest]] = []
    also: list[tuple[Descriptor, Digest]] = []  # known diff_ids whose blob was scanned anyway
    checked: list[tuple[ImageToStore, Digest]] = []
    started = scans or {}
    for item in pending:
        raw = item.raw_manifest if item.raw_manifest is not None else content.read(item.manifest.digest)
        manifest = Manifest.parse(raw, f"manifest {item.manifest.digest}")
        for desc in (manifest.config, *manifest.layers):
            if not content.exists(desc.digest):
                raise NotFound(f"manifest {item.manifest.digest} names blob {desc.digest},"
                               " which is missing")
        config = ImageConfig.parse(content.read(manifest.config.digest),
                                   f"config {manifest.config.digest}")
        if len(config.rootfs.diff_ids) != len(manifest.layers):
            raise InvalidContent(
                f"image {manifest.config.digest.short()}: the manifest has {len(manifest.layers)}"
                f" layers, the config {len(config.rootfs.diff_ids)} diff_ids"
            )
        for desc, diff_id in zip(manifest.layers, config.rootfs.diff_ids, strict=True):
            if (diff_id in facts or images.layer(diff_id) is not None
                    or any(j[1] == diff_id for j in jobs)):
                if desc.digest in started:
                    also.append((desc, diff_id))
                continue
            jobs.append((desc, diff_id))
        checked.append((item, manifest.config.digest))

    def run(job: tuple[Descriptor, Digest]) -> LayerFacts:
        desc, diff_id = job
        future = started.get(desc.digest)
        stats = future.result() if future is not None else _scan_blob(content, desc, progress)
        return _check_layer(desc, diff_id, stats)

    if jobs:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
            for result in pool.map(run, jobs):
                facts[result.diff_id] = result
    for desc, diff_id in also:  # a scan that found a bad layer is not ignored
        _check_layer(desc, diff_id, started[desc.digest].result())

    records: list[ImageRecord] = []
    loaded: list[LoadedImage] = []
    for item, image_id in checked:
        if item.raw_manifest is not None:
            content.put(item.raw_manifest, item.manifest.media_type, item.manifest.digest)
        for name in item.names:
            record_name = str(name) if name is not None else ImageRecord.dangling_name(
                item.manifest.digest)
            if name is None and images.by_target(item.manifest.digest):
                loaded.append(LoadedImage(None, item.manifest, image_id))
                continue
            records.append(ImageRecord(record_name, item.manifest))
            loaded.append(LoadedImage(name, item.manifest, image_id))
    images.put_many(records, layers=list(facts.values()))
    return loaded


def load(
    content: LocalStore,
    images: ImageStore,
    source: Path | BinaryIO,
    *,
    platform: Platform | None = None,
    progress: Progress = no_progress,
) -> list[LoadedImage]:
    """Load every image of an OCI layout (dir or tar) or docker-archive.

    Args:
        content: the blob store.
        images: the image store.
        source: a layout directory, an archive path, or an archive stream (stdin).
        platform: which manifest of a multi-platform index to take (default: the host's).
        progress: receives per-blob events.

    Returns:
        The stored images, in the order the source lists them.

    Raises:
        InvalidContent: malformed input (its subclasses DigestMismatch, SizeMismatch and
            UnsafeArchive name the blob or member at fault); nothing is stored.
        NotFound: the source or a blob it names is missing; nothing is stored.
    """
    scanner = ThreadPoolExecutor(max_workers=2, thread_name_prefix="strata-load-scan")
    session = _Session(content, progress, scanner)
    with content.lease(label="load") as lease:
        try:
            if isinstance(source, Path) and detect_format(source) == "oci-dir":
                pending = _load_oci_dir(session, source, platform)
            else:
                if isinstance(source, Path):
                    with open(source, "rb") as f:
                        contents = _stream_archive(session, f)
                else:
                    contents = _stream_archive(session, source)
                pending = _archive_images(session, contents, platform)
            if not pending:
                raise InvalidContent("the source holds no image")
            return store_images(content, images, pending, progress=progress,
                                scans=session.scans)
        except BaseException:
            scanner.shutdown(wait=True, cancel_futures=True)  # nothing reads a blob any more
            session.rollback(lease.id)
            raise
        finally:
            scanner.shutdown(wait=True, cancel_futures=True)
