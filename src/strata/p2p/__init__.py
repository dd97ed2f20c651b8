"""strata.p2p."""

from __future__ import annotations

__all__: list[str] = []
