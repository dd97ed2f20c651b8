"""Write images out: an OCI image layout (directory or tar) or a docker-archive (``docker save``).

* OCI layout: ``oci-layout``, ``index.json`` and ``blobs/sha256/*`` with the stored manifest,
  config and layer blobs as they are, so manifest digests survive (what ``skopeo copy oci:``
  writes).  Each index entry carries ``io.containerd.image.name`` (the whole name) and
  ``org.opencontainers.image.ref.name`` (the tag), as containerd and docker write them.
* docker-archive: ``manifest.json``, ``repositories``, ``<config hex>.json`` and
  ``<diff_id hex>/layer.tar`` with *uncompressed* layers, as docker 20.10 writes it; read by
  ``docker load``, ``podman load`` and ``skopeo copy docker-archive:``.

Archives are written deterministically (sorted members, fixed times and owners).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from strata.content import LocalStore
from strata.errors import InvalidArgument, InvalidContent, Unavailable
from strata.images.load import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME
from strata.images.store import ImageStore
from strata.images.view import LocalImage
from strata.oci import Descriptor, Digest, Index, Reference, mediatypes
from strata.oci._json import dumps

__all__ = ["SaveFormat", "SaveItem", "write_docker_archive", "write_oci_archive", "write_oci_dir"]

_CHUNK = 1 << 20


class SaveFormat:
    DOCKER_ARCHIVE = "docker-archive"
    OCI_ARCHIVE = "oci-archive"
    OCI_DIR = "oci"
    ALL = (DOCKER_ARCHIVE, OCI_ARCHIVE, OCI_DIR)


@dataclass(frozen=True, slots=True)
class SaveItem:
    """One image to save and the names to save it under (none: saved by ID only)."""

    image: LocalImage
    names: tuple[Reference, ...]


def _blobs_of(item: SaveItem) -> list[Descriptor]:
    manifest = item.image.manifest()
    return [item.image.target, manifest.config, *manifest.layers]


def _index_entries(items: Sequence[SaveItem]) -> list[Descriptor]:
    entries: list[Descriptor] = []
    for item in items:
        target = item.image.target
        base = Descriptor(target.media_type, target.digest, target.size)
        if not item.names:
            entries.append(base)
        for name in item.names:
            annotations = {ANNOTATION_IMAGE_NAME: str(name)}
            if name.tag:
                annotations[ANNOTATION_REF_NAME] = name.tag
            entries.append(base.with_annotations(annotations))
    return entries


def _copy_blob(content: LocalStore, digest: Digest, dest: Path) -> None:
    if dest.exists() and dest.stat().st_size == content.info(digest).size:
        return
    tmp = dest.with_name(dest.name + ".tmp")
    with content.open(digest) as src, open(tmp, "wb") as out:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            sent = os.copy_file_range(src.fileno(), out.fileno(), size - offset)
            if sent == 0:
                break
            offset += sent
    os.replace(tmp, dest)


def write_oci_dir(content: LocalStore, items: Sequence[SaveItem], dest: Path) -> None:
    """Write (or add to) an OCI image layout directory at ``dest``.

    Entries already in an existing layout keep their place unless a saved name replaces them.

    Raises:
        InvalidArgument: ``dest`` exists and is not a layout directory.
    """
    if dest.exists() and not dest.is_dir():
        raise InvalidArgument(f"{dest} exists and is not a directory")
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for item in items:
        for desc in _blobs_of(item):
            _copy_blob(content, desc.digest, blobs / desc.digest.hex)
    existing: list[Descriptor] = []
    index_path = dest / "index.json"
    if index_path.exists():
        try:
            existing = list(Index.parse(index_path.read_bytes(), str(index_path)).manifests)
        except InvalidContent as exc:
            raise InvalidArgument(f"{dest} holds an index.json strata cannot read: {exc}") from exc
    new = _index_entries(items)
    new_names = {d.annotations.get(ANNOTATION_IMAGE_NAME) for d in new} - {None}
    new_names |= {d.annotations.get(ANNOTATION_REF_NAME) for d in new
                  if ANNOTATION_IMAGE_NAME not in d.annotations} - {None}
    kept = [
        d for d in existing
        if (d.annotations.get(ANNOTATION_IMAGE_NAME) or d.annotations.get(ANNOTATION_REF_NAME))
        not in new_names and d not in new
    ]
    index = Index(mediatypes.OCI_INDEX, tuple(kept + new))
    (dest / "oci-layout").write_bytes(dumps({"imageLayoutVersion": mediatypes.OCI_LAYOUT_VERSION}))
    tmp = dest / "index.json.tmp"
    tmp.write_bytes(index.to_bytes())
    os.replace(tmp, index_path)


class _TarOut:
    """A deterministic tar writer: root-owned members, mtime 0."""

    def __init__(self, out: BinaryIO) -> None:
        self.tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_CHUNK)
        self.dirs: set[str] = set()

    def _info(self, name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.type = kind
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def mkdir(self, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self.dirs:
                self.dirs.add(sub)
                self.tar.addfile(self._info(sub, kind=tarfile.DIRTYPE))

    def add_bytes(self, name: str, data: bytes) -> None:
        import io

        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self.tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def add_stream(self, name: str, stream: BinaryIO, size: int) -> None:
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self.tar.addfile(self._info(name, size), stream)

    def close(self) -> None:
        self.tar.close()


def write_oci_archive(content: LocalStore, items: Sequence[SaveItem], out: BinaryIO) -> None:
    """Write an OCI image layout as a tar stream (``oci-archive``)."""
    tar = _TarOut(out)
    tar.add_bytes("oci-layout", dumps({"imageLayoutVersion": mediatypes.OCI_LAYOUT_VERSION}))
    seen: set[Digest] = set()
    for item in items:
        for desc in _blobs_of(item):
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            info = content.info(desc.digest)
            with content.open(desc.digest) as f:
                tar.add_stream(f"blobs/sha256/{desc.digest.hex}", f, info.size)
    tar.add_bytes("index.json", Index(mediatypes.OCI_INDEX, tuple(_index_entries(items))).to_bytes())
    tar.close()


@contextlib.contextmanager
def _uncompressed(layer_open: Callable[[], BinaryIO], known_size: int | None,
                  tmpdir: Path) -> Iterator[tuple[BinaryIO, int]]:
    """The uncompressed layer and its size (spooled to a temp file when unknown)."""
    if known_size is not None:
        with layer_open() as stream:
            yield stream, known_size
        return
    with tempfile.TemporaryFile(dir=tmpdir) as spool:
        with layer_open() as stream:
            shutil.copyfileobj(stream, spool, _CHUNK)
        size = spool.tell()
        spool.seek(0)
        yield cast(BinaryIO, spool), size


def write_docker_archive(content: LocalStore, images: ImageStore, items: Sequence[SaveItem],
                         out: BinaryIO, *, tmpdir: Path) -> None:
    """Write a docker-archive (``docker save``) tar stream with uncompressed layers."""
    tar = _TarOut(out)
    manifest_entries: list[dict[str, object]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for item in items:
        image = item.image
        config_name = f"{image.id.hex}.json"
        if config_name not in written:
            written.add(config_name)
            tar.add_bytes(config_name, image.raw_config())
        layer_names: list[str] = []
        for layer in image.layers():
            name = f"{layer.diff_id.hex}/layer.tar"
            layer_names.append(name)
            if name in written:
                continue
            written.add(name)
            facts = images.layer(layer.diff_id)
            try:
                with _uncompressed(layer.open_uncompressed, facts.size if facts else None,
                                   tmpdir) as (stream, size):
                    tar.add_stream(name, stream, size)
            except OSError as exc:
                raise Unavailable(f"writing layer {layer.diff_id}: {exc}") from exc
        tags = [ref.familiar() for ref in item.names if ref.tag]
        manifest_entries.append({"Config": config_name, "RepoTags": tags or None,
                                 "Layers": layer_names})
        for ref in item.names:
            if ref.tag and layer_names:
                repositories.setdefault(ref.familiar_name(), {})[ref.tag] = (
                    layer_names[-1].split("/")[0]
                )
    tar.add_bytes("manifest.json", json.dumps(manifest_entries, separators=(",", ":")).encode())
    if repositories:
        tar.add_bytes("repositories", json.dumps(repositories, separators=(",", ":")).encode())
    tar.close()
