"""strata.runtime: containers from images — OCI runtime-spec bundles, rootfs from snapshots,
a built-in runtime in Python (namespaces, ``pivot_root``, capabilities) and the hand-off to an
installed OCI runtime (``runc``), with container records in SQLite.
"""

from __future__ import annotations

from strata.runtime.container import Containers as Containers
from strata.runtime.container import ImageForRun as ImageForRun
from strata.runtime.container import parse_signal as parse_signal
from strata.runtime.exec import ExecOptions as ExecOptions
from strata.runtime.logs import LogEntry as LogEntry
from strata.runtime.spec import RunOptions as RunOptions
from strata.runtime.spec import User as User
from strata.runtime.store import ContainerRecord as ContainerRecord
from strata.runtime.store import ContainerStore as ContainerStore

__all__ = ["ContainerRecord", "ContainerStore", "Containers", "ExecOptions", "ImageForRun",
           "LogEntry", "RunOptions", "User", "parse_signal"]
