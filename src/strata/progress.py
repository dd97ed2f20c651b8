"""Progress as data: the library reports, the CLI draws (go-containerregistry ``v1.Update``).

Imports nothing from strata; any package may send events to a ``Progress`` callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Progress", "ProgressEvent", "Stage", "no_progress"]


class Stage(StrEnum):
    """What happened to the item an event is about (docker's progress words)."""

    WAITING = "Waiting"
    EXISTS = "Already exists"
    LOADING = "Loading layer"
    VERIFYING = "Verifying"
    EXTRACTING = "Extracting"
    DONE = "Done"
    WRITING = "Writing"
    DOWNLOADING = "Downloading"
    DOWNLOAD_COMPLETE = "Download complete"
    PULL_COMPLETE = "Pull complete"
    PREPARING = "Preparing"
    PUSHING = "Pushing"
    PUSHED = "Pushed"
    MOUNTED = "Mounted from"
    LAYER_EXISTS = "Layer already exists"
    RETRYING = "Retrying"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``id`` names the item (a short digest); ``current``/``total`` count bytes."""

    id: str
    stage: Stage
    current: int = 0
    total: int | None = None
    detail: str = ""


Progress = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """A Progress that ignores every event."""
    del event
