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

import sys
import threading
from typing import TYPE_CHECKING

from .lazy import AfterImport, lazy_exports

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
# `from transformers import pipeline` imports modeling_auto while PreTrainedModel is still half-imported, so registering
# fails at both of the modules above; it succeeds once modeling_utils, or the pipelines package, has finished loading.
_RETRY_MODULES = ("transformers.modeling_utils", "transformers.pipelines")
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
        _AFTER_AUTO_IMPORT.uninstall()


def _register_after_auto_import(module: object) -> None:
    try:
        register_auto_classes()
    except ImportError:
        # Our own model modules triggered this import and are half-imported, so registering now fails; they
        # register when a name of this package is used or register_auto_classes() is called.
        return


# One-shot: when transformers' auto classes are first imported, register ours right after, so `import model_pkg`
# (lazy) followed by `AutoModel.from_pretrained(...)` works as it did when the registration happened at import.
_AFTER_AUTO_IMPORT = AfterImport(_AUTO_MODULES + _RETRY_MODULES, _register_after_auto_import)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), on_load=register_auto_classes)


if any(name in sys.modules for name in _AUTO_MODULES):
    register_auto_classes()  # transformers' auto classes are loaded already: registering costs little now
else:
    _AFTER_AUTO_IMPORT.install()
