"""Training the pair matcher with HF Trainer: a frozen-backbone phase on cached tokens, then fine-tuning.

One Trainer run covers both phases. The train set is a fixed, seeded list of set pairs, long enough
for every step (`frozen_steps + finetune_steps` batches, no pair repeated). `BackbonePhaseCallback`
switches phases at step `frozen_steps`: it unfreezes the backbone and tells `PhaseCollator` to hand
the model pixels (with augmentation) instead of cached tokens. The optimizer is built up front with
all parameters, the backbone at its own (lower) learning rate, so the switch needs no new optimizer
and a resumed run restores it exactly (`phase_optimizer`; these phase pieces, shared with the ArcFace
embedder, are in `model_pkg.training`). After training, the decision thresholds are chosen on validation
pairs (`calibration.py`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from transformers import Trainer

from ..data import (
    CachedSetPairCollator,
    SetPairCollator,
    as_dataset,
    get_or_create_splits,
    group_paths,
    nearest_identities,
    pair_records,
    sample_pairs,
    subset_by_identities,
)
from ..features import compute_pooled, compute_tokens, hard_neighbours
from ..fileio import atomic_write_json
from ..metrics import verification_metrics
from ..modeling_utils import model_identity
from ..training import (
    BackbonePhaseCallback,
    PhaseAwareEarlyStopping,
    PhaseCollator,
    check_options,
    data_description,
    last_checkpoint,
    log_cache,
    main_process_first,
    phase_optimizer,
    process_state,
    save_atomically,
    trainer_arguments,
)
from ..transforms import create_transform
from .calibration import (
    accuracy_by_size,
    calibrate_embedder_matcher,
    calibrate_thresholds,
    calibrate_trained_matcher,
    decision_accuracy,
    predict_pair_scores,
    snorm_cohort,
    validation_pairs_by_size,
)
from .configuration_pair_matcher import COHORT_STATS, PairMatcherConfig
from .modeling_pair_matcher import PairMatcherModel

__all__ = [
    "PairTrainingConfig",
    "train_pair_matcher",
]

CALIBRATION_NEGATIVES = ("mixed", "random")


@dataclass
class PairTrainingConfig:
    """Everything one pair-matcher run needs; `train/configs/pair_matcher.yaml` is one of these."""

    data_dir: str
    output_dir: str
    splits_file: str | None = None  # default: <output_dir>/splits.json
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    model: dict = field(default_factory=dict)  # PairMatcherConfig keyword arguments
    set_size: tuple[int, int] = (1, 3)
    hard_negative_fraction: float = 0.5  # share of negatives drawn among each dog's nearest dogs
    hard_k: int = 5
    val_pairs: int = 400
    frozen_steps: int = 600
    finetune_steps: int = 0
    batch_size: int = 16
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    eval_steps: int = 100
    early_stopping_patience: int = 5
    seed: int = 0
    report_to: str | list[str] = "none"
    logging_steps: int = 20
    save_total_limit: int = 2
    fresh: bool = False
    # Score sets with a trained ArcFace embedder (`PairMatcherModel.from_embedder`) instead of training a
    # head: a saved embedder folder; frozen_steps and finetune_steps must then be 0.
    embedder: str | None = None
    # Thresholds: "random" chooses one per set size on validation pairs with random negatives, the pairs a
    # shelter sees (hard negatives are reported beside them); "mixed" uses the training mix of val pairs.
    calibration_negatives: str = "mixed"
    calibration_set_sizes: tuple[int, ...] = (1, 2, 3)
    calibration_pairs: int = 1000  # per set size
    # With "random": among the thresholds within this much (a fraction: 0.005 = half a point) of the best
    # random-negative accuracy, take the one that decides best on hard-negative validation pairs. None: the
    # best random-negative threshold alone (the lowest of a wide plateau, which lets lookalikes through).
    calibration_hard_tolerance: float | None = None
    # Adaptive s-norm of an embedder's cosine against a cohort of training dogs: "auto" keeps it only if it
    # makes better decisions on the validation pairs the thresholds are chosen on; "asnorm" always; "none" never.
    score_norm: str = "none"
    cohort_dogs: int = 400  # training dogs in the cohort, 2 photos each
    cohort_top_k: int = 50
    # Where each side's s-norm statistics come from: "set" (its mean embedding's) or "photos" (the mean of its
    # photos' own; PairMatcherConfig.cohort_stats says why that suits multi-photo sets).
    cohort_stats: str = "set"

    def __post_init__(self):
        if self.calibration_negatives not in CALIBRATION_NEGATIVES:
            raise ValueError(f"calibration_negatives={self.calibration_negatives!r} is not one of {CALIBRATION_NEGATIVES}.")
        if self.calibration_hard_tolerance is not None and (
            self.calibration_negatives != "random" or not 0.0 <= self.calibration_hard_tolerance < 1.0
        ):
            raise ValueError(
                f"calibration_hard_tolerance={self.calibration_hard_tolerance!r} needs calibration_negatives='random' and a "
                "value in [0, 1) (a fraction of accuracy, e.g. 0.005)."
            )
        if self.score_norm not in ("none", "auto", "asnorm"):
            raise ValueError(f"score_norm={self.score_norm!r} is not one of ('none', 'auto', 'asnorm').")
        if self.cohort_stats not in COHORT_STATS:
            raise ValueError(f"cohort_stats={self.cohort_stats!r} is not one of {COHORT_STATS}.")
        if self.score_norm != "none" and not self.embedder:
            raise ValueError("score_norm applies to a matcher built from an embedder: give embedder=<saved ArcFace embedder>.")
        if self.embedder and (self.frozen_steps or self.finetune_steps):
            raise ValueError(
                "a matcher built from an embedder is not trained further here: set frozen_steps=0 and finetune_steps=0 "
                "(train the embedder instead, with --task arcface)."
            )
        if not self.embedder and self.frozen_steps + self.finetune_steps < 1:
            raise ValueError("frozen_steps + finetune_steps must be >= 1 (or give embedder=<saved ArcFace embedder>).")

    @classmethod
    def from_dict(cls, values: dict) -> PairTrainingConfig:
        check_options(cls, values, "pair-training")
        values = dict(values)
        if "set_size" in values:
            size = values["set_size"]
            values["set_size"] = (size, size) if isinstance(size, int) else tuple(size)
        if "calibration_set_sizes" in values:
            values["calibration_set_sizes"] = tuple(int(v) for v in values["calibration_set_sizes"])
        return cls(**values)


def mixed_pairs(groups, num_pairs, set_size, seed, hard_fraction, neighbours) -> list:
    """Balanced pairs whose negatives are a mix of random and nearest-identity (hard) ones."""
    num_hard = int(round(num_pairs * hard_fraction)) if neighbours else 0
    pairs = sample_pairs(groups, num_pairs - num_hard, set_size=set_size, seed=seed)
    if num_hard:
        pairs += sample_pairs(groups, num_hard, set_size=set_size, seed=seed + 1, negatives="hard", neighbours=neighbours)
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in rng.permutation(len(pairs))]


def compute_pair_metrics(eval_pred) -> dict:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    scores = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))
    metrics = verification_metrics(np.asarray(eval_pred.label_ids).astype(int), scores)
    return {k: metrics[k] for k in ("roc_auc", "pr_auc", "best_accuracy")}


def train_pair_matcher(cfg: PairTrainingConfig) -> dict:
    """Train, pick the validation threshold, save `<output_dir>/model` (and `frozen_phase`); return a summary."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    state = process_state()  # one of `state.num_processes` processes under `accelerate launch`, or the only one

    # 1. Data: identity splits saved once, reused by every later run and by evaluation.
    table = as_dataset(cfg.data_dir)
    labels = sorted(set(table["label"]))
    splits_file = cfg.splits_file or os.path.join(cfg.output_dir, "splits.json")
    splits = get_or_create_splits(labels, splits_file, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    train_groups = group_paths(subset_by_identities(table, splits["train"]))
    val_groups = group_paths(subset_by_identities(table, splits["val"]))

    # 2. Model and the frozen backbone's tokens for every train/val photo (cached on disk by datasets).
    normed = None  # the same matcher with s-normed scores, when `score_norm` asks to try it
    if cfg.embedder:
        from ..arcface import ArcFaceEmbedderModel

        embedder = ArcFaceEmbedderModel.from_pretrained(cfg.embedder)
        model = PairMatcherModel.from_embedder(embedder, **cfg.model)
        if cfg.score_norm != "none":
            normed = PairMatcherModel.from_embedder(
                embedder,
                cohort=snorm_cohort(embedder, train_groups, cfg.cohort_dogs, cfg.seed),
                cohort_top_k=cfg.cohort_top_k,
                cohort_stats=cfg.cohort_stats,
                **cfg.model,
            )
    else:
        model = PairMatcherModel(PairMatcherConfig(**cfg.model))
    total_steps = cfg.frozen_steps + cfg.finetune_steps
    used = (train_groups, val_groups) if total_steps else (val_groups,)  # an embedder's matcher only calibrates
    paths = sorted(p for groups in used for ps in groups.values() for p in ps)
    weights = model_identity(model.backbone).split(":")[-1]  # a fine-tuned backbone never reuses another's tokens
    cache_file = os.path.join(
        cfg.output_dir, "token_cache", f"{model.config.backbone}-{model.config.image_size}-{len(paths)}-{weights}.arrow"
    )
    with main_process_first("backbone tokens"):  # built once, then read by the other processes
        log_cache("token", cache_file)
        tokens = compute_tokens(model.backbone, paths, cache_file=cache_file)
    index = {p: i for i, p in enumerate(paths)}

    # 3. Hard negatives: nearest other dogs under the untrained backbone's mean pooled feature.
    if cfg.embedder:  # the backbone is trained: take the untrained ImageNet reference, as evaluation does
        val_nn, _ = hard_neighbours(val_groups, k=1)  # the pairs `evaluate pair --negatives hard` draws
        train_nn = None
    else:
        pooled = compute_pooled(model.backbone, tokens).numpy()

        def id_means(groups):
            return {dog: pooled[[index[p] for p in ps]].mean(0) for dog, ps in groups.items()}

        train_nn = nearest_identities(id_means(train_groups), k=cfg.hard_k)
        val_nn = nearest_identities(id_means(val_groups), k=cfg.hard_k)

    # `batch_size` pairs per process and step: N processes train on N x batch_size pairs a step, all distinct.
    global_batch = cfg.batch_size * state.num_processes
    train_rows = (
        pair_records(
            mixed_pairs(train_groups, total_steps * global_batch, cfg.set_size, cfg.seed, cfg.hard_negative_fraction, train_nn),
            augment=True,
        )
        if total_steps
        else []
    )
    val_rows = pair_records(
        mixed_pairs(val_groups, cfg.val_pairs, cfg.set_size, cfg.seed + 100, cfg.hard_negative_fraction, val_nn),
        augment=False,
    )

    train_tf = create_transform(model.data_config, train=True)
    eval_tf = create_transform(model.data_config, train=False)
    collator = PhaseCollator(
        CachedSetPairCollator(tokens, index),
        SetPairCollator(train_tf),
        SetPairCollator(eval_tf),
        frozen_steps=cfg.frozen_steps,
        seed=cfg.seed,
        process_index=state.process_index,
    )

    # 4. One optimizer for both phases: the head at `learning_rate`, the backbone at `backbone_learning_rate`.
    optimizer = phase_optimizer(model, model.backbone, cfg.learning_rate, cfg.backbone_learning_rate, cfg.weight_decay)

    frozen_dir = os.path.join(cfg.output_dir, "frozen_phase")
    if total_steps == 0:  # a matcher built from an embedder: nothing to train, only thresholds to choose
        collator.use_tokens = True
        return _finish(cfg, model, collator, val_rows, val_groups, val_nn, None, frozen_dir, table, splits_file, normed)
    args = trainer_arguments(
        os.path.join(cfg.output_dir, "checkpoints"),
        max_steps=total_steps,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.batch_size * 2,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        metric_for_best_model="roc_auc",
        logging_steps=cfg.logging_steps,
        report_to=cfg.report_to,
        seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=int(cfg.warmup_ratio * total_steps),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=val_rows,
        data_collator=collator,
        compute_metrics=compute_pair_metrics,
        optimizers=(optimizer, None),
        callbacks=[
            BackbonePhaseCallback(model, collator, cfg.frozen_steps, frozen_dir),
            PhaseAwareEarlyStopping(cfg.early_stopping_patience, cfg.frozen_steps, cfg.finetune_steps),
        ],
    )
    last = None if cfg.fresh else last_checkpoint(os.path.join(cfg.output_dir, "checkpoints"))
    # DDP all-reduces only the parameters that require grad when `train` wraps the model, before the callbacks
    # set the phase: what fine-tuning trains must require grad then, or its copies would drift apart per process.
    model.set_backbone_frozen(cfg.finetune_steps == 0)
    trainer.train(resume_from_checkpoint=last)
    if not trainer.is_world_process_zero():  # of several processes, the main one calibrates and saves
        return {"best_global_step": trainer.state.best_global_step, "process_index": state.process_index}

    # 5. Decision threshold on validation pairs, with the photos as the final model sees them.
    # Cached tokens are still valid only if the kept weights never trained the backbone.
    best = trainer.state.best_global_step
    collator.use_tokens = cfg.finetune_steps == 0 or (best is not None and best <= cfg.frozen_steps)
    return _finish(cfg, model, collator, val_rows, val_groups, val_nn, best, frozen_dir, table, splits_file)


def _finish(cfg, model, collator, val_rows, val_groups, val_nn, best, frozen_dir, table, splits_file, normed=None) -> dict:
    """Choose the thresholds on validation pairs, save `<output_dir>/model` (and the frozen-phase model's
    thresholds), write `summary.json`."""
    model.set_backbone_frozen(True)
    if normed is not None:
        normed.set_backbone_frozen(True)
    if cfg.calibration_negatives == "random":
        calib_rows = pair_records(
            validation_pairs_by_size(val_groups, cfg.calibration_set_sizes, cfg.calibration_pairs, cfg.seed + 200, "random"),
            False,
        )
        hard_rows = pair_records(
            validation_pairs_by_size(
                val_groups, cfg.calibration_set_sizes, cfg.calibration_pairs, cfg.seed + 300, "hard", val_nn
            ),
            False,
        )
    else:
        calib_rows, hard_rows = val_rows, []
    calibrate = calibrate_embedder_matcher if cfg.embedder else calibrate_trained_matcher
    guard = hard_rows if cfg.calibration_hard_tolerance is not None and hard_rows else None
    calib_scores, guard_scores = calibrate(model, calib_rows, collator, guard, cfg.calibration_hard_tolerance)
    score_norm_choice = None
    if normed is not None:  # keep s-norm only if its thresholds make better decisions on these validation pairs
        normed_scores, normed_guard_scores = calibrate(normed, calib_rows, collator, guard, cfg.calibration_hard_tolerance)

        def decisions(m: PairMatcherModel, scores: np.ndarray, g_scores: np.ndarray | None) -> float:
            acc = decision_accuracy(m, calib_rows, scores)
            if guard and g_scores is not None:  # the guarded thresholds serve both kinds of negatives: judge them on both
                acc = (acc + decision_accuracy(m, guard, g_scores)) / 2
            return acc

        plain_acc = decisions(model, calib_scores, guard_scores)
        normed_acc = decisions(normed, normed_scores, normed_guard_scores)
        score_norm_choice = {"plain_accuracy": plain_acc, "snorm_accuracy": normed_acc}
        if cfg.score_norm == "asnorm" or normed_acc > plain_acc:
            model, calib_scores, guard_scores = normed, normed_scores, normed_guard_scores
        score_norm_choice["kept"] = model.config.score_norm
    val_labels = np.array([r["label"] for r in val_rows])
    val_scores = predict_pair_scores(model, val_rows, collator)
    summary = {
        "val": verification_metrics(val_labels, val_scores, model.config.threshold),
        "splits_file": splits_file,
        "set_size_thresholds": model.config.set_size_thresholds,
        "calibration_negatives": cfg.calibration_negatives,
        "calibration_hard_tolerance": cfg.calibration_hard_tolerance,
        "score_norm": score_norm_choice,
    }
    if hard_rows:  # the thresholds' accuracy per set size, on the pairs they were chosen on and on hard pairs
        summary["val_by_size"] = accuracy_by_size(model, calib_rows, calib_scores, "random")
        hard_scores = guard_scores if guard_scores is not None else predict_pair_scores(model, hard_rows, collator)
        summary["val_by_size"].update(accuracy_by_size(model, hard_rows, hard_scores, "hard"))
    model.set_backbone_frozen(False)
    model.config.freeze_backbone = False
    final_dir = os.path.join(cfg.output_dir, "model")
    save_atomically(final_dir, lambda tmp: model.save_pretrained(tmp))

    if os.path.isdir(frozen_dir):  # the frozen-phase baseline gets its own validation threshold
        frozen = PairMatcherModel.from_pretrained(frozen_dir)
        collator.use_tokens = True
        frozen_scores = predict_pair_scores(frozen, val_rows, collator)
        calibrate_thresholds(frozen, val_rows, frozen_scores)
        save_atomically(frozen_dir, lambda tmp: frozen.save_pretrained(tmp))
        summary["frozen_phase_val"] = verification_metrics(val_labels, frozen_scores, frozen.config.threshold)
    summary["training"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    summary["training"]["data_dir"] = data_description(cfg.data_dir, len(table))  # a DataFrame or Dataset: what it was
    summary["best_global_step"] = best
    atomic_write_json(summary, os.path.join(cfg.output_dir, "summary.json"))
    return summary
