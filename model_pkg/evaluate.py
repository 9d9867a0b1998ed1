"""Evaluation command line: `python -m model_pkg.evaluate <task> ...`.

Tasks (sub-commands):

* ``pair``: set-vs-set verification ("do these two sets of photos show the same dog?") of a saved
  :class:`~model_pkg.PairMatcherModel` or of the ``imagenet-cosine`` baseline, on pairs drawn from an
  identity-folder tree (optionally only the identities of one split of a splits file)::

      python -m model_pkg.evaluate pair --model runs/pair/model --data ../shared/data/dogfacenet \\
          --splits runs/pair/splits.json --split test --set-size 3 --pairs 1000 --seed 0 \\
          --negatives hard --json results/pair_test_k3_hard.json

Pairs come from :func:`~model_pkg.data.sample_pairs` (half positives). With ``--negatives hard`` each
negative pairs a dog with its nearest other dog under the *untrained* ImageNet
``tf_efficientnet_lite0`` (cosine of the mean of each dog's pooled photo features), computed over the
evaluated dogs, so every model is evaluated on the same hard pairs. Those reference features are cached
in ``$PETMATCH_CACHE`` (default ``~/.cache/petmatch``) keyed by the image paths and modification times.

Every unique photo in the pairs goes through the backbone once; pairs are then scored from the cached
tokens. The decision threshold is the model's stored validation threshold (``"stored"``); the baseline
chooses its own on pairs drawn the same way from the ``--threshold-split`` identities (``"val"``), or,
without a splits file, on the evaluated pairs themselves (``"oracle"``: optimistic).

* ``gallery``: identification against a gallery of known dogs, with open-set rejection, for a saved
  :class:`~model_pkg.ArcFaceEmbedderModel` or the ``imagenet`` baseline (untrained ImageNet
  ``tf_efficientnet_lite0`` pooled features, cosine)::

      python -m model_pkg.evaluate gallery --model runs/arcface/model --data ../shared/data/dogfacenet \\
          --splits train/splits/dogfacenet.json --split test --gallery-per-id 1 --unknown-fraction 0.2 \\
          --seed 0 --json results/gallery_test_g1.json

``--unknown-fraction`` U of the dogs are left out of the gallery (all their photos are queries that must
be rejected); every other dog registers ``--gallery-per-id`` G random photos and queries with the rest
(:func:`~model_pkg.data.samplers.split_gallery_queries`; dogs with G photos or fewer are skipped). Reports
rank1 / rank5 / rank10 (percent), map, mrr, open_set_auroc, and known_accuracy / unknown_rejection at
score and vote-margin thresholds calibrated (``GalleryIndex.calibrate``) on the ``--threshold-split``
dogs under the same G, U and seed (``"val"``); without a splits file, at the model's stored thresholds
(``"stored"``), or else calibrated on the evaluated queries themselves (``"oracle"``: optimistic).

* ``text-search``: text-to-image and image-to-text retrieval of a saved
  :class:`~model_pkg.DualEncoderModel`, every image of a split list against all of that list's captions::

      python -m model_pkg.evaluate text-search --model models/dual-encoder --images ../shared/data/flickr8k/images \\
          --captions ../shared/data/flickr8k/Flickr8k.token.txt \\
          --split-list ../shared/data/flickr8k/Flickr_8k.devImages.txt --json results/text_search_dev.json

Reports ``{"text_to_image": {"r1", "r5", "r10", "mrr"}, "image_to_text": {...}}`` (recalls in percent).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arcface import ArcFaceEmbedderModel
from .arcface.training import embed_paths
from .data import (
    CachedSetPairCollator,
    SplitFileError,
    as_dataset,
    group_paths,
    load_splits,
    nearest_identities,
    sample_pairs,
    subset_by_identities,
)
from .data.pairs import SetPair
from .data.samplers import GallerySplit, split_gallery_queries
from .features import compute_pooled, compute_tokens
from .fileio import atomic_save_npy, atomic_write, atomic_write_json
from .gallery import GalleryIndex
from .metrics import choose_threshold, save_confusion, verification_metrics
from .metrics import confusion as confusion_matrix_of
from .modeling_utils import UntrustedModelError, check_model_folder
from .pair_matcher import PairMatcherModel
from .pair_matcher.training import pair_records, predict_pair_scores

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE",
    "REFERENCE_BACKBONE",
    "EvaluationError",
    "GALLERY_BASELINE",
    "cache_dir",
    "evaluate_gallery_protocol",
    "evaluate_pair",
    "load_arcface_model",
    "load_dual_model",
    "evaluate_text_search",
    "hard_neighbours",
    "load_pair_model",
    "main",
    "reference_features",
]

BASELINE = "imagenet-cosine"
GALLERY_BASELINE = "imagenet"  # `evaluate gallery`: the same untrained reference features, cosine
REFERENCE_BACKBONE = "tf_efficientnet_lite0"
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
# Reference features are computed this many photos at a time, so memory stays bounded on big trees.
_REFERENCE_CHUNK = 512


class EvaluationError(ValueError):
    """The evaluation cannot run with these inputs (missing folder, wrong model, unknown split, too few dogs)."""


# --------------------------------------------------------------------------- #
# Reference (untrained ImageNet) features, cached on disk
# --------------------------------------------------------------------------- #
def cache_dir() -> Path:
    """Where reference features are cached: ``$PETMATCH_CACHE`` or ``~/.cache/petmatch``."""
    return Path(os.environ.get("PETMATCH_CACHE") or Path.home() / ".cache" / "petmatch")


@functools.lru_cache(maxsize=1)
def _reference_backbone():
    from .backbones import create_backbone

    backbone = create_backbone(REFERENCE_BACKBONE, pretrained=True)
    backbone.eval()
    return backbone


def _paths_key(paths: Sequence[str], image_size: int) -> str:
    digest = hashlib.sha256(f"{REFERENCE_BACKBONE}:{image_size}\n".encode())
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\t{st.st_mtime_ns}\t{st.st_size}\n".encode())
    return digest.hexdigest()[:32]


def reference_features(paths: Sequence[str], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Pooled features (float32, D=1280) of the untrained ImageNet ``tf_efficientnet_lite0`` for each photo.

    Returns ``{path: vector}``. The features of a given set of photos are computed once and cached as
    ``<cache_dir()>/reference-tf_efficientnet_lite0-<hash>.npy`` (hash of the sorted paths with their
    modification times and sizes, so edited photos are recomputed), written atomically.
    """
    ordered = sorted({os.fspath(p) for p in paths})
    if not ordered:
        return {}
    backbone = _reference_backbone()
    key = _paths_key(ordered, backbone.image_size)
    file = cache_dir() / f"reference-{REFERENCE_BACKBONE}-{key}.npy"
    array = None
    if file.is_file():
        try:
            array = np.load(file)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable reference cache %s (%s): recomputing", file, exc)
        if array is not None and (array.ndim != 2 or array.shape[0] != len(ordered)):
            logger.warning("reference cache %s has shape %s for %d photos: recomputing", file, array.shape, len(ordered))
            array = None
    if array is None:
        chunks = []
        for start in range(0, len(ordered), _REFERENCE_CHUNK):
            tokens = compute_tokens(
                backbone, ordered[start : start + _REFERENCE_CHUNK], batch_size=batch_size, desc="reference features"
            )
            chunks.append(compute_pooled(backbone, tokens).numpy().astype(np.float32))
        array = np.concatenate(chunks)
        atomic_save_npy(file, array)
    return {path: array[i] for i, path in enumerate(ordered)}


def hard_neighbours(
    groups: Mapping[str, Sequence[str]], batch_size: int = 32, k: int = 1
) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Each dog's ``k`` nearest other dogs (cosine of mean reference features) among ``groups``.

    Returns the neighbours and the per-photo reference features of all photos of ``groups``.
    """
    feats = reference_features([p for ps in groups.values() for p in ps], batch_size=batch_size)
    means = {dog: np.mean([feats[p] for p in ps], axis=0) for dog, ps in groups.items() if ps}
    return nearest_identities(means, k=k), feats


# --------------------------------------------------------------------------- #
# Inputs: data, splits, model
# --------------------------------------------------------------------------- #
def _load_groups(data: Any, splits: Any, split: str, threshold_split: str | None):
    """-> (groups of the evaluated identities, groups of the threshold split or None)."""
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        if not root.exists():
            raise EvaluationError(f"data folder {str(root)!r} does not exist: pass --data <folder with one sub-folder per dog>")
        if not root.is_dir():
            raise EvaluationError(f"data path {str(root)!r} is not a folder: pass the folder with one sub-folder per dog")
    table = as_dataset(data)
    if splits is None:
        return group_paths(table), None
    if isinstance(splits, Mapping):
        split_map = {str(k): list(v) for k, v in splits.items()}
        where = "the given splits"
    else:
        where = f"splits file {os.fspath(splits)!r}"
        try:
            split_map = load_splits(splits)
        except FileNotFoundError as exc:
            raise EvaluationError(f"{where} does not exist: pass the splits.json saved by training") from exc
        except SplitFileError as exc:
            raise EvaluationError(str(exc)) from exc

    def subset(name: str, role: str):
        if name not in split_map:
            raise EvaluationError(f"{role} split {name!r} is not in {where}; it has {sorted(split_map)}")
        ids = split_map[name]
        if not ids:
            raise EvaluationError(f"{role} split {name!r} of {where} lists no identities")
        try:
            return group_paths(subset_by_identities(table, ids))
        except ValueError as exc:
            raise EvaluationError(f"{role} split {name!r}: {exc}") from exc

    return subset(split, "evaluated"), (subset(threshold_split, "threshold") if threshold_split else None)


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


def _load_saved_model(path: str | os.PathLike, model_cls, name: str, baseline: str, kind: str, hint: str):
    """Load a saved `model_cls` in float32 on CPU; `name`, `kind` and `hint` word the errors for wrong folders."""
    folder = Path(path)
    if not folder.is_dir():
        raise EvaluationError(
            f"model folder {str(folder)!r} does not exist: pass a folder saved by {model_cls.__name__}.save_pretrained"
            + (f" or {baseline!r} for the ImageNet baseline" if baseline else "")
        )
    try:
        check_model_folder(folder)  # pickles, remote code, damaged safetensors: refused before anything is read
    except UntrustedModelError as exc:
        raise EvaluationError(str(exc)) from exc
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise EvaluationError(f"{str(folder)!r} has no config.json: it is not a saved {name}")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise EvaluationError(f"{str(config_file)!r} is not a valid config file ({exc})") from exc
    expected = model_cls.config_class.model_type
    if model_type != expected:
        raise EvaluationError(f"{str(folder)!r} holds a {model_type!r} model, not {kind} ({expected!r}); {hint}")
    try:
        model = model_cls.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    except OSError as exc:
        raise EvaluationError(f"could not load the {name} from {str(folder)!r}: {exc}") from exc
    return model.eval()


def load_pair_model(path: str | os.PathLike) -> PairMatcherModel:
    """Load a saved :class:`PairMatcherModel` in float32 on CPU, with clear errors for wrong folders."""
    return _load_saved_model(
        path, PairMatcherModel, "pair-matcher model", BASELINE, "a pair matcher", "`evaluate pair` needs a PairMatcherModel"
    )


# --------------------------------------------------------------------------- #
# Pairs and scores
# --------------------------------------------------------------------------- #
def _draw_pairs(groups, num_pairs, set_size, seed, negatives, batch_size, where):
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


def _model_scores(model: PairMatcherModel, pairs: Sequence[SetPair], batch_size: int) -> np.ndarray:
    """Each unique photo through the backbone once, then every pair scored from the cached tokens."""
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


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    groups, threshold_groups = _load_groups(data, splits, split, threshold_split if use_val else None)
    where = f"split {split!r}" if splits is not None else "data"
    eval_pairs, feats = _draw_pairs(groups, pairs, set_size, seed, negatives, batch_size, where)
    labels = np.array([p.label for p in eval_pairs], dtype=np.int64)

    if baseline:
        scores = _cosine_scores(eval_pairs, groups, feats, batch_size)
        if use_val:
            val_pairs, val_feats = _draw_pairs(
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
        threshold, source = net.decision_threshold(smallest, smallest), "stored"
        if use_val:  # the same per-protocol threshold choice the baseline gets, for a like-for-like comparison
            val_pairs, _ = _draw_pairs(
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
    return {k: _json_safe(v) for k, v in result.items()}


# --------------------------------------------------------------------------- #
# Gallery: identification with open-set rejection
# --------------------------------------------------------------------------- #
GALLERY_RESULT_KEYS = (
    "rank1",
    "rank5",
    "rank10",
    "map",
    "mrr",
    "open_set_auroc",
    "known_accuracy",
    "unknown_rejection",
    "balanced_accuracy",
    "classification_accuracy",
    "known_acceptance",
    "known_misidentified",
    "score_threshold",
    "margin_threshold",
    "k",
    "num_known",
    "num_unknown",
    "num_gallery",
)


def load_arcface_model(path: str | os.PathLike) -> ArcFaceEmbedderModel:
    """Load a saved :class:`ArcFaceEmbedderModel` in float32 on CPU, with clear errors for wrong folders."""
    return _load_saved_model(
        path,
        ArcFaceEmbedderModel,
        "ArcFace embedder",
        GALLERY_BASELINE,
        "an ArcFace embedder",
        "`evaluate gallery` needs a model that embeds single photos",
    )


def _gallery_split(groups, gallery_per_id: int, unknown_fraction: float, seed: int, where: str) -> GallerySplit:
    try:
        return split_gallery_queries(groups, gallery_per_id, unknown_fraction, seed)
    except ValueError as exc:
        message = str(exc).replace("gallery_per_id=", "--gallery-per-id ").replace("gallery_per_id", "--gallery-per-id")
        raise EvaluationError(f"{where}: {message}") from exc


def _split_arrays(split: GallerySplit, emb: Mapping[str, np.ndarray]):
    gallery = np.stack([emb[p] for p in split.gallery_paths]).astype(np.float32)
    queries = np.stack([emb[p] for p in split.query_paths]).astype(np.float32)
    return gallery, queries


def _calibrated(split: GallerySplit, emb: Mapping[str, np.ndarray], k: int) -> GalleryIndex:
    """A gallery of `split` with thresholds calibrated on its known and unknown queries."""
    gallery_emb, query_emb = _split_arrays(split, emb)
    unknown = np.array([lab in set(split.unknown_labels) for lab in split.query_labels])
    gallery = GalleryIndex(gallery_emb.shape[1], "ip", approximate_above=max(len(gallery_emb), 1))
    gallery.add(gallery_emb, split.gallery_labels)
    known_labels = [lab for lab, u in zip(split.query_labels, unknown) if not u]
    gallery.calibrate(query_emb[~unknown], known_labels, query_emb[unknown], k=k)
    return gallery


UNKNOWN, RESHOOT = "unknown", "reshoot"  # the decision columns of a rejected query


def _write_gallery_confusion(prefix, gallery: GalleryIndex, split: GallerySplit, query_emb, k):
    """Classify the queries with `gallery` (at its thresholds) and save the decision confusion matrix (CSV + PNG)."""
    unknown = set(split.unknown_labels)
    truth = [UNKNOWN if lab in unknown else lab for lab in split.query_labels]
    decided = [p.label if p.label is not None else p.reason for p in gallery.classify(query_emb, k=k)]
    labels = sorted(set(split.gallery_labels)) + [UNKNOWN, RESHOOT]
    csv_path, png_path = os.fspath(prefix) + ".csv", os.fspath(prefix) + ".png"
    save_confusion(confusion_matrix_of(truth, decided, labels), labels, csv_path, png_path)  # creates the folder
    return os.path.abspath(csv_path), os.path.abspath(png_path)


def evaluate_gallery_protocol(
    model: str | os.PathLike | ArcFaceEmbedderModel,
    data: Any,
    gallery_per_id: int = 1,
    unknown_fraction: float = 0.2,
    seed: int = 0,
    splits: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    split: str = "test",
    threshold_split: str = "val",
    k: int | None = None,
    batch_size: int = 32,
    confusion: str | os.PathLike | None = None,
) -> dict:
    """Gallery identification with open-set rejection of an ArcFace embedder (or the ``imagenet`` baseline).

    Args:
        model: a saved ArcFaceEmbedderModel folder, a loaded ``ArcFaceEmbedderModel``, or ``"imagenet"``.
        data: an identity-folder tree (or seed layout), or anything ``as_dataset`` accepts.
        gallery_per_id: G, photos registered per known dog; its other photos are queries.
        unknown_fraction: U in [0, 1), the share of dogs left out of the gallery (their queries must be rejected).
        seed: the draw of unknown dogs and gallery photos; the same arguments give the same numbers.
        splits: a splits JSON (or dict): evaluate only ``split``'s dogs and calibrate the thresholds on
            ``threshold_split``'s dogs under the same protocol.
        split: the evaluated split.
        threshold_split: the split thresholds are calibrated on.
        k: neighbours that vote (default: the model's ``gallery_k``, 20 for the baseline).
        batch_size: backbone batch size.
        confusion: if given, a path prefix: the confusion matrix of the voted decisions at the chosen
            thresholds is written to ``<prefix>.csv`` and ``<prefix>.png``. Rows are the true dog
            (every unknown dog's row is ``unknown``), columns the decision: a dog, ``unknown`` or ``reshoot``.

    Returns a JSON-serialisable dict: rank1, rank5, rank10 (percent), map, mrr, open_set_auroc,
    known_accuracy, unknown_rejection, balanced_accuracy, score_threshold, margin_threshold,
    threshold_source ("val" / "stored" / "oracle" / "none"), counts, and the arguments.

    Raises ``EvaluationError`` (a ``ValueError``) for a missing model/data folder, a model that is not an
    ArcFace embedder, U outside [0, 1), G < 1 or larger than the photos available, or an unknown split.
    """
    start = time.perf_counter()
    if isinstance(gallery_per_id, bool) or not isinstance(gallery_per_id, int) or gallery_per_id < 1:
        raise EvaluationError(f"--gallery-per-id must be an integer >= 1, got {gallery_per_id!r}")
    if isinstance(unknown_fraction, bool) or not isinstance(unknown_fraction, (int, float)) or not 0.0 <= unknown_fraction < 1.0:
        raise EvaluationError(
            f"--unknown-fraction must lie in [0, 1) (the share of dogs left out of the gallery), got {unknown_fraction!r}"
        )
    if k is not None and k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")

    baseline = isinstance(model, str) and model in (GALLERY_BASELINE, BASELINE)
    if baseline:
        net, model_name = None, GALLERY_BASELINE
    elif isinstance(model, ArcFaceEmbedderModel):
        net, model_name = model.cpu().eval(), str(getattr(model, "name_or_path", "") or type(model).__name__)
    elif isinstance(model, (str, os.PathLike)):
        net, model_name = load_arcface_model(model), os.path.abspath(os.fspath(model))
    else:
        raise EvaluationError(
            f"model must be a saved ArcFaceEmbedderModel folder, an ArcFaceEmbedderModel or {GALLERY_BASELINE!r}, "
            f"got {type(model).__name__}"
        )
    k = k or (20 if net is None else int(net.config.gallery_k))

    use_val = splits is not None and bool(threshold_split) and threshold_split != split and unknown_fraction > 0
    groups, threshold_groups = _load_groups(data, splits, split, threshold_split if use_val else None)
    where = f"split {split!r}" if splits is not None else "data"
    evaluated = _gallery_split(groups, gallery_per_id, unknown_fraction, seed, where)
    calibration = None
    if use_val:
        calibration = _gallery_split(
            threshold_groups, gallery_per_id, unknown_fraction, seed, f"threshold split {threshold_split!r}"
        )
        if not calibration.unknown_labels:
            raise EvaluationError(f"threshold split {threshold_split!r} has too few dogs to leave one out of the gallery")

    paths = sorted(
        {*evaluated.gallery_paths, *evaluated.query_paths}
        | ({*calibration.gallery_paths, *calibration.query_paths} if calibration else set())
    )
    if net is None:
        emb = reference_features(paths, batch_size=batch_size)
    else:
        emb = dict(zip(paths, embed_paths(net, paths, batch_size=batch_size)))

    score_threshold, margin_threshold = None, 0.05
    if calibration is not None:
        fitted = _calibrated(calibration, emb, k)
        score_threshold, margin_threshold, source = fitted.score_threshold, fitted.margin_threshold, "val"
    elif net is not None and net.config.score_threshold is not None:
        score_threshold, margin_threshold, source = net.config.score_threshold, net.config.margin_threshold, "stored"
    elif evaluated.unknown_labels:
        fitted = _calibrated(evaluated, emb, k)
        score_threshold, margin_threshold, source = fitted.score_threshold, fitted.margin_threshold, "oracle"
    else:
        source = "none"

    gallery_emb, query_emb = _split_arrays(evaluated, emb)
    gallery = GalleryIndex(
        gallery_emb.shape[1],
        "ip",
        approximate_above=max(len(gallery_emb), 1),
        score_threshold=score_threshold,
        margin_threshold=margin_threshold,
    )
    gallery.add(gallery_emb, evaluated.gallery_labels)
    metrics = gallery.evaluate(query_emb, evaluated.query_labels, evaluated.unknown_labels, k=k)
    result = {key: metrics[key] for key in GALLERY_RESULT_KEYS}
    if confusion is not None:
        result["confusion_csv"], result["confusion_png"] = _write_gallery_confusion(confusion, gallery, evaluated, query_emb, k)
    result.update(
        threshold_source=source,
        model=model_name,
        data=os.path.abspath(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
        split=split if splits is not None else "all",
        splits_file=os.path.abspath(os.fspath(splits)) if isinstance(splits, (str, os.PathLike)) else None,
        threshold_split=threshold_split if source == "val" else None,
        gallery_per_id=gallery_per_id,
        unknown_fraction=unknown_fraction,
        seed=seed,
        num_identities=len(groups),
        num_known_identities=len(evaluated.known_labels),
        num_unknown_identities=len(evaluated.unknown_labels),
        num_skipped_identities=len(evaluated.skipped_labels),
        seconds=round(time.perf_counter() - start, 3),
    )
    if source == "oracle":
        result["note"] = (
            "the thresholds were calibrated on the evaluated queries themselves (oracle: no splits file and no stored "
            "thresholds), so known_accuracy/unknown_rejection are optimistic; ranks, map and open_set_auroc are threshold-free"
        )
    elif source == "none":
        result["note"] = "no unknown dogs (--unknown-fraction 0) and no stored thresholds: nothing is rejected as unknown"
    return {k_: _json_safe(v) for k_, v in result.items()}


# --------------------------------------------------------------------------- #
# Text search: image-text retrieval of a dual encoder
# --------------------------------------------------------------------------- #
def load_dual_model(path: str | os.PathLike):
    """Load a saved :class:`DualEncoderModel` in float32 on CPU, with clear errors for wrong folders."""
    from .dual_encoder import DualEncoderModel

    return _load_saved_model(
        path,
        DualEncoderModel,
        "dual encoder",
        "",
        "a dual encoder",
        "`evaluate text-search` needs a DualEncoderModel (e.g. models/dual-encoder)",
    )


def evaluate_text_search(
    model: Any, images: str | os.PathLike, captions: str | os.PathLike, split_list: str | os.PathLike, batch_size: int = 64
) -> dict:
    """Every image of ``split_list`` (found in ``images``) against all of its captions in ``captions``.

    Returns ``{"text_to_image": {"r1", "r5", "r10", "mrr"}, "image_to_text": {...}}`` plus the counts,
    model, files and seconds. Listed images missing from ``images`` are skipped and counted.
    """
    from .dual_encoder import DualEncoderModel
    from .dual_encoder.data import caption_pairs, load_flickr8k_splits
    from .dual_encoder.training import evaluate_retrieval

    start = time.perf_counter()
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise EvaluationError(f"image folder {str(image_dir)!r} does not exist: pass --images <folder with the photos>")
    net = model if isinstance(model, DualEncoderModel) else load_dual_model(model)
    splits = load_flickr8k_splits(image_dir.parent, captions, {"eval": split_list}, image_dir=image_dir)
    paths, texts, owner = caption_pairs(splits["eval"])
    result: dict[str, Any] = dict(evaluate_retrieval(net, paths, texts, owner, batch_size=batch_size))
    skipped = json.loads(splits["eval"].info.description or "{}").get("skipped", {})
    result.update(
        num_images=len(paths),
        num_captions=len(texts),
        skipped_images=skipped,
        model=os.path.abspath(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        captions=os.path.abspath(os.fspath(captions)),
        split_list=os.path.abspath(os.fspath(split_list)),
        seconds=round(time.perf_counter() - start, 3),
    )
    return result


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (temp file in the same folder + ``os.replace``)."""
    atomic_write_json(obj, path)


_PATH_KEYS = ("model", "data", "splits_file", "images", "captions", "split_list", "confusion_csv", "confusion_png")


def portable_paths(result: dict) -> dict:
    """The result with its absolute input paths made relative to the working directory, so a results file
    written here reads the same in any clone (no /home/<user>/ or site-packages paths in shipped files)."""
    out = dict(result)
    for key in _PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and os.path.isabs(value):
            out[key] = os.path.relpath(value)
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_pkg.evaluate", description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    pair = tasks.add_parser(
        "pair",
        help="set-vs-set verification of a pair matcher or the imagenet-cosine baseline",
        description="Verification metrics on sampled set pairs (half positives).",
    )
    pair.add_argument("--model", required=True, help=f"saved PairMatcherModel folder, or {BASELINE!r}")
    pair.add_argument("--data", required=True, help="identity-folder tree (<data>/<dog>/<photos>) or seed layout")
    pair.add_argument("--set-size", type=_positive_int, default=3, help="photos per side K (default 3)")
    pair.add_argument("--pairs", type=_positive_int, default=1000, help="number of pairs N, half positive (default 1000)")
    pair.add_argument("--seed", type=int, default=0, help="pair-sampling seed (default 0)")
    pair.add_argument("--negatives", choices=NEGATIVE_MODES, default="random", help="negative pairs (default random)")
    pair.add_argument("--json", dest="json_path", help="write the metrics JSON here (atomically); always printed")
    pair.add_argument("--splits", help="splits JSON saved by training: evaluate only the identities of --split")
    pair.add_argument("--split", default="test", help="split to evaluate (default test)")
    pair.add_argument(
        "--threshold-split",
        default="val",
        help="split the baseline chooses its threshold on (default val; needs --splits, else oracle)",
    )
    pair.add_argument(
        "--threshold-negatives",
        choices=NEGATIVE_MODES,
        default=None,
        help="negatives of the --threshold-split pairs (default: as --negatives; random = the shipped thresholds' policy)",
    )
    pair.add_argument("--batch-size", type=_positive_int, default=32, help="backbone batch size (default 32)")
    pair.add_argument(
        "--calibrate",
        action="store_true",
        help="saved model: choose the threshold on --threshold-split pairs drawn the same way, as the baseline does",
    )
    pair.add_argument("--save-scores", default=None, metavar="NPZ", help="write labels, scores and threshold here (ROC / PR)")
    pair.set_defaults(func=_run_pair)

    gallery = tasks.add_parser(
        "gallery",
        help="gallery identification with open-set rejection of an ArcFace embedder or the imagenet baseline",
        description="Register G photos of each known dog, query with the rest; U of the dogs are unknown and must be rejected.",
    )
    gallery.add_argument("--model", required=True, help=f"saved ArcFaceEmbedderModel folder, or {GALLERY_BASELINE!r}")
    gallery.add_argument("--data", required=True, help="identity-folder tree (<data>/<dog>/<photos>) or seed layout")
    gallery.add_argument("--gallery-per-id", type=_positive_int, default=1, help="photos registered per known dog G (default 1)")
    gallery.add_argument(
        "--unknown-fraction", type=float, default=0.2, help="share U in [0, 1) of dogs left out of the gallery (default 0.2)"
    )
    gallery.add_argument("--seed", type=int, default=0, help="draw of unknown dogs and gallery photos (default 0)")
    gallery.add_argument("--json", dest="json_path", help="write the metrics JSON here (atomically); always printed")
    gallery.add_argument("--splits", help="splits JSON saved by training: evaluate only the identities of --split")
    gallery.add_argument("--split", default="test", help="split to evaluate (default test)")
    gallery.add_argument(
        "--threshold-split",
        default="val",
        help="split the rejection thresholds are calibrated on (default val; needs --splits)",
    )
    gallery.add_argument(
        "--k", type=_positive_int, default=None, help="neighbours that vote (default: the model's gallery_k, 20)"
    )
    gallery.add_argument("--batch-size", type=_positive_int, default=32, help="backbone batch size (default 32)")
    gallery.add_argument(
        "--confusion",
        default=None,
        metavar="PREFIX",
        help="write the confusion matrix of the decisions (dogs + unknown + reshoot) to PREFIX.csv and PREFIX.png",
    )
    gallery.set_defaults(func=_run_gallery)

    text = tasks.add_parser(
        "text-search",
        help="text-to-image and image-to-text retrieval of a dual encoder",
        description="Every image of --split-list against all of its captions: R@1/5/10 (percent) and MRR, both directions.",
    )
    text.add_argument("--model", required=True, help="saved DualEncoderModel folder")
    text.add_argument("--images", required=True, help="folder with the photos")
    text.add_argument("--captions", required=True, help="caption file, Flickr8k.token.txt format")
    text.add_argument("--split-list", required=True, help="file with one image name per line (e.g. Flickr_8k.devImages.txt)")
    text.add_argument("--json", dest="json_path", help="write the metrics JSON here (atomically); always printed")
    text.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default 64)")
    text.set_defaults(func=_run_text_search)
    return parser


def _run_pair(args: argparse.Namespace) -> dict:
    return evaluate_pair(
        args.model,
        args.data,
        set_size=args.set_size,
        pairs=args.pairs,
        seed=args.seed,
        negatives=args.negatives,
        splits=args.splits,
        split=args.split,
        threshold_split=args.threshold_split,
        batch_size=args.batch_size,
        calibrate=args.calibrate,
        save_scores=args.save_scores,
        threshold_negatives=args.threshold_negatives,
    )


def _run_gallery(args: argparse.Namespace) -> dict:
    return evaluate_gallery_protocol(
        args.model,
        args.data,
        gallery_per_id=args.gallery_per_id,
        unknown_fraction=args.unknown_fraction,
        seed=args.seed,
        splits=args.splits,
        split=args.split,
        threshold_split=args.threshold_split,
        k=args.k,
        batch_size=args.batch_size,
        confusion=args.confusion,
    )


def _run_text_search(args: argparse.Namespace) -> dict:
    return evaluate_text_search(args.model, args.images, args.captions, args.split_list, batch_size=args.batch_size)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the task, print its JSON (and write ``--json``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .backbones import BackboneWeightsError
    from .data import ImageLoadError

    try:
        result = portable_paths(args.func(args))
    except (ValueError, FileNotFoundError, BackboneWeightsError, ImageLoadError) as exc:
        raise SystemExit(f"{parser.prog} {args.task}: error: {exc}") from exc
    if getattr(args, "json_path", None):
        write_json(result, args.json_path)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
