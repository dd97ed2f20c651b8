"""strata's registry server: distribution-spec v1.1 over pluggable storage drivers.

``serve(resolve_config(path, root=..., listen=...), ServeOptions(workers=4))`` runs it;
``run_gc(config, dry_run=True)`` reports what garbage collection would remove.
"""

from __future__ import annotations

from strata.registry.server.config import ServerConfig as ServerConfig
from strata.registry.server.config import load_config as load_config
from strata.registry.server.config import resolve_config as resolve_config
from strata.registry.server.gc import GCReport as GCReport
from strata.registry.server.gc import collect_garbage as collect_garbage
from strata.registry.server.gc import run_gc as run_gc
from strata.registry.server.serve import ServeOptions as ServeOptions
from strata.registry.server.serve import serve as serve

__all__ = [
    "GCReport",
    "ServeOptions",
    "ServerConfig",
    "collect_garbage",
    "load_config",
    "resolve_config",
    "run_gc",
    "serve",
]
