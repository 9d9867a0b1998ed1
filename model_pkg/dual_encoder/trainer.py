"""What HF Trainer runs for the dual encoder: caption batches (`CaptionBatchCollator`: one random caption per
image, pixels or cached tower outputs) and `DualEncoderTrainer`, whose evaluation is cross-modal retrieval on the
whole dev split (`evaluation.evaluate_retrieval`), not a loss. The run itself is `training.py`'s."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import cast

import torch
from transformers import Trainer

from ..data import load_image
from .evaluation import evaluate_retrieval, flat_metrics
from .modeling_dual_encoder import DualEncoderModel

__all__ = ["CaptionBatchCollator", "DualEncoderTrainer"]


class CaptionBatchCollator:
    """Rows `{row, image_path, captions}` -> one random caption per image, tokenized (or its cached text
    features), and the image's pixels (or cached image-tower outputs); `return_loss=True`."""

    def __init__(
        self,
        model: DualEncoderModel,
        image_features: torch.Tensor | None = None,
        transform=None,
        text_features: dict[tuple[int, int], int] | None = None,
        text_table: torch.Tensor | None = None,
        seed: int = 0,
    ):
        self.model = model
        self.image_features = image_features
        self.transform = transform
        self.text_index = text_features
        self.text_table = text_table
        self.rng = random.Random(seed)

    def __call__(self, rows: Sequence[dict]) -> dict:
        picks = [self.rng.randrange(len(r["captions"])) for r in rows]
        batch: dict = {"return_loss": True}
        if self.text_table is not None and self.text_index is not None:
            batch["text_features"] = self.text_table[[self.text_index[(r["row"], j)] for r, j in zip(rows, picks)]]
        else:
            batch.update(self.model.tokenize([r["captions"][j] for r, j in zip(rows, picks)]))
        if self.image_features is not None:
            batch["image_features"] = self.image_features[[r["row"] for r in rows]].float()
        else:
            batch["pixel_values"] = torch.stack([self.transform(load_image(r["image_path"])) for r in rows])
        return batch


class DualEncoderTrainer(Trainer):
    """HF Trainer whose evaluation is cross-modal retrieval on the whole dev split (not a loss)."""

    def __init__(self, *args, retrieval_eval: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.retrieval_eval = retrieval_eval

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        result = evaluate_retrieval(
            cast(DualEncoderModel, self.model), **self.retrieval_eval, batch_size=self.args.per_device_eval_batch_size
        )
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in flat_metrics(result).items()}
        metrics[f"{metric_key_prefix}_unix_time"] = time.time()  # wall-clock for learning curves (scripts/learning_curve.py)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
