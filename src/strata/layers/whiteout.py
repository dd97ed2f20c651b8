"""Whiteouts: how a layer says "this path is deleted" and "this directory hides what is below".

Owns the two spellings and the conversion between them:

* OCI / AUFS, inside a tar: an empty member ``DIR/.wh.NAME`` deletes ``DIR/NAME``; a member
  ``DIR/.wh..wh..opq`` makes ``DIR`` opaque (nothing from lower layers shows through);
* overlayfs, on disk in an upper directory: a character device 0/0 named ``NAME``, and the
  xattr ``trusted.overlay.opaque=y`` on an opaque directory.

Pure helpers and constants; the filesystem work is done by :mod:`strata.layers.apply` and
:mod:`strata.layers.diff`.
"""

from __future__ import annotations

import os
import stat
from enum import StrEnum

from strata.errors import UnsafeArchive

__all__ = [
    "OPAQUE_MARKER",
    "OVERLAY_OPAQUE_XATTR",
    "OVERLAY_XATTR_PREFIX",
    "WHITEOUT_PREFIX",
    "WhiteoutMode",
    "is_overlay_whiteout",
    "whiteout_name",
    "whiteout_target",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIX = "trusted.overlay."


class WhiteoutMode(StrEnum):
    """How :func:`strata.layers.apply` writes the whiteouts of a layer.

    ``OCI``: onto a plain directory holding the layers below — ``.wh.NAME`` removes ``NAME``;
    an opaque marker empties the directory of every entry this layer did not write (umoci's
    semantics: entries the layer wrote survive whatever order the markers come in).

    ``OVERLAY``: into an overlay upper (snapshot) directory — ``.wh.NAME`` becomes a character
    device 0/0 ``NAME``; an opaque marker sets ``trusted.overlay.opaque=y`` on the directory.
    """

    OCI = "oci"
    OVERLAY = "overlay"


def whiteout_target(base: str, member: str) -> str | None:
    """The name a whiteout member deletes; ``""`` for the opaque marker; None if not a whiteout.

    Args:
        base: the last component of the member's cleaned name.
        member: the member's name, for errors.

    Raises:
        UnsafeArchive: ``.wh.`` names nothing, ``.`` or ``..``.
    """
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE_MARKER:
        return ""
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", ".."):
        raise UnsafeArchive(member, f"whiteout {base!r} names no deletable entry")
    return target


def whiteout_name(name: str) -> str:
    """The OCI whiteout member name that deletes the cleaned path ``name``."""
    head, sep, base = name.rpartition("/")
    return f"{head}{sep}{WHITEOUT_PREFIX}{base}"


def is_overlay_whiteout(st: os.stat_result) -> bool:
    """True for an overlayfs whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
