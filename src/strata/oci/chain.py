"""chainIDs: names for stacks of applied layers (image-spec config.md#layer-chainid)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from strata.oci.digest import SHA256, Digest

__all__ = ["chain_id", "chain_ids"]


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """The chainID of every prefix: ``chain(L1) = diff_id(L1)``, then
    ``chain(L1..Ln) = sha256(chain(L1..Ln-1) + " " + diff_id(Ln))``."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            text = f"{out[-1]} {diff_id}".encode()
            out.append(Digest(SHA256, hashlib.sha256(text).hexdigest()))
    return out


def chain_id(diff_ids: Sequence[Digest]) -> Digest | None:
    """The chainID of the whole stack, or None for no layers."""
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else None
