"""From a recipe to a Trainer run: option checks, the mixed-precision choice, `TrainingArguments`.

Every family's `training.py` reads a YAML recipe into its own config dataclass and hands HF Trainer the
same kind of run: evaluation and checkpoints every `eval_steps`, the best checkpoint (by the family's
metric) kept and loaded at the end, no background loader workers, CPU when there is no GPU. What they
share is built here once; each family passes only what is its own (its metric, batch sizes, schedule).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["MIXED_PRECISION", "check_options", "data_description", "resolve_mixed_precision", "trainer_arguments"]

MIXED_PRECISION = ("auto", "bf16", "fp16", "no")


def check_options(config_cls: type, values: Mapping[str, Any], what: str) -> None:
    """Refuse recipe keys that `config_cls` (a dataclass) has no field for, naming the known ones.

    A misspelt option in a YAML recipe or a `--set key=value` would otherwise be a TypeError from the
    dataclass constructor, or worse, silently ignored.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {what} option(s) {unknown}; known options: {sorted(known)}.")


def resolve_mixed_precision(option: str = "auto") -> str:
    """ "bf16" on Ampere or newer GPUs, "fp16" on older GPUs, "no" on CPU (`option` forces one on a GPU)."""
    if option not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={option!r} is not one of {MIXED_PRECISION}.")
    if not torch.cuda.is_available():
        if option in ("bf16", "fp16"):
            logger.warning("mixed_precision=%s asked for, but there is no GPU: training in float32", option)
        return "no"
    if option == "auto":
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    return option


def trainer_arguments(
    output_dir: str,
    *,
    max_steps: int,
    batch_size: int,
    eval_batch_size: int,
    eval_steps: int,
    save_steps: int,
    save_total_limit: int | None,
    metric_for_best_model: str,
    logging_steps: int,
    report_to: str | list[str],
    seed: int,
    precision: str = "no",
    **extra: Any,
) -> TrainingArguments:
    """The `TrainingArguments` of a family's run: checkpoints in `output_dir`, evaluated and saved every
    `eval_steps` / `save_steps`, the checkpoint with the highest `metric_for_best_model` loaded at the end,
    `precision` as `resolve_mixed_precision` chose it. `extra`: the family's own arguments (its learning
    rate, scheduler, gradient accumulation, `eval_on_start`, ...)."""
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=metric_for_best_model,
        greater_is_better=True,
        logging_steps=logging_steps,
        report_to=report_to,
        remove_unused_columns=False,
        dataloader_num_workers=0,  # the collator's phase flag must be seen by the loader
        seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )


def data_description(data_dir: Any, num_photos: int) -> str:
    """How `summary.json` records a run's data: the folder, or what an in-memory table (a DataFrame or a
    Dataset) was."""
    if isinstance(data_dir, (str, os.PathLike)):
        return str(data_dir)
    return f"<{type(data_dir).__name__} with {num_photos} photos>"
