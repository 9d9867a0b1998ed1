"""What HF Trainer runs for the ArcFace embedder: P x K batches, the margin and learning-rate schedules, Recall@1.

`train_arcface` (`training.py`) wires these into one Trainer run of both phases:

* `ArcFaceTrainer` takes its training batches from a `PKBatchSampler` (P identities x K photos) and
  evaluates by embedding the val photos only (val dogs are not training classes, so there is no loss).
* `MarginScheduleCallback` switches phases at `frozen_steps` (`model_pkg.training.BackbonePhaseCallback`)
  and runs the ArcFace margin schedule: `frozen_margin` while the backbone is frozen, then up to `margin`.
* `phase_cosine_schedule` gives each phase its own warm-up and cosine cycle.
* `recall_metrics` / `compute_recall_metrics`: Recall@1/5 and mAP of the val photos, which pick the best
  checkpoint and drive early stopping.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from ..data.samplers import PKBatchSampler
from ..intake.settings import limitations_text
from ..metrics import retrieval_metrics
from ..training import BackbonePhaseCallback, PhaseCollator, save_with_model_card
from .modeling_arcface import ArcFaceEmbedderModel

__all__ = ["ArcFaceTrainer", "MarginScheduleCallback", "compute_recall_metrics", "phase_cosine_schedule", "recall_metrics"]


# -- the margin schedule ---------------------------------------------------------------------------
class MarginScheduleCallback(BackbonePhaseCallback):
    """Phase switch at step `frozen_steps`: save the frozen-phase model, unfreeze the backbone, train on
    pixels (`BackbonePhaseCallback`), and raise the ArcFace margin from `frozen_margin` to `margin`
    (linearly over `ramp_steps`)."""

    def __init__(
        self,
        model: ArcFaceEmbedderModel,
        collator: PhaseCollator,
        frozen_steps: int,
        frozen_dir: str,
        margin: float,
        frozen_margin: float = 0.0,
        ramp_steps: int = 0,
    ):
        super().__init__(model, collator, frozen_steps, frozen_dir)
        self.margin = margin
        self.frozen_margin = frozen_margin
        self.ramp_steps = ramp_steps

    def margin_at(self, step: int) -> float:
        """The margin of the step that runs after `step` steps are done."""
        if step < self.frozen_steps:
            return self.frozen_margin
        if self.ramp_steps <= 0:
            return self.margin
        progress = min(1.0, (step - self.frozen_steps + 1) / self.ramp_steps)
        return self.frozen_margin + progress * (self.margin - self.frozen_margin)

    def switch_note(self) -> str:
        """The margin the switch raises to, for its log line."""
        return f", margin -> {self.margin:.3f}"

    def apply_phase(self, step: int) -> None:
        """Freezing and inputs as `BackbonePhaseCallback` sets them, and the margin of the step."""
        super().apply_phase(step)
        self.model.set_margin(self.margin_at(step))


def phase_cosine_schedule(optimizer, frozen_steps: int, finetune_steps: int, warmup_ratio: float):
    """One cosine cycle per phase, each with its own linear warmup: a warm restart at the phase switch,
    so the newly trainable backbone and the raised margin start at the full learning rate."""

    def factor(step: int) -> float:
        if step < frozen_steps or finetune_steps == 0:
            start, length = 0, max(frozen_steps, 1)
        else:
            start, length = frozen_steps, finetune_steps
        t = step - start
        warmup = int(warmup_ratio * length)
        if t < warmup:
            return (t + 1) / warmup
        progress = min(1.0, (t - warmup) / max(1, length - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- Trainer and its metric ---------------------------------------------------------------------------
class ArcFaceTrainer(Trainer):
    """HF Trainer with P x K training batches and embedding-only evaluation.

    * `get_train_dataloader` feeds `pk_sampler` as the DataLoader's `batch_sampler` (Trainer's own
      `_get_dataloader` takes only a per-example sampler); Trainer calls its `set_epoch` every epoch.
    * `prediction_step` returns the embeddings and the rows' `identity`: val dogs are not training
      classes, so there is no margin-head loss to compute on them.
    """

    def __init__(self, *args, pk_sampler: PKBatchSampler, **kwargs):
        super().__init__(*args, **kwargs)
        self.pk_sampler = pk_sampler

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("ArcFaceTrainer needs a train_dataset.")
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.pk_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        identity = inputs.pop("identity", None)
        inputs.pop("labels", None)
        with torch.no_grad(), self.compute_loss_context_manager():
            embeddings = model(**inputs).embeddings
        return None, embeddings.float(), identity


def recall_metrics(embeddings: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    """First photo of each identity = gallery, the others = queries; Recall@1/5 (percent) and mAP."""
    identities = np.asarray(identities).reshape(-1)
    _, first = np.unique(identities, return_index=True)
    is_gallery = np.zeros(len(identities), dtype=bool)
    is_gallery[first] = True
    emb = np.asarray(embeddings, dtype=np.float64)
    sim = emb[~is_gallery] @ emb[is_gallery].T
    r = retrieval_metrics(identities[~is_gallery], identities[is_gallery], sim, ks=(1, 5))
    return {"recall_at_1": r["r1"], "recall_at_5": r["r5"], "map": r["map"]}


def compute_recall_metrics(eval_pred) -> dict[str, float]:
    """Recall@1/5 and mAP of the val photos, plus the wall-clock time (`unix_time`) for learning curves
    against time (`scripts/learning_curve.py`)."""
    predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return {**recall_metrics(predictions, eval_pred.label_ids), "unix_time": time.time()}


# -- saving ------------------------------------------------------------------------------------------
def save_with_card(
    model: ArcFaceEmbedderModel,
    save_directory: str,
    metrics: dict | None = None,
    data: str | None = None,
    training: dict | None = None,
    weights_dtype: torch.dtype | None = None,
) -> None:
    """save_pretrained + a model card (README.md), written atomically; ready for `push_folder_to_hub`."""
    cfg = model.config
    thresholds = (
        f"gallery thresholds calibrated on validation dogs: score {cfg.score_threshold:.3f}, vote margin "
        f"{cfg.margin_threshold:.3f} (k={cfg.gallery_k}, {cfg.gallery_per_id} photo(s) per dog)."
        if cfg.score_threshold is not None
        else "no calibrated gallery thresholds (never rejects as unknown)."
    )
    save_with_model_card(
        model,
        save_directory,
        weights_dtype,
        model_type=cfg.model_type,
        description=(
            f"ArcFace identity embedder: one photo -> a {cfg.embedding_size}-d L2-normalised embedding; photos of the "
            f"same individual animal lie close (cosine). Backbone `{cfg.backbone}` ({cfg.image_size}px), "
            f"ArcFace margin m={cfg.margin}, scale s={cfg.scale} over {cfg.num_classes} training identities; {thresholds}"
        ),
        metrics=metrics,
        data=data or "DogFaceNet (aligned dog faces), split by identity: test dogs are never seen in training.",
        intended_use="Identify a found animal among registered ones (a gallery), or reject it as unknown, for a person to confirm.",
        limitations=limitations_text(
            cfg,
            "A nearest match is a lead, not a proof of identity; the thresholds hold for the gallery size they were calibrated for.",
        ),
        training=training,
        base_model=f"timm/{cfg.backbone}",
        usage=(
            "import model_pkg\nfrom transformers import AutoModel\nfrom model_pkg.arcface.training import embed_paths\n"
            f"model = AutoModel.from_pretrained('{save_directory}')\n"
            "embeddings = embed_paths(model, ['dog1.jpg', 'dog2.jpg'])  # (2, E), L2-normalised\n"
            "print(float(embeddings[0] @ embeddings[1]))  # cosine similarity"
        ),
        tags=["image-feature-extraction", "pet-reidentification", "arcface"],
    )


def model_card_metrics(val: dict) -> dict:
    """Validation metrics (and the gallery calibration's) as the flat `val_*` keys of the model card's front matter."""
    out = {f"val_{k}": v for k, v in val.items() if k != "calibration"}
    calibration = val.get("calibration") or {}
    for key in ("known_accuracy", "unknown_rejection", "open_set_auroc", "score_threshold", "margin_threshold"):
        if key in calibration:
            out[f"val_calibration_{key}"] = calibration[key]
    return out
