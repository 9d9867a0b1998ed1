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
"""

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
