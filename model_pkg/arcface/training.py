"""Training the ArcFace embedder with HF Trainer: a frozen-backbone phase on cached pooled features, then fine-tuning.

One Trainer run covers both phases, exactly like the pair matcher's; the pieces both share (`PhaseCollator`,
`BackbonePhaseCallback`, `PhaseAwareEarlyStopping`, the cached-feature collators, checkpoints) are in
`model_pkg.training`:

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
* At the end, gallery rejection thresholds are calibrated on the val dogs (`calibration.py`, the protocol
  of `python -m model_pkg.evaluate gallery`) and stored in the model config.

Mixed precision is bf16 on Ampere or newer GPUs, fp16 on older ones and off on CPU (`mixed_precision`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import as_dataset, get_or_create_splits, group_paths, subset_by_identities
from ..data.samplers import PKBatchSampler, prefix_group
from ..fileio import atomic_write_json
from ..loading import load_arcface_model
from ..training import (
    MIXED_PRECISION,
    Collator,
    GlobalBatchNorm1d,
    PhaseAwareEarlyStopping,
    PhaseCollator,
    PhotoCollator,
    PooledFeatureCollator,
    activation_view_collators,
    check_options,
    data_description,
    last_checkpoint,
    main_process_first,
    phase_optimizer,
    pooled_features,
    process_state,
    remove_previous_run,
    resolve_mixed_precision,
    trainer_arguments,
)
from ..transforms import create_transform
from .calibration import calibrate_gallery_thresholds, store_gallery_thresholds
from .configuration_arcface import ArcFaceEmbedderConfig
from .embedding import embed_paths, embed_pooled
from .modeling_arcface import ArcFaceEmbedderModel
from .trainer import (
    ArcFaceTrainer,
    MarginScheduleCallback,
    compute_recall_metrics,
    model_card_metrics,
    phase_cosine_schedule,
    recall_metrics,
    save_with_card,
)

# `embed_paths` lives in `embedding.py`; it is importable from here too, where the saved model card imports it
__all__ = ["ArcFaceTrainingConfig", "embed_paths", "start_from_embedder", "train_arcface"]

LR_SCHEDULERS = ("cosine_restarts", "reduce_on_plateau")
HEAD_INITS = ("random", "pca", "pretrained")


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
    # "pretrained": start from the saved embedder `init_from` (backbone, projection, BatchNorm), every training
    # identity's centre the mean direction of its photos' embeddings: fine-tuning a trained embedder on other animals
    init_from: str | None = None
    # Kind-balanced batches: identity-name prefix -> identities per batch (summing to p; the longest prefix that
    # matches names an identity's group, "" matches every name), e.g. {"dfn-": 12, "mpdd-": 4}
    identity_groups: dict[str, int] | None = None
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
        if (self.head_init == "pretrained") != (self.init_from is not None):
            raise ValueError(
                f"head_init='pretrained' and init_from go together (head_init={self.head_init!r}, init_from={self.init_from!r}):"
                " init_from names the saved embedder to start from."
            )
        if self.identity_groups is not None and sum(self.identity_groups.values()) != self.p:
            raise ValueError(f"identity_groups={self.identity_groups} must give p={self.p} identities per batch in all.")
        if self.activation_views < 1:
            raise ValueError(f"activation_views={self.activation_views} must be >= 1.")
        if not 0.0 <= self.calibration_unknown_fraction < 1.0:
            raise ValueError(f"calibration_unknown_fraction={self.calibration_unknown_fraction} must lie in [0, 1).")

    @classmethod
    def from_dict(cls, values: dict) -> ArcFaceTrainingConfig:
        check_options(cls, values, "arcface-training")
        return cls(**values)


def start_from_embedder(model: ArcFaceEmbedderModel, path: str) -> None:
    """Copy a saved embedder's weights (all but its class centres, which belong to its own identities) into `model`."""
    source = load_arcface_model(path)
    weights = {k: v for k, v in source.state_dict().items() if not k.startswith("margin_head.")}
    own = model.state_dict()
    missing = [k for k in own if not k.startswith("margin_head.") and k not in weights]
    unexpected = [k for k in weights if k not in own or own[k].shape != weights[k].shape]
    if missing or unexpected:
        raise ValueError(
            f"init_from={path!r} does not fit this recipe's model (missing {missing[:5]}, unexpected or another shape"
            f" {unexpected[:5]}): give the recipe the same backbone and embedding_size as the saved embedder."
        )
    model.load_state_dict(weights, strict=False)


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
        remove_previous_run(checkpoints, frozen_dir)

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
    if cfg.init_from is not None:
        start_from_embedder(model, cfg.init_from)
    paths = sorted({r["image_path"] for r in train_rows + val_rows})
    with main_process_first("pooled features"):  # built once, then read by the other processes
        features = pooled_features(model.backbone, paths, cache_dir=os.path.join(cfg.output_dir, "feature_cache"))
    index = {p: i for i, p in enumerate(paths)}

    head_init = {}
    if cfg.head_init == "pca":  # start at the untrained cosine baseline, not from a random head
        train_idx = [index[r["image_path"]] for r in train_rows]
        head_init = model.init_head_from_features(features[train_idx], [r["label"] for r in train_rows], cfg.head_init_whiten)
    elif cfg.head_init == "pretrained":
        train_idx = [index[r["image_path"]] for r in train_rows]
        model.init_centres_from_features(features[train_idx], [r["label"] for r in train_rows])

    stage = model.config.activation_stage
    train_collator: Collator
    eval_collator: Collator
    if stage is None:
        train_collator = PhotoCollator(create_transform(model.data_config, train=True))
        eval_collator = PhotoCollator(create_transform(model.data_config, train=False))
    else:  # the CPU recipe: the frozen stem runs once per view, training reads its cached activations
        train_collator, eval_collator = activation_view_collators(
            model.backbone,
            [r["image_path"] for r in train_rows],
            [r["image_path"] for r in val_rows],
            stage,
            cfg.activation_views,
            cfg.activation_image_size or model.config.image_size,
            model.config.image_size,
            os.path.join(cfg.output_dir, "activation_cache"),
            cfg.seed,
            state.process_index,
        )
    collator = PhaseCollator(PooledFeatureCollator(features, index), train_collator, eval_collator)
    # With N processes every one takes its own P x K batches of the same sampler (accelerate hands process i
    # batches i, i + N, ...: `BatchSamplerShard`), so a step trains on N x P x K photos and an epoch has 1/N the steps.
    group_of = None
    if cfg.identity_groups is not None:
        groups, dog_of = cfg.identity_groups, {i: dog for dog, i in class_of.items()}

        def group_of(label: int) -> str:
            return prefix_group(dog_of[label], groups)

    sampler = PKBatchSampler(
        [r["label"] for r in train_rows], cfg.p, cfg.k, seed=cfg.seed, group_p=cfg.identity_groups, group_of=group_of
    )
    updates_per_epoch = max(1, math.ceil(len(sampler) / state.num_processes) // cfg.gradient_accumulation_steps)
    frozen_steps = _steps(cfg.frozen_epochs, cfg.frozen_steps, updates_per_epoch)
    finetune_steps = _steps(cfg.finetune_epochs, cfg.finetune_steps, updates_per_epoch)
    total_steps = frozen_steps + finetune_steps
    if total_steps < 1:
        raise ValueError("frozen_steps + finetune_steps must be >= 1.")

    if state.num_processes > 1:  # the embedding's BatchNorm sees the global batch, as with one process
        model.bn = GlobalBatchNorm1d.from_batchnorm(model.bn)

    # 3. One optimizer for both phases: heads at `learning_rate`, the backbone at `backbone_learning_rate`.
    optimizer = phase_optimizer(model, model.backbone, cfg.learning_rate, cfg.backbone_learning_rate, cfg.weight_decay)
    if cfg.lr_scheduler == "reduce_on_plateau":  # Trainer steps it with eval Recall@1 after every evaluation
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    else:
        scheduler = phase_cosine_schedule(optimizer, frozen_steps, finetune_steps, cfg.warmup_ratio)

    precision = resolve_mixed_precision(cfg.mixed_precision)
    args = trainer_arguments(
        checkpoints,
        max_steps=total_steps,
        batch_size=cfg.p * cfg.k,  # informative: PKBatchSampler makes the batches
        eval_batch_size=cfg.eval_batch_size,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.save_steps or cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        metric_for_best_model="recall_at_1",
        logging_steps=cfg.logging_steps,
        report_to=cfg.report_to,
        seed=cfg.seed,
        precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        eval_on_start=cfg.eval_on_start,
    )
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
        emb = embed_pooled(net, features[[index[p] for p in val_paths]]) if cached else embed_paths(net, val_paths)
        return dict(zip(val_paths, emb))

    def evaluate_val(net: ArcFaceEmbedderModel, cached: bool) -> dict:
        emb = val_embeddings(net, cached)
        metrics = recall_metrics(np.stack([emb[p] for p in val_paths]), np.array([r["identity"] for r in val_rows]))
        gallery, calibration = calibrate_gallery_thresholds(
            emb, val_groups, cfg.calibration_gallery_per_id, cfg.calibration_unknown_fraction, cfg.calibration_seed, cfg.gallery_k
        )
        store_gallery_thresholds(net, gallery, cfg.gallery_k, cfg.calibration_gallery_per_id)
        net.set_backbone_frozen(False)
        net.config.freeze_backbone = False
        net.set_margin(net.config.margin)
        return {**metrics, "calibration": calibration}

    training = {**asdict(cfg), "data_dir": data_description(cfg.data_dir, len(table))}
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
    save_with_card(model, final_dir, metrics=model_card_metrics(summary["val"]), training=card_training)

    if os.path.isdir(frozen_dir):  # the frozen-phase baseline gets its own thresholds
        frozen = ArcFaceEmbedderModel.from_pretrained(frozen_dir)
        summary["frozen_phase_val"] = evaluate_val(frozen, True)
        save_with_card(frozen, frozen_dir, metrics=model_card_metrics(summary["frozen_phase_val"]))
    summary["training"] = training
    summary["frozen_steps"], summary["finetune_steps"] = frozen_steps, finetune_steps
    summary["mixed_precision"] = precision
    summary["best_global_step"] = best
    atomic_write_json(summary, os.path.join(cfg.output_dir, "summary.json"))
    return summary
