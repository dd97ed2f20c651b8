"""Image sizes and disk usage as docker defines them (moby daemon, 20.10).

* A layer's size is what ``pkg/directory.Size`` returns on its applied diff directory: the
  st_size of every non-directory entry, each inode once (``LayerFacts.disk_size``).
* An image's ``Size`` is the sum of its layers' sizes along its chain (``roLayer.Size``:
  parent size + own size), so two layers with the same diff_id count twice.
* ``SharedSize`` (``system df -v``): the sizes of the image's layers whose chainID is used by
  more than one image (``daemon/images/images.go``: ``layerRefs[chid] > 1``); images are
  counted once per image ID, however many tags they have.
* ``LayersSize`` (``system df``): the sizes of all layers in use, each chainID once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from strata.images.store import ImageRecord, LayerFacts
from strata.oci import Digest, ImageConfig, chain_ids

__all__ = ["DiskUsage", "ImageFacts", "ImageSummary", "summarize", "used_diff_ids"]


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """One image ID, as docker's ``ImageSummary``: tags and digests pointing to it, sizes."""

    id: Digest
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: dt.datetime | None
    size: int
    shared_size: int
    containers: int
    records: tuple[ImageRecord, ...]
    chain: tuple[Digest, ...]

    @property
    def unique_size(self) -> int:
        return self.size - self.shared_size


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """``system df``: the images and the bytes their distinct layers take."""

    images: tuple[ImageSummary, ...]
    layers_size: int

    @property
    def active(self) -> int:
        return sum(1 for i in self.images if i.containers > 0)

    @property
    def reclaimable(self) -> int:
        """docker: total minus what images with containers use exclusively."""
        used = sum(i.size - i.shared_size for i in self.images if i.containers > 0)
        return self.layers_size - used


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What ``summarize`` needs of one image record: its ID, config and record."""

    record: ImageRecord
    image_id: Digest
    config: ImageConfig


def summarize(
    images: Sequence[ImageFacts],
    layers: Mapping[Digest, LayerFacts],
    containers: Mapping[Digest, int] | None = None,
) -> DiskUsage:
    """Group records by image ID and compute docker's sizes.

    Args:
        images: every image record with its parsed config.
        layers: layer facts by diff_id (a layer without facts counts 0).
        containers: containers per image ID.
    """
    by_id: dict[Digest, list[ImageFacts]] = defaultdict(list)
    for facts in images:
        by_id[facts.image_id].append(facts)
    chains: dict[Digest, list[Digest]] = {}
    layer_size: dict[Digest, int] = {}
    refs: Counter[Digest] = Counter()
    for image_id, group in by_id.items():
        diff_ids = group[0].config.rootfs.diff_ids
        chain = chain_ids(diff_ids)
        chains[image_id] = chain
        for chain_id, diff_id in zip(chain, diff_ids, strict=True):
            known = layers.get(diff_id)
            layer_size[chain_id] = known.disk_size if known else 0
        for chain_id in set(chain):
            refs[chain_id] += 1
    out: list[ImageSummary] = []
    for image_id, group in by_id.items():
        chain = chains[image_id]
        size = sum(layer_size[c] for c in chain)
        shared = sum(layer_size[c] for c in chain if refs[c] > 1)
        tags = sorted({r.record.reference.familiar() for r in group
                       if r.record.reference is not None and r.record.reference.tag})
        digests = sorted({
            f"{r.record.reference.familiar_name()}@{r.record.target.digest}"
            for r in group if r.record.reference is not None and r.record.reference.digest
        })
        config = group[0].config
        out.append(ImageSummary(
            id=image_id,
            repo_tags=tuple(tags),
            repo_digests=tuple(digests),
            created=config.created_at,
            size=size,
            shared_size=shared,
            containers=(containers or {}).get(image_id, 0),
            records=tuple(r.record for r in group),
            chain=tuple(chain),
        ))
    epoch = dt.datetime.fromtimestamp(0, dt.UTC)
    out.sort(key=lambda s: (s.created or epoch, str(s.id)), reverse=True)
    layers_size = sum(layer_size.values())
    return DiskUsage(tuple(out), layers_size)


def used_diff_ids(images: Iterable[ImageFacts]) -> set[Digest]:
    """Every diff_id some image uses."""
    return {d for i in images for d in i.config.rootfs.diff_ids}
