"""Training the ArcFace embedder with HF Trainer: a frozen-backbone phase on cached pooled features, then fine-tuning.

One Trainer run covers both phases, exactly like the pair matcher's (`pair_matcher/training.py`, whose
`PhaseCollator`, `PhaseAwareEarlyStopping` and checkpoint helpers are reused here):

* Batches are P identities x K photos (`data.samplers.PKBatchSampler`, plugged in by
  `ArcFaceTrainer.get_train_dataloader`), deterministic per epoch so a resumed run sees the same batches.
* `MarginScheduleCallback` runs the margin schedule: for the first `frozen_steps` the backbone is frozen,
  the model trains on cached pooled features and the ArcFace margin is `frozen_margin` (0: a plain
  normalised softmax, which converges from a random head where a large margin would not); at the switch
  it saves `frozen_phase/`, unfreezes the last `backbone_trainable_groups` backbone groups, switches the
  collator to (augmented) pixels and raises the margin to `model.margin` (0.5 with s = 64 by default;
  the seed's m = 0.3, s = 48 is `--set model.margin=0.3 --set model.scale=48`), optionally over
  `margin_ramp_steps`. The margin head is the same module throughout, so its class centres carry over.
* One AdamW optimizer built up front (the heads at `learning_rate`, the backbone at
  `backbone_learning_rate`), so the switch needs no new optimizer and a resume restores it exactly.
  The schedule is a cosine with a warm restart at the phase switch, or reduce-on-plateau on Recall@1.
* Validation: every val photo is embedded; the first photo of each val dog is the gallery, the others
  query it; Recall@1 drives best-checkpoint selection and early stopping.
* At the end, gallery rejection thresholds are calibrated on the val dogs (`GalleryIndex.calibrate`,
  the protocol of `python -m model_pkg.evaluate gallery`) and stored in the model config.

Mixed precision is bf16 on Ampere or newer GPUs, fp16 on older ones and off on CPU (`mixed_precision`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..data import as_dataset, get_or_create_splits, group_paths, load_image, subset_by_identities
from ..data.samplers import PKBatchSampler, split_gallery_queries
from ..features import compute_activation_views, compute_pooled, compute_tokens
from ..fileio import atomic_save_npy, atomic_write_json
from ..gallery import GalleryIndex
from ..hub import write_model_card
from ..metrics import retrieval_metrics
from ..training_utils import (
    MIXED_PRECISION,
    Collator,
    GlobalBatchNorm1d,
    PhaseAwareEarlyStopping,
    PhaseCollator,
    check_options,
    last_checkpoint,
    log_cache,
    main_process_first,
    process_state,
    resolve_mixed_precision,
    save_atomically,
)
from ..transforms import create_transform
from .configuration_arcface import ArcFaceEmbedderConfig
from .modeling_arcface import ArcFaceEmbedderModel

logger = logging.getLogger(__name__)

__all__ = [
    "ActivationViewCollator",
    "ArcFaceTrainer",
    "ArcFaceTrainingConfig",
    "MarginScheduleCallback",
    "PhotoCollator",
    "PooledFeatureCollator",
    "calibrate_gallery_thresholds",
    "embed_paths",
    "pooled_features",
    "save_with_card",
    "train_arcface",
]

LR_SCHEDULERS = ("cosine_restarts", "reduce_on_plateau")
HEAD_INITS = ("random", "pca")
_FEATURE_CHUNK = 512  # photos per compute_tokens call, so token memory stays bounded


@dataclass
class ArcFaceTrainingConfig:
    """Everything one ArcFace run needs; `train/configs/arcface_embedder.yaml` is one of these."""

    data_dir: str
    output_dir: str
    splits_file: str | None = None  # default: <output_dir>/splits.json
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    model: dict = field(default_factory=dict)  # ArcFaceEmbedderConfig keyword arguments (num_classes is set here)
    p: int = 16  # identities per batch
    k: int = 4  # photos per identity
    frozen_steps: int = 2000
    finetune_steps: int = 0
    frozen_epochs: float | None = None  # when given, replaces frozen_steps (epochs of P x K batches)
    finetune_epochs: float | None = None
    frozen_margin: float = 0.0
    margin_ramp_steps: int = 0  # fine-tuning raises the margin linearly over this many steps
    head_init: str = "random"  # "pca": start from the untrained backbone's cosine baseline (init_head_from_features)
    head_init_whiten: bool = False
    activation_views: int = 8  # model.activation_stage: cached views per training photo (view 0 un-augmented)
    activation_image_size: int | None = None  # resolution of the training cache; default model.image_size
    eval_on_start: bool = False  # a step-0 point on the learning curve
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 1e-4
    weight_decay: float = 5e-4
    warmup_ratio: float = 0.05  # of each phase (cosine_restarts)
    lr_scheduler: str = "cosine_restarts"
    plateau_factor: float = 0.5
    plateau_patience: int = 2  # evaluations without a better Recall@1 before the LR drops
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "auto"
    eval_steps: int = 200
    save_steps: int | None = None  # default eval_steps; must be a multiple of it
    eval_batch_size: int = 64
    early_stopping_patience: int = 5
    calibration_gallery_per_id: int = 1
    calibration_unknown_fraction: float = 0.25
    calibration_seed: int = 0
    gallery_k: int = 20
    seed: int = 0
    report_to: str | list[str] = "none"
    logging_steps: int = 20
    save_total_limit: int | None = 2  # the best and the latest checkpoints
    fresh: bool = False

    def __post_init__(self):
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler={self.lr_scheduler!r} is not one of {LR_SCHEDULERS}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of {MIXED_PRECISION}.")
        if self.p < 2 or self.k < 1:
            raise ValueError(f"p={self.p} must be >= 2 and k={self.k} >= 1 (P identities x K photos per batch).")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps={self.gradient_accumulation_steps} must be >= 1.")
        if self.save_steps is not None and self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps={self.save_steps} must be a multiple of eval_steps={self.eval_steps}.")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r} is not one of {HEAD_INITS}.")
        if self.activation_views < 1:
            raise ValueError(f"activation_views={self.activation_views} must be >= 1.")
        if not 0.0 <= self.calibration_unknown_fraction < 1.0:
            raise ValueError(f"calibration_unknown_fraction={self.calibration_unknown_fraction} must lie in [0, 1).")

    @classmethod
    def from_dict(cls, values: dict) -> ArcFaceTrainingConfig:
        check_options(cls, values, "arcface-training")
        return cls(**values)


# -- data ----------------------------------------------------------------------------------------
def _targets(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    """`labels` (training identity indices) and/or `identity` (val identity indices) when every row has them."""
    out = {}
    for key, name in (("label", "labels"), ("identity", "identity")):
        if rows and all(key in r for r in rows):
            out[name] = torch.tensor([int(r[key]) for r in rows], dtype=torch.long)
    return out


class PooledFeatureCollator:
    """Rows with `image_path` -> `pooled_features` (B, D) float32 gathered from a cache (N, D) + targets."""

    def __init__(self, features: torch.Tensor, index: dict[str, int]):
        self.features = features
        self.index = index

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        try:
            rows_idx = [self.index[r["image_path"]] for r in rows]
        except KeyError as err:
            raise ValueError(
                f"photo {err.args[0]!r} is not in the pooled-feature cache: rebuild the cache for this data."
            ) from None
        return {"pooled_features": self.features[rows_idx].float(), **_targets(rows)}


class ActivationViewCollator:
    """Rows with `image_path` -> `activations` (B, C, h, w) float32 from a cache of views (N, V, C, h, w) + targets.

    Training draws one of the V cached views of each photo at random (`random_view=True`): V views of
    crops, flips, colour and blur, computed once, stand in for fresh augmentation every epoch.
    Evaluation reads view 0, the un-augmented photo. `process_index` (of several training processes) gives
    each process views of its own; process 0 draws exactly what a single process would."""

    def __init__(
        self,
        activations: torch.Tensor,
        index: dict[str, int],
        random_view: bool = True,
        seed: int = 0,
        process_index: int = 0,
    ):
        self.activations = activations
        self.index = index
        self.random_view = random_view
        self.rng = np.random.default_rng(seed if process_index == 0 else [seed, process_index])

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        try:
            rows_idx = torch.tensor([self.index[r["image_path"]] for r in rows])
        except KeyError as err:
            raise ValueError(f"photo {err.args[0]!r} is not in the activation cache: rebuild the cache for this data.") from None
        views = self.activations.shape[1]
        view = (
            torch.from_numpy(self.rng.integers(0, views, len(rows)))
            if self.random_view
            else torch.zeros(len(rows), dtype=torch.long)
        )
        x = self.activations[rows_idx, view].float().contiguous(memory_format=torch.channels_last)
        return {"activations": x, **_targets(rows)}


class PhotoCollator:
    """Rows with `image_path` -> `pixel_values` (B, 3, H, W) through `transform` + targets."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([self.transform(load_image(r["image_path"])) for r in rows])
        return {"pixel_values": pixels, **_targets(rows)}


def _cache_key(backbone, paths: Sequence[str]) -> str:
    flip = ":flip" if getattr(backbone, "tta_flip", False) else ""  # flip-TTA features differ from single-view ones
    digest = hashlib.sha256(f"{backbone.model_name}:{backbone.image_size}{flip}\n".encode())
    for tensor in backbone.state_dict().values():  # the weights, so fine-tuned backbones never share a cache
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\t{st.st_mtime_ns}\t{st.st_size}\n".encode())
    return digest.hexdigest()[:24]


def pooled_features(backbone, paths: Sequence[str], cache_dir: str | None = None, batch_size: int = 32) -> torch.Tensor:
    """The backbone's pooled features (N, D) float32 of `paths` (eval transform, `compute_tokens` +
    `compute_pooled` in chunks). With `cache_dir` they are stored once as an .npy keyed by the backbone's
    weights and the photos' paths, sizes and times, written atomically, and reused (e.g. on resume)."""
    file = None
    if cache_dir:
        file = Path(cache_dir) / f"pooled-{backbone.model_name}-{backbone.image_size}-{_cache_key(backbone, paths)}.npy"
        log_cache("pooled-feature", file)
        if file.is_file():
            try:
                array = np.load(file)
                if array.shape[0] == len(paths):
                    return torch.from_numpy(array)
            except (OSError, ValueError) as err:
                logger.warning("ignoring unreadable feature cache %s (%s)", file, err)
    chunks = []
    for start in range(0, len(paths), _FEATURE_CHUNK):
        tokens = compute_tokens(backbone, paths[start : start + _FEATURE_CHUNK], batch_size=batch_size, desc="pooled features")
        chunks.append(compute_pooled(backbone, tokens))
    features = torch.cat(chunks) if chunks else torch.zeros(0, backbone.token_dim)
    if file is not None:
        atomic_save_npy(file, features.numpy())
    return features


@torch.no_grad()
def _embed_pooled(model: ArcFaceEmbedderModel, pooled: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        out = [
            model.get_image_features(pooled_features=pooled[i : i + batch_size].float())
            for i in range(0, len(pooled), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out).float().numpy() if out else np.zeros((0, model.config.embedding_size), np.float32)


def embed_paths(model: ArcFaceEmbedderModel, paths: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Embeddings (N, E) float32 of photo files (eval transform, in chunks so memory stays bounded).

    Runs on the CPU, like `features.compute_tokens`: move a GPU model back with `model.cpu()` first."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"embed_paths runs on the CPU but the model is on {device}: call model.cpu() first.")
    return _embed_pooled(model, pooled_features(model.backbone, list(paths), batch_size=batch_size))


# -- the margin schedule ---------------------------------------------------------------------------
class MarginScheduleCallback(TrainerCallback):
    """Phase switch at step `frozen_steps`: save the frozen-phase model, unfreeze the backbone, train on
    pixels, and raise the ArcFace margin from `frozen_margin` to `margin` (linearly over `ramp_steps`)."""

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
        self.model = model
        self.collator = collator
        self.frozen_steps = frozen_steps
        self.frozen_dir = frozen_dir
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

    def _apply(self, step: int):
        finetuning = step >= self.frozen_steps
        if finetuning and self.model.config.freeze_backbone:
            logger.info("step %d: backbone unfrozen, training on pixels, margin -> %.3f", step, self.margin)
        self.model.set_backbone_frozen(not finetuning)
        self.collator.use_tokens = not finetuning
        self.model.set_margin(self.margin_at(step))

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)  # also right after a resume

    def on_step_end(self, args, state, control, **kwargs):
        at_switch = state.global_step == self.frozen_steps and self.frozen_steps > 0
        # of several processes only the main one writes it
        if at_switch and process_state().is_main_process and not os.path.isdir(self.frozen_dir):
            save_atomically(self.frozen_dir, lambda tmp: self.model.save_pretrained(tmp))
        self._apply(state.global_step)


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


# -- Trainer -----------------------------------------------------------------------------------------
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
    against time (`bench/learning_curve.py`)."""
    predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return {**recall_metrics(predictions, eval_pred.label_ids), "unix_time": time.time()}


def _training_arguments(cfg: ArcFaceTrainingConfig, total_steps: int, precision: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=os.path.join(cfg.output_dir, "checkpoints"),
        max_steps=total_steps,
        per_device_train_batch_size=cfg.p * cfg.k,  # informative: PKBatchSampler makes the batches
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps or cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="recall_at_1",
        greater_is_better=True,
        logging_steps=cfg.logging_steps,
        report_to=cfg.report_to,
        remove_unused_columns=False,
        dataloader_num_workers=0,  # the collator's phase flag must be seen by the loader
        seed=cfg.seed,
        eval_on_start=cfg.eval_on_start,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
    )


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

    def write(directory: str):
        model.save_pretrained(directory, weights_dtype=weights_dtype)
        write_model_card(
            directory,
            model_name=os.path.basename(os.path.normpath(save_directory)),
            model_type=cfg.model_type,
            description=(
                f"ArcFace identity embedder: one photo -> a {cfg.embedding_size}-d L2-normalised embedding; photos of the "
                f"same individual animal lie close (cosine). Backbone `{cfg.backbone}` ({cfg.image_size}px), "
                f"ArcFace margin m={cfg.margin}, scale s={cfg.scale} over {cfg.num_classes} training identities; {thresholds}"
            ),
            metrics=metrics,
            data=data or "DogFaceNet (aligned dog faces), split by identity: test dogs are never seen in training.",
            intended_use="Identify a found animal among registered ones (a gallery), or reject it as unknown, for a person to confirm.",
            limitations="Trained on aligned dog faces; other species, full-body shots and unaligned photos are out of distribution. "
            "A nearest match is a lead, not a proof of identity; the thresholds hold for the gallery size they were calibrated for.",
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

    save_atomically(save_directory, write)


# -- calibration -------------------------------------------------------------------------------------
def calibrate_gallery_thresholds(
    embeddings: dict[str, np.ndarray],
    groups: dict[str, list[str]],
    gallery_per_id: int,
    unknown_fraction: float,
    seed: int = 0,
    k: int = 20,
) -> tuple[GalleryIndex, dict] | tuple[None, dict]:
    """Calibrate gallery thresholds on `groups` (the val dogs) under the gallery protocol.

    Returns the calibrated gallery and its calibration numbers plus the retrieval metrics there, or
    `(None, reason)` when the split has no unknown or no known queries to calibrate on."""
    split = split_gallery_queries(groups, gallery_per_id, unknown_fraction, seed)
    unknown = set(split.unknown_labels)
    known_q = [i for i, lab in enumerate(split.query_labels) if lab not in unknown]
    unknown_q = [i for i, lab in enumerate(split.query_labels) if lab in unknown]
    if not known_q or not unknown_q:
        return None, {"skipped": "calibration needs both known and unknown queries (unknown_fraction > 0, >= 2 dogs)"}
    gallery = GalleryIndex(len(next(iter(embeddings.values()))), "ip", approximate_above=max(len(split.gallery_paths), 1))
    gallery.add(np.stack([embeddings[p] for p in split.gallery_paths]), split.gallery_labels)
    queries = np.stack([embeddings[p] for p in split.query_paths])
    result = gallery.calibrate(queries[known_q], [split.query_labels[i] for i in known_q], queries[unknown_q], k=k)
    result["gallery_per_id"] = gallery_per_id
    result["unknown_fraction"] = unknown_fraction
    return gallery, result


def _store_thresholds(model: ArcFaceEmbedderModel, gallery: GalleryIndex | None, cfg: ArcFaceTrainingConfig):
    if gallery is None:
        return
    model.config.score_threshold = gallery.score_threshold
    model.config.margin_threshold = gallery.margin_threshold
    model.config.gallery_k = cfg.gallery_k
    model.config.gallery_per_id = cfg.calibration_gallery_per_id


def _steps(epochs: float | None, steps: int, updates_per_epoch: int) -> int:
    return int(math.ceil(epochs * updates_per_epoch)) if epochs is not None else int(steps)


def train_arcface(cfg: ArcFaceTrainingConfig) -> dict:
    """Train, calibrate gallery thresholds on val, save `<output_dir>/model` (and `frozen_phase`); return a summary."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    state = process_state()  # one of `state.num_processes` processes under `accelerate launch`, or the only one
    checkpoints = os.path.join(cfg.output_dir, "checkpoints")
    frozen_dir = os.path.join(cfg.output_dir, "frozen_phase")
    if cfg.fresh and state.is_main_process:  # starting over: the old run's checkpoints and frozen-phase model go
        for stale in (checkpoints, frozen_dir):
            if os.path.isdir(stale):
                logger.info("--fresh: removing %s", stale)
                shutil.rmtree(stale)

    # 1. Data: identity splits saved once and reused; training dogs become class indices.
    table = as_dataset(cfg.data_dir)
    labels = sorted(set(table["label"][:]))
    splits_file = cfg.splits_file or os.path.join(cfg.output_dir, "splits.json")
    splits = get_or_create_splits(labels, splits_file, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    train_groups = group_paths(subset_by_identities(table, splits["train"]))
    val_groups = group_paths(subset_by_identities(table, splits["val"]))
    if sum(len(ps) > 1 for ps in val_groups.values()) == 0 or len(val_groups) < 2:
        raise ValueError(
            f"the val split needs at least 2 dogs and one with >= 2 photos for Recall@1; it has {len(val_groups)} dogs."
        )
    class_of = {dog: i for i, dog in enumerate(sorted(train_groups))}
    train_rows: list[dict[str, Any]] = [
        {"image_path": p, "label": class_of[dog], "augment": True} for dog, ps in train_groups.items() for p in ps
    ]
    val_rows: list[dict[str, Any]] = [
        {"image_path": p, "identity": i, "augment": False} for i, (dog, ps) in enumerate(sorted(val_groups.items())) for p in ps
    ]

    # 2. Model, and the frozen backbone's pooled features of every train/val photo (cached on disk).
    model = ArcFaceEmbedderModel(ArcFaceEmbedderConfig(**{**cfg.model, "num_classes": len(class_of)}))
    paths = sorted({r["image_path"] for r in train_rows + val_rows})
    with main_process_first("pooled features"):  # built once, then read by the other processes
        features = pooled_features(model.backbone, paths, cache_dir=os.path.join(cfg.output_dir, "feature_cache"))
    index = {p: i for i, p in enumerate(paths)}

    head_init = {}
    if cfg.head_init == "pca":  # start at the untrained cosine baseline, not from a random head
        train_idx = [index[r["image_path"]] for r in train_rows]
        head_init = model.init_head_from_features(features[train_idx], [r["label"] for r in train_rows], cfg.head_init_whiten)

    stage = model.config.activation_stage
    train_collator: Collator
    eval_collator: Collator
    if stage is None:
        train_collator = PhotoCollator(create_transform(model.data_config, train=True))
        eval_collator = PhotoCollator(create_transform(model.data_config, train=False))
    else:  # the CPU recipe: the frozen stem runs once per view, training reads its cached activations
        cache_dir = os.path.join(cfg.output_dir, "activation_cache")
        train_paths = [r["image_path"] for r in train_rows]
        val_paths = [r["image_path"] for r in val_rows]
        train_size = cfg.activation_image_size or model.config.image_size
        key = _cache_key(model.backbone, train_paths)
        train_file = os.path.join(cache_dir, f"train-s{stage}-{train_size}px-{cfg.activation_views}v-{key}.arrow")
        val_size = model.config.image_size
        val_file = os.path.join(cache_dir, f"val-s{stage}-{val_size}px-{_cache_key(model.backbone, val_paths)}.arrow")
        with main_process_first("stem activations"):  # built once, then read by the other processes
            log_cache("training-view activation", train_file)
            train_act = compute_activation_views(
                model.backbone,
                train_paths,
                stage,
                cfg.activation_views,
                train_size,
                seed=cfg.seed,
                cache_file=train_file,
                desc="training views (frozen stem)",
            )
            log_cache("validation activation", val_file)
            val_act = compute_activation_views(
                model.backbone, val_paths, stage, 1, val_size, cache_file=val_file, desc="validation photos (frozen stem)"
            )
        train_collator = ActivationViewCollator(
            train_act, {p: i for i, p in enumerate(train_paths)}, True, cfg.seed, state.process_index
        )
        eval_collator = ActivationViewCollator(val_act, {p: i for i, p in enumerate(val_paths)}, False)
    collator = PhaseCollator(PooledFeatureCollator(features, index), train_collator, eval_collator)
    # With N processes every one takes its own P x K batches of the same sampler (accelerate hands process i
    # batches i, i + N, ...: `BatchSamplerShard`), so a step trains on N x P x K photos and an epoch has 1/N the steps.
    sampler = PKBatchSampler([r["label"] for r in train_rows], cfg.p, cfg.k, seed=cfg.seed)
    updates_per_epoch = max(1, math.ceil(len(sampler) / state.num_processes) // cfg.gradient_accumulation_steps)
    frozen_steps = _steps(cfg.frozen_epochs, cfg.frozen_steps, updates_per_epoch)
    finetune_steps = _steps(cfg.finetune_epochs, cfg.finetune_steps, updates_per_epoch)
    total_steps = frozen_steps + finetune_steps
    if total_steps < 1:
        raise ValueError("frozen_steps + finetune_steps must be >= 1.")

    if state.num_processes > 1:  # the embedding's BatchNorm sees the global batch, as with one process
        model.bn = GlobalBatchNorm1d.from_batchnorm(model.bn)

    # 3. One optimizer for both phases: heads at `learning_rate`, the backbone at `backbone_learning_rate`.
    backbone_params = list(model.backbone.parameters())
    backbone_ids = {id(p) for p in backbone_params}
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": head_params, "lr": cfg.learning_rate},
            {"params": backbone_params, "lr": cfg.backbone_learning_rate},
        ],
        weight_decay=cfg.weight_decay,
    )
    if cfg.lr_scheduler == "reduce_on_plateau":  # Trainer steps it with eval Recall@1 after every evaluation
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    else:
        scheduler = phase_cosine_schedule(optimizer, frozen_steps, finetune_steps, cfg.warmup_ratio)

    precision = resolve_mixed_precision(cfg.mixed_precision)
    args = _training_arguments(cfg, total_steps, precision)
    trainer = ArcFaceTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=val_rows,
        data_collator=collator,
        compute_metrics=compute_recall_metrics,
        optimizers=(optimizer, scheduler),
        pk_sampler=sampler,
        callbacks=[
            MarginScheduleCallback(
                model, collator, frozen_steps, frozen_dir, model.config.margin, cfg.frozen_margin, cfg.margin_ramp_steps
            ),
            PhaseAwareEarlyStopping(cfg.early_stopping_patience, frozen_steps, finetune_steps),
        ],
    )
    last = None if cfg.fresh else last_checkpoint(checkpoints)
    # DDP all-reduces only the parameters that require grad when `train` wraps the model, before the callbacks
    # set the phase: what fine-tuning trains must require grad then, or its copies would drift apart per process.
    model.set_backbone_frozen(finetune_steps == 0)
    trainer.train(resume_from_checkpoint=last)
    if not trainer.is_world_process_zero():  # of several processes, the main one calibrates and saves
        return {"best_global_step": trainer.state.best_global_step, "process_index": state.process_index}

    # 4. Validation embeddings of the kept weights; the cached features are still valid only if those
    # weights never trained the backbone. Calibrate the gallery thresholds on the val dogs.
    best = trainer.state.best_global_step
    model = model.cpu()
    backbone_untouched = finetune_steps == 0 or (best is not None and best <= frozen_steps)
    val_paths = [r["image_path"] for r in val_rows]

    def val_embeddings(net: ArcFaceEmbedderModel, cached: bool) -> dict[str, np.ndarray]:
        net.set_backbone_frozen(True)
        emb = _embed_pooled(net, features[[index[p] for p in val_paths]]) if cached else embed_paths(net, val_paths)
        return dict(zip(val_paths, emb))

    def evaluate_val(net: ArcFaceEmbedderModel, cached: bool) -> dict:
        emb = val_embeddings(net, cached)
        metrics = recall_metrics(np.stack([emb[p] for p in val_paths]), np.array([r["identity"] for r in val_rows]))
        gallery, calibration = calibrate_gallery_thresholds(
            emb, val_groups, cfg.calibration_gallery_per_id, cfg.calibration_unknown_fraction, cfg.calibration_seed, cfg.gallery_k
        )
        _store_thresholds(net, gallery, cfg)
        net.set_backbone_frozen(False)
        net.config.freeze_backbone = False
        net.set_margin(net.config.margin)
        return {**metrics, "calibration": calibration}

    training = {k: v for k, v in asdict(cfg).items()}
    training["data_dir"] = (
        str(cfg.data_dir)
        if isinstance(cfg.data_dir, (str, os.PathLike))
        else (f"<{type(cfg.data_dir).__name__} with {len(table)} photos>")
    )
    summary: dict[str, Any] = {"val": evaluate_val(model, backbone_untouched), "splits_file": splits_file, "head_init": head_init}
    final_dir = os.path.join(cfg.output_dir, "model")
    card_training = {
        "frozen_steps": frozen_steps,
        "finetune_steps": finetune_steps,
        "p": cfg.p,
        "k": cfg.k,
        "mixed_precision": precision,
        "best_global_step": best,
    }
    save_with_card(model, final_dir, metrics=_card_metrics(summary["val"]), training=card_training)

    if os.path.isdir(frozen_dir):  # the frozen-phase baseline gets its own thresholds
        frozen = ArcFaceEmbedderModel.from_pretrained(frozen_dir)
        summary["frozen_phase_val"] = evaluate_val(frozen, True)
        save_with_card(frozen, frozen_dir, metrics=_card_metrics(summary["frozen_phase_val"]))
    summary["training"] = training
    summary["frozen_steps"], summary["finetune_steps"] = frozen_steps, finetune_steps
    summary["mixed_precision"] = precision
    summary["best_global_step"] = best
    atomic_write_json(summary, os.path.join(cfg.output_dir, "summary.json"))
    return summary


def _card_metrics(val: dict) -> dict:
    out = {f"val_{k}": v for k, v in val.items() if k != "calibration"}
    calibration = val.get("calibration") or {}
    for key in ("known_accuracy", "unknown_rejection", "open_set_auroc", "score_threshold", "margin_threshold"):
        if key in calibration:
            out[f"val_calibration_{key}"] = calibration[key]
    return out
