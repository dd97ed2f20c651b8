"""The CLI's per-invocation state: where the store is, and the engine over it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from strata.engine import Engine

__all__ = ["State", "engine_of"]


@dataclass(slots=True)
class State:
    root: Path | None
    debug: bool = False
    _engine: Engine | None = field(default=None)

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.root)
        return self._engine


def engine_of(ctx: click.Context) -> Engine:
    state = ctx.find_object(State)
    assert state is not None
    return state.engine()
