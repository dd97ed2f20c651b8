"""Rendering for the CLI: docker's table layout, sizes and durations, and rich progress.

The formats follow docker's CLI so that output can be compared side by side:
``text/tabwriter`` with minwidth 10, tabwidth 1, padding 3 (``formatter.go``); sizes with
go-units ``HumanSizeWithPrecision`` (decimal units); ages with go-units ``HumanDuration``.
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from strata.progress import ProgressEvent, Stage

if TYPE_CHECKING:  # rich is imported by the commands that draw with it, not by every command
    from rich.console import Console
    from rich.progress import TaskID

__all__ = [
    "console",  # noqa: F822 (module __getattr__: made on first use)
    "ellipsis",
    "err_console",  # noqa: F822
    "human_duration",
    "human_size",
    "since",
    "table",
    "truncate_id",
]


@functools.cache
def _consoles() -> tuple[Console, Console]:
    from rich.console import Console

    return (Console(highlight=False, soft_wrap=True),
            Console(stderr=True, highlight=False, soft_wrap=True))


def __getattr__(name: str) -> Console:
    """``console`` (stdout) and ``err_console`` (stderr): rich consoles made on first use."""
    if name == "console":
        return _consoles()[0]
    if name == "err_console":
        return _consoles()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float, precision: int = 4) -> str:
    """go-units ``HumanSizeWithPrecision``: ``%.{precision}g`` with decimal units."""
    unit = 0
    while size >= 1000.0 and unit < len(_DECIMAL_UNITS) - 1:
        size /= 1000.0
        unit += 1
    return f"{size:.{precision}g}{_DECIMAL_UNITS[unit]}"


def human_duration(delta: dt.timedelta) -> str:
    """go-units ``HumanDuration``."""
    seconds = int(delta.total_seconds())
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(delta.total_seconds() / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(delta.total_seconds() / 3600) // 24 // 365} years"


def since(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``N units ago`` from whole seconds, as docker's ``CreatedSince``; empty when unknown."""
    if when is None:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    whole = dt.datetime.fromtimestamp(int(when.timestamp()), dt.UTC)
    return human_duration(now - whole) + " ago"


def truncate_id(value: str) -> str:
    """docker's ``TruncateID``: drop the algorithm, keep 12 characters."""
    _, sep, rest = value.partition(":")
    value = rest if sep else value
    return value[:12]


def ellipsis(text: str, width: int) -> str:
    """docker's ``Ellipsis`` for display width ``width``."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, minwidth: int = 10,
          padding: int = 3) -> str:
    """Go ``text/tabwriter`` output as docker configures it; the last cell is not padded."""
    lines = [list(header), *[list(r) for r in rows]]
    ncols = max(len(line) for line in lines)
    widths = [0] * ncols
    for line in lines:
        for i, cell in enumerate(line[:-1]):
            widths[i] = max(widths[i], len(cell) + padding)
    widths = [max(w, minwidth) for w in widths]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        cells.append(line[-1])
        out.append("".join(cells))
    return "\n".join(out) + "\n"


class LayerProgress:
    """Draws per-blob progress events on stderr with rich (quiet when not a terminal)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self.enabled = sys.stderr.isatty()
        self._progress = Progress(
            TextColumn("{task.fields[item]}"), TextColumn("{task.description}"), BarColumn(),
            DownloadColumn(), console=_consoles()[1], transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> LayerProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        task = self._tasks.get(event.id)
        if task is None:
            task = self._progress.add_task(str(event.stage), total=event.total, item=event.id)
            self._tasks[event.id] = task
        done = event.stage in (Stage.DONE, Stage.EXISTS)
        self._progress.update(task, description=str(event.stage), completed=event.current,
                              total=event.total)
        if done and event.total:
            self._progress.update(task, completed=event.total)
