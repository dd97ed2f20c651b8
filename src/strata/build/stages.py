"""The stage graph of a Dockerfile: which stages a target needs and in what order.

A stage depends on an earlier stage when its ``FROM`` names it, when a ``COPY --from`` /
``ADD --from`` names it (by name or index), or when a ``RUN --mount=...,from=`` does.
:func:`needed` prunes the graph to what ``--target`` (default: the last stage) needs, and
:func:`build_graph` builds those stages, independent ones concurrently in a small thread
pool, each as soon as the stages it depends on are done.  Pure scheduling: the building is
the caller's ``build_one``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from strata.build.dockerfile import Dockerfile, Stage
from strata.build.expand import expand, expand_pairs
from strata.errors import DockerfileError, InvalidArgument

__all__ = ["build_graph", "dependencies", "meta_args", "needed", "stage_index"]

T = TypeVar("T")


def meta_args(df: Dockerfile, build_args: Mapping[str, str]) -> dict[str, str]:
    """The values of the ARGs before the first FROM (``--build-arg`` overrides defaults)."""
    values: dict[str, str] = {}
    for ins in df.meta_args:
        for key, default in expand_pairs(ins.pairs(), values, escape=df.escape):
            if key in build_args:
                values[key] = build_args[key]
            elif default is not None:
                values[key] = default
    return values


def stage_index(df: Dockerfile, name: str, before: int) -> int | None:
    """The index of the stage ``name`` (an ``AS`` name, case-insensitive, or a number) among
    the stages before ``before``; None when it names no stage (an image, then)."""
    wanted = name.lower()
    for stage in df.stages[:before]:
        if stage.name == wanted:
            return stage.index
    if wanted.isdigit():
        index = int(wanted)
        if index >= before:
            raise InvalidArgument(f"stage {name} refers to itself or a later stage")
        return index
    return None


def _from_refs(df: Dockerfile, stage: Stage, args: Mapping[str, str]) -> list[str]:
    refs = []
    for ins in stage.instructions:
        if ins.keyword in ("COPY", "ADD"):
            frm = ins.flag("from")
            if frm:
                refs.append(expand(frm, args, escape=df.escape))
        elif ins.keyword == "RUN":
            for mount in ins.flags.get("mount", ()):
                for part in mount.split(","):
                    key, _, value = part.partition("=")
                    if key.strip().lower() == "from" and value:
                        refs.append(expand(value, args, escape=df.escape))
    return refs


def dependencies(df: Dockerfile, stage: Stage, args: Mapping[str, str]) -> set[int]:
    """The indices of the earlier stages ``stage`` uses."""
    deps: set[int] = set()
    base = expand(stage.base, args, escape=df.escape).lower()
    for stage_ in df.stages[: stage.index]:
        if stage_.name == base:
            deps.add(stage_.index)
    for ref in _from_refs(df, stage, args):
        index = stage_index(df, ref, stage.index)
        if index is not None:
            deps.add(index)
    return deps


def needed(df: Dockerfile, target: str | None, args: Mapping[str, str]) -> list[int]:
    """The stages the target needs, in Dockerfile order (the target last).

    Raises:
        DockerfileError: ``target`` names no stage.
    """
    top = len(df.stages) - 1 if target is None else df.stage(target).index
    todo = [top]
    seen: set[int] = set()
    while todo:
        index = todo.pop()
        if index in seen:
            continue
        seen.add(index)
        todo.extend(dependencies(df, df.stages[index], args))
    return sorted(seen)


def build_graph(df: Dockerfile, order: list[int], args: Mapping[str, str],
                build_one: Callable[[Stage, Mapping[str, T]], T], *,
                workers: int = 2) -> dict[int, T]:
    """Build the stages in ``order``: each once its dependencies are built, up to
    ``workers`` at a time.  ``build_one`` receives the stage and the results it depends on
    (by lower-case name and by index).  Returns the results by stage index.

    The first failure stops scheduling; stages already running finish, then it is raised.
    """
    if not order:
        raise DockerfileError("no stage to build", path=df.path)
    deps = {i: dependencies(df, df.stages[i], args) for i in order}
    results: dict[int, T] = {}
    lock = threading.Lock()

    def inputs(index: int) -> dict[str, T]:
        out: dict[str, T] = {}
        with lock:
            for dep in deps[index]:
                result = results[dep]
                out[str(dep)] = result
                name = df.stages[dep].name
                if name:
                    out[name] = result
        return out

    if workers <= 1 or len(order) == 1:
        for index in order:
            results[index] = build_one(df.stages[index], inputs(index))
        return results
    pending = list(order)
    running: dict[Future[T], int] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="strata-stage") as pool:
        while pending or running:
            if failure is None:
                for index in list(pending):
                    if len(running) >= workers:
                        break
                    if deps[index] <= results.keys():
                        pending.remove(index)
                        running[pool.submit(build_one, df.stages[index], inputs(index))] = index
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                exc = future.exception()
                if exc is not None:
                    failure = failure or exc
                    pending.clear()
                else:
                    with lock:
                        results[index] = future.result()
    if failure is not None:
        raise failure
    return results
