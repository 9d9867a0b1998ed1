"""Decision thresholds of the pair matcher, chosen on validation pairs after training.

A matcher's probability becomes a yes/no with a threshold, chosen per size of the smaller set (a 1v1 pair
and a 3v3 pair need different ones) on validation pairs: `calibrate_thresholds` for a trained head,
optionally guarded by hard-negative pairs (lookalike dogs) within a tolerance of the best accuracy;
`calibrate_embedder_matcher` first fits the cosine head of a matcher built from an ArcFace embedder by
logistic regression, so its probabilities mean what they say. `snorm_cohort` is the impostor cohort of
adaptive s-norm, which `train_pair_matcher` keeps only when it decides better (`decision_accuracy`).
Separate from `training.py`: none of it trains; `python -m model_pkg.evaluate pair` scores pairs with it too.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data import sample_pairs
from ..metrics import choose_guarded_threshold, choose_threshold, verification_metrics
from .modeling_pair_matcher import PairMatcherModel, SiameseHead

logger = logging.getLogger(__name__)

__all__ = [
    "accuracy_by_size",
    "calibrate_embedder_matcher",
    "calibrate_thresholds",
    "calibrate_trained_matcher",
    "decision_accuracy",
    "predict_pair_logits",
    "predict_pair_scores",
    "snorm_cohort",
    "validation_pairs_by_size",
]


@torch.no_grad()
def predict_pair_logits(model: PairMatcherModel, records: list[dict], collator, batch_size: int = 32) -> np.ndarray:
    """Same-animal logits (float64) for collated pair rows."""
    model.eval()
    out = []
    for i in range(0, len(records), batch_size):
        batch = collator(records[i : i + batch_size])
        batch.pop("labels", None)
        out.append(model(**batch).logits.double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def predict_pair_scores(model: PairMatcherModel, records: list[dict], collator, batch_size: int = 32) -> np.ndarray:
    """Same-animal probabilities for collated pair rows."""
    return 1 / (1 + np.exp(-predict_pair_logits(model, records, collator, batch_size)))


def _sizes(records: list[dict]) -> np.ndarray:
    return np.array([min(len(r["paths_a"]), len(r["paths_b"])) for r in records])


def calibrate_thresholds(
    model: PairMatcherModel,
    records: list[dict],
    scores: np.ndarray,
    guard: tuple[list[dict], np.ndarray] | None = None,
    tolerance: float | None = None,
) -> None:
    """Store the validation-chosen threshold, overall and per size of the smaller set, in `model.config`.
    With `guard` (records, scores), e.g. hard-negative pairs, and `tolerance`: per size, the threshold
    within `tolerance` of the best accuracy on `records` that decides best on the guard pairs
    (`metrics.choose_guarded_threshold`)."""
    labels, sizes = np.array([r["label"] for r in records]), _sizes(records)
    g_labels, g_sizes = (np.array([r["label"] for r in guard[0]]), _sizes(guard[0])) if guard else (None, None)

    def choose(chosen: np.ndarray, guard_chosen: np.ndarray | None) -> float:
        if guard is None or tolerance is None or guard_chosen is None or g_labels is None:
            return float(choose_threshold(labels[chosen], scores[chosen]))
        if len(set(g_labels[guard_chosen].tolist())) < 2:  # no guard pairs of both kinds for this size
            return float(choose_threshold(labels[chosen], scores[chosen]))
        return choose_guarded_threshold(labels[chosen], scores[chosen], g_labels[guard_chosen], guard[1][guard_chosen], tolerance)

    model.config.threshold = choose(np.ones(len(labels), bool), None if g_sizes is None else np.ones(len(g_sizes), bool))
    by_size = {}
    for size in np.unique(sizes):
        chosen = sizes == size
        if len(set(labels[chosen].tolist())) == 2:  # both classes needed to choose a threshold
            by_size[str(int(size))] = choose(chosen, None if g_sizes is None else g_sizes == size)
    model.config.set_size_thresholds = by_size or None


def validation_pairs_by_size(groups, sizes, num_pairs: int, seed: int, negatives: str, neighbours=None) -> list:
    """`num_pairs` validation pairs of each set size in `sizes` (`negatives`: "random" or "hard"); a size the
    groups cannot fill is left out with a warning."""
    pairs = []
    for size in sizes:
        try:
            pairs += sample_pairs(groups, num_pairs, set_size=size, seed=seed + size, negatives=negatives, neighbours=neighbours)
        except ValueError as err:
            logger.warning("no %dv%d %s-negative validation pairs: %s", size, size, negatives, err)
    return pairs


@torch.no_grad()
def calibrate_embedder_matcher(
    model: PairMatcherModel, records: list[dict], collator, guard_records: list[dict] | None = None, tolerance=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit the siamese cosine head's `scale`/`bias` by logistic regression on validation pairs, so its
    probabilities mean what they say, then store a threshold per set size (`calibrate_thresholds`, guarded
    by `guard_records` within `tolerance` when given). Returns the calibrated probabilities of `records` and
    of `guard_records` (None without them)."""
    from sklearn.linear_model import LogisticRegression

    head = model.head
    if not (isinstance(head, SiameseHead) and head.distance == "cosine"):
        raise ValueError("calibrate_embedder_matcher needs head='siamese' with siamese_distance='cosine'.")
    # the raw score (cosine, or its s-normed value) as logits: probabilities would round to 1.0 in float32
    head.scale.fill_(1.0)
    head.bias.fill_(0.0)
    cosine = predict_pair_logits(model, records, collator)
    labels = np.array([r["label"] for r in records])
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(cosine[:, None], labels)
    head.scale.fill_(float(fit.coef_[0, 0]))
    head.bias.fill_(float(fit.intercept_[0]))
    probs = 1 / (1 + np.exp(-(float(head.scale) * cosine + float(head.bias))))
    guard = (guard_records, predict_pair_scores(model, guard_records, collator)) if guard_records else None
    calibrate_thresholds(model, records, probs, guard, tolerance)
    return probs, None if guard is None else guard[1]


def snorm_cohort(embedder, groups: dict[str, list[str]], num_dogs: int, seed: int) -> torch.Tensor:
    """One unit mean embedding per cohort dog (`num_dogs` training dogs, 2 photos each): the impostor
    population adaptive s-norm measures each side against."""
    from ..arcface.embedding import embed_paths

    rng = np.random.default_rng(seed)
    dogs = sorted(groups)
    dogs = [dogs[i] for i in sorted(rng.choice(len(dogs), size=min(num_dogs, len(dogs)), replace=False))]
    paths = [p for d in dogs for p in groups[d][:2]]
    emb = torch.from_numpy(embed_paths(embedder, paths))
    owner = torch.tensor([i for i, d in enumerate(dogs) for _ in groups[d][:2]])
    sums = torch.zeros(len(dogs), emb.shape[1]).index_add_(0, owner, emb)
    return torch.nn.functional.normalize(sums, dim=-1)


def decision_accuracy(model: PairMatcherModel, records: list[dict], scores: np.ndarray) -> float:
    """Accuracy of the stored per-size thresholds on `records`."""
    labels = np.array([r["label"] for r in records])
    sizes = [min(len(r["paths_a"]), len(r["paths_b"])) for r in records]
    thresholds = np.array([model.decision_threshold(s, s) for s in sizes])
    return float(((scores >= thresholds) == labels).mean())


def calibrate_trained_matcher(
    model: PairMatcherModel, records: list[dict], collator, guard_records: list[dict] | None = None, tolerance=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Store a threshold per set size for a trained matcher's own probabilities (`calibrate_thresholds`, guarded
    by `guard_records` within `tolerance` when given). Returns the probabilities of `records` and of
    `guard_records` (None without them), as `calibrate_embedder_matcher` does."""
    scores = predict_pair_scores(model, records, collator)
    guard = (guard_records, predict_pair_scores(model, guard_records, collator)) if guard_records else None
    calibrate_thresholds(model, records, scores, guard, tolerance)
    return scores, None if guard is None else guard[1]


def accuracy_by_size(model: PairMatcherModel, records: list[dict], scores: np.ndarray, negatives: str) -> dict:
    """The stored thresholds' accuracy, ROC AUC and pair count per set size, keyed `<n>v<n>_<negatives>`."""
    labels = np.array([r["label"] for r in records])
    sizes = np.array([min(len(r["paths_a"]), len(r["paths_b"])) for r in records])
    out = {}
    for size in np.unique(sizes):
        chosen = sizes == size
        m = verification_metrics(labels[chosen], scores[chosen], model.decision_threshold(int(size), int(size)))
        out[f"{int(size)}v{int(size)}_{negatives}"] = {k: m[k] for k in ("accuracy", "roc_auc", "threshold", "num_pairs")}
    return out
