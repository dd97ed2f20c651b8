"""strata: a daemonless container image engine.

The library is organised bottom-up as ``oci`` (pure data) → ``content`` (blobs) →
``layers`` / ``snapshots`` → ``images`` → ``registry`` / ``runtime`` / ``lazy`` →
``build`` / ``analyze`` / ``p2p`` → ``engine`` → ``cli``.  Each package re-exports its
public names; see ``DESIGN.md`` in the repository for the words used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
