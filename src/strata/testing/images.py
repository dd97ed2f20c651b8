"""Build OCI image layouts and docker-archives in code, for tests and benchmarks.

Inputs are uncompressed layer tars (bytes, e.g. from :mod:`strata.testing.tars`); the
builders compress, hash and write a layout or archive that skopeo, umoci and docker accept.
Options let a test break one thing on purpose (a wrong digest, a missing blob, a config that
disagrees with the manifest).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strata.oci import mediatypes

__all__ = ["BuiltImage", "LayerBlob", "build_image", "write_docker_archive", "write_layout",
           "write_layout_tar"]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A layer as stored: compressed bytes, their media type, and the diff_id."""

    data: bytes
    media_type: str
    diff_id: str

    @property
    def digest(self) -> str:
        return _sha(self.data)


@dataclass(slots=True)
class BuiltImage:
    """An image made in code: blobs by digest, and the manifest/config bytes."""

    name: str | None
    manifest: bytes
    config: bytes
    layers: list[LayerBlob]
    extra_blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def manifest_digest(self) -> str:
        return _sha(self.manifest)

    @property
    def config_digest(self) -> str:
        return _sha(self.config)

    def blobs(self) -> dict[str, bytes]:
        out = {self.manifest_digest: self.manifest, self.config_digest: self.config}
        for layer in self.layers:
            out[layer.digest] = layer.data
        out.update(self.extra_blobs)
        return out


def build_image(
    layer_tars: Sequence[bytes],
    *,
    name: str | None = "localhost/test:latest",
    compression: str = "gzip",
    cmd: Sequence[str] = ("sh",),
    created: str = "2024-01-01T00:00:00Z",
    diff_ids: Sequence[str] | None = None,
    history: Sequence[dict[str, object]] | None = None,
) -> BuiltImage:
    """An image whose layers are ``layer_tars`` (bottom first).

    Args:
        compression: ``gzip`` or ``none``.
        diff_ids: override the config's diff_ids (to make them lie).
    """
    layers = []
    for tar in layer_tars:
        if compression == "gzip":
            data = gzip.compress(tar, compresslevel=1, mtime=0)
            media_type = mediatypes.OCI_LAYER_GZIP
        else:
            data = tar
            media_type = mediatypes.OCI_LAYER
        layers.append(LayerBlob(data, media_type, _sha(tar)))
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": list(cmd), "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers",
                   "diff_ids": list(diff_ids) if diff_ids is not None else
                   [layer.diff_id for layer in layers]},
        "history": list(history) if history is not None else
        [{"created": created, "created_by": f"layer {i}"} for i in range(len(layers))],
    }
    raw_config = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": _sha(raw_config),
                   "size": len(raw_config)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest,
                    "size": len(layer.data)} for layer in layers],
    }
    return BuiltImage(name, json.dumps(manifest).encode(), raw_config, layers)


def _index(images: Sequence[BuiltImage]) -> bytes:
    entries = []
    for image in images:
        entry: dict[str, object] = {"mediaType": mediatypes.OCI_MANIFEST,
                                    "digest": image.manifest_digest, "size": len(image.manifest)}
        if image.name:
            entry["annotations"] = {"org.opencontainers.image.ref.name": image.name}
        entries.append(entry)
    return json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                       "manifests": entries}).encode()


def write_layout(dest: Path, images: Sequence[BuiltImage], *,
                 corrupt: dict[str, bytes] | None = None, omit: Sequence[str] = ()) -> Path:
    """Write an OCI layout directory.

    Args:
        corrupt: digest → bytes to store under that digest's name instead of the real ones.
        omit: digests whose blob files are left out.
    """
    blobs_dir = dest / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for image in images:
        for digest, data in image.blobs().items():
            if digest in omit:
                continue
            payload = (corrupt or {}).get(digest, data)
            (blobs_dir / digest.split(":", 1)[1]).write_bytes(payload)
    (dest / "index.json").write_bytes(_index(images))
    return dest


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_layout_tar(dest: Path, images: Sequence[BuiltImage], *,
                     corrupt: dict[str, bytes] | None = None, omit: Sequence[str] = ()) -> Path:
    """Write an OCI layout as a tar (``oci-archive``)."""
    with tarfile.open(dest, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        seen: set[str] = set()
        for image in images:
            for digest, data in image.blobs().items():
                if digest in omit or digest in seen:
                    continue
                seen.add(digest)
                _add(tar, f"blobs/sha256/{digest.split(':', 1)[1]}",
                     (corrupt or {}).get(digest, data))
        _add(tar, "index.json", _index(images))
    return dest


def write_docker_archive(dest: Path, images: Sequence[BuiltImage]) -> Path:
    """Write a docker-archive (``docker save`` layout) with uncompressed layers."""
    entries = []
    with tarfile.open(dest, "w") as tar:
        for image in images:
            config_name = f"{image.config_digest.split(':', 1)[1]}.json"
            _add(tar, config_name, image.config)
            names = []
            for layer in image.layers:
                raw = gzip.decompress(layer.data) if layer.media_type.endswith("gzip") else layer.data
                name = f"{layer.diff_id.split(':', 1)[1]}/layer.tar"
                if name not in tar.getnames():
                    _add(tar, name, raw)
                names.append(name)
            entries.append({"Config": config_name,
                            "RepoTags": [image.name] if image.name else None,
                            "Layers": names})
        _add(tar, "manifest.json", json.dumps(entries).encode())
    return dest
