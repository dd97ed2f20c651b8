"""``docker import``: turn a rootfs tarball into a one-layer image.

The tarball (plain, gzip or zstd; a file or a stream) is read once: its bytes are checked as a
layer (names stay inside the root), hashed to the diff_id, and gzip-compressed into the
content store in the same pass.  The config is what docker writes for an import.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import BinaryIO, cast

from strata.content import LocalStore
from strata.errors import StrataError
from strata.images.store import ImageRecord, ImageStore, LayerFacts
from strata.layers import CompressedWriter, LayerStats, open_decompressed, scan
from strata.oci import (
    Compression,
    ContainerConfig,
    Descriptor,
    Digest,
    History,
    ImageConfig,
    Manifest,
    Platform,
    Reference,
    RootFS,
    format_time,
    mediatypes,
)

__all__ = ["ImportOptions", "ImportResult", "import_rootfs"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """What to record in the new image's config."""

    reference: Reference | None = None
    message: str = ""
    source_name: str = "-"
    config: ContainerConfig | None = None
    platform: Platform | None = None
    created: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ImportResult:
    image_id: Digest
    manifest: Descriptor


class _Tee:
    """A reader that copies everything read into a compressing writer."""

    def __init__(self, src: BinaryIO, sink: CompressedWriter) -> None:
        self._src = src
        self._sink = sink

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._sink.write(data)
        return data

    def readable(self) -> bool:
        return True


def import_rootfs(
    content: LocalStore,
    images: ImageStore,
    source: BinaryIO,
    options: ImportOptions | None = None,
) -> ImportResult:
    """Import a rootfs tarball as a single-layer image.

    Raises:
        UnsafeArchive: a member would escape the root.
        InvalidContent: the stream is no tar or is truncated.
    """
    opts = options or ImportOptions()
    plat = opts.platform or Platform.host()
    created = format_time(opts.created or dt.datetime.now(dt.UTC))
    with content.lease(label="import"):
        ref = f"import-{id(source)}-{threading.get_ident()}"
        writer = content.writer(ref)
        if writer.offset:
            writer.abort()
            writer = content.writer(ref)
        try:
            sink = CompressedWriter(cast(BinaryIO, writer), Compression.GZIP)
            with open_decompressed(source) as raw:
                stats: LayerStats = scan(_Tee(raw, sink))  # type: ignore[arg-type]
            sink.finish()
            layer_blob = writer.commit()
        except StrataError:
            writer.abort()
            raise
        except BaseException:
            writer.abort()
            raise
        comment = f"Imported from {opts.source_name}"
        history = History(created=created, comment=opts.message or comment)
        config = ImageConfig(
            architecture=plat.architecture,
            os=plat.os,
            variant=plat.variant,
            rootfs=RootFS((stats.diff_id,)),
            created=created,
            config=opts.config or ContainerConfig(),
            history=(history,),
            comment=opts.message or comment,
        )
        raw_config = config.to_bytes()
        config_desc = content.put(raw_config, mediatypes.OCI_CONFIG)
        layer_desc = Descriptor(mediatypes.OCI_LAYER_GZIP, layer_blob.digest, layer_blob.size)
        manifest = Manifest(mediatypes.OCI_MANIFEST, config_desc, (layer_desc,))
        raw_manifest = manifest.to_bytes()
        manifest_desc = content.put(raw_manifest, mediatypes.OCI_MANIFEST)
        name = str(opts.reference) if opts.reference else ImageRecord.dangling_name(
            manifest_desc.digest)
        images.put_many(
            [ImageRecord(name, manifest_desc)],
            layers=[LayerFacts(stats.diff_id, stats.size, stats.disk_size, stats.entries)],
        )
    return ImportResult(config_desc.digest, manifest_desc)
