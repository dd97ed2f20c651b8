"""``copy SRC DST`` between transports, as skopeo names them.

* ``docker://REFERENCE`` — a registry;
* ``oci:DIR[:REF]`` — an OCI image layout directory (``REF`` is the
  ``org.opencontainers.image.ref.name``, default: the only image / ``latest`` when writing);
* ``oci-archive:FILE[:REF]`` — the same, as a tar;
* ``docker-archive:FILE[:REFERENCE]`` — ``docker save`` format.

The content store is the staging area: the source's blobs are brought in (pulled, or read
with the ``load`` code into a scratch image index, so the user's image names are untouched),
then written out with the push or ``save`` code.  Manifests travel as their exact bytes, so
``oci`` and ``docker://`` copies keep their digests; a ``docker-archive`` source has no
manifest of its own and gets the one ``load`` makes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from strata.content import LocalStore
from strata.errors import InvalidArgument, NotFound
from strata.images import (
    ImageStore,
    LoadedImage,
    LocalImage,
    SaveItem,
    load,
    write_docker_archive,
    write_oci_archive,
    write_oci_dir,
)
from strata.oci import Descriptor, Digest, Manifest, Platform, Reference
from strata.progress import Progress, no_progress
from strata.registry.client.pull import PullOptions, fetch_image
from strata.registry.client.push import PushOptions, push
from strata.registry.client.remote import RegistryClient
from strata.registry.client.sources import BlobSources

__all__ = ["CopyResult", "ImageLocation", "copy_image"]

_KINDS = ("docker", "oci", "oci-archive", "docker-archive")


@dataclass(frozen=True, slots=True)
class ImageLocation:
    """A parsed ``TRANSPORT:DETAILS`` image location."""

    kind: str
    reference: Reference | None = None  # docker
    path: Path | None = None  # oci, oci-archive, docker-archive
    name: str | None = None  # the ref name inside a layout / archive

    @classmethod
    def parse(cls, text: str) -> ImageLocation:
        """Parse ``docker://busybox``, ``oci:/tmp/lay:latest``, ``docker-archive:x.tar``...

        Raises:
            InvalidArgument: unknown transport or malformed details.
        """
        kind, sep, rest = text.partition(":")
        if not sep or kind not in _KINDS:
            raise InvalidArgument(f"invalid image location {text!r}: expected one of"
                                  " docker://REF, oci:DIR[:REF], oci-archive:FILE[:REF],"
                                  " docker-archive:FILE[:REF]")
        if kind == "docker":
            if not rest.startswith("//"):
                raise InvalidArgument(f"invalid image location {text!r}: docker:// needs '//'")
            return cls("docker", reference=Reference.parse(rest[2:]))
        if not rest:
            raise InvalidArgument(f"invalid image location {text!r}: missing path")
        # As skopeo: the path runs to the first ':', the rest names the image.
        path, _, name = rest.partition(":")
        if not path:
            raise InvalidArgument(f"invalid image location {text!r}: missing path")
        return cls(kind, path=Path(path), name=name or None)

    def __str__(self) -> str:
        if self.kind == "docker":
            return f"docker://{self.reference}"
        out = f"{self.kind}:{self.path}"
        return f"{out}:{self.name}" if self.name else out


@dataclass(frozen=True, slots=True)
class CopyResult:
    """The manifest written to the destination (and its digest)."""

    manifest: Descriptor
    digest: Digest


def _select(loaded: list[LoadedImage], name: str | None, where: str) -> LoadedImage:
    if name is None:
        if len(loaded) != 1:
            raise InvalidArgument(f"{where} holds {len(loaded)} images: name one ({where}:REF)")
        return loaded[0]
    for item in loaded:
        if item.name is None:
            continue
        if name in (item.name.tag, str(item.name), item.name.familiar()):
            return item
    with contextlib.suppress(InvalidArgument):
        wanted = Reference.parse(name)
        for item in loaded:
            if item.name is not None and str(item.name) == str(wanted):
                return item
    raise NotFound(f"no image named {name!r} in {where}")


def copy_image(client: RegistryClient, content: LocalStore, scratch: Path, src: ImageLocation,
               dst: ImageLocation, *, platform: Platform | None = None,
               sources: BlobSources | None = None, progress: Progress = no_progress,
               workers: int = 4) -> CopyResult:
    """Copy one image from ``src`` to ``dst``.

    Args:
        client: registry access for ``docker://`` sides.
        content: the content store used as the staging area.
        scratch: a directory for temporary files on the store's filesystem.
        src: where the image comes from.
        dst: where it goes.
        platform: which image of a multi-platform source (default: the host's).
        sources: records where blobs came from, for cross-repository mounts.
        progress: per-blob events.
        workers: blobs moved at once.

    Raises:
        NotFound: the source image does not exist.
        InvalidArgument: a location is malformed or names no single image.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with content.lease(label=f"copy {src} {dst}") as lease, _scratch_index(scratch) as index:
        if src.kind == "docker":
            assert src.reference is not None
            fetched = fetch_image(client, content, src.reference,
                                  options=PullOptions(platform=platform, workers=workers),
                                  progress=progress)
            target = fetched.manifest
            if sources is not None:
                m = Manifest.parse(fetched.raw_manifest)
                sources.add([m.config.digest, *(d.digest for d in m.layers)],
                            src.reference.registry, src.reference.repository)
            src_name: Reference | None = src.reference
        else:
            assert src.path is not None
            if not src.path.exists():
                raise NotFound(f"{src}: {src.path} does not exist")
            loaded = load(content, index, src.path, platform=platform, progress=progress)
            chosen = _select(loaded, src.name, str(src))
            target = chosen.manifest
            src_name = chosen.name
        image = LocalImage(content, target)
        for desc in (image.target, image.manifest().config, *image.manifest().layers):
            lease.add(str(desc.digest))
        if dst.kind == "docker":
            assert dst.reference is not None
            result = push(client, content, image, dst.reference,
                          options=PushOptions(workers=workers), sources=sources,
                          progress=progress)
            return CopyResult(image.target, result.digest)
        assert dst.path is not None
        names = _names_for(dst, src_name)
        item = SaveItem(image, names)
        if dst.kind == "oci":
            write_oci_dir(content, [item], dst.path)
        elif dst.kind == "oci-archive":
            _write_file(dst.path, lambda f: write_oci_archive(content, [item], f))
        else:
            _write_file(dst.path, lambda f: write_docker_archive(content, index, [item], f,
                                                                 tmpdir=scratch))
        return CopyResult(image.target, image.manifest_digest)


def _names_for(dst: ImageLocation, src_name: Reference | None) -> tuple[Reference, ...]:
    """The names to write an image under in a layout / archive."""
    if dst.name is None:
        if dst.kind == "docker-archive":
            return (src_name,) if src_name is not None and src_name.tag else ()
        base = src_name or Reference("localhost", "image", "latest")
        return (base if base.tag else base.with_tag("latest"),)
    try:
        ref = Reference.parse(dst.name)
        if "/" in dst.name or dst.kind == "docker-archive":
            return (ref,)
    except InvalidArgument:
        pass
    base = src_name or Reference("localhost", "image", "latest")
    return (base.with_tag(dst.name),)


def _write_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _scratch_index(scratch: Path) -> Iterator[ImageStore]:
    """A throw-away image index, so loading a copy source names nothing in the user's store."""
    d = scratch / f"copy-{uuid.uuid4().hex}"
    d.mkdir(parents=True)
    try:
        yield ImageStore(d / "images.db")
    finally:
        shutil.rmtree(d, ignore_errors=True)
