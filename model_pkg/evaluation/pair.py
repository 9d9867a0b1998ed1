"""`evaluate pair`: set-vs-set verification of a pair matcher or the ``imagenet-cosine`` baseline on pairs drawn
from an identity tree (random or hard negatives), with the threshold policies of `model_pkg.evaluate`'s docstring."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data import CachedSetPairCollator, sample_pairs
from ..data.pairs import SetPair, pair_records
from ..features import compute_tokens, hard_neighbours, reference_features
from ..fileio import atomic_write
from ..intake.embedding import embed_photo_files, model_fusion, model_intake
from ..intake.fusion import DECISION_THRESHOLD, decide_pair
from ..loading import load_pair_model
from ..metrics import choose_threshold, verification_metrics
from ..pair_matcher import PairMatcherModel
from ..pair_matcher.calibration import predict_pair_scores
from .common import BASELINE, EvaluationError, json_safe, load_groups

__all__ = ["NEGATIVE_MODES", "RESULT_KEYS", "draw_pairs", "evaluate_pair", "save_pair_scores"]

NEGATIVE_MODES = ("random", "hard")
RESULT_KEYS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "pr_auc",
    "threshold",
    "threshold_source",
    "num_pairs",
    "num_positive",
)


def _check_pairable(groups: Mapping[str, Sequence[str]], set_size, num_pairs: int, where: str) -> None:
    lo = set_size if isinstance(set_size, int) else min(set_size)
    usable = [dog for dog, ps in groups.items() if len(ps) >= lo]
    if len(usable) < 2:
        raise EvaluationError(
            f"{where}: too few identities for the pairs: {len(usable)} of {len(groups)} dogs have at least "
            f"{lo} photo(s) (set_size={set_size}), negative pairs need at least 2; lower --set-size or use more dogs"
        )
    if not any(len(groups[dog]) >= 2 * lo for dog in usable):
        raise EvaluationError(
            f"{where}: too few identities for the pairs: no dog has the {2 * lo} photos a positive pair of two "
            f"disjoint sets of {lo} needs; lower --set-size"
        )
    if num_pairs < 2:
        raise EvaluationError(f"need at least 2 pairs (one positive, one negative), got {num_pairs}")


def draw_pairs(groups, num_pairs, set_size, seed, negatives, batch_size, where):
    """-> (pairs, reference features of all photos of `groups` when hard, else None)."""
    _check_pairable(groups, set_size, num_pairs, where)
    neighbours = feats = None
    if negatives == "hard":
        neighbours, feats = hard_neighbours(groups, batch_size=batch_size, k=1)
    try:
        pairs = sample_pairs(groups, num_pairs, set_size=set_size, seed=seed, negatives=negatives, neighbours=neighbours)
    except ValueError as exc:
        raise EvaluationError(f"{where}: {exc}") from exc
    return pairs, feats


def _pair_paths(pairs: Sequence[SetPair]) -> list[str]:
    return sorted({p for pair in pairs for p in (*pair.paths_a, *pair.paths_b)})


def _cosine_scores(
    pairs: Sequence[SetPair], groups: Mapping[str, Sequence[str]], feats: Mapping[str, np.ndarray] | None, batch_size: int
) -> np.ndarray:
    """Baseline: cosine similarity of the mean reference feature of each set.

    The reference features are those of all photos of the evaluated dogs (the same cache entry the hard
    negatives use, reused whatever the seed, set size or number of pairs).
    """
    if feats is None:
        feats = reference_features([p for ps in groups.values() for p in ps], batch_size=batch_size)
    a = np.stack([np.mean([feats[p] for p in pair.paths_a], axis=0) for pair in pairs]).astype(np.float64)
    b = np.stack([np.mean([feats[p] for p in pair.paths_b], axis=0) for pair in pairs]).astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(1) / norms


def _fused_scores(model: PairMatcherModel, pairs: Sequence[SetPair], batch_size: int) -> np.ndarray:
    """A model with an intake and a fusion, as `match_sets` runs it: each unique photo through the intake and both
    matchers once (`embed_photos`), then every pair decided by `decide_pair` (photos the intake would reshoot left
    out while their set has a usable one, species, kind, calibrated probability)."""
    fusion, intake = model_fusion(model), model_intake(model)
    assert fusion is not None and intake is not None
    paths = _pair_paths(pairs)
    vectors = embed_photo_files(model, paths, batch_size=batch_size)
    row = {p: i for i, p in enumerate(paths)}
    trained = torch.from_numpy(vectors.trained)
    scores = []
    for pair in pairs:
        a, b = [row[p] for p in pair.paths_a], [row[p] for p in pair.paths_b]

        def matcher_score(used_a: list[int], used_b: list[int], a=a, b=b) -> float:
            return model.score_photo_embeddings(trained[[a[i] for i in used_a]], trained[[b[i] for i in used_b]])

        decision = decide_pair(
            fusion,
            intake.config.certain_species,
            [vectors.intake[i] for i in a],
            vectors.fused[a],
            [vectors.intake[i] for i in b],
            vectors.fused[b],
            matcher_score,
        )
        scores.append(decision.probability)
    return np.asarray(scores, np.float64)


def _model_scores(model: PairMatcherModel, pairs: Sequence[SetPair], batch_size: int) -> np.ndarray:
    """Each unique photo through the backbone once, then every pair scored from the cached tokens."""
    if model_fusion(model) is not None:
        return _fused_scores(model, pairs, batch_size)
    paths = _pair_paths(pairs)
    tokens = compute_tokens(model.backbone, paths, batch_size=batch_size, desc="photo tokens")
    collator = CachedSetPairCollator(tokens, {p: i for i, p in enumerate(paths)})
    return predict_pair_scores(model, pair_records(pairs, augment=False), collator, batch_size=batch_size)


def save_pair_scores(path: str | os.PathLike, labels: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    """`labels` (0/1), `scores` and `threshold` as an .npz, written atomically."""
    import io

    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, labels=np.asarray(labels, np.int8), scores=np.asarray(scores, np.float32), threshold=np.float32(threshold)
    )
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()), binary=True)


def evaluate_pair(
    model: str | os.PathLike | PairMatcherModel,
    data: Any,
    set_size: int = 3,
    pairs: int = 1000,
    seed: int = 0,
    negatives: str = "random",
    splits: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    split: str = "test",
    threshold_split: str = "val",
    batch_size: int = 32,
    calibrate: bool = False,
    save_scores: str | os.PathLike | None = None,
    threshold_negatives: str | None = None,
) -> dict:
    """Verification metrics of a pair matcher (or the ``imagenet-cosine`` baseline) on sampled set pairs.

    Args:
        model: a saved PairMatcherModel folder, a loaded ``PairMatcherModel``, or ``"imagenet-cosine"``.
        data: an identity-folder tree (or seed layout), or anything ``as_dataset`` accepts.
        set_size: photos per side (K).
        pairs: number of pairs (N); half are positives.
        seed: pair-sampling seed; the same arguments always give the same pairs and metrics.
        negatives: ``"random"`` or ``"hard"`` (nearest dog under the untrained ImageNet reference).
        splits: a splits JSON saved by ``save_splits`` (or the dict itself): evaluate only ``split``'s
            identities. Without it every identity of ``data`` is evaluated.
        split: the evaluated split.
        threshold_split: split the baseline chooses its threshold on (pairs drawn the same way).
        batch_size: backbone and scoring batch size.
        calibrate: for a saved model, choose the threshold on `threshold_split` pairs drawn the same way
            (as the baseline always does) instead of using the stored `config.threshold`.
        save_scores: write the pairs' `labels`, `scores` and the `threshold` used to this .npz (atomically),
            for ROC / PR curves (the dashboard reads them).
        threshold_negatives: how the `threshold_split` pairs draw their negatives (``"random"`` / ``"hard"``);
            default the same as `negatives`. ``"random"`` on a hard-negative evaluation is the policy of the
            shipped thresholds (chosen on pairs like a shelter's), so the baseline can be held to it too.

    Returns a JSON-serialisable dict: accuracy, precision, recall, f1, roc_auc, pr_auc, threshold,
    threshold_source ("stored" / "val" / "oracle"), num_pairs, num_positive, model, data, split, set_size,
    negatives, seed, num_identities, seconds (plus best_accuracy, num_negative, splits_file, threshold_split).

    Raises ``EvaluationError`` (a ``ValueError``) for a missing model/data folder, a non-pair-matcher
    model, a split not in the splits file, or too few identities for the pairs.
    """
    start = time.perf_counter()
    if negatives not in NEGATIVE_MODES:
        raise EvaluationError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
    threshold_negatives = threshold_negatives or negatives
    if threshold_negatives not in NEGATIVE_MODES:
        raise EvaluationError(f"threshold_negatives must be one of {NEGATIVE_MODES}, got {threshold_negatives!r}")
    if isinstance(set_size, bool) or not isinstance(set_size, (int, tuple, list)):
        raise EvaluationError(f"set_size must be an int, got {set_size!r}")
    if isinstance(set_size, list):
        set_size = tuple(set_size)
    if not isinstance(pairs, int) or isinstance(pairs, bool):
        raise EvaluationError(f"pairs must be an int, got {pairs!r}")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")

    baseline = isinstance(model, str) and model == BASELINE
    if baseline:
        net, model_name = None, BASELINE
    elif isinstance(model, PairMatcherModel):
        net, model_name = model, str(getattr(model, "name_or_path", "") or type(model).__name__)
    elif isinstance(model, (str, os.PathLike)):
        net, model_name = load_pair_model(model), os.path.abspath(os.fspath(model))
    else:
        raise EvaluationError(
            f"model must be a saved PairMatcherModel folder, a PairMatcherModel or {BASELINE!r}, got {type(model).__name__}"
        )

    # Choosing the threshold on the evaluated split itself would be the oracle: say so rather than "val".
    use_val = (baseline or calibrate) and splits is not None and bool(threshold_split) and threshold_split != split
    groups, threshold_groups = load_groups(data, splits, split, threshold_split if use_val else None)
    where = f"split {split!r}" if splits is not None else "data"
    eval_pairs, feats = draw_pairs(groups, pairs, set_size, seed, negatives, batch_size, where)
    labels = np.array([p.label for p in eval_pairs], dtype=np.int64)

    if baseline:
        scores = _cosine_scores(eval_pairs, groups, feats, batch_size)
        if use_val:
            val_pairs, val_feats = draw_pairs(
                threshold_groups, pairs, set_size, seed, threshold_negatives, batch_size, f"threshold split {threshold_split!r}"
            )
            val_labels = np.array([p.label for p in val_pairs], dtype=np.int64)
            val_scores = _cosine_scores(val_pairs, threshold_groups, val_feats, batch_size)
            threshold = choose_threshold(val_labels, val_scores)
            source = "val"
        else:
            threshold, source = choose_threshold(labels, scores), "oracle"
    else:
        assert net is not None  # not the baseline: a loaded model
        scores = _model_scores(net, eval_pairs, batch_size)
        smallest = set_size if isinstance(set_size, int) else min(set_size)
        threshold = DECISION_THRESHOLD if model_fusion(net) is not None else net.decision_threshold(smallest, smallest)
        source = "stored"
        if use_val:  # the same per-protocol threshold choice the baseline gets, for a like-for-like comparison
            val_pairs, _ = draw_pairs(
                threshold_groups, pairs, set_size, seed, threshold_negatives, batch_size, f"threshold split {threshold_split!r}"
            )
            val_labels = np.array([p.label for p in val_pairs], dtype=np.int64)
            threshold, source = choose_threshold(val_labels, _model_scores(net, val_pairs, batch_size)), "val"

    metrics = verification_metrics(labels, scores, threshold)
    if save_scores:
        save_pair_scores(save_scores, labels, scores, threshold)
    metrics["threshold_source"] = source
    result = {key: metrics[key] for key in RESULT_KEYS}
    result.update(
        best_accuracy=metrics["best_accuracy"],
        num_negative=metrics["num_negative"],
        model=model_name,
        data=os.path.abspath(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
        split=split if splits is not None else "all",
        splits_file=os.path.abspath(os.fspath(splits)) if isinstance(splits, (str, os.PathLike)) else None,
        threshold_split=threshold_split if source == "val" else None,
        threshold_negatives=threshold_negatives if source == "val" else None,
        set_size=list(set_size) if isinstance(set_size, tuple) else set_size,
        negatives=negatives,
        seed=seed,
        num_identities=len(groups),
        seconds=round(time.perf_counter() - start, 3),
    )
    if source == "oracle":
        result["note"] = (
            "the baseline threshold was chosen on the evaluated pairs themselves (oracle: no splits file, or "
            "--threshold-split equal to --split), "
            "so accuracy/precision/recall/f1 are optimistic; roc_auc and pr_auc are threshold-free"
        )
    return {k: json_safe(v) for k, v in result.items()}
