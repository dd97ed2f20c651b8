"""What a finished build becomes: an image in the store, an OCI or docker archive.

:func:`assemble` turns the target stage's result into an image (config and manifest blobs in
the content store: OCI media types, gzip layers, the ``created`` time clamped to
``SOURCE_DATE_EPOCH`` when given); :func:`record` names it in the image store (``-t``, several
times, or a dangling record); :func:`write_output` writes ``--output type=oci|docker``.
Pushing (``type=registry``) is the engine's, through the registry client.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from strata.build.executor import StageResult
from strata.content import LocalStore
from strata.errors import InvalidArgument
from strata.images import (
    ImageRecord,
    ImageStore,
    LocalImage,
    SaveItem,
    write_docker_archive,
    write_oci_archive,
    write_oci_dir,
)
from strata.oci import Descriptor, Digest, Manifest, Reference, mediatypes

__all__ = ["BuiltImage", "OutputSpec", "assemble", "record", "write_output"]

_OCI_LAYER_TYPES = {
    mediatypes.DOCKER_LAYER: mediatypes.OCI_LAYER_GZIP,
    mediatypes.DOCKER_UNCOMPRESSED_LAYER: mediatypes.OCI_LAYER,
}


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One ``--output``: ``type=image`` (the store, the default), ``oci``, ``docker``,
    ``registry`` (``name=`` or the ``-t`` names), with ``dest`` a file (``-`` is stdout) or,
    for ``oci`` with ``tar=false``, a directory."""

    type: str = "image"
    dest: Path | None = None
    name: str | None = None
    tar: bool = True

    @classmethod
    def parse(cls, text: str) -> OutputSpec:
        """``type=oci,dest=out.tar`` (docker's ``--output`` CSV); a bare path means
        ``type=local`` in docker, which strata does not write.

        Raises:
            InvalidArgument: unknown type or key, or a missing ``dest``.
        """
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise InvalidArgument(f"--output {text!r}: expected key=value pairs"
                                      " (type=oci,dest=PATH)")
            fields[key.strip().lower()] = value.strip()
        kind = fields.pop("type", "")
        if kind not in ("image", "oci", "docker", "registry"):
            raise InvalidArgument(f"--output type={kind!r} is not supported (image, oci,"
                                  " docker, registry)")
        dest = fields.pop("dest", None)
        name = fields.pop("name", None)
        tar = fields.pop("tar", "true").lower() != "false"
        push = fields.pop("push", None)
        if push is not None and push.lower() == "true":
            kind = "registry"
        if fields:
            raise InvalidArgument(f"--output: unknown keys {', '.join(sorted(fields))}")
        if kind in ("oci", "docker") and not dest:
            raise InvalidArgument(f"--output type={kind} needs dest=PATH")
        return cls(kind, Path(dest) if dest else None, name, tar)


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """A built image: its manifest descriptor, image ID and config."""

    manifest: Descriptor
    image_id: Digest

    def view(self, content: LocalStore) -> LocalImage:
        return LocalImage(content, self.manifest)


def assemble(content: LocalStore, result: StageResult, *, created: str) -> BuiltImage:
    """Write the target stage's config and manifest into the content store.

    ``created`` (RFC 3339) is the config's creation time; the caller clamps it to
    ``SOURCE_DATE_EPOCH``.  The blobs are protected by the caller's lease.
    """
    config = replace(result.config, created=created)
    raw_config = config.to_bytes()
    config_desc = content.put(raw_config, mediatypes.OCI_CONFIG)
    layers = tuple(
        Descriptor(_OCI_LAYER_TYPES.get(d.media_type, d.media_type), d.digest, d.size)
        for d in result.layers
    )
    manifest = Manifest(mediatypes.OCI_MANIFEST,
                        Descriptor(mediatypes.OCI_CONFIG, config_desc.digest, config_desc.size),
                        layers)
    raw_manifest = manifest.to_bytes()
    manifest_desc = content.put(raw_manifest, mediatypes.OCI_MANIFEST)
    return BuiltImage(Descriptor(mediatypes.OCI_MANIFEST, manifest_desc.digest,
                                 manifest_desc.size), config_desc.digest)


def record(images: ImageStore, built: BuiltImage, tags: Sequence[Reference]) -> None:
    """Name the image in the store: one record per tag, or a dangling record without tags."""
    if tags:
        images.put_many([ImageRecord(str(ref), built.manifest) for ref in tags])
    else:
        images.put(ImageRecord(ImageRecord.dangling_name(built.manifest.digest), built.manifest))


def write_output(content: LocalStore, images: ImageStore, built: BuiltImage,
                 spec: OutputSpec, tags: Sequence[Reference], *, tmpdir: Path) -> None:
    """Write ``--output type=oci|docker`` (a tar, or an OCI layout directory with
    ``tar=false``).

    Raises:
        InvalidArgument: not a file output.
    """
    if spec.type not in ("oci", "docker") or spec.dest is None:
        raise InvalidArgument(f"--output type={spec.type} is not written to a file")
    names = tuple(tags)
    if spec.name:
        names = (*names, Reference.parse(spec.name))
    item = SaveItem(built.view(content), names)
    if spec.type == "oci" and not spec.tar:
        write_oci_dir(content, [item], spec.dest)
        return
    dest = spec.dest
    if str(dest) == "-":
        import sys

        out = sys.stdout.buffer
        if spec.type == "oci":
            write_oci_archive(content, [item], out)
        else:
            write_docker_archive(content, images, [item], out, tmpdir=tmpdir)
        out.flush()
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            if spec.type == "oci":
                write_oci_archive(content, [item], out)
            else:
                write_docker_archive(content, images, [item], out, tmpdir=tmpdir)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
