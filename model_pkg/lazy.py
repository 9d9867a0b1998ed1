"""Keeping imports cheap: package names that load on first use (PEP 562), and one-shot hooks that run right after a
given module has been imported.

`model_pkg`, `model_pkg.data` and `model_pkg.training` export their names with :func:`lazy_exports`; `model_pkg`
registers its AutoModel classes when transformers' auto modules load, and the app skips gradio's component-stub
step (`app/gradio_import.py`), both with :class:`AfterImport`. Only the standard library is imported here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["AfterImport", "lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any], on_load: Callable[[], None] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose public names live in its submodules and load on first use.

    ``exports`` maps each name to the submodule (relative to ``package``) that defines it; ``namespace`` is the
    package's ``globals()``, where a loaded name is stored so that later lookups skip ``__getattr__``; ``on_load``
    runs after each first load. In the package: ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())``.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        if on_load is not None:
            on_load()
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


class AfterImport(importlib.abc.MetaPathFinder):
    """Import hook: ``callback(module)`` runs right after any of ``modules`` has been imported (executed).

    It finds the spec the import system would have found without it and wraps only that spec's loader instance:
    other modules keep theirs, and nothing else about the import changes. It stays on ``sys.meta_path`` until
    :meth:`uninstall` (a callback that is done calls it), so a callback that cannot finish yet can wait for the
    next of its modules."""

    def __init__(self, modules: Iterable[str], callback: Callable[[ModuleType], None]):
        self.modules = frozenset(modules)
        self.callback = callback

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.modules:
            return None
        for finder in sys.meta_path:  # the spec the import system would have found without us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader: Any = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            self.callback(module)

        loader.exec_module = exec_module  # this module's own loader instance
        return spec

    def install(self) -> bool:
        """First on ``sys.meta_path``, unless a hook for the same modules is there already (a package imported
        twice); -> whether it was added."""
        if any(isinstance(f, AfterImport) and f.modules == self.modules for f in sys.meta_path):
            return False
        sys.meta_path.insert(0, self)
        return True

    def uninstall(self) -> None:
        """Off ``sys.meta_path``, with any other hook for the same modules."""
        sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, AfterImport) and f.modules == self.modules)]
