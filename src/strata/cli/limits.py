"""The security and resource options of ``run`` / ``create`` (docker's words and syntax).

``-m/--memory``, ``--memory-swap``, ``--cpus``, ``--pids-limit``, ``--ulimit``,
``--privileged``, ``--security-opt``, ``--userns``: :data:`OPTIONS` are added to the
container commands by :mod:`strata.cli.run`, and :func:`fields` turns what was parsed into
:class:`~strata.runtime.RunOptions` fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from strata.errors import InvalidArgument
from strata.runtime import cgroups, spec

__all__ = ["OPTIONS", "fields"]

OPTIONS: tuple[Callable[[Any], Any], ...] = (
    click.option("-m", "--memory", metavar="BYTES",
                 help="Memory limit (e.g. 512m, 1g)."),
    click.option("--memory-swap", metavar="BYTES",
                 help="Memory plus swap limit; -1 for unlimited swap (default: twice "
                      "--memory)."),
    click.option("--cpus", metavar="DECIMAL", help="Number of CPUs (e.g. 0.5)."),
    click.option("--pids-limit", type=int, metavar="N",
                 help="Tune container pids limit (-1 for unlimited)."),
    click.option("--ulimit", "ulimits", multiple=True, metavar="NAME=SOFT[:HARD]",
                 help="Ulimit options (e.g. nofile=1024:2048)."),
    click.option("--privileged", is_flag=True,
                 help="Give extended privileges to this container."),
    click.option("--security-opt", "security_opt", multiple=True,
                 metavar="seccomp=unconfined|PROFILE.json",
                 help="Security options (seccomp=..., no-new-privileges)."),
    click.option("--userns", metavar="host|auto",
                 help="User namespace: host (none, default) or auto (root in the container "
                      "is an unprivileged host user)."),
)


def fields(opts: dict[str, Any]) -> dict[str, Any]:
    """RunOptions fields from the parsed options.

    Raises:
        InvalidArgument: a bad size, CPU count, ulimit or userns mode.
    """
    out: dict[str, Any] = {}  # (docker: 0 means "not set" for each of these)
    if opts.get("memory"):
        out["memory"] = cgroups.parse_bytes(opts["memory"]) or None
    swap = opts.get("memory_swap")
    if swap:
        out["memory_swap"] = -1 if swap.strip() == "-1" else cgroups.parse_bytes(swap) or None
    if opts.get("cpus"):
        out["cpus"] = cgroups.parse_cpus(opts["cpus"]) or None
    if opts.get("pids_limit") is not None:
        out["pids_limit"] = opts["pids_limit"]
    ulimits = opts.get("ulimits") or ()
    if ulimits:
        out["rlimits"] = tuple(spec.parse_ulimit(u) for u in ulimits)
    if opts.get("privileged"):
        out["privileged"] = True
    if opts.get("security_opt"):
        out["security_opt"] = tuple(opts["security_opt"])
    userns = opts.get("userns")
    if userns:
        if userns not in ("host", "auto"):
            raise InvalidArgument(f"invalid --userns mode {userns!r} (host or auto)")
        out["userns"] = None if userns == "host" else userns
    return out
