"""What every family's training shares (pair matcher, ArcFace embedder, dual encoder).

Each family's `training.py` keeps only what is its own (its config, data, model, metric) and takes the rest
from here:

* `arguments`: option checks of a recipe, the mixed-precision choice, `TrainingArguments` of a run.
* `checkpoints`: the last checkpoint for auto-resume, `--fresh`, atomic saving (with a model card).
* `distributed`: several processes (`process_state`, `main_process_first`, `GlobalBatchNorm1d`, `log_cache`).
* `phases`: the frozen-backbone phase and fine-tuning in one Trainer run (`PhaseCollator`,
  `BackbonePhaseCallback`, `PhaseAwareEarlyStopping`, `phase_optimizer`).
* `cached_features`: batches from a frozen backbone's cached outputs (pooled features, stem-activation views).
* `gpu_recipes`: what the GPU recipes (`train/arcface_gpu.py`, `train/dual_image_gpu.py`) share; not
  re-exported here, as they import it by its module name.

Names load on first use (PEP 562), as in ``model_pkg.data``: inference imports ``checkpoints`` (atomic saving)
without the cached-feature datasets behind ``cached_features``, which cost the app's cold start (bench/README.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "MIXED_PRECISION": "arguments",
    "check_options": "arguments",
    "data_description": "arguments",
    "resolve_mixed_precision": "arguments",
    "trainer_arguments": "arguments",
    "ActivationViewCollator": "cached_features",
    "PhotoCollator": "cached_features",
    "PooledFeatureCollator": "cached_features",
    "activation_view_collators": "cached_features",
    "backbone_cache_key": "cached_features",
    "pooled_features": "cached_features",
    "last_checkpoint": "checkpoints",
    "remove_previous_run": "checkpoints",
    "save_atomically": "checkpoints",
    "save_with_model_card": "checkpoints",
    "GlobalBatchNorm1d": "distributed",
    "log_cache": "distributed",
    "main_process_first": "distributed",
    "process_state": "distributed",
    "BackbonePhaseCallback": "phases",
    "Collator": "phases",
    "PhaseAwareEarlyStopping": "phases",
    "PhaseCollator": "phases",
    "phase_optimizer": "phases",
}

__all__ = [
    "MIXED_PRECISION",
    "ActivationViewCollator",
    "BackbonePhaseCallback",
    "Collator",
    "GlobalBatchNorm1d",
    "PhaseAwareEarlyStopping",
    "PhaseCollator",
    "PhotoCollator",
    "PooledFeatureCollator",
    "activation_view_collators",
    "backbone_cache_key",
    "check_options",
    "data_description",
    "last_checkpoint",
    "log_cache",
    "main_process_first",
    "phase_optimizer",
    "pooled_features",
    "process_state",
    "remove_previous_run",
    "resolve_mixed_precision",
    "save_atomically",
    "save_with_model_card",
    "trainer_arguments",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .arguments import MIXED_PRECISION, check_options, data_description, resolve_mixed_precision, trainer_arguments
    from .cached_features import (
        ActivationViewCollator,
        PhotoCollator,
        PooledFeatureCollator,
        activation_view_collators,
        backbone_cache_key,
        pooled_features,
    )
    from .checkpoints import last_checkpoint, remove_previous_run, save_atomically, save_with_model_card
    from .distributed import GlobalBatchNorm1d, log_cache, main_process_first, process_state
    from .phases import BackbonePhaseCallback, Collator, PhaseAwareEarlyStopping, PhaseCollator, phase_optimizer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
