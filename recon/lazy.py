"""Light packages: names that load their module on first use (PEP 562), so that importing a package (and
the CLI, which builds its parser from the torch-free config modules) does not load torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """``(__getattr__, __all__)`` for a package whose attribute ``name`` lives in module ``names[name]``.

    Use at the package's top level: ``__getattr__, __all__ = lazy_names(__name__, {...})``.
    """

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(names)
