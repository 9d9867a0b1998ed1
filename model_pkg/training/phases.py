"""The two phases of a family's run: a frozen backbone trained on cached features, then fine-tuning on pixels.

One Trainer run covers both phases (pair matcher, ArcFace embedder). `PhaseCollator` hands the model
cached features while the backbone is frozen and pixels once it trains; `BackbonePhaseCallback` makes the
switch at step `frozen_steps` (and saves the frozen-phase model); `PhaseAwareEarlyStopping` never ends
the frozen phase before fine-tuning has run; `phase_optimizer` is the one optimizer both phases share.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import EarlyStoppingCallback, TrainerCallback

from .checkpoints import save_atomically
from .distributed import process_state

logger = logging.getLogger(__name__)

__all__ = ["BackbonePhaseCallback", "Collator", "PhaseAwareEarlyStopping", "PhaseCollator", "phase_optimizer"]

Collator = Callable[[Sequence[dict]], dict]  # rows -> a batch of tensors


class PhaseCollator:
    """Cached tokens while the backbone is frozen, pixels once it trains (augmented for train rows).

    Training batches (rows with `augment`) take their phase from their own index when `frozen_steps` is given:
    the first `frozen_steps` are cached tokens, the rest pixels. The data loader collates one batch ahead of the
    step that uses it, so a flag flipped at the phase switch would reach the training batches one batch late, and
    not at all for the first batch after a resume; counting batches (`train_batches`, set to the global step when
    training starts or resumes) gives an interrupted run the same batches as an uninterrupted one. For the same
    reason their random augmentation is drawn from a generator seeded by `seed` and the batch index, not from the
    global RNG: the look-ahead batch would otherwise draw before the checkpoint stores the RNG state, and a resumed
    run would see other crops. Evaluation batches follow `use_tokens`. Of several training processes, each one
    (`process_index`) draws augmentations of its own; process 0 draws exactly what a single process would."""

    def __init__(
        self,
        cached: Collator,
        train_pixels: Collator,
        eval_pixels: Collator,
        frozen_steps: int | None = None,
        seed: int = 0,
        process_index: int = 0,
    ):
        self.cached = cached
        self.train_pixels = train_pixels
        self.eval_pixels = eval_pixels
        self.use_tokens = True
        self.frozen_steps = frozen_steps
        self.seed = seed
        self.process_index = process_index
        self.train_batches = 0

    def __call__(self, features):
        augment = all(f.get("augment", False) for f in features)
        if augment and self.frozen_steps is not None:
            index = self.train_batches
            self.train_batches += 1
            if index < self.frozen_steps:
                return self.cached(features)
            with torch.random.fork_rng(devices=[]):  # the global RNG (dropout, ...) is left as it was
                torch.manual_seed(self.seed * 1_000_003 + index + (self.process_index << 32))
                return self.train_pixels(features)
        if self.use_tokens:
            return self.cached(features)
        return (self.train_pixels if augment else self.eval_pixels)(features)


class BackbonePhaseCallback(TrainerCallback):
    """At step `frozen_steps`: save the frozen-phase model, unfreeze the backbone, switch to pixels.

    `model` is a family's model with `set_backbone_frozen` and `config.freeze_backbone`; `collator` a
    `PhaseCollator` (or anything with `use_tokens`). A family that changes more at the switch (the ArcFace
    margin) extends `apply_phase` and says what in `switch_note`."""

    def __init__(self, model: Any, collator: Any, frozen_steps: int, frozen_dir: str):
        self.model = model
        self.collator = collator
        self.frozen_steps = frozen_steps
        self.frozen_dir = frozen_dir

    def switch_note(self) -> str:
        """What else the switch changes, for its log line."""
        return ""

    def apply_phase(self, step: int) -> None:
        """Set the phase of the step that runs after `step` steps are done."""
        finetuning = step >= self.frozen_steps
        if finetuning and self.model.config.freeze_backbone:
            logger.info("step %d: backbone unfrozen, training on pixels%s", step, self.switch_note())
        self.model.set_backbone_frozen(not finetuning)
        self.collator.use_tokens = not finetuning

    def on_train_begin(self, args, state, control, **kwargs):
        self.apply_phase(state.global_step)  # also right after a resume
        # the batches already trained on; read only by a collator given `frozen_steps` (the pair matcher's, whose
        # runs have no gradient accumulation)
        self.collator.train_batches = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        at_switch = state.global_step == self.frozen_steps and self.frozen_steps > 0
        # of several processes only the main one writes it; whole or absent: a run killed while writing it must not
        # leave a folder that no longer loads
        if at_switch and process_state().is_main_process and not os.path.isdir(self.frozen_dir):
            save_atomically(self.frozen_dir, lambda tmp: self.model.save_pretrained(tmp))
        self.apply_phase(state.global_step)


class PhaseAwareEarlyStopping(EarlyStoppingCallback):
    """Early stopping on the validation metric that never ends the frozen phase before fine-tuning has run."""

    def __init__(self, patience: int, frozen_steps: int, finetune_steps: int):
        super().__init__(early_stopping_patience=patience)
        self.frozen_steps = frozen_steps
        self.finetune_steps = finetune_steps

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if self.finetune_steps and state.global_step <= self.frozen_steps:
            control.should_training_stop = False
            if state.global_step == self.frozen_steps:
                self.early_stopping_patience_counter = 0  # fine-tuning gets its full patience


def phase_optimizer(
    model: nn.Module, backbone: nn.Module, learning_rate: float, backbone_learning_rate: float, weight_decay: float
) -> torch.optim.AdamW:
    """One AdamW for both phases: the heads at `learning_rate`, `backbone` at `backbone_learning_rate`.

    Built up front with every parameter, so the phase switch needs no new optimizer and a resumed run
    restores it exactly."""
    backbone_params = list(backbone.parameters())
    backbone_ids = {id(p) for p in backbone_params}
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    return torch.optim.AdamW(
        [
            {"params": head_params, "lr": learning_rate},
            {"params": backbone_params, "lr": backbone_learning_rate},
        ],
        weight_decay=weight_decay,
    )
