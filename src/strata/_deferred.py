"""Deferred imports: a package's re-exports, and whole modules, loaded on first use.

``strata run`` is a short-lived process whose latency is mostly the interpreter importing
code; a package ``__init__`` that imports every submodule makes every command pay for all
of them (``strata.images`` would pull the loader, the archive writers and the layer
extractor into ``run``).  :func:`lazy_exports` keeps a package's public names while loading
each submodule only when one of its names is first used (PEP 562); :func:`deferred_module`
stands for a module that is imported on the first attribute access.

Type checkers see the real imports: a package lists them under ``if TYPE_CHECKING:`` and
passes the same table here (``tests/runtime/test_fastpath_imports.py`` checks that the two
agree).  Imports nothing from strata.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["deferred_module", "lazy_exports"]


class _LazyPackage(types.ModuleType):
    """A package module whose exports are resolved from its submodules on first access."""

    _lazy_exports: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        try:
            submodule = self.__dict__["_lazy_exports"][name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{self.__name__}.{submodule}"), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds every imported submodule as an attribute of its package;
        # a submodule named like one of the package's exports (``strata.images.load`` and
        # the function ``load``) must not hide the export, as it would not have with eager
        # ``from .load import load`` lines.
        exports = self.__dict__.get("_lazy_exports", {})
        if (name in exports and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_exports(package: str, exports: Mapping[str, Iterable[str]]) -> None:
    """Make ``package`` (already in ``sys.modules``; call from its ``__init__``) export the
    names ``exports`` maps each submodule to, importing that submodule on first use.

    Args:
        package: the package's ``__name__``.
        exports: submodule name (relative, e.g. ``"store"``) → the names it provides.
    """
    module = sys.modules[package]
    table = {name: sub for sub, names in exports.items() for name in names}
    module.__dict__["_lazy_exports"] = table
    module.__class__ = _LazyPackage


class _DeferredModule(types.ModuleType):
    """A stand-in for a module that is imported on the first attribute access."""

    def __getattr__(self, name: str) -> Any:
        real = importlib.import_module(self.__name__)
        return getattr(real, name)


def deferred_module(name: str) -> Any:
    """An object whose attributes are those of module ``name``, imported on first use.

    Bind it under ``if not TYPE_CHECKING`` next to the real import for type checkers.
    """
    return _DeferredModule(name)
