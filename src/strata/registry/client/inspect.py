"""Look at an image in a registry without pulling it: ``manifest inspect`` (the manifest or
index as served) and ``inspect --remote`` (skopeo ``inspect``'s summary of the config)."""

from __future__ import annotations

from dataclasses import dataclass

from strata.oci import Digest, ImageConfig, Manifest, Platform, Reference
from strata.oci._json import JSONObject
from strata.registry.client.errors import RegistryError
from strata.registry.client.pull import resolve
from strata.registry.client.remote import FetchedManifest, RegistryClient

__all__ = ["RemoteInspect", "inspect_remote", "manifest_inspect"]


@dataclass(frozen=True, slots=True)
class RemoteInspect:
    """What ``skopeo inspect docker://REF`` reports, read from the registry."""

    reference: Reference
    digest: Digest
    tags: tuple[str, ...]
    config: ImageConfig
    manifest: Manifest

    def to_json(self) -> JSONObject:
        cfg = self.config
        container = cfg.config
        out: JSONObject = {
            "Name": self.reference.name,
            "Digest": str(self.digest),
            "RepoTags": list(self.tags),
            "Created": cfg.created or "",
            "DockerVersion": cfg.docker_version or "",
            "Labels": dict(container.labels) if container and container.labels else None,
            "Architecture": cfg.architecture,
            "Os": cfg.os,
            "Layers": [str(d.digest) for d in self.manifest.layers],
            "LayersData": [
                {"MIMEType": d.media_type, "Digest": str(d.digest), "Size": d.size,
                 "Annotations": dict(d.annotations) or None}
                for d in self.manifest.layers
            ],
            "Env": list(container.env) if container and container.env else None,
        }
        if cfg.variant:
            out["Variant"] = cfg.variant
        return out


def manifest_inspect(client: RegistryClient, ref: Reference) -> FetchedManifest:
    """The manifest or index ``ref`` names, exactly as the registry serves it (verified)."""
    repo = client.repository(ref)
    return repo.get_manifest(str(ref.digest) if ref.digest else (ref.tag or "latest"))


def inspect_remote(client: RegistryClient, ref: Reference, *,
                   platform: Platform | None = None) -> RemoteInspect:
    """Summarise the image ``ref`` names (its platform manifest's config), and the tags of
    its repository."""
    repo = client.repository(ref)
    top, fetched = resolve(repo, ref, platform)
    manifest = Manifest.parse(fetched.raw, f"manifest {ref}")
    config = ImageConfig.parse(repo.read_blob(manifest.config.digest),
                               f"config {manifest.config.digest}")
    try:
        tags = tuple(repo.tags())
    except RegistryError:
        tags = ()
    return RemoteInspect(ref, top.digest, tags, config, manifest)
