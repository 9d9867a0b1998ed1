"""petmatch: is this the same animal? Set-vs-set matching, identity embeddings, text search.

`import model_pkg` is lazy (PEP 562): it imports neither torch nor transformers, so a command line tool or a
process that only needs `model_pkg.metrics` starts in a fraction of a second. A name is imported the first
time it is used (`from model_pkg import PairMatcherModel`, `model_pkg.ArcFaceEmbedderConfig`).

Our model types are registered with transformers' `AutoConfig` / `AutoModel` (so `AutoModel.from_pretrained`
rebuilds a saved petmatch model) at the first of:

* a model or config class taken from this package (`from model_pkg import DualEncoderModel`);
* transformers' auto classes being imported after `import model_pkg` (`from transformers import AutoModel`):
  an import hook registers them right after transformers' `configuration_auto` or `modeling_auto` has loaded;
* `import model_pkg` when transformers' auto classes are already imported (registered at once);
* an explicit `model_pkg.register_auto_classes()`.

So the usage in every model card keeps working unchanged:

    import model_pkg
    from transformers import AutoModel
    model = AutoModel.from_pretrained("models/pair-matcher")
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and IDEs
    from .align import MiniVec2VecAligner, MiniVec2VecConfig
    from .arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel, ArcFaceOutput
    from .dual_encoder import DualEncoderConfig, DualEncoderModel, DualEncoderOutput
    from .pair_matcher import PairMatcherConfig, PairMatcherModel, PairMatcherOutput

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the subpackage that defines it
    "ArcFaceEmbedderConfig": "arcface",
    "ArcFaceEmbedderModel": "arcface",
    "ArcFaceOutput": "arcface",
    "DualEncoderConfig": "dual_encoder",
    "DualEncoderModel": "dual_encoder",
    "DualEncoderOutput": "dual_encoder",
    "MiniVec2VecAligner": "align",
    "MiniVec2VecConfig": "align",
    "PairMatcherConfig": "pair_matcher",
    "PairMatcherModel": "pair_matcher",
    "PairMatcherOutput": "pair_matcher",
}
__all__ = [  # _EXPORTS and register_auto_classes, spelled out for linters and `from model_pkg import *`
    "ArcFaceEmbedderConfig",
    "ArcFaceEmbedderModel",
    "ArcFaceOutput",
    "DualEncoderConfig",
    "DualEncoderModel",
    "DualEncoderOutput",
    "MiniVec2VecAligner",
    "MiniVec2VecConfig",
    "PairMatcherConfig",
    "PairMatcherModel",
    "PairMatcherOutput",
    "register_auto_classes",
]

# transformers' modules that define AutoConfig and AutoModel: registration follows whichever is imported first
# (`from transformers import AutoConfig` alone never imports modeling_auto). When modeling_auto is the one
# imported, it imports configuration_auto first; registering then fails on the half-imported modeling_auto and
# happens when modeling_auto itself has loaded.
_AUTO_MODULES = ("transformers.models.auto.configuration_auto", "transformers.models.auto.modeling_auto")
_lock = threading.RLock()
_registered = False


def register_auto_classes() -> None:
    """Register the petmatch config and model classes with `AutoConfig` / `AutoModel` (idempotent, thread-safe).

    Imports torch, transformers and the model modules. Called for you (see the module docstring); call it
    yourself only when you use `AutoModel` without `import model_pkg` having been run before."""
    global _registered
    with _lock:
        if _registered:
            return
        from transformers.models.auto.configuration_auto import AutoConfig
        from transformers.models.auto.modeling_auto import AutoModel

        from .align import MiniVec2VecConfig
        from .arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
        from .dual_encoder import DualEncoderConfig, DualEncoderModel
        from .pair_matcher import PairMatcherConfig, PairMatcherModel

        for config, model in (
            (PairMatcherConfig, PairMatcherModel),
            (ArcFaceEmbedderConfig, ArcFaceEmbedderModel),
            (DualEncoderConfig, DualEncoderModel),
            (MiniVec2VecConfig, None),  # the aligner is no nn.Module: no AutoModel
        ):
            AutoConfig.register(config.model_type, config, exist_ok=True)
            if model is not None:
                AutoModel.register(config, model, exist_ok=True)
        _registered = True
        _AfterAutoImport.uninstall()


class _AfterAutoImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: when transformers' auto classes are first imported, register ours right after,
    so `import model_pkg` (lazy) followed by `AutoModel.from_pretrained(...)` works as it did when the
    registration happened at import. It only wraps the loaders of those two modules, and removes itself once
    registered."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _AUTO_MODULES:
            return None
        for finder in sys.meta_path:  # the spec the import system would have found without us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module):
            execute(module)
            try:
                register_auto_classes()
            except ImportError:
                # Our own model modules triggered this import and are half-imported, so registering now
                # fails; they register when a name of this package is used or register_auto_classes() is called.
                return

        loader.exec_module = exec_module  # this module's own loader instance: other modules keep theirs
        return spec

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, cls)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    register_auto_classes()
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if any(name in sys.modules for name in _AUTO_MODULES):
    register_auto_classes()  # transformers' auto classes are loaded already: registering costs little now
elif not any(isinstance(f, _AfterAutoImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterAutoImport())
